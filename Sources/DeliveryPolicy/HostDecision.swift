import MTASTSCore
import SMTPCore

/// What DANE says about one MX host after its address and TLSA lookups (RFC 7672 §2.2).
public enum DANEState: Sendable, Equatable {
    /// No TLSA lookup was made: the host's addresses (or the MX RRset, with
    /// `daneForInsecureMX` off) are not secure, or a local level excludes DANE.
    case notLooked
    /// The TLSA lookup ended in a secure or insecure denial, or an insecure answer: no DANE.
    case absent
    /// Secure TLSA records at `base`; `usable` holds those SMTP may use (possibly none).
    case records(base: String, hostNames: [String], all: [TLSAEntry], usable: [TLSAEntry])
    /// The TLSA lookup failed for a secure host (RFC 7672 §2.1.1) or was bogus.
    case unusable(resultType: TLSRPTResultType, reason: String)
}

/// One policy floor: the weakest security an attempt may end with, and who asks for it.
public struct PolicyFloor: Sendable, Equatable {
    public var level: AchievedSecurity
    public var source: PolicySource
    public var rule: HostRule
}

/// The named rules of the host decision, one per row of the policy table (README, "How a
/// message is delivered"). Each says which RFC section it comes from.
public enum HostRule: String, Sendable, CaseIterable {
    /// A or AAAA answer bogus: the host is skipped (RFC 7672 §2.2.3).
    case addressBogus = "address-bogus"
    /// No address could be looked up (RFC 5321 §5.1).
    case addressLookupFailed = "address-lookup-failed"
    /// The host has no address records (RFC 5321 §5.1).
    case noAddress = "no-address"
    /// TLSA lookup failed or bogus for a secure host: the host is unusable (RFC 7672 §2.1.1, §2.2.3).
    case tlsaUnusable = "tlsa-unusable"
    /// At least one usable TLSA record: DANE authentication (RFC 7672 §2.2, §3).
    case daneUsable = "dane-usable"
    /// Only unusable TLSA records: STARTTLS required, no authentication (RFC 7672 §3.1.3).
    case daneUnusableRecords = "dane-unusable-records"
    /// MTA-STS enforce, host matches: WebPKI for the MX name (RFC 8461 §4.2).
    case stsEnforce = "sts-enforce"
    /// MTA-STS enforce, host not listed: skipped unless DANE authenticates it (RFC 8461 §4.1, §2).
    case stsEnforceNotListed = "sts-enforce-not-listed"
    /// MTA-STS testing: try WebPKI, report a failure, deliver anyway (RFC 8461 §5).
    case stsTesting = "sts-testing"
    /// MTA-STS testing, host not listed: reported only (RFC 8461 §5).
    case stsTestingNotListed = "sts-testing-not-listed"
    /// Downgrade memory under enforce, within the grace window: the remembered level.
    case memoryEnforce = "memory-enforce"
    /// Downgrade memory asks for DANE, but the host has no usable TLSA record: refused.
    case memoryDANERefused = "memory-dane-refused"
    /// A local level (Postfix `smtp_tls_policy_maps`): exactly that level.
    case local = "local"
    /// Local `dane-only` without a usable TLSA record: deferred.
    case localDaneOnlyRefused = "local-dane-only-refused"
    /// No floor: opportunistic STARTTLS, clear when not offered (RFC 7435).
    case opportunistic = "opportunistic"
    /// A DSN to the DSN relay (`delivery.dsn_relay`): no recipient policy applies (RFC 3461 §6.2).
    case dsnRelay = "dsn-relay"
    /// `TLS-Required: No` honoured: opportunistic STARTTLS, no recipient policy (RFC 8689 §5).
    case tlsRequiredNo = "tls-required-no"
    /// REQUIRETLS, and the host is authenticated (DANE, or MTA-STS enforce listing it) behind an
    /// authenticated MX answer: REQUIRETLS on MAIL FROM, the next hop must announce it (RFC 8689 §4.2.1).
    case requireTLS = "requiretls"
    /// REQUIRETLS, but the host cannot be authenticated, or the MX answer is neither
    /// DNSSEC-secure nor covered by MTA-STS enforce: not used; a bounce (5.7.30) if no other
    /// host takes the message (RFC 8689 §4.2.1).
    case requireTLSUnauthenticated = "requiretls-unauthenticated"
    /// REQUIRETLS, and a local level below authenticated TLS (none, may, encrypt) governs the
    /// domain: a local level never weakens REQUIRETLS; the host is not used (RFC 8689 §4.2.1).
    case requireTLSLocalLevel = "requiretls-local-level"
}

/// The planner's decision for one MX host.
public enum HostDecision: Sendable, Equatable {
    /// The host cannot be used now; `outcome` stands if no other host succeeds.
    case skip(rule: HostRule, outcome: RecipientOutcome, alert: PolicyAlert?, noteRefusedDowngrade: Bool)
    /// Connect to `addresses`, each with `demand` first; `fallback` is the demand after a
    /// reported MTA-STS testing failure (never below `floor`).
    case connect(HostConnectPlan)
}

/// How to connect to one MX host.
public struct HostConnectPlan: Sendable, Equatable {
    public var host: String
    public var addresses: [String]
    /// The demand of the first try on each address.
    public var demand: TLSDemand
    /// The demand after an MTA-STS testing failure was reported (RFC 8461 §5); nil: none.
    public var testingFallback: TLSDemand?
    /// The highest floor that applies (`.none` when nothing asks for TLS).
    public var floor: AchievedSecurity
    /// Every floor that applies, for logs and tests.
    public var floors: [PolicyFloor]
    /// The source whose rule decided the first try's demand (for alerts).
    public var source: PolicySource
    /// The source of the highest floor (`.none` without one): who enforces a failure of the
    /// testing fallback.
    public var floorSource: PolicySource
    /// The rule that decided the demand.
    public var rule: HostRule
    /// REQUIRETLS goes on MAIL FROM and the next hop must announce it (RFC 8689 §4.2.1).
    public var requireTLS = false
    /// True when downgrade memory raised the demand above every discovered policy: a failure is
    /// then a refused downgrade. (A memory floor equal to a discovered one is not the floor's
    /// source: `floors` lists discovered sources first.)
    public var memoryBinding: Bool { floorSource == .memory }
    /// The DANE state, for logs and `check`.
    public var dane: DANEState
    /// Alerts that the decision itself raises (reported, never enforced).
    public var alerts: [PolicyAlert]
    /// What each source that shaped this plan is, in words for deferral reasons
    /// ("DANE (TLSA records of mx.example.net)", "MTA-STS enforce (policy of example.net)",
    /// "local level encrypt", "downgrade memory (example.net was delivered with dane before)").
    public var policyNames: [PolicySource: String] = [:]

    /// The words for `source`.
    public func policyName(_ source: PolicySource) -> String {
        policyNames[source] ?? "no policy"
    }
}

/// The inputs of one host decision.
public struct HostFacts: Sendable {
    public var domain: String
    public var host: String
    public var addresses: [String]
    public var dane: DANEState
    public var sts: STSPolicy?
    public var local: LocalLevel?
    /// The memory floor in force (enforce mode, within grace), if any.
    public var memoryFloor: AchievedSecurity?
    /// When the memory's grace window started, for the refusal text.
    public var memoryFirstRefused: Double?
    public var now: Double
    public var grace: Double
    /// The MX answer was DNSSEC-secure (RFC 7672 §2.2.1; RFC 8689 §4.2.1).
    public var mxSecure: Bool
    /// The sender's request, as the planner applies it.
    public var sender: SenderTLSMode

    public init(domain: String, host: String, addresses: [String], dane: DANEState, sts: STSPolicy?, local: LocalLevel?,
                memoryFloor: AchievedSecurity?, memoryFirstRefused: Double?, now: Double, grace: Double,
                mxSecure: Bool = true, sender: SenderTLSMode = .standard) {
        self.mxSecure = mxSecure
        self.sender = sender
        self.domain = domain
        self.host = host
        self.addresses = addresses
        self.dane = dane
        self.sts = sts
        self.local = local
        self.memoryFloor = memoryFloor
        self.memoryFirstRefused = memoryFirstRefused
        self.now = now
        self.grace = grace
    }
}

public enum HostPolicy {
    /// The floors that apply to one host, from every policy source but a local level.
    /// - DANE with a usable record → `dane`; only unusable records → `tls` (RFC 7672 §2.2, §3.1.3).
    /// - MTA-STS enforce and the host matches → `mta-sts` (RFC 8461 §4.2); never for a host that
    ///   DANE authenticates (RFC 8461 §2). Testing mode sets no floor (§5).
    /// - Downgrade memory under enforce within grace → the remembered level.
    public static func floors(_ facts: HostFacts) -> [PolicyFloor] {
        var floors: [PolicyFloor] = []
        var daneUsable = false
        if case .records(_, _, _, let usable) = facts.dane {
            daneUsable = !usable.isEmpty
            floors.append(PolicyFloor(level: daneUsable ? .dane : .tls, source: .dane, rule: daneUsable ? .daneUsable : .daneUnusableRecords))
        }
        if !daneUsable, let sts = facts.sts, sts.mode == .enforce, sts.matches(mxHost: facts.host) {
            floors.append(PolicyFloor(level: .mtaSTS, source: .mtaSTS, rule: .stsEnforce))
        }
        if let memory = facts.memoryFloor, memory > .none {
            floors.append(PolicyFloor(level: memory, source: .memory, rule: .memoryEnforce))
        }
        return floors
    }

    /// The demand that meets `floor` on `host` (nil: no demand can, DANE without usable records).
    static func demand(meeting floor: AchievedSecurity, host: String, dane: DANEState) -> TLSDemand? {
        switch floor {
        case .none: return .opportunistic
        case .tls: return .encrypted
        case .mtaSTS: return .webPKI(host)
        case .dane:
            guard case .records(let base, let names, _, let usable) = dane, !usable.isEmpty else { return nil }
            return TLSDemand(requirement: .required, authentication: .dane(base: base, hostNames: names, records: usable))
        }
    }

    /// The words for every source that applies to `facts` (see `HostConnectPlan.policyNames`).
    static func policyNames(_ facts: HostFacts) -> [PolicySource: String] {
        var names: [PolicySource: String] = [:]
        if case .records(let base, _, _, let usable) = facts.dane {
            names[.dane] = usable.isEmpty ? "DANE (only unusable TLSA records at \(base))" : "DANE (TLSA records of \(base))"
        }
        if let sts = facts.sts { names[.mtaSTS] = "MTA-STS \(sts.mode.rawValue) (policy of \(facts.domain))" }
        if let memory = facts.memoryFloor { names[.memory] = "downgrade memory (\(facts.domain) was delivered with \(memory.rawValue) before)" }
        if let local = facts.local { names[.local] = "local level \(local.rawValue)" }
        return names
    }

    /// Decides one host: the floor rule, written once. Every demand this returns (first try and
    /// testing fallback) guarantees at least the highest floor; cleartext is only possible when
    /// no floor asks for TLS. A local level replaces discovered policy with exactly its level.
    /// The sender's request (RFC 8689) comes last: `TLS-Required: No` replaces every recipient
    /// policy with opportunistic TLS; REQUIRETLS keeps a host only where the recipient policy
    /// authenticates it, and never lowers a demand.
    public static func decide(_ facts: HostFacts) -> HostDecision {
        switch facts.sender {
        case .policiesWaived: return decideWaived(facts)
        case .standard: return decideRecipientPolicy(facts)
        case .requireTLS: return requireTLS(facts, decideRecipientPolicy(facts))
        }
    }

    /// `TLS-Required: No` (RFC 8689 §5): STARTTLS whenever offered, no certificate check, never
    /// a deferral for a recipient policy. A local level `none` stays clear.
    static func decideWaived(_ facts: HostFacts) -> HostDecision {
        let demand: TLSDemand = facts.local == LocalLevel.none ? .cleartext : .opportunistic
        return .connect(HostConnectPlan(host: facts.host, addresses: facts.addresses, demand: demand, testingFallback: nil, floor: .none,
                                        floors: [], source: .tlsRequiredNo, floorSource: .tlsRequiredNo, rule: .tlsRequiredNo,
                                        dane: facts.dane, alerts: [], policyNames: policyNames(facts)))
    }

    /// REQUIRETLS (RFC 8689 §4.2.1) on top of the recipient-policy decision: the host stays only
    /// when that decision already authenticates it (a DANE or MTA-STS enforce floor, or a local
    /// `dane`/`dane-only`/`verify` level) and the MX answer is DNSSEC-secure or the host is listed
    /// by MTA-STS enforce. MTA-STS testing and downgrade memory are not enough. A skip stays
    /// what it was (a deferral: a policy failure can pass).
    static func requireTLS(_ facts: HostFacts, _ decision: HostDecision) -> HostDecision {
        guard case .connect(var plan) = decision else { return decision }
        let host = facts.host, domain = facts.domain
        let authenticated = plan.floors.filter { $0.source != .memory }.map(\.level).max() ?? .none
        if let local = facts.local, authenticated < .mtaSTS {
            let reason = "REQUIRETLS: local level \(local.rawValue) for \(domain) is below authenticated TLS, and it may not weaken a REQUIRETLS message (RFC 8689 section 4.2.1)"
            return .skip(rule: .requireTLSLocalLevel, outcome: .bounced(.requireTLSSupportRequired, reason), alert: nil, noteRefusedDowngrade: false)
        }
        guard authenticated >= .mtaSTS else {
            let reason = "REQUIRETLS: MX host \(host) cannot be authenticated: it has no usable DNSSEC-validated TLSA records and no MTA-STS policy of \(domain) in enforce mode lists it (RFC 8689 section 4.2.1)"
            return .skip(rule: .requireTLSUnauthenticated, outcome: .bounced(.requireTLSSupportRequired, reason), alert: nil, noteRefusedDowngrade: false)
        }
        let stsListed = facts.local == nil && facts.sts?.mode == .enforce && facts.sts?.matches(mxHost: host) == true
        guard facts.mxSecure || stsListed else {
            let reason = "REQUIRETLS: the MX answer for \(domain) is not DNSSEC-secure and no MTA-STS policy in enforce mode lists \(host), so the MX host itself is not authenticated (RFC 8689 section 4.2.1)"
            return .skip(rule: .requireTLSUnauthenticated, outcome: .bounced(.requireTLSSupportRequired, reason), alert: nil, noteRefusedDowngrade: false)
        }
        plan.requireTLS = true
        plan.testingFallback = nil
        plan.rule = .requireTLS
        return .connect(plan)
    }

    /// The recipient policies alone: local level, DANE, MTA-STS and downgrade memory.
    static func decideRecipientPolicy(_ facts: HostFacts) -> HostDecision {
        let host = facts.host, domain = facts.domain
        if let local = facts.local { return decideLocal(facts, level: local) }
        if case .unusable(let resultType, let reason) = facts.dane {
            return .skip(rule: .tlsaUnusable, outcome: .deferred(.cryptographicFailure, reason),
                         alert: PolicyAlert(resultType: resultType, domain: domain, mxHost: host, address: nil, policySource: .dane,
                                            reason: reason, enforced: true), noteRefusedDowngrade: false)
        }
        var daneUsable = false
        if case .records(_, _, _, let usable) = facts.dane { daneUsable = !usable.isEmpty }
        var alerts: [PolicyAlert] = []
        if let sts = facts.sts, !sts.matches(mxHost: host), !daneUsable {
            let reason = "MX host \(host) is not listed in the MTA-STS policy of \(domain) (mx: \(sts.mx.joined(separator: " ")))"
            let enforced = sts.mode == .enforce
            let alert = PolicyAlert(resultType: .validationFailure, domain: domain, mxHost: host, address: nil, policySource: .mtaSTS,
                                    reason: reason, enforced: enforced)
            if enforced {
                return .skip(rule: .stsEnforceNotListed, outcome: .deferred(.cryptographicFailure, reason), alert: alert, noteRefusedDowngrade: false)
            }
            alerts.append(alert)
        }
        let floors = floors(facts)
        let discovered = floors.filter { $0.source != .memory }
        let discoveredFloor = discovered.map(\.level).max() ?? .none
        let floor = floors.map(\.level).max() ?? .none
        guard let demand = demand(meeting: floor, host: host, dane: facts.dane) else {
            // Only downgrade memory can ask for DANE where no usable TLSA record exists.
            let first = facts.memoryFirstRefused ?? facts.now
            let left = min(max(0, facts.grace - (facts.now - first)), facts.grace)
            let reason = "downgrade memory: \(domain) was delivered with \(floor.rawValue) before; MX host \(host) now offers at best \(discoveredFloor.rawValue) (downgrade refused until \(left.isFinite ? Int(left) : 0) s from now)"
            return .skip(rule: .memoryDANERefused, outcome: .deferred(.cryptographicFailure, reason),
                         alert: PolicyAlert(resultType: .validationFailure, domain: domain, mxHost: host, address: nil, policySource: .memory,
                                            reason: reason, enforced: true), noteRefusedDowngrade: true)
        }
        var first = demand
        var fallback: TLSDemand?
        let highest = floors.first { $0.level == floor }
        var rule = highest?.rule ?? .opportunistic
        var source = highest?.source ?? .none
        if let sts = facts.sts, sts.mode == .testing, !daneUsable, sts.matches(mxHost: host), floor < .mtaSTS {
            // RFC 8461 §5: testing tries the policy, reports a failure, then delivers as the
            // other floors allow. It never lowers them.
            first = .webPKI(host)
            fallback = demand
            rule = .stsTesting
            source = .mtaSTS
        }
        return .connect(HostConnectPlan(host: host, addresses: facts.addresses, demand: first, testingFallback: fallback, floor: floor,
                                        floors: floors, source: source, floorSource: highest?.source ?? .none, rule: rule, dane: facts.dane,
                                        alerts: alerts, policyNames: policyNames(facts)))
    }

    /// A local level: exactly that level, whatever DANE, MTA-STS and memory say (Postfix's
    /// `smtp_tls_policy_maps`); `dane-only` without a usable TLSA record defers.
    static func decideLocal(_ facts: HostFacts, level: LocalLevel) -> HostDecision {
        let host = facts.host
        if case .unusable(let resultType, let reason) = facts.dane {
            return .skip(rule: .tlsaUnusable, outcome: .deferred(.cryptographicFailure, reason),
                         alert: PolicyAlert(resultType: resultType, domain: facts.domain, mxHost: host, address: nil, policySource: .dane,
                                            reason: reason, enforced: true), noteRefusedDowngrade: false)
        }
        var usableDemand: TLSDemand?
        var unusableOnly = false
        if case .records(let base, let names, _, let usable) = facts.dane {
            if usable.isEmpty { unusableOnly = true } else {
                usableDemand = TLSDemand(requirement: .required, authentication: .dane(base: base, hostNames: names, records: usable))
            }
        }
        let demand: TLSDemand
        switch level {
        case .none: demand = .cleartext
        case .may: demand = .opportunistic
        case .encrypt: demand = .encrypted
        case .verify: demand = .webPKI(host)
        case .dane: demand = usableDemand ?? (unusableOnly ? .encrypted : .opportunistic)
        case .daneOnly:
            guard let usableDemand else {
                let what = unusableOnly ? "only unusable TLSA records" : "no DNSSEC-validated TLSA records"
                let reason = "local level dane-only for \(facts.domain), but MX host \(host) has \(what)"
                return .skip(rule: .localDaneOnlyRefused, outcome: .deferred(.cryptographicFailure, reason),
                             alert: PolicyAlert(resultType: .daneRequired, domain: facts.domain, mxHost: host, address: nil, policySource: .local,
                                                reason: reason, enforced: true), noteRefusedDowngrade: false)
            }
            demand = usableDemand
        }
        return .connect(HostConnectPlan(host: host, addresses: facts.addresses, demand: demand, testingFallback: nil, floor: demand.guaranteed,
                                        floors: [PolicyFloor(level: demand.guaranteed, source: .local, rule: .local)], source: .local,
                                        floorSource: .local, rule: .local,
                                        dane: facts.dane, alerts: [], policyNames: policyNames(facts)))
    }
}
