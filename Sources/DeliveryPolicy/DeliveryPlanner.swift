import MTASTSCore
import SMTPCore

/// The settings the planner applies.
public struct PlannerSettings: Sendable, Equatable {
    public static func == (lhs: PlannerSettings, rhs: PlannerSettings) -> Bool {
        lhs.port == rhs.port && lhs.daneForInsecureMX == rhs.daneForInsecureMX && lhs.mtaSTS == rhs.mtaSTS && lhs.memoryMode == rhs.memoryMode
            && lhs.downgradeGrace == rhs.downgradeGrace && lhs.honorTLSRequiredNo == rhs.honorTLSRequiredNo
            && lhs.tlsrptSkipReusedHandshakes == rhs.tlsrptSkipReusedHandshakes && lhs.dsnRelay?.address == rhs.dsnRelay?.address && lhs.dsnRelay?.port == rhs.dsnRelay?.port
    }

    /// MX port, for `host[address]:port` in reasons (RFC 5321 §4.5.4.2: 25).
    public var port: Int
    /// Hold a DNSSEC-secure MX host to its TLSA records even when the MX RRset is insecure
    /// (RFC 7672 §2.2.1 leaves it to the client; Postfix ≥ 3.6 does).
    public var daneForInsecureMX: Bool
    /// Whether MTA-STS is discovered at all.
    public var mtaSTS: Bool
    public var memoryMode: MemoryMode
    /// Seconds a downgrade is refused under `memoryMode == .enforce`, from the first refusal.
    public var downgradeGrace: Double
    /// The MTA that takes the DSNs tlsrelay writes (`delivery.dsn_relay`, usually the upstream
    /// Postfix): an IP address and port; nil sends them to the sender domain's MX.
    public var dsnRelay: (address: String, port: Int)?

    /// Honour `TLS-Required: No` (RFC 8689 §5; `policy.honor_tls_required_no`).
    public var honorTLSRequiredNo: Bool
    /// A reused connection's session is not counted again for TLS reports (Postfix's
    /// `smtp_tlsrpt_skip_reused_handshakes`). Default true.
    public var tlsrptSkipReusedHandshakes = true

    public init(port: Int = 25, daneForInsecureMX: Bool = true, mtaSTS: Bool = true, memoryMode: MemoryMode = .report,
                downgradeGrace: Double = 86400, dsnRelay: (address: String, port: Int)? = nil, honorTLSRequiredNo: Bool = true,
                tlsrptSkipReusedHandshakes: Bool = true) {
        self.honorTLSRequiredNo = honorTLSRequiredNo
        self.tlsrptSkipReusedHandshakes = tlsrptSkipReusedHandshakes
        self.dsnRelay = dsnRelay
        self.port = port
        self.daneForInsecureMX = daneForInsecureMX
        self.mtaSTS = mtaSTS
        self.memoryMode = memoryMode
        self.downgradeGrace = downgradeGrace
    }
}

/// One connection attempt the planner asks for.
public struct PlannedAttempt: Sendable, Equatable {
    public enum Kind: String, Sendable {
        /// The host's demand.
        case first
        /// After a reported MTA-STS testing failure (RFC 8461 §5).
        case testingFallback = "testing-fallback"
        /// In clear, after a failed opportunistic handshake (RFC 7435, as Postfix's `may`).
        case clearRetry = "clear-retry"
    }

    public var host: String
    public var address: String
    /// The TCP port (the MX port, or the DSN relay's).
    public var port: Int
    public var demand: TLSDemand
    public var kind: Kind
    /// The recipient indexes to send to.
    public var recipients: [Int]
    /// The highest floor of the host: `demand.guaranteed` is never below it.
    public var floor: AchievedSecurity
    /// `host[address]:port`.
    public var relay: String
    /// REQUIRETLS (RFC 8689 §4.2.1): the next hop must announce REQUIRETLS in its TLS session and
    /// MAIL FROM carries it; `demand` is then authenticated (DANE or WebPKI).
    public var requireTLS = false
}

/// What the driver must do next.
public enum PlannerAction: Sendable, Equatable {
    case lookupMX(domain: String)
    case discoverSTS(domain: String)
    case lookupAddresses(host: String)
    /// `_<port>._tcp.<base>` TLSA.
    case lookupTLSA(host: String, base: String)
    case connect(PlannedAttempt)
    /// Done: an outcome for every recipient; in probe mode `deliverable` says whether some
    /// attempt met its policy.
    case finish(outcomes: [Int: RecipientOutcome], deliverable: Bool, lastFailure: RecipientOutcome?)
}

/// Side effects for the driver to carry out along with the next action.
public enum PlannerEffect: Sendable, Equatable {
    public enum LogLevel: Sendable { case info, notice, warning }
    case log(LogLevel, String)
    case alert(PolicyAlert)
    /// The decision for one MX host (for logs and `check`).
    case hostDecided(host: String, HostDecision)
    /// Update downgrade memory after a delivery that achieved `security`; `acceptDowngrade`
    /// once the grace window has passed.
    case remember(security: AchievedSecurity, acceptDowngrade: Bool)
    /// A weaker delivery was refused under `enforce`: start the grace window if not started.
    case noteRefusedDowngrade
    /// The MTA-STS decision the planner applies (for `check`; delivery logs it as text).
    case mtaSTS(STSFact)
    /// One TLS negotiation or failed policy lookup to count for the domain's daily TLS report
    /// (RFC 8460 §4). Never for a TLS report itself, a DSN, a `TLS-Required: No` message, a
    /// probe, a fallback after a counted failure, or a reused connection (with
    /// `tlsrptSkipReusedHandshakes`).
    case tlsSession(TLSSessionResult)
}

/// What kind of message a delivery carries.
public enum MessageKind: String, Sendable, CaseIterable {
    /// Mail received over SMTP, for its recipients' domains.
    case relayed
    /// A DSN tlsrelay wrote (a bounce): to `dsnRelay` when one is set.
    case deliveryStatusNotification = "dsn"
    /// A TLS report tlsrelay wrote (RFC 8460 §5.3, sent with `TLS-Required: No`): its own
    /// delivery is never counted in a report (no report loops).
    case tlsReport = "tls-report"
}

/// The planner's answer to one event.
public struct PlannerStep: Sendable, Equatable {
    public var effects: [PlannerEffect]
    public var action: PlannerAction
}

/// Every TLS decision of one delivery to one destination domain, as a state machine without I/O
/// (in the style of postgres-nio's): the driver feeds it facts (the MX answer, MTA-STS, each
/// host's address and TLSA answers, the result of each attempt) and carries out the actions it
/// answers with. `tlsrelayctl check` drives it in probe mode.
///
/// Rules (README "How a message is delivered"): RFC 5321 §5.1 for MX handling, RFC 7505 null MX,
/// RFC 7672 for DANE, RFC 8461 for MTA-STS, RFC 7435 for opportunistic TLS; the floor rule in
/// `HostPolicy.decide`.
public struct DeliveryPlanner: Sendable {
    public let domain: String
    public let settings: PlannerSettings
    /// Probe mode (`check`): every address is tried, nothing is sent, a success does not end it.
    public let probe: Bool
    let now: Double
    let local: LocalLevel?
    let localFact: LocalPolicyFact?
    let memory: MemoryFact?
    /// The policy state store could not be read (`PolicyStateFact.unavailable`): its reason.
    let stateUnavailable: String?
    let memoryFloor: AchievedSecurity?
    let graceOver: Bool
    /// The DSN relay this message goes to instead of MX hosts (a DSN, with `dsnRelay` set).
    let route: (address: String, port: Int)?
    /// The sender's request as applied (RFC 8689).
    public let sender: SenderTLSMode
    let request: SenderRequest
    let message: MessageKind
    /// Session results are counted for TLS reports (RFC 8460): not for a probe, a DSN, a TLS
    /// report or a message whose sender waived the recipient policies.
    var countsSessions: Bool { !probe && message == .relayed && sender != .policiesWaived }

    enum State: Sendable {
        case idle
        case mx
        case sts
        case addresses
        case tlsa(bases: [String], addresses: [String])
        case attempting(HostConnectPlan, addressIndex: Int)
        case finished
    }

    var state = State.idle
    var hosts: [String] = []
    var hostIndex = 0
    var mxSecure = false
    var sts: STSPolicy?
    var remaining: [Int]
    var outcomes: [Int: RecipientOutcome] = [:]
    /// The last temporary failure: the outcome when every host was tried.
    var lastFailure: RecipientOutcome { didSet { temporaryFailureSeen = true } }
    var temporaryFailureSeen = false
    /// The last REQUIRETLS refusal (a host that cannot carry it): the outcome when every host
    /// was tried and none failed temporarily (RFC 8689 §4.2.1).
    var requireTLSRefusal: RecipientOutcome?
    var acceptable = false

    /// - Parameters:
    ///   - domain: the destination domain, lowercased, no trailing dot.
    ///   - recipients: the recipient indexes to deliver (empty in probe mode).
    ///   - local: the local level entry for the domain, expired or not.
    ///   - memory: the domain's downgrade memory, if any.
    ///   - state: whether the policy state store (memory, MTA-STS cache) could be read.
    ///   - now: seconds since the epoch.
    ///   - message: relayed mail, or a DSN tlsrelay wrote.
    ///   - sender: REQUIRETLS and `TLS-Required: No` of the message (RFC 8689); a DSN tlsrelay
    ///     wrote has none.
    public init(domain: String, recipients: [Int], settings: PlannerSettings, local: LocalPolicyFact?, memory: MemoryFact?,
                now: Double, probe: Bool = false, message: MessageKind = .relayed, sender: SenderRequest = .none,
                state: PolicyStateFact = .available) {
        self.domain = domain
        if case .unavailable(let reason) = state { stateUnavailable = reason } else { stateUnavailable = nil }
        self.message = message
        let request = message == .deliveryStatusNotification ? SenderRequest.none : sender
        self.request = request
        self.sender = SenderTLSMode(request, honorTLSRequiredNo: settings.honorTLSRequiredNo)
        // A DSN goes to the DSN relay when one is set: no recipient policy applies to it.
        let route = message == .deliveryStatusNotification ? settings.dsnRelay : nil
        self.route = route
        let local = route == nil ? local : nil
        let memory = route == nil ? memory : nil
        self.settings = settings
        self.probe = probe
        self.now = now
        self.remaining = recipients
        self.localFact = local
        if let local, local.expires.map({ now >= $0 }) != true { self.local = local.level } else { self.local = nil }
        self.lastFailure = .deferred(.noAnswerFromHost, "no MX host of \(domain) could be reached")
        if self.local == nil, self.sender != .policiesWaived, settings.memoryMode != .off, let memory, memory.strongest > .none {
            self.memory = memory
            let over = memory.firstRefused.map { now - $0 >= settings.downgradeGrace } ?? false
            self.graceOver = over
            self.memoryFloor = settings.memoryMode == .enforce && !over ? memory.strongest : nil
        } else {
            self.memory = nil
            self.graceOver = false
            self.memoryFloor = nil
        }
    }

    /// The first action.
    public mutating func start() -> PlannerStep {
        var effects: [PlannerEffect] = []
        if let entry = localFact {
            if local == nil {
                effects.append(.log(.warning, "local policy level \(entry.level.rawValue) for \(domain) expired on \(entry.expiresText ?? "?") and no longer applies\(entry.reason.map { " (it was: \($0))" } ?? "")"))
            } else {
                effects.append(.log(.notice, "local policy level \(entry.level.rawValue) for \(domain) overrides discovered policy\(entry.reason.map { ": \($0)" } ?? "")\(entry.expiresText.map { " (until \($0))" } ?? "")"))
            }
        }
        if let route {
            // RFC 3461 §6.2: the DSN goes back the way the mail came, to the MTA that knows the
            // sender; it is never held to the recipient domain's TLS policy.
            hosts = [route.address]
            let plan = HostConnectPlan(host: route.address, addresses: [route.address], demand: .opportunistic, testingFallback: nil,
                                       floor: .none, floors: [], source: .none, floorSource: .none, rule: .dsnRelay,
                                       dane: .notLooked, alerts: [], policyNames: [:])
            effects.append(.log(.info, "DSN to \(domain) goes to the DSN relay [\(route.address)]:\(route.port)"))
            effects.append(.hostDecided(host: route.address, .connect(plan)))
            return connect(effects, plan: plan, addressIndex: 0, demand: plan.demand, kind: .first)
        }
        effects += senderEffects()
        // Policy state unreadable (the shared store is down): the remembered level and the cached
        // MTA-STS policy are unknown, so nothing may be sent as if there were none — deferred like a
        // failed DNS lookup. Not when no state applies: a local level replaces it, `TLS-Required:
        // No` sets it aside, and with memory off and MTA-STS off none is read.
        if let reason = stateUnavailable, local == nil, sender != .policiesWaived, settings.memoryMode != .off || settings.mtaSTS {
            return finish(effects, all: .deferred(.directoryServerFailure, "the policy state of \(domain) (downgrade memory, MTA-STS policy) cannot be read: \(reason)"))
        }
        if let reason = memory?.unreadable {
            effects.append(.log(.warning, "the downgrade memory of \(domain) is unreadable (\(reason)); it is treated as dane until the file is mended or removed"))
        }
        guard domain.utf8.allSatisfy({ $0 < 0x80 }) else {
            return finish(effects, all: .deferred(.directoryServerFailure, "internationalized domain \(domain) needs IDNA conversion, which this version does not do"))
        }
        state = .mx
        return PlannerStep(effects: effects, action: .lookupMX(domain: domain))
    }

    /// The MX answer (RFC 5321 §5.1, RFC 7505 §3, RFC 7672 §2.2.1).
    public mutating func mxResolved(_ fact: MXFact) -> PlannerStep {
        precondition(isState(.mx), "mxResolved in \(state)")
        switch fact {
        case .failed(let reason):
            // A temporary lookup failure is never "no MX".
            return finish([], all: .deferred(.directoryServerFailure, "MX lookup for \(domain) failed temporarily: \(reason)"))
        case .bogus(let why):
            let reason = "MX lookup for \(domain) failed DNSSEC validation (bogus: \(why ?? "no reason given"))"
            let alert = PolicyAlert(resultType: .dnssecInvalid, domain: domain, mxHost: nil, address: nil, policySource: .dane, reason: reason, enforced: true)
            return finish([.alert(alert)] + sessionResult(for: alert), all: .deferred(.cryptographicFailure, reason))
        case .nxdomain:
            return finish([], all: .bounced(.badDestinationSystem, "Host or domain name not found: \(domain) does not exist (NXDOMAIN)"))
        case .nullMX:
            return finish([], all: .bounced(.nullMX, "Recipient domain \(domain) accepts no mail (null MX, RFC 7505)"))
        case .hosts(let list, let secure, _):
            hosts = list
            mxSecure = secure
            if list.isEmpty { return finish([], all: lastFailure) }
            if settings.mtaSTS && local == nil {
                state = .sts
                return PlannerStep(effects: [], action: .discoverSTS(domain: domain))
            }
            return startHost([])
        }
    }

    /// The MTA-STS decision for the domain (RFC 8461 §3, §5.1).
    public mutating func stsDiscovered(_ fact: STSFact) -> PlannerStep {
        precondition(isState(.sts), "stsDiscovered in \(state)")
        var effects: [PlannerEffect] = [.mtaSTS(fact)]
        if sender == .policiesWaived {
            // RFC 8689 §5: no recipient policy; discovery only names what is set aside.
            if let policy = fact.policy, policy.mode != .none { sts = policy }
            return startHost(effects)
        }
        if let failure = fact.temporaryFailure {
            return finish(effects, all: .deferred(.directoryServerFailure, "MTA-STS discovery for \(domain) failed temporarily: \(failure)"))
        }
        if let problem = fact.problem {
            let alert = PolicyAlert(resultType: problem.resultType, domain: domain, mxHost: nil, address: nil, policySource: .mtaSTS,
                                    reason: problem.reason, enforced: false)
            effects.append(.alert(alert))
            effects += sessionResult(for: alert, sts: fact.policy)
        }
        if let policy = fact.policy, policy.mode != .none {
            sts = policy
            effects.append(.log(.info, "MTA-STS policy of \(domain)\(fact.fromCache ? " (cached)" : ""): mode \(policy.mode.rawValue), mx \(policy.mx.joined(separator: " "))"))
        }
        return startHost(effects)
    }

    /// The A and AAAA answers of the current host.
    public mutating func addressesResolved(_ fact: AddressFact) -> PlannerStep {
        precondition(isState(.addresses), "addressesResolved in \(state)")
        let host = hosts[hostIndex]
        let families = [fact.ipv4, fact.ipv6]
        var records: [String] = []
        var anyFailed: String?
        var secure = true
        var anySecure = false
        var canonical = host
        for family in families {
            switch family {
            case .failed(let reason): anyFailed = reason
            case .answer(let list, let status, let name):
                if case .bogus(let why) = status {
                    let reason = "address records of MX host \(host) failed DNSSEC validation (bogus: \(why ?? "no reason given"))"
                    return skipHost(host, .skip(rule: .addressBogus, outcome: .deferred(.cryptographicFailure, reason),
                                                alert: PolicyAlert(resultType: .dnssecInvalid, domain: domain, mxHost: host, address: nil,
                                                                   policySource: .dane, reason: reason, enforced: true),
                                                noteRefusedDowngrade: false))
                }
                guard !list.isEmpty else { continue }
                if records.isEmpty, !name.isEmpty { canonical = name }
                records += list
                if status == .secure { anySecure = true } else { secure = false }
            }
        }
        if records.isEmpty {
            if let anyFailed {
                return skipHost(host, .skip(rule: .addressLookupFailed, outcome: .deferred(.directoryServerFailure, "address lookup for \(host) failed: \(anyFailed)"),
                                            alert: nil, noteRefusedDowngrade: false))
            }
            return skipHost(host, .skip(rule: .noAddress, outcome: .deferred(.unableToRoute, "MX host \(host) has no address records"),
                                        alert: nil, noteRefusedDowngrade: false))
        }
        // RFC 7672 §2.2.3: TLSA only for hosts whose address records are secure; §2.2.1 for the MX RRset.
        let daneAllowed = local == nil || local == .dane || local == .daneOnly
        guard daneAllowed, secure, anySecure, mxSecure || settings.daneForInsecureMX else {
            return decide(host: host, addresses: records, dane: .notLooked)
        }
        var bases: [String] = []
        if canonical != host { bases.append(canonical) }
        bases.append(host)
        state = .tlsa(bases: bases, addresses: records)
        return PlannerStep(effects: [], action: .lookupTLSA(host: host, base: bases[0]))
    }

    /// The TLSA answer at the base the last action named (RFC 7672 §2.2.3: the CNAME-expanded
    /// name first, then the original name).
    public mutating func tlsaResolved(_ fact: TLSAFact) -> PlannerStep {
        guard case .tlsa(let bases, let addresses) = state else { preconditionFailure("tlsaResolved in \(state)") }
        let host = hosts[hostIndex]
        let base = bases[0]
        switch fact {
        case .failed(let reason):
            return decide(host: host, addresses: addresses,
                          dane: .unusable(resultType: .tlsaInvalid, reason: "TLSA lookup for _\(settings.port)._tcp.\(base) failed: \(reason)"))
        case .answer(let records, let status):
            if case .bogus(let why) = status {
                return decide(host: host, addresses: addresses,
                              dane: .unusable(resultType: .dnssecInvalid,
                                              reason: "TLSA records at _\(settings.port)._tcp.\(base) failed DNSSEC validation (bogus: \(why ?? "no reason given"))"))
            }
            if status == .secure, !records.isEmpty {
                let names = base == host ? [host] : [base, host]
                return decide(host: host, addresses: addresses,
                              dane: .records(base: base, hostNames: names, all: records, usable: records.filter(\.isUsable)))
            }
            if bases.count > 1 {
                state = .tlsa(bases: Array(bases.dropFirst()), addresses: addresses)
                return PlannerStep(effects: [], action: .lookupTLSA(host: host, base: bases[1]))
            }
            return decide(host: host, addresses: addresses, dane: .absent)
        }
    }

    /// The driver stopped (shutdown) during the last action — a lookup, or the attempt `attempt`
    /// whose session got as far as `result`. What the session's replies decided for recipients
    /// stands; every other recipient is deferred with 4.3.2 ("system not accepting network
    /// messages", RFC 3463). No alert and nothing remembered: a cut-short lookup or session says
    /// nothing about the destination.
    public mutating func stopped(_ attempt: PlannedAttempt? = nil, _ result: AttemptResult? = nil) -> PlannerStep {
        if let attempt, let result, case .attempting(let plan, _) = state {
            let source: PolicySource = plan.memoryBinding ? .memory : plan.floorSource
            for (index, recipientResult) in result.recipients where remaining.contains(index) {
                var outcome = AttemptOutcomes.outcome(for: recipientResult, relay: attempt.relay)
                outcome.policy = source
                if outcome.kind == .delivered { outcome.security = Self.achieved(demand: attempt.demand, tls: result.tls) }
                outcomes[index] = outcome
            }
            remaining.removeAll { result.recipients[$0] != nil }
        }
        return finish([], all: .deferred(EnhancedStatusCode(4, 3, 2), "delivery stopped by shutdown; retried at once after the restart"))
    }

    /// The result of the attempt the last action asked for.
    public mutating func attemptFinished(_ attempt: PlannedAttempt, _ result: AttemptResult) -> PlannerStep {
        guard case .attempting(let plan, let addressIndex) = state else { preconditionFailure("attemptFinished in \(state)") }
        var effects: [PlannerEffect] = []
        let relay = attempt.relay
        if let failure = result.connectFailure {
            lastFailure = .deferred(.noAnswerFromHost, "connect to \(relay): \(failure)", remoteMTA: relay)
            lastFailure.policy = plan.memoryBinding ? .memory : plan.floorSource
            effects.append(.log(.info, "connect to \(relay): \(failure)"))
            return nextAddress(effects, plan: plan, after: addressIndex)
        }
        effects += sessionResult(attempt: attempt, result: result, plan: plan)
        var delivered = false
        let decidingSource: PolicySource = plan.requireTLS ? .requireTLS : plan.memoryBinding ? .memory : plan.floorSource
        for (index, recipientResult) in result.recipients where remaining.contains(index) {
            var outcome = AttemptOutcomes.outcome(for: recipientResult, relay: relay)
            outcome.policy = decidingSource
            if outcome.kind == .delivered { outcome.security = Self.achieved(demand: attempt.demand, tls: result.tls) }
            outcomes[index] = outcome
            delivered = delivered || outcome.kind == .delivered
        }
        remaining.removeAll { result.recipients[$0] != nil }
        if delivered { effects += rememberDelivery(attempt: attempt, result: result) }
        if !probe, remaining.isEmpty {
            // Every recipient is decided; a failure after that (a surplus reply) is still logged.
            if let failure = result.failure {
                effects.append(.log(.info, "\(relay): \(AttemptOutcomes.outcome(for: failure, relay: relay).reason)"))
            }
            return finish(effects, all: lastFailure)
        }
        guard let failure = result.failure else {
            if probe { acceptable = true }
            return nextAddress(effects, plan: plan, after: addressIndex)
        }
        if failure == .requireTLSNotOffered {
            var refusal = AttemptOutcomes.outcome(for: failure, relay: relay)
            refusal.policy = .requireTLS
            requireTLSRefusal = refusal
            effects.append(.log(.warning, refusal.reason))
            return nextAddress(effects, plan: plan, after: addressIndex)
        }
        lastFailure = AttemptOutcomes.outcome(for: failure, relay: relay)
        lastFailure.policy = decidingSource
        effects.append(.log(.info, "\(relay): \(lastFailure.reason)"))
        if attempt.demand.requirement == .required,
           let resultType = AttemptOutcomes.resultType(for: failure, verifyResult: result.verifyResult, authentication: attempt.demand.authentication) {
            if attempt.kind == .first, let fallback = plan.testingFallback {
                // MTA-STS testing (RFC 8461 §5): report, then deliver as the other floors allow.
                effects.append(.alert(PolicyAlert(resultType: resultType, domain: domain, mxHost: attempt.host, address: attempt.address,
                                                  policySource: .mtaSTS, reason: lastFailure.reason, enforced: false)))
                return connect(effects, plan: plan, addressIndex: addressIndex, demand: fallback, kind: .testingFallback)
            }
            // A policy failure: never retried in clear, never a bounce (RFC 7672 §2.2, RFC 8461 §5).
            let source = attempt.kind == .first ? plan.source : plan.floorSource
            let alertSource: PolicySource = plan.memoryBinding ? .memory : source
            lastFailure = .deferred(.cryptographicFailure, "\(lastFailure.reason) — required by \(plan.policyName(alertSource))", remoteMTA: relay)
            lastFailure.policy = alertSource
            effects.append(.alert(PolicyAlert(resultType: resultType, domain: domain, mxHost: attempt.host, address: attempt.address,
                                              policySource: alertSource, reason: lastFailure.reason, enforced: true)))
            if plan.memoryBinding { effects.append(.noteRefusedDowngrade) }
            return nextAddress(effects, plan: plan, after: addressIndex)
        }
        // RFC 7435: a failed opportunistic handshake is retried once in clear (Postfix's "may"),
        // only where no floor asks for TLS.
        if attempt.demand.requirement == .opportunistic, plan.floor == .none, case .tlsFailed = failure {
            return connect(effects, plan: plan, addressIndex: addressIndex, demand: .cleartext, kind: .clearRetry)
        }
        return nextAddress(effects, plan: plan, after: addressIndex)
    }

    // MARK: - Steps

    func isState(_ wanted: State) -> Bool {
        switch (state, wanted) {
        case (.mx, .mx), (.sts, .sts), (.addresses, .addresses): return true
        default: return false
        }
    }

    mutating func finish(_ effects: [PlannerEffect], all outcome: RecipientOutcome) -> PlannerStep {
        for index in remaining { outcomes[index] = outcome }
        remaining = []
        state = .finished
        let failure: RecipientOutcome? = probe ? (acceptable ? nil : outcome) : outcome
        return PlannerStep(effects: effects, action: .finish(outcomes: outcomes, deliverable: probe ? acceptable : !outcomes.values.contains { $0.kind != .delivered },
                                                             lastFailure: failure))
    }

    mutating func startHost(_ effects: [PlannerEffect]) -> PlannerStep {
        guard hostIndex < hosts.count else { return finish(effects, all: exhaustedOutcome) }
        state = .addresses
        return PlannerStep(effects: effects, action: .lookupAddresses(host: hosts[hostIndex]))
    }

    mutating func nextHost(_ effects: [PlannerEffect]) -> PlannerStep {
        hostIndex += 1
        return startHost(effects)
    }

    mutating func skipHost(_ host: String, _ decision: HostDecision) -> PlannerStep {
        guard case .skip(_, let outcome, let alert, let note) = decision else { preconditionFailure() }
        guard case .skip(let rule, _, _, _) = decision else { preconditionFailure() }
        var effects: [PlannerEffect] = [.hostDecided(host: host, decision), .log(.info, "MX host \(host) skipped (rule \(rule.rawValue)): \(outcome.reason)")]
        if let alert {
            effects.append(.alert(alert))
            effects += sessionResult(for: alert, sts: sts)
        }
        if note { effects.append(.noteRefusedDowngrade) }
        if outcome.kind == .bounced {
            // Only REQUIRETLS refuses a host for good (RFC 8689 §4.2.1).
            var refusal = outcome
            refusal.policy = .requireTLS
            requireTLSRefusal = refusal
            return nextHost(effects)
        }
        lastFailure = outcome
        if let alert { lastFailure.policy = alert.policySource }
        return nextHost(effects)
    }

    mutating func decide(host: String, addresses: [String], dane: DANEState) -> PlannerStep {
        let facts = HostFacts(domain: domain, host: host, addresses: addresses, dane: dane, sts: sts, local: local,
                              memoryFloor: memoryFloor, memoryFirstRefused: memory?.firstRefused, now: now, grace: settings.downgradeGrace,
                              mxSecure: mxSecure, sender: sender)
        let decision = HostPolicy.decide(facts)
        switch decision {
        case .skip: return skipHost(host, decision)
        case .connect(let plan):
            var effects: [PlannerEffect] = [.hostDecided(host: host, decision)]
            if sender == .policiesWaived {
                var waived = [PolicySource.dane, .mtaSTS].compactMap { source in plan.policyNames[source] }
                if case .unusable(_, let reason) = dane { waived.append("DANE (\(reason))") }
                if let memory, memory.strongest > .none { waived.append("downgrade memory (\(domain) was delivered with \(memory.strongest.rawValue) before)") }
                if !waived.isEmpty {
                    effects.append(.log(.notice, "TLS-Required: No: \(domain) is protected by \(waived.joined(separator: " and ")); not applied to this message via \(host), as its sender asked (RFC 8689 section 5)"))
                }
            }
            effects += plan.alerts.map { .alert($0) }
            return connect(effects, plan: plan, addressIndex: 0, demand: plan.demand, kind: .first)
        }
    }

    mutating func connect(_ effects: [PlannerEffect], plan: HostConnectPlan, addressIndex: Int, demand: TLSDemand,
                          kind: PlannedAttempt.Kind) -> PlannerStep {
        state = .attempting(plan, addressIndex: addressIndex)
        let address = plan.addresses[addressIndex]
        let port = route?.port ?? settings.port
        let relay = "\(plan.host)[\(address)]:\(port)"
        let attempt = PlannedAttempt(host: plan.host, address: address, port: port, demand: demand, kind: kind, recipients: remaining,
                                     floor: plan.floor, relay: relay, requireTLS: plan.requireTLS)
        return PlannerStep(effects: effects, action: .connect(attempt))
    }

    mutating func nextAddress(_ effects: [PlannerEffect], plan: HostConnectPlan, after index: Int) -> PlannerStep {
        if index + 1 < plan.addresses.count {
            return connect(effects, plan: plan, addressIndex: index + 1, demand: plan.demand, kind: .first)
        }
        return nextHost(effects)
    }

    /// Downgrade memory after a delivery: what it achieved, an alert when that is weaker than
    /// remembered (reported: under enforce within grace no attempt can end weaker).
    func rememberDelivery(attempt: PlannedAttempt, result: AttemptResult) -> [PlannerEffect] {
        // RFC 8689 §5: a delivery without recipient policy says nothing about the domain.
        guard local == nil, route == nil, settings.memoryMode != .off, sender != .policiesWaived else { return [] }
        let achieved = Self.achieved(demand: attempt.demand, tls: result.tls)
        var effects: [PlannerEffect] = []
        if let memory, achieved < memory.strongest {
            let reason = "\(domain) was delivered with \(memory.strongest.rawValue) before, now with \(achieved.rawValue) via \(attempt.host)"
            effects.append(.alert(PolicyAlert(resultType: .validationFailure, domain: domain, mxHost: attempt.host, address: attempt.address,
                                              policySource: .memory, reason: reason, enforced: false)))
        }
        effects.append(.remember(security: achieved, acceptDowngrade: graceOver))
        return effects
    }

    /// What every host being tried came to: a REQUIRETLS bounce (5.7.30) when no host failed
    /// temporarily and some host could not carry REQUIRETLS, else the last temporary failure.
    var exhaustedOutcome: RecipientOutcome {
        if let refusal = requireTLSRefusal, !temporaryFailureSeen {
            var outcome = refusal
            outcome.reason = "\(refusal.reason); no MX host of \(domain) can take the message as REQUIRETLS demands, so it is returned to the sender"
            return outcome
        }
        return lastFailure
    }

    // MARK: - TLS reports (RFC 8460)

    /// The session result of a finished attempt: a success when TLS was negotiated (whatever
    /// SMTP did afterwards), a failure when the negotiation failed or STARTTLS was missing, none
    /// when no negotiation was tried (clear by policy, a failure before STARTTLS), for a fallback
    /// after a failure already counted, or for a reused connection.
    func sessionResult(attempt: PlannedAttempt, result: AttemptResult, plan: HostConnectPlan) -> [PlannerEffect] {
        guard countsSessions, attempt.kind == .first, attempt.demand.requirement != .none else { return [] }
        if result.reusedConnection && settings.tlsrptSkipReusedHandshakes { return [] }
        let policy = reportedPolicy(attempt: attempt, plan: plan)
        if result.tls != nil { return [.tlsSession(TLSSessionResult(policy: policy, failure: nil))] }
        let resultType: TLSRPTResultType
        if let failure = result.failure {
            guard let type = AttemptOutcomes.resultType(for: failure, verifyResult: result.verifyResult,
                                                       authentication: attempt.demand.authentication) else { return [] }
            resultType = type
        } else {
            // Opportunistic and no STARTTLS: the session went on in clear.
            resultType = .starttlsNotSupported
        }
        let reason = result.failure.map { AttemptOutcomes.outcome(for: $0, relay: attempt.relay).reason }
            ?? "\(attempt.relay) did not offer STARTTLS"
        // RFC 8460 §4.4: `failure-reason-code` is the text field for the error; `additional-information`
        // is a URI, which there is none of.
        let code = result.verifyResult.map { "X509_V_ERR_\($0): " } ?? ""
        let failure = TLSRPTFailure(resultType: resultType, sendingMTAIP: result.localAddress, receivingMXHostname: attempt.host,
                                    receivingMXHelo: result.greetingName, receivingIP: attempt.address, failureReasonCode: code + reason)
        return [.tlsSession(TLSSessionResult(policy: policy, failure: failure))]
    }

    /// The published policy an attempt ran under: DANE (the host's TLSA records) where the host
    /// has secure records, else MTA-STS where the domain has a policy (enforce or testing), else
    /// none. A local level is not a published policy: its sessions count as `no-policy-found`
    /// unless DANE records were used.
    func reportedPolicy(attempt: PlannedAttempt, plan: HostConnectPlan) -> TLSRPTPolicy {
        if case .records(_, _, let all, _) = plan.dane, local == nil || attempt.demand.authentication != .none {
            return TLSRPTPolicy(type: .tlsa, strings: all.map(\.description), domain: domain, mxHosts: [attempt.host])
        }
        if let sts, local == nil {
            return TLSRPTPolicy(type: .sts, strings: TLSRPTPolicy.stsLines(sts), domain: domain, mxHosts: sts.mx)
        }
        return TLSRPTPolicy(type: .noPolicyFound, strings: [], domain: domain, mxHosts: [])
    }

    /// A failed policy lookup as a session failure: DNSSEC or TLSA failures under `tlsa`,
    /// discovery and fetch failures and unlisted hosts under `sts`, a local `dane-only` without
    /// TLSA records as `dane-required`. Downgrade memory and other local levels are not
    /// published policies: not reported.
    func sessionResult(for alert: PolicyAlert, sts policy: STSPolicy? = nil) -> [PlannerEffect] {
        guard countsSessions else { return [] }
        let reported: TLSRPTPolicy
        switch alert.policySource {
        case .dane:
            reported = TLSRPTPolicy(type: .tlsa, strings: [], domain: domain, mxHosts: alert.mxHost.map { [$0] } ?? [])
        case .local where alert.resultType == .daneRequired:
            // RFC 8460 §4.3.2.1 `dane-required`: this sender requires DANE (local dane-only) and
            // the host has no DNSSEC-validated TLSA records.
            reported = TLSRPTPolicy(type: .tlsa, strings: [], domain: domain, mxHosts: alert.mxHost.map { [$0] } ?? [])
        case .mtaSTS:
            reported = TLSRPTPolicy(type: .sts, strings: policy.map(TLSRPTPolicy.stsLines) ?? [], domain: domain, mxHosts: policy?.mx ?? [])
        default:
            return []
        }
        let failure = TLSRPTFailure(resultType: alert.resultType, receivingMXHostname: alert.mxHost, receivingIP: alert.address,
                                    failureReasonCode: alert.reason)
        return [.tlsSession(TLSSessionResult(policy: reported, failure: failure))]
    }

    /// Log lines for the sender's request (RFC 8689), once per delivery.
    func senderEffects() -> [PlannerEffect] {
        switch sender {
        case .requireTLS:
            var effects: [PlannerEffect] = [.log(.info, "REQUIRETLS: \(domain) only over TLS authenticated by DANE or MTA-STS enforce, to MX hosts that announce REQUIRETLS (RFC 8689 section 4.2.1)")]
            if request.tlsRequiredNo {
                effects.append(.log(.notice, "TLS-Required: No ignored: the message has REQUIRETLS (RFC 8689 section 5)"))
            }
            return effects
        case .policiesWaived:
            return [.log(.notice, "TLS-Required: No: the sender asks that recipient TLS policies be ignored (RFC 8689 section 5); \(domain) gets opportunistic TLS and nothing is remembered")]
        case .standard:
            if request.tlsRequiredNo {
                return [.log(.notice, "TLS-Required: No not honoured (policy.honor_tls_required_no = false): the recipient policies of \(domain) apply")]
            }
            return []
        }
    }

    /// The security a finished attempt achieved.
    public static func achieved(demand: TLSDemand, tls: AttemptResult.TLS?) -> AchievedSecurity {
        guard let tls else { return .none }
        if tls.daneMatched { return .dane }
        if tls.verified, case .webPKI = demand.authentication { return .mtaSTS }
        return .tls
    }
}
