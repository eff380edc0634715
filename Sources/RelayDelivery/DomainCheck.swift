import Foundation
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
        /// The attempt's kind (first, testing-fallback, clear-retry) and exact TLS demand.
        public var attempt: String
        public var demand: String
        /// True when the connection met the attempt's policy (a delivery would have gone ahead).
        public var acceptable: Bool
        public var tls: TLSSessionInfo?
        public var offeredSTARTTLS: Bool
        /// Why it was not acceptable, if so.
        public var problem: String?
    }

    public struct Host: Sendable {
        public var name: String
        public var addresses: [String]
        public var tlsa: [String]
        /// The source of the host's policy: dane, mta-sts, mta-sts (testing), local, tofu, opportunistic, or skipped.
        public var policy: String
        /// The planner's rule (its row in the policy table).
        public var rule: String
        /// The first attempt's TLS demand.
        public var requirement: String
        /// The highest policy floor: none, tls, mta-sts, dane.
        public var floor: String
        public var skippedBecause: String?
        public var connections: [Connection]
    }

    public var domain: String
    public var mxStatus: String
    public var mxRecords: [String]
    public var mtaSTS: String
    public var localLevel: String?
    /// The downgrade memory in force, as the daemon keeps it.
    public var memory: String?
    public var hosts: [Host]
    /// Alerts a delivery would raise now.
    public var alerts: [PolicyAlert]
    /// nil when a delivery would go ahead; else the outcome a delivery would get.
    public var wouldFail: RecipientOutcome?
    public var deliverable: Bool { wouldFail == nil }
}

extension DeliveryAgent {
    /// Checks `domain` as a delivery would handle it now: the same planner, with the same MTA-STS
    /// cache and downgrade memory as the agent's (read-only in `tlsrelayctl check`), and a live
    /// connection per planned attempt up to the second EHLO, clear retries included. Sends no
    /// mail, raises no alerts, writes no state.
    public func check(domain rawDomain: String) async -> DomainCheckReport {
        let domain = (rawDomain.hasSuffix(".") ? String(rawDomain.dropLast()) : rawDomain).lowercased()
        let settings = self.settings
        let now = Date().timeIntervalSince1970
        var report = DomainCheckReport(domain: domain, mxStatus: "-", mxRecords: [], mtaSTS: "none", localLevel: nil, memory: nil,
                                       hosts: [], alerts: [], wouldFail: nil)
        let localEntry = settings.localLevel(for: domain)
        if let entry = localEntry {
            report.localLevel = entry.isExpired(at: now) ? "\(entry.level.rawValue) (expired \(entry.expiresText ?? ""), not applied)"
                : entry.level.rawValue + (entry.reason.map { " (\($0))" } ?? "")
        }
        let remembered = settings.downgradeMemory == .off ? nil : memory?.memory(of: domain)
        if let remembered {
            report.memory = "\(remembered.strongest.rawValue) (\(settings.downgradeMemory.rawValue))"
                + (remembered.downgradeFirstSeen.map { ", downgrade first refused \(Int(now - $0)) s ago, grace \(Int(settings.downgradeGrace)) s" } ?? "")
        }
        // The MX and MTA-STS facts for display: looked up once more here (the planner gets its own).
        if let answer = try? await resolver.mx(domain) {
            report.mxStatus = answer.status.rawValue + (answer.isNXDomain ? ", NXDOMAIN" : answer.records.isEmpty ? ", no MX records" : "")
            report.mxRecords = answer.records.map { "\($0.preference) \($0.exchange.isEmpty ? "." : $0.exchange)" }
        } else {
            report.mxStatus = "lookup failed"
        }
        var planner = DeliveryPlanner(domain: domain, recipients: [], settings: settings.planner(mtaSTS: sts != nil),
                                      local: localEntry.map(LocalPolicyFact.init), memory: remembered?.fact, now: now, probe: true)
        var stsText: String?
        let finished = await drive(&planner, effect: { effect in
            switch effect {
            case .log(_, let text):
                if text.hasPrefix("MTA-STS policy of") { stsText = text }
            case .alert(let alert):
                report.alerts.append(alert)
            case .hostDecided(let host, let decision):
                report.hosts.append(Self.describe(host: host, decision))
            case .remember, .noteRefusedDowngrade:
                break
            }
        }, attempt: { attempt in
            let (result, connection) = await self.run(attempt, envelope: nil, content: [], queueID: nil, probe: true)
            var entry = DomainCheckReport.Connection(address: attempt.address, attempt: attempt.kind.rawValue, demand: attempt.demand.description,
                                                     acceptable: false, tls: connection?.tls, offeredSTARTTLS: result.offeredSTARTTLS, problem: nil)
            if let failure = result.connectFailure {
                entry.problem = "connect: \(failure)"
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
        if let stsText { report.mtaSTS = String(stsText.dropFirst("MTA-STS policy of \(domain)".count)).trimmingCharacters(in: .whitespaces) }
        else if let problem = report.alerts.first(where: { $0.policySource == .mtaSTS && $0.mxHost == nil }) {
            report.mtaSTS = "none usable: \(problem.resultType.rawValue): \(problem.reason)"
        }
        report.wouldFail = finished.deliverable ? nil : finished.lastFailure
        return report
    }

    static func describe(host: String, _ decision: HostDecision) -> DomainCheckReport.Host {
        switch decision {
        case .skip(let rule, let outcome, _, _):
            return DomainCheckReport.Host(name: host, addresses: [], tlsa: [], policy: "skipped", rule: rule.rawValue, requirement: "-",
                                          floor: "-", skippedBecause: outcome.reason, connections: [])
        case .connect(let plan):
            var tlsa: [String] = []
            if case .records(_, _, let all, let usable) = plan.dane {
                tlsa = all.map { $0.description + (usable.contains($0) ? "" : " (unusable)") }
            }
            let policy = plan.source == .none ? "opportunistic" : plan.source.rawValue + (plan.testingFallback != nil ? " (testing)" : "")
            return DomainCheckReport.Host(name: host, addresses: plan.addresses, tlsa: tlsa, policy: policy, rule: plan.rule.rawValue,
                                          requirement: plan.demand.description, floor: plan.floor.rawValue, skippedBecause: nil, connections: [])
        }
    }
}
