import Foundation
import MTASTSCore
import RelayConfig
import RelayDNS
import RelayPolicy
import RelayTLS
import SMTPCore

/// What `tlsrelayctl check DOMAIN` found: the planner's decisions for every MX host and one
/// live STARTTLS connection per planned attempt, verified exactly as a delivery would be,
/// without sending mail.
public struct DomainCheckReport: Sendable {
    public struct Connection: Sendable {
        public var address: String
        /// The attempt's kind: first, testing fallback, clear retry.
        public var attempt: PlannedAttempt.Kind
        /// The attempt's exact TLS demand.
        public var demand: TLSDemand
        /// The TCP connection was made.
        public var connected: Bool
        /// True when the connection met the attempt's policy (a delivery would have gone ahead).
        public var acceptable: Bool
        public var tls: TLSSessionInfo?
        public var offeredSTARTTLS: Bool
        /// Why it was not acceptable, if so (for a failed connect: the system's reason).
        public var problem: String?
    }

    public struct Host: Sendable {
        public var name: String
        public var decision: HostDecision
        public var connections: [Connection]

        /// The host's addresses (empty when skipped).
        public var addresses: [String] {
            if case .connect(let plan) = decision { return plan.addresses }
            return []
        }
    }

    public struct MX: Sendable {
        public var preference: Int
        /// The exchange, "." for a null MX.
        public var exchange: String
    }

    public var domain: String
    /// DNSSEC status of the MX answer; nil when the lookup failed.
    public var mxStatus: DNSSECStatus?
    /// data, nodata (implicit MX), nxdomain, null-mx or failed.
    public var mxResult: String
    public var mx: [MX]
    /// The MTA-STS decision the planner applied (nil: MTA-STS not consulted, e.g. a local level).
    public var mtaSTS: STSFact?
    public var localLevel: PolicySettings.DomainLevel?
    public var localLevelExpired: Bool
    /// The downgrade memory in force, as the daemon keeps it, and its mode.
    public var memory: DomainMemory?
    /// Why the domain's memory file cannot be read (it is then treated as `dane`), or why the
    /// shared store cannot be read (a delivery is then deferred).
    public var memoryUnreadable: String?
    public var memoryMode: PolicySettings.DowngradeMemory
    public var memoryGrace: Double
    public var hosts: [Host]
    /// Alerts a delivery would raise now.
    public var alerts: [PolicyAlert]
    /// nil when a delivery would go ahead; else the outcome a delivery would get.
    public var wouldFail: RecipientOutcome?
    public var deliverable: Bool { wouldFail == nil }
    /// The first acceptable attempt — the one a delivery would use — went without TLS.
    public var deliversInClear: Bool {
        guard deliverable, let first = hosts.lazy.flatMap(\.connections).first(where: \.acceptable) else { return false }
        return first.tls == nil
    }
    /// When the check ran (seconds since the epoch).
    public var time: Double
}

extension DeliveryAgent {
    /// Checks `domain` as a delivery would handle it now: the same planner, with the same MTA-STS
    /// cache and downgrade memory as the agent's (read-only in `tlsrelayctl check`), and a live
    /// connection per planned attempt up to the second EHLO, clear retries included. Sends no
    /// mail, raises no alerts, writes no state.
    /// - Parameter rawDomain: the destination domain (trailing dot and case ignored).
    public func check(domain rawDomain: String) async -> DomainCheckReport {
        let domain = (rawDomain.hasSuffix(".") ? String(rawDomain.dropLast()) : rawDomain).lowercased()
        let settings = self.settings
        let now = Date().timeIntervalSince1970
        let localEntry = settings.localLevel(for: domain)
        let lookup = settings.downgradeMemory == .off ? MemoryLookup.nothing : await memory?.lookup(domain) ?? .nothing
        let remembered = lookup.memory
        var report = DomainCheckReport(domain: domain, mxStatus: nil, mxResult: "failed", mx: [], mtaSTS: nil, localLevel: localEntry,
                                       localLevelExpired: localEntry?.isExpired(at: now) ?? false, memory: remembered,
                                       memoryUnreadable: lookup.fact?.unreadable ?? lookup.unavailable.map { "policy state store unavailable: \($0)" },
                                       memoryMode: settings.downgradeMemory, memoryGrace: settings.downgradeGrace,
                                       hosts: [], alerts: [], wouldFail: nil, time: now)
        // The MX records for display (the planner gets its own answer, from libunbound's cache).
        if let answer = try? await resolver.mx(domain) {
            report.mxStatus = answer.status
            report.mx = answer.records.map { DomainCheckReport.MX(preference: Int($0.preference), exchange: $0.exchange.isEmpty ? "." : $0.exchange) }
            report.mxResult = answer.status == .bogus ? "data" : answer.isNXDomain ? "nxdomain"
                : answer.records.isEmpty ? "nodata" : answer.records.contains(where: \.isNullMX) ? "null-mx" : "data"
        }
        var planner = DeliveryPlanner(domain: domain, recipients: [], settings: settings.planner(mtaSTS: sts != nil),
                                      local: localEntry.map(LocalPolicyFact.init), memory: lookup.fact, now: now, probe: true,
                                      state: lookup.unavailable.map { .unavailable(reason: $0) } ?? .available)
        let finished = await drive(&planner, effect: { effect in
            switch effect {
            case .alert(let alert): report.alerts.append(alert)
            case .hostDecided(let host, let decision): report.hosts.append(DomainCheckReport.Host(name: host, decision: decision, connections: []))
            case .mtaSTS(let fact): report.mtaSTS = fact
            case .log, .remember, .noteRefusedDowngrade, .tlsSession: break
            }
        }, attempt: { attempt in
            let (result, connection) = await self.run(attempt, envelope: nil, content: MessageContent([]), queueID: nil, probe: true)
            var entry = DomainCheckReport.Connection(address: attempt.address, attempt: attempt.kind, demand: attempt.demand,
                                                     connected: result.connectFailure == nil, acceptable: false, tls: connection?.tls,
                                                     offeredSTARTTLS: result.offeredSTARTTLS, problem: nil)
            if let failure = result.connectFailure {
                entry.problem = failure
            } else if let failure = result.failure {
                entry.problem = AttemptOutcomes.outcome(for: failure, relay: attempt.relay).reason
            } else {
                entry.acceptable = true
            }
            if let index = report.hosts.lastIndex(where: { $0.name == attempt.host }) {
                report.hosts[index].connections.append(entry)
            }
            return result
        })
        report.wouldFail = finished.deliverable ? nil : finished.lastFailure
        return report
    }
}
