import RelayDNS
import RelayTLS
import SMTPCore

/// The TLS policy for connections to one MX host, decided from DNSSEC-validated DNS data
/// (RFC 7672 §2.2) before any connection is made.
public struct HostTLSPolicy: Sendable, Equatable {
    /// Where the policy comes from, for logs and alerts.
    public enum Source: String, Sendable {
        /// No policy: opportunistic STARTTLS (RFC 7435).
        case none
        /// DANE TLSA records (RFC 7672).
        case dane
        /// An MTA-STS policy (RFC 8461), enforce or testing.
        case mtaSTS = "mta-sts"
        /// A local `[[policy.domain]]` level.
        case local
        /// Downgrade memory: TLS was achieved before, so it is required now.
        case memory = "tofu"
    }

    public var source: Source
    public var requirement: ClientSession.TLSRequirement
    public var authentication: TLSPeerAuthentication
    /// TLSA base domain (the name whose `_25._tcp` TLSA records apply); SNI under DANE.
    public var tlsaBaseDomain: String?
    /// The usable TLSA records, for logs.
    public var tlsaRecords: [TLSARecord] = []

    public static let opportunistic = HostTLSPolicy(source: .none, requirement: .opportunistic, authentication: .opportunistic)

    /// MTA-STS: STARTTLS required, TLS ≥ 1.2, a WebPKI chain whose certificate names the MX host
    /// (RFC 8461 §4.2, RFC 6125).
    public static func mtaSTS(host: String) -> HostTLSPolicy {
        HostTLSPolicy(source: .mtaSTS, requirement: .required, authentication: .webPKI(hostName: host))
    }

    /// DANE applies: STARTTLS required and the certificate authenticated by the usable records;
    /// with only unusable records (usage 0/1, unknown selector or matching type), STARTTLS is
    /// still required but nothing is authenticated (RFC 7672 §3.1.3).
    public static func dane(baseDomain: String, hostNames: [String], records: [TLSARecord]) -> HostTLSPolicy {
        let usable = records.filter(HostTLSPolicy.isUsable)
        if usable.isEmpty {
            return HostTLSPolicy(source: .dane, requirement: .required, authentication: .encryptOnly, tlsaBaseDomain: baseDomain)
        }
        let data = usable.map { TLSARecordData(usage: $0.usage, selector: $0.selector, matchingType: $0.matchingType, data: $0.data) }
        return HostTLSPolicy(source: .dane, requirement: .required,
                             authentication: .dane(tlsaBaseDomain: baseDomain, hostNames: hostNames, records: data),
                             tlsaBaseDomain: baseDomain, tlsaRecords: usable)
    }

    /// A TLSA record SMTP may use: DANE-TA(2) or DANE-EE(3), selector 0/1, matching type 0/1/2
    /// with the right digest length (RFC 7672 §3.1.3, RFC 6698 §2.1).
    public static func isUsable(_ record: TLSARecord) -> Bool {
        guard record.usage == 2 || record.usage == 3, record.selector <= 1 else { return false }
        switch record.matchingType {
        case 0: return !record.data.isEmpty
        case 1: return record.data.count == 32
        case 2: return record.data.count == 64
        default: return false
        }
    }
}

/// What to do about one MX host before connecting.
public enum HostPlan: Sendable, Equatable {
    /// Connect to these addresses under this policy.
    case connect(addresses: [String], policy: HostTLSPolicy)
    /// The host cannot be used; `outcome` stands if no other host succeeds, `alert` says why
    /// (nil for ordinary failures such as a host without addresses).
    case skip(outcome: RecipientOutcome, alert: PolicyAlert?)
}

/// A security event to report loudly (journald, RFC 8460 result types).
public struct PolicyAlert: Sendable, Equatable {
    /// RFC 8460 §4.3 result type, e.g. `starttls-not-supported`, `dnssec-invalid`, `tlsa-invalid`.
    public var resultType: String
    public var domain: String
    public var mxHost: String?
    public var address: String?
    public var policySource: String
    public var reason: String

    public init(resultType: String, domain: String, mxHost: String?, address: String?, policySource: String, reason: String) {
        self.resultType = resultType
        self.domain = domain
        self.mxHost = mxHost
        self.address = address
        self.policySource = policySource
        self.reason = reason
    }
}

/// Decides each MX host's plan from the validated lookups (RFC 7672 §2.1, §2.2).
public enum HostPolicyRules {
    /// - Parameters:
    ///   - domain: the destination domain (for alerts).
    ///   - host: the MX host name.
    ///   - mxSecure: true when the MX RRset (or the implicit-MX address lookup) was secure.
    ///   - daneForInsecureMX: hold a secure host to its TLSA records even when the MX RRset is
    ///     insecure (Postfix ≥ 3.6 behaviour; RFC 7672 §2.2.1 leaves it to the client).
    ///   - addresses: the A and AAAA answers for the host.
    ///   - tlsa: the TLSA lookups to use, in order (expanded CNAME target first, then the original
    ///     name, RFC 7672 §2.2.3); each a result or the lookup error. Called only when needed.
    public static func plan(domain: String, host: String, mxSecure: Bool, daneForInsecureMX: Bool,
                            addresses: (ipv4: DNSAnswer<String>, ipv6: DNSAnswer<String>),
                            tlsa: () async -> [(base: String, result: Result<DNSAnswer<TLSARecord>, Error>)]) async -> HostPlan {
        if addresses.ipv4.status == .bogus || addresses.ipv6.status == .bogus {
            let why = addresses.ipv4.whyBogus ?? addresses.ipv6.whyBogus ?? "no reason given"
            let reason = "address records of MX host \(host) failed DNSSEC validation (bogus: \(why))"
            return .skip(outcome: .deferred("4.7.5", reason),
                         alert: PolicyAlert(resultType: "dnssec-invalid", domain: domain, mxHost: host, address: nil, policySource: "dane", reason: reason))
        }
        let list = addresses.ipv4.records + addresses.ipv6.records
        if list.isEmpty {
            return .skip(outcome: .deferred("4.4.4", "MX host \(host) has no address records"), alert: nil)
        }
        // RFC 7672 §2.2.3: TLSA only for hosts whose address records are secure.
        let addressesSecure = (addresses.ipv4.records.isEmpty || addresses.ipv4.status == .secure)
            && (addresses.ipv6.records.isEmpty || addresses.ipv6.status == .secure)
            && (addresses.ipv4.status == .secure || addresses.ipv6.status == .secure)
        guard addressesSecure, mxSecure || daneForInsecureMX else {
            return .connect(addresses: list, policy: .opportunistic)
        }
        for (base, result) in await tlsa() {
            switch result {
            case .failure(let error):
                // RFC 7672 §2.1.1: a failed TLSA lookup for a secure host is not a denial.
                let reason = "TLSA lookup for _25._tcp.\(base) failed: \(error)"
                return .skip(outcome: .deferred("4.7.5", reason),
                             alert: PolicyAlert(resultType: "tlsa-invalid", domain: domain, mxHost: host, address: nil, policySource: "dane", reason: reason))
            case .success(let answer):
                if answer.status == .bogus {
                    let reason = "TLSA records at _25._tcp.\(base) failed DNSSEC validation (bogus: \(answer.whyBogus ?? "no reason given"))"
                    return .skip(outcome: .deferred("4.7.5", reason),
                                 alert: PolicyAlert(resultType: "dnssec-invalid", domain: domain, mxHost: host, address: nil, policySource: "dane", reason: reason))
                }
                guard answer.status == .secure, !answer.records.isEmpty else {
                    // Secure denial or an insecure TLSA answer: no DANE from this name.
                    continue
                }
                let names = base == host ? [host] : [base, host]
                return .connect(addresses: list, policy: .dane(baseDomain: base, hostNames: names, records: answer.records))
            }
        }
        return .connect(addresses: list, policy: .opportunistic)
    }

    /// The RFC 8460 result type for a failed connection under a required policy.
    public static func resultType(for failure: ClientSession.SessionFailure, tlsError: TLSHandshakeError?) -> String? {
        switch failure {
        case .starttlsNotOffered, .starttlsRefused: return "starttls-not-supported"
        case .plaintextInjection: return "validation-failure"
        case .tlsFailed:
            if case .authenticationFailed(let code, _)? = tlsError {
                switch code {
                case 62: return "certificate-host-mismatch"
                case 65: return "tlsa-invalid"
                case 10: return "certificate-expired"
                case 18, 19, 20, 21, 2: return "certificate-not-trusted"
                default: return "validation-failure"
                }
            }
            return "validation-failure"
        default: return nil
        }
    }
}
