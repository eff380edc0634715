import Foundation
import DeliveryPolicy
import SMTPCore
import Testing

/// The floor rule and the outcome rules, checked on the whole product of inputs (message kind and
/// sender request (REQUIRETLS, `TLS-Required: No`) × whether the next hop announces REQUIRETLS ×
/// local level × DNSSEC status of MX, address and TLSA × TLSA content × MTA-STS × downgrade
/// memory × what the MX does). The oracle below is written from the policy table (README, "How a
/// message is delivered"), independently of `HostPolicy`.
struct Oracle {
    /// nil: no connection may be made at all; else the highest floor every attempt must meet.
    var floor: AchievedSecurity?
    /// A local level's exact first demand (nil without a local level).
    var localDemand: TLSDemand?
    /// The status a delivery that made no attempt must end with.
    var noAttemptStatus: EnhancedStatusCode?
    /// Downgrade memory raises the floor above every discovered policy.
    var memoryBinding = false

    /// A DSN to the DSN relay: one attempt there, no recipient policy at all.
    var dsnRelay = false
    /// REQUIRETLS and no way to carry it (RFC 8689 §4.2.1): no attempt, a bounce with 5.7.30.
    var requireTLSRefused = false
    /// `TLS-Required: No` honoured (RFC 8689 §5): this exact demand, no recipient policy.
    var waivedDemand: TLSDemand?

    init(_ i: Inputs) {
        if i.message == .deliveryStatusNotification {
            dsnRelay = true
            floor = AchievedSecurity.none
            return
        }
        let localApplies = i.local != .absent && i.local != .expired
        if i.sender == .tlsRequiredNo {
            // A TLS report is sent with TLS-Required: No (RFC 8460 §5.3) and takes the same way.
            // Only DNS integrity still stops a delivery; no DANE, MTA-STS or memory.
            if i.mxStatus == .failed { noAttemptStatus = .directoryServerFailure; return }
            if i.mxStatus == .bogus || i.addressStatus == .bogus { noAttemptStatus = .cryptographicFailure; return }
            if i.addressStatus == .failed { noAttemptStatus = .directoryServerFailure; return }
            waivedDemand = i.local == .none ? .cleartext : .opportunistic
            floor = AchievedSecurity.none
            return
        }
        standardRules(i, localApplies: localApplies)
        guard i.sender.isRequireTLS, floor != nil else { return }
        // REQUIRETLS: authenticated by DANE or MTA-STS enforce (or a local dane/verify level),
        // behind a DNSSEC-secure MX answer or an MTA-STS enforce policy listing the host.
        let stsEnforce = !localApplies && (i.sts == .enforceMatching || i.sts == .cachedAfterFailedRefresh)
        let authenticated: AchievedSecurity = localApplies ? localDemand!.guaranteed : discoveredFloor
        if authenticated < .mtaSTS || !(i.mxStatus == .secure || stsEnforce) {
            requireTLSRefused = true
            floor = nil
            noAttemptStatus = .requireTLSSupportRequired
        }
    }

    /// The highest floor of discovered policy (DANE, MTA-STS), memory aside.
    var discoveredFloor: AchievedSecurity = .none

    mutating func standardRules(_ i: Inputs, localApplies: Bool) {
        // The shared policy state cannot be read: deferred like a failed lookup, before any other
        // lookup; a local level needs no state.
        if i.memory == .storeUnavailable && !localApplies { noAttemptStatus = .directoryServerFailure; return }
        if i.mxStatus == .failed { noAttemptStatus = .directoryServerFailure; return }
        if i.mxStatus == .bogus { noAttemptStatus = .cryptographicFailure; return }
        if !localApplies && i.sts == .temporaryFailure { noAttemptStatus = .directoryServerFailure; return }
        if i.addressStatus == .bogus { noAttemptStatus = .cryptographicFailure; return }
        if i.addressStatus == .failed { noAttemptStatus = .directoryServerFailure; return }
        let daneLooked = i.addressStatus == .secure && (!localApplies || i.local == .dane || i.local == .daneOnly)
        if daneLooked && (i.tlsaStatus == .failed || i.tlsaStatus == .bogus) { noAttemptStatus = .cryptographicFailure; return }
        let records = daneLooked && i.tlsaStatus == .secure && i.tlsa != .none
        let usable = records && i.tlsa != .onlyUnusable
        let daneDemand = TLSDemand(requirement: .required, authentication: .dane(base: Inputs.host, hostNames: [Inputs.host],
                                                                                   records: i.tlsaRecords.filter(\.isUsable)))
        if localApplies {
            switch i.local {
            case .none: localDemand = .cleartext
            case .may: localDemand = .opportunistic
            case .encrypt: localDemand = .encrypted
            case .verify: localDemand = .webPKI(Inputs.host)
            case .dane: localDemand = usable ? daneDemand : (records ? .encrypted : .opportunistic)
            case .daneOnly:
                guard usable else { noAttemptStatus = .cryptographicFailure; return }
                localDemand = daneDemand
            case .absent, .expired: break
            }
            floor = localDemand!.guaranteed
            return
        }
        var floors: [AchievedSecurity] = []
        if usable { floors.append(.dane) } else if records { floors.append(.tls) }
        let stsEnforce = i.sts == .enforceMatching || i.sts == .cachedAfterFailedRefresh
        if stsEnforce && !usable { floors.append(.mtaSTS) }
        if i.sts == .enforceNotMatching && !usable { noAttemptStatus = .cryptographicFailure; return }
        let discovered = floors.max() ?? .none
        discoveredFloor = discovered
        let memory: AchievedSecurity? = switch i.memory {
        case .enforceTLS: .tls
        case .enforceMTASTS: .mtaSTS
        case .enforceDANE: .dane
        default: nil
        }
        if let memory { floors.append(memory) }
        let highest = floors.max() ?? .none
        memoryBinding = highest > discovered
        if highest == .dane && !usable { noAttemptStatus = .cryptographicFailure; return }
        floor = highest
    }
}

@Suite("Delivery planner: every combination of inputs")
struct ExhaustivePlannerTests {
    @Test("the product covers every message variant once")
    func product() {
        let variants = Inputs.messageVariants.map { "\($0.0.rawValue) \($0.1.rawValue) \($0.2)" }
        #expect(variants.count == 9 && Set(variants).count == 9)
        #expect(Inputs.product(0).count == 8 * 64 * 5 * 7 * 7 * 8)
    }

    /// One test case per message variant (DSN; relayed mail with each sender request and, for
    /// REQUIRETLS, each answer of the next hop), so that they run in parallel.
    /// One test case per message variant, one at a time, each on a thread of its own: the
    /// cooperative pool (two threads on two cores) stays free for the other suites' timers,
    /// whose timing tests would otherwise wait for these CPU-bound loops.
    @Test("floor rule and outcome rules on the whole product of inputs", .serialized, arguments: Inputs.messageVariants.indices)
    func exhaustive(_ variant: Int) async {
        let violations = await withCheckedContinuation { (continuation: CheckedContinuation<[String], Never>) in
            let thread = Thread { continuation.resume(returning: Self.violations(variant)) }
            thread.stackSize = 16 << 20
            thread.start()
        }
        #expect(violations.isEmpty, "\(violations.joined(separator: "\n"))")
    }

    /// The broken rules on one message variant's product of inputs (at most 25 listed).
    static func violations(_ variant: Int) -> [String] {
        let all = Inputs.product(variant)
        var violations: [String] = []
        func violate(_ inputs: Inputs, _ rule: String, _ t: Transcript) {
            if violations.count < 25 {
                violations.append("\(rule): \(inputs) → \(t.outcome.map { "\($0.kind.rawValue) \($0.status) \($0.reason)" } ?? "no outcome"); attempts: \(t.attempts.map { "\($0.attempt.kind.rawValue) \($0.attempt.demand)" })")
            } else if violations.count == 25 { violations.append("…") }
        }
        for inputs in all {
            let t = run(inputs)
            let oracle = Oracle(inputs)
            guard let outcome = t.outcome else { violate(inputs, "the planner did not finish", t); continue }
            // TLS reports (RFC 8460): one result per first attempt that negotiated or tried TLS, and
            // per failed policy lookup; none for a DSN, a TLS report or a waived message; a
            // failure's result type is the one the alert of the same event names.
            if inputs.message != .relayed || inputs.sender == .tlsRequiredNo {
                if !t.sessions.isEmpty { violate(inputs, "session counted for a DSN, a TLS report or a TLS-Required: No message", t) }
            } else {
                let negotiated = t.attempts.filter { $0.attempt.kind == .first && $0.attempt.demand.requirement != .none }
                // At most: each negotiation, the MTA-STS discovery and one DNSSEC/TLSA/host failure.
                if t.sessions.count > negotiated.count + 2 { violate(inputs, "more session results than negotiations and lookups", t) }
                for (attempt, result) in negotiated where result.tls != nil {
                    if !t.sessions.contains(where: { $0.isSuccess }) { violate(inputs, "a negotiated session not counted as a success (\(attempt.relay))", t) }
                }
                // Where every negotiation required TLS, each failure counted is one the alerts name.
                let required = negotiated.allSatisfy { $0.attempt.demand.requirement == .required }
                for session in t.sessions where !session.isSuccess && required {
                    let type = session.failure!.resultType
                    if !t.alerts.contains(where: { $0.resultType == type }) {
                        violate(inputs, "a session failure \(type.rawValue) without an alert of that type", t)
                    }
                }
                if t.alerts.contains(where: { $0.policySource == .dane && $0.resultType == .dnssecInvalid }),
                   !t.sessions.contains(where: { $0.failure?.resultType == .dnssecInvalid && $0.policy.type == .tlsa }) {
                    violate(inputs, "a DNSSEC failure not counted for the TLS report", t)
                }
                if inputs.tlsa != .none, inputs.tlsaStatus == .secure, inputs.addressStatus == .secure, inputs.local == .absent,
                   !t.attempts.isEmpty, !t.sessions.isEmpty, !t.sessions.contains(where: { $0.policy.type == .tlsa }) {
                    violate(inputs, "a DANE host's session not counted under its TLSA policy", t)
                }
            }
            // Policy failures are never a bounce; only REQUIRETLS bounces, with 5.7.30, when no
            // host could take it as it demands (RFC 8689 §4.2.1).
            let requireTLSRefusedAtNextHop = t.attempts.contains { $0.result.failure == .requireTLSNotOffered }
            if outcome.kind == .bounced {
                if !(oracle.requireTLSRefused || requireTLSRefusedAtNextHop) || outcome.status != .requireTLSSupportRequired {
                    violate(inputs, "bounced", t)
                }
            } else if oracle.requireTLSRefused || requireTLSRefusedAtNextHop {
                violate(inputs, "REQUIRETLS could not be carried, but not bounced with 5.7.30", t)
            }
            for (attempt, _) in t.attempts where attempt.requireTLS != inputs.sender.isRequireTLS {
                violate(inputs, "REQUIRETLS on MAIL FROM does not follow the message", t)
            }
            if inputs.sender.isRequireTLS {
                for (attempt, _) in t.attempts where attempt.demand.requirement != .required || attempt.demand.guaranteed < .mtaSTS || attempt.kind != .first {
                    violate(inputs, "a REQUIRETLS message tried without authenticated TLS", t)
                }
                if outcome.kind == .delivered && !inputs.announcesRequireTLS { violate(inputs, "REQUIRETLS delivered to a next hop without it", t) }
            }
            guard let floor = oracle.floor else {
                if !t.attempts.isEmpty { violate(inputs, "connected where no connection is allowed", t) }
                if oracle.requireTLSRefused { continue }
                if outcome.kind != .deferred || outcome.status != oracle.noAttemptStatus { violate(inputs, "wrong deferral without attempts", t) }
                if oracle.memoryBinding && !t.notedRefusal { violate(inputs, "refused downgrade without starting the grace window", t) }
                continue
            }
            if oracle.dsnRelay {
                // RFC 3461 §6.2: back to the upstream MTA, whatever the recipient domain's policy says.
                let lookups = t.actions.contains { if case .connect = $0 { return false }; if case .finish = $0 { return false }; return true }
                if lookups { violate(inputs, "a DSN to the DSN relay looked up the recipient domain", t) }
                if t.attempts.first.map({ $0.attempt.address != Inputs.dsnRelay.address || $0.attempt.port != Inputs.dsnRelay.port }) ?? true {
                    violate(inputs, "a DSN not sent to the DSN relay", t)
                }
                if !t.alerts.isEmpty || !t.remembered.isEmpty || t.notedRefusal { violate(inputs, "a DSN raised alerts or touched memory", t) }
                if inputs.mx != .bytesAfter220 && outcome.kind != .delivered { violate(inputs, "DSN to the relay not delivered", t) }
                continue
            }
            // The floor rule: no attempt can end below the highest floor; clear only without one.
            for (attempt, _) in t.attempts {
                if attempt.demand.guaranteed < floor { violate(inputs, "attempt below the floor \(floor)", t) }
                if attempt.demand.requirement != .required && floor > .none { violate(inputs, "attempt without required TLS under a floor", t) }
                if attempt.floor != floor { violate(inputs, "attempt reports floor \(attempt.floor), oracle \(floor)", t) }
            }
            if let local = oracle.localDemand {
                if t.attempts.first?.attempt.demand != local { violate(inputs, "local level not applied exactly", t) }
                if !t.remembered.isEmpty { violate(inputs, "memory written under a local level", t) }
            }
            if let achieved = t.deliveredWith, achieved < floor { violate(inputs, "delivered with \(achieved) under floor \(floor)", t) }
            if let waived = oracle.waivedDemand {
                // RFC 8689 §5: opportunistic TLS, no recipient policy, nothing remembered.
                if t.attempts.first?.attempt.demand != waived { violate(inputs, "TLS-Required: No not delivered with opportunistic TLS", t) }
                if !t.alerts.isEmpty || !t.remembered.isEmpty || t.notedRefusal { violate(inputs, "TLS-Required: No raised alerts or touched memory", t) }
                if outcome.kind == .delivered && outcome.policy != .tlsRequiredNo { violate(inputs, "TLS-Required: No delivery not attributed to it", t) }
                if inputs.mx != .bytesAfter220 && outcome.kind != .delivered { violate(inputs, "TLS-Required: No not delivered", t) }
                continue
            }
            // Liveness: a delivery the policy allows goes ahead.
            let mustDeliver = (inputs.mx == .verified
                || (floor == .none && inputs.mx != .bytesAfter220)
                || (floor == .tls && (inputs.mx == .unverified || inputs.mx == .wrongName)))
                && (!inputs.sender.isRequireTLS || inputs.announcesRequireTLS)
            if mustDeliver && outcome.kind != .delivered { violate(inputs, "not delivered though the policy allows it", t) }
            if outcome.kind == .deferred, let last = t.attempts.last, last.attempt.demand.requirement == .required,
               last.result.connectFailure == nil, outcome.status != .cryptographicFailure {
                violate(inputs, "a TLS policy failure not deferred with 4.7.5", t)
            }
            if outcome.kind == .deferred, floor > .none, !t.alerts.contains(where: \.enforced) {
                violate(inputs, "a deferral under a floor without an enforced alert", t)
            }
            if oracle.memoryBinding, outcome.kind == .deferred, !t.notedRefusal { violate(inputs, "refused downgrade without starting the grace window", t) }
            if !oracle.memoryBinding, t.notedRefusal { violate(inputs, "grace window started without a refused downgrade", t) }
            if inputs.sts == .testingMatching, oracle.localDemand == nil, floor < .mtaSTS, inputs.mx != .verified,
               !t.alerts.contains(where: { $0.policySource == .mtaSTS && !$0.enforced }) {
                violate(inputs, "MTA-STS testing failure not reported", t)
            }
            // Memory: written after every delivery unless off or a local level; a weaker delivery
            // than remembered is reported; after the grace window the weaker level is accepted.
            if outcome.kind == .delivered, oracle.localDemand == nil {
                if inputs.memory == .off { if !t.remembered.isEmpty { violate(inputs, "memory written while off", t) } }
                else if t.remembered.isEmpty { violate(inputs, "delivery not remembered", t) }
                if inputs.memory == .graceOver, t.remembered.first?.1 != true { violate(inputs, "grace over, downgrade not accepted", t) }
                if inputs.memory == .reportDANE, let achieved = t.deliveredWith, achieved < .dane,
                   !t.alerts.contains(where: { $0.policySource == .memory && !$0.enforced }) {
                    violate(inputs, "weaker delivery than remembered not reported", t)
                }
            }
        }
        return violations
    }
}
