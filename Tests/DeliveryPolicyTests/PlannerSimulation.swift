import DeliveryPolicy
import MTASTSCore
import SMTPCore

/// The inputs of one simulated delivery: one domain, one MX host `mx.example.net` with one
/// address, as the dimensions of the exhaustive test.
struct Inputs: Sendable, CustomStringConvertible {
    enum Local: String, CaseIterable { case absent, none, may, encrypt, dane, daneOnly = "dane-only", verify, expired }
    enum Status: String, CaseIterable { case secure, insecure, bogus, failed }
    enum TLSAContent: String, CaseIterable { case daneEE = "dane-ee", daneTA = "dane-ta", onlyUnusable = "only-unusable", malformedBesideGood = "malformed+good", none }
    enum STS: String, CaseIterable {
        case none, enforceMatching = "enforce", enforceNotMatching = "enforce-not-listed", testingMatching = "testing"
        case testingNotMatching = "testing-not-listed", cachedAfterFailedRefresh = "cached-after-failed-refresh", temporaryFailure = "temporary-failure"
    }
    enum Memory: String, CaseIterable {
        case off, reportDANE = "report-dane", enforceTLS = "enforce-tls", enforceMTASTS = "enforce-mta-sts", enforceDANE = "enforce-dane"
        case graceOver = "enforce-dane-grace-over"
        /// The shared policy state store cannot be read (`PolicyStateFact.unavailable`).
        case storeUnavailable = "store-unavailable"
    }
    /// What the MX (or the attacker at its address) does.
    enum MX: String, CaseIterable {
        case verified, unverified, stripped, refused454 = "refused-454", handshakeFailure = "handshake-failure"
        case bytesAfter220 = "bytes-after-220", wrongName = "wrong-name", tls10Only = "tls1.0-only"
    }

    var local: Local
    var mxStatus: Status
    var addressStatus: Status
    var tlsaStatus: Status
    var tlsa: TLSAContent
    var sts: STS
    var memory: Memory
    var mx: MX
    /// Relayed mail, or a DSN tlsrelay wrote (with a DSN relay configured).
    var message: MessageKind = .relayed
    /// What the sender asked (RFC 8689).
    enum Sender: String, CaseIterable {
        case standard
        case requireTLS = "requiretls"
        /// REQUIRETLS and the header `TLS-Required: No` (the header is ignored, RFC 8689 §5).
        case requireTLSWithHeader = "requiretls+tls-required-no"
        case tlsRequiredNo = "tls-required-no"
        /// `TLS-Required: No` with `policy.honor_tls_required_no = false`.
        case tlsRequiredNoNotHonoured = "tls-required-no-not-honoured"

        var request: SenderRequest {
            switch self {
            case .standard: return .none
            case .requireTLS: return SenderRequest(requireTLS: true)
            case .requireTLSWithHeader: return SenderRequest(requireTLS: true, tlsRequiredNo: true)
            case .tlsRequiredNo, .tlsRequiredNoNotHonoured: return SenderRequest(tlsRequiredNo: true)
            }
        }
        var isRequireTLS: Bool { self == .requireTLS || self == .requireTLSWithHeader }
    }
    var sender: Sender = .standard
    /// The MX announces REQUIRETLS in its TLS session (RFC 8689 §2).
    var announcesRequireTLS = true

    var description: String {
        "message=\(message.rawValue) sender=\(sender.rawValue) next-hop-requiretls=\(announcesRequireTLS) local=\(local.rawValue) mx=\(mxStatus.rawValue) a=\(addressStatus.rawValue) tlsa=\(tlsaStatus.rawValue)/\(tlsa.rawValue) sts=\(sts.rawValue) memory=\(memory.rawValue) mx-does=\(mx.rawValue)"
    }

    static let domain = "example.net"
    static let host = "mx.example.net"
    static let address = "192.0.2.25"
    static let now = 1_000_000.0
    static let grace = 86400.0
    static let dsnRelay = (address: "127.0.0.1", port: 10025)

    static let leafRecord = TLSAEntry(usage: 3, selector: 1, matchingType: 1, data: Array(repeating: 0xAB, count: 32))
    static let caRecord = TLSAEntry(usage: 2, selector: 1, matchingType: 1, data: Array(repeating: 0xCD, count: 32))

    var tlsaRecords: [TLSAEntry] {
        switch tlsa {
        case .daneEE: return [Self.leafRecord]
        case .daneTA: return [Self.caRecord]
        case .onlyUnusable: return [TLSAEntry(usage: 1, selector: 1, matchingType: 1, data: Array(repeating: 1, count: 32)),
                                    TLSAEntry(usage: 3, selector: 1, matchingType: 1, data: [1, 2, 3])]
        case .malformedBesideGood: return [TLSAEntry(usage: 0, selector: 0, matchingType: 0, data: [3, 1], wellFormed: false), Self.leafRecord]
        case .none: return []
        }
    }

    var stsPolicy: STSPolicy? {
        switch sts {
        case .none, .temporaryFailure: return nil
        case .enforceMatching, .cachedAfterFailedRefresh: return STSPolicy(mode: .enforce, maxAge: 86400, mx: ["*.example.net"])
        case .enforceNotMatching: return STSPolicy(mode: .enforce, maxAge: 86400, mx: ["mx.elsewhere.example"])
        case .testingMatching: return STSPolicy(mode: .testing, maxAge: 86400, mx: [Self.host])
        case .testingNotMatching: return STSPolicy(mode: .testing, maxAge: 86400, mx: ["mx.elsewhere.example"])
        }
    }

    var stsFact: STSFact {
        switch sts {
        case .temporaryFailure: return STSFact(policy: nil, temporaryFailure: "_mta-sts.example.net TXT lookup failed: SERVFAIL")
        case .cachedAfterFailedRefresh:
            return STSFact(policy: stsPolicy, fromCache: true, problem: .init(resultType: .stsPolicyFetchError, reason: "fetch failed"))
        default: return STSFact(policy: stsPolicy)
        }
    }

    var localFact: LocalPolicyFact? {
        switch local {
        case .absent: return nil
        case .expired: return LocalPolicyFact(level: .none, reason: "old", expires: Self.now - 1, expiresText: "yesterday")
        default: return LocalPolicyFact(level: LocalLevel(rawValue: local.rawValue)!, reason: "test")
        }
    }

    var memoryFact: MemoryFact? {
        switch memory {
        case .off: return nil
        case .reportDANE: return MemoryFact(strongest: .dane)
        case .enforceTLS: return MemoryFact(strongest: .tls)
        case .enforceMTASTS: return MemoryFact(strongest: .mtaSTS)
        case .enforceDANE: return MemoryFact(strongest: .dane, firstRefused: Self.now - 10)
        case .graceOver: return MemoryFact(strongest: .dane, firstRefused: Self.now - Self.grace - 1)
        case .storeUnavailable: return nil
        }
    }

    var stateFact: PolicyStateFact {
        memory == .storeUnavailable ? .unavailable(reason: "connection to the database refused") : .available
    }

    var memoryMode: MemoryMode {
        switch memory {
        case .off: return .off
        case .reportDANE: return .report
        default: return .enforce
        }
    }

    static func dnssec(_ status: Status) -> DNSSECState {
        switch status {
        case .secure, .failed: return .secure
        case .insecure: return .insecure
        case .bogus: return .bogus(why: "signature expired")
        }
    }

    /// The message dimensions: a DSN (no sender request), and relayed mail with each sender
    /// request; whether the next hop announces REQUIRETLS only matters to REQUIRETLS messages.
    static let messageVariants: [(MessageKind, Sender, Bool)] = [(.deliveryStatusNotification, .standard, true), (.tlsReport, .tlsRequiredNo, true)]
        + Sender.allCases.flatMap { sender in sender.isRequireTLS ? [(MessageKind.relayed, sender, true), (.relayed, sender, false)] : [(.relayed, sender, true)] }

    /// All combinations, in a fixed order.
    static var all: [Inputs] { messageVariants.indices.flatMap(product) }

    /// The combinations of one message variant (an index into `messageVariants`).
    static func product(_ variant: Int) -> [Inputs] {
        let (message, sender, announces) = messageVariants[variant]
        var result: [Inputs] = []
        result.reserveCapacity(860_160)
        for local in Local.allCases {
            for mxStatus in Status.allCases {
                for addressStatus in Status.allCases {
                    for tlsaStatus in Status.allCases {
                        for tlsa in TLSAContent.allCases {
                            for sts in STS.allCases {
                                for memory in Memory.allCases {
                                    for mx in MX.allCases {
                                        result.append(Inputs(local: local, mxStatus: mxStatus, addressStatus: addressStatus, tlsaStatus: tlsaStatus,
                                                             tlsa: tlsa, sts: sts, memory: memory, mx: mx, message: message,
                                                             sender: sender, announcesRequireTLS: announces))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        return result
    }
}

/// What happened in one simulated delivery.
struct Transcript: Sendable {
    var actions: [PlannerAction] = []
    var effects: [PlannerEffect] = []
    var attempts: [(attempt: PlannedAttempt, result: AttemptResult)] = []
    var outcome: RecipientOutcome?

    var alerts: [PolicyAlert] { effects.compactMap { if case .alert(let a) = $0 { return a } else { return nil } } }
    var sessions: [TLSSessionResult] { effects.compactMap { if case .tlsSession(let s) = $0 { return s } else { return nil } } }
    var remembered: [(AchievedSecurity, Bool)] {
        effects.compactMap { if case .remember(let s, let accept) = $0 { return (s, accept) } else { return nil } }
    }
    var notedRefusal: Bool { effects.contains(.noteRefusedDowngrade) }
    /// The security the delivered message got, nil when not delivered.
    var deliveredWith: AchievedSecurity? {
        guard outcome?.kind == .delivered, let last = attempts.last else { return nil }
        return DeliveryPlanner.achieved(demand: last.attempt.demand, tls: last.result.tls)
    }
}

/// The simulated MX: what a connection under `demand` comes to (mirrors `ClientSession`:
/// opportunistic STARTTLS refused or not offered goes on in clear; a REQUIRETLS attempt stops
/// after the TLS EHLO when the server does not announce REQUIRETLS).
func simulate(_ mx: Inputs.MX, demand: TLSDemand, recipients: [Int], records: [TLSAEntry], requireTLS: Bool = false,
              announcesRequireTLS: Bool = true) -> AttemptResult {
    let result = simulateTLS(mx, demand: demand, recipients: recipients, records: records)
    guard requireTLS, result.failure == nil else { return result }
    guard result.tls != nil, announcesRequireTLS else {
        return AttemptResult(failure: .requireTLSNotOffered, tls: result.tls, offeredSTARTTLS: result.offeredSTARTTLS)
    }
    return result
}

func simulateTLS(_ mx: Inputs.MX, demand: TLSDemand, recipients: [Int], records: [TLSAEntry]) -> AttemptResult {
    let delivered = Dictionary(uniqueKeysWithValues: recipients.map { ($0, ClientSession.RecipientResult.delivered(Reply(250, .ok, ["ok"]))) })
    let offered = mx != .stripped
    if demand.requirement == .none { return AttemptResult(recipients: delivered, offeredSTARTTLS: offered) }
    let required = demand.requirement == .required
    switch mx {
    case .stripped:
        return required ? AttemptResult(failure: .starttlsNotOffered) : AttemptResult(recipients: delivered)
    case .refused454:
        return required ? AttemptResult(failure: .starttlsRefused(Reply(454, EnhancedStatusCode(4, 7, 0), ["TLS not available"])), offeredSTARTTLS: true)
            : AttemptResult(recipients: delivered, offeredSTARTTLS: true)
    case .bytesAfter220:
        return AttemptResult(failure: .plaintextInjection, offeredSTARTTLS: true)
    case .handshakeFailure, .tls10Only:
        return AttemptResult(failure: .tlsFailed("handshake failure"), offeredSTARTTLS: true)
    case .verified, .unverified, .wrongName:
        var verifyFailure: Int?
        var daneMatched = false
        switch demand.authentication {
        case .none: break
        case .webPKI:
            if mx == .unverified { verifyFailure = 18 } else if mx == .wrongName { verifyFailure = 62 }
        case .dane(_, _, let usable):
            // The verified MX's chain matches the real records (leaf for DANE-EE, CA for DANE-TA);
            // a wrong-name leaf still matches DANE-EE (no name check) but fails DANE-TA's name check.
            let ee = usable.contains(Inputs.leafRecord), ta = usable.contains(Inputs.caRecord)
            switch mx {
            case .verified: daneMatched = ee || ta
            case .wrongName: daneMatched = ee; if !ee { verifyFailure = ta ? 62 : 65 }
            default: verifyFailure = 65
            }
            if mx == .verified && !daneMatched { verifyFailure = 65 }
        }
        if let verifyFailure {
            return AttemptResult(failure: .tlsFailed("verify error \(verifyFailure)"), verifyResult: verifyFailure, offeredSTARTTLS: true)
        }
        let verified: Bool
        switch demand.authentication {
        case .none: verified = false
        case .webPKI: verified = true
        case .dane: verified = daneMatched
        }
        return AttemptResult(recipients: delivered, tls: .init(verified: verified, daneMatched: daneMatched),
                             offeredSTARTTLS: true)
    }
}

/// Runs one delivery of one recipient through the planner, answering every action from `inputs`.
func run(_ inputs: Inputs, settings overrides: PlannerSettings? = nil, probe: Bool = false) -> Transcript {
    let settings = overrides ?? PlannerSettings(port: 25, daneForInsecureMX: true, mtaSTS: true, memoryMode: inputs.memoryMode,
                                                downgradeGrace: Inputs.grace, dsnRelay: Inputs.dsnRelay,
                                                honorTLSRequiredNo: inputs.sender != .tlsRequiredNoNotHonoured)
    var planner = DeliveryPlanner(domain: Inputs.domain, recipients: probe ? [] : [0], settings: settings, local: inputs.localFact,
                                  memory: inputs.memoryFact, now: Inputs.now, probe: probe, message: inputs.message,
                                  sender: inputs.sender.request, state: inputs.stateFact)
    var transcript = Transcript()
    var step = planner.start()
    for _ in 0..<64 {
        transcript.effects += step.effects
        transcript.actions.append(step.action)
        switch step.action {
        case .lookupMX:
            switch inputs.mxStatus {
            case .failed: step = planner.mxResolved(.failed(reason: "SERVFAIL"))
            case .bogus: step = planner.mxResolved(.bogus(why: "signature expired"))
            case .secure, .insecure: step = planner.mxResolved(.hosts([Inputs.host], secure: inputs.mxStatus == .secure, implicit: false))
            }
        case .discoverSTS:
            step = planner.stsDiscovered(inputs.stsFact)
        case .lookupAddresses:
            let ipv4: AddressLookup = inputs.addressStatus == .failed ? .failed(reason: "SERVFAIL")
                : .answer(records: [Inputs.address], status: Inputs.dnssec(inputs.addressStatus), canonicalName: Inputs.host)
            step = planner.addressesResolved(AddressFact(ipv4: ipv4, ipv6: .answer(records: [], status: .secure, canonicalName: Inputs.host)))
        case .lookupTLSA:
            if inputs.tlsaStatus == .failed {
                step = planner.tlsaResolved(.failed(reason: "SERVFAIL"))
            } else {
                step = planner.tlsaResolved(.answer(records: inputs.tlsaStatus == .bogus || !inputs.tlsaRecords.isEmpty ? inputs.tlsaRecords : [],
                                                    status: Inputs.dnssec(inputs.tlsaStatus)))
            }
        case .connect(let attempt):
            let result = simulate(inputs.mx, demand: attempt.demand, recipients: attempt.recipients, records: inputs.tlsaRecords,
                                  requireTLS: attempt.requireTLS, announcesRequireTLS: inputs.announcesRequireTLS)
            transcript.attempts.append((attempt, result))
            step = planner.attemptFinished(attempt, result)
        case .finish(let outcomes, _, let lastFailure):
            transcript.outcome = probe ? lastFailure : outcomes[0]
            return transcript
        }
    }
    return transcript
}
