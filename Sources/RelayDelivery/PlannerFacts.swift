@_exported import DeliveryPolicy
import RelayConfig
import RelayDNS
import RelayTLS
import SMTPCore

/// Conversions from the resolver's and the TLS layer's values to the planner's facts and back.
/// They decide nothing: every rule is in `DeliveryPlanner`.

extension MXFact {
    /// The fact of an MX answer: bogus, NXDOMAIN, null MX (RFC 7505 §3), NODATA → implicit MX
    /// (the domain itself, RFC 5321 §5.1), else the exchanges by ascending preference, equal
    /// preferences in `shuffle`d order, duplicates removed.
    /// - Parameters:
    ///   - answer: the validated MX answer.
    ///   - domain: the destination domain, lowercased without trailing dot.
    ///   - shuffle: orders hosts of equal preference (a random shuffle in production).
    public static func make(answer: DNSAnswer<MXRecord>, domain: String,
                            shuffle: ([String]) -> [String] = { $0.shuffled() }) -> MXFact {
        if answer.status == .bogus { return .bogus(why: answer.whyBogus) }
        if answer.isNXDomain { return .nxdomain }
        if answer.records.isEmpty { return .hosts([domain], secure: answer.status == .secure, implicit: true) }
        if answer.records.contains(where: \.isNullMX) { return .nullMX }
        var ordered: [String] = []
        for preference in Set(answer.records.map(\.preference)).sorted() {
            let hosts = answer.records.filter { $0.preference == preference }.map(\.exchange)
            for host in shuffle(hosts) where !ordered.contains(host) { ordered.append(host) }
        }
        return .hosts(ordered, secure: answer.status == .secure, implicit: false)
    }
}

extension DNSSECState {
    init(_ answer: DNSAnswer<some Sendable>) {
        switch answer.status {
        case .secure: self = .secure
        case .insecure: self = .insecure
        case .bogus: self = .bogus(why: answer.whyBogus)
        }
    }
}

extension AddressLookup {
    init(_ result: Result<DNSAnswer<String>, Error>) {
        switch result {
        case .success(let answer): self = .answer(records: answer.status == .bogus ? [] : answer.records, status: DNSSECState(answer),
                                                  canonicalName: answer.canonicalName)
        case .failure(let error): self = .failed(reason: "\(error)")
        }
    }
}

extension TLSAFact {
    init(_ result: Result<DNSAnswer<TLSARecord>, Error>) {
        switch result {
        case .success(let answer):
            self = .answer(records: answer.records.map {
                TLSAEntry(usage: $0.usage, selector: $0.selector, matchingType: $0.matchingType, data: $0.data, wellFormed: $0.isWellFormed)
            }, status: DNSSECState(answer))
        case .failure(let error): self = .failed(reason: "\(error)")
        }
    }
}

extension LocalPolicyFact {
    init(_ entry: PolicySettings.DomainLevel) {
        self.init(level: entry.level, reason: entry.reason, expires: entry.expires, expiresText: entry.expiresText)
    }
}

extension TLSPeerAuthentication {
    /// The TLS layer's form of a planner demand's authentication.
    init(_ authentication: PeerAuthentication, requirement: ClientSession.TLSRequirement) {
        switch authentication {
        case .none: self = requirement == .required ? .encryptOnly : .opportunistic
        case .webPKI(let name): self = .webPKI(hostName: name)
        case .dane(let base, let names, let records):
            self = .dane(tlsaBaseDomain: base, hostNames: names, records: records.map {
                TLSARecordData(usage: $0.usage, selector: $0.selector, matchingType: $0.matchingType, data: $0.data)
            })
        }
    }
}

