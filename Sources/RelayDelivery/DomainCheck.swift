import Foundation
import RelayConfig
import RelayDNS
import RelayPolicy
import RelayTLS
import SMTPCore

/// What `tlsrelayctl check DOMAIN` found: the DNS and policy facts, and one live STARTTLS
/// connection per MX address, verified exactly as a delivery would be, without sending mail.
public struct DomainCheckReport: Sendable {
    public struct Connection: Sendable {
        public var address: String
        /// True when the connection met the host's policy (a delivery would have gone ahead).
        public var acceptable: Bool
        public var tls: TLSSessionInfo?
        public var offeredSTARTTLS: Bool
        /// Why it was not acceptable, if so.
        public var problem: String?
    }

    public struct Host: Sendable {
        public var name: String
        public var addresses: [String]
        public var addressStatus: String
        public var tlsa: [String]
        /// dane, mta-sts, mta-sts (testing), local, opportunistic, or skipped.
        public var policy: String
        public var requirement: String
        public var skippedBecause: String?
        public var connections: [Connection]
    }

    public var domain: String
    public var mxStatus: String
    public var mxRecords: [String]
    public var mtaSTS: String
    public var localLevel: String?
    public var hosts: [Host]
    /// nil when a delivery would go ahead; else the outcome a delivery would get.
    public var wouldFail: RecipientOutcome?
    public var deliverable: Bool { wouldFail == nil }
}

extension DeliveryAgent {
    /// Checks `domain` as a delivery would handle it, up to the second EHLO, on every MX address.
    /// Sends no mail and raises no alerts.
    public func check(domain rawDomain: String) async -> DomainCheckReport {
        let domain = (rawDomain.hasSuffix(".") ? String(rawDomain.dropLast()) : rawDomain).lowercased()
        var report = DomainCheckReport(domain: domain, mxStatus: "-", mxRecords: [], mtaSTS: "none", localLevel: nil, hosts: [], wouldFail: nil)
        var localLevel: PolicySettings.DomainLevel.Level?
        if let entry = settings.localLevel(for: domain) {
            if entry.isExpired(at: Date().timeIntervalSince1970) {
                report.localLevel = "\(entry.level.rawValue) (expired \(entry.expiresText ?? ""), not applied)"
            } else {
                localLevel = entry.level
                report.localLevel = entry.level.rawValue + (entry.reason.map { " (\($0))" } ?? "")
            }
        }
        let answer: DNSAnswer<MXRecord>
        do {
            answer = try await resolver.mx(domain)
        } catch {
            report.mxStatus = "lookup failed"
            report.wouldFail = .deferred("4.4.3", "MX lookup for \(domain) failed temporarily: \(error)")
            return report
        }
        report.mxStatus = answer.status.rawValue + (answer.isNXDomain ? ", NXDOMAIN" : answer.records.isEmpty ? ", no MX records" : "")
        report.mxRecords = answer.records.map { "\($0.preference) \($0.exchange.isEmpty ? "." : $0.exchange)" }
        let plan = MXPlan.make(answer: answer, domain: domain)
        guard case .hosts(let hosts, let mxSecure, _) = plan else {
            if case .outcome(let outcome) = plan { report.wouldFail = outcome }
            return report
        }
        var stsPolicy: STSPolicy?
        if let sts, localLevel == nil {
            let decision = await sts.decision(for: domain)
            if let failure = decision.temporaryFailure {
                report.mtaSTS = "discovery failed: \(failure)"
                report.wouldFail = .deferred("4.4.3", "MTA-STS discovery for \(domain) failed temporarily: \(failure)")
                return report
            }
            stsPolicy = decision.policy
            if let policy = decision.policy {
                report.mtaSTS = "mode \(policy.mode.rawValue), mx \(policy.mx.joined(separator: " ")), max_age \(policy.maxAge)\(decision.fromCache ? " (cached)" : "")"
            } else if let problem = decision.problem {
                report.mtaSTS = "none usable: \(problem.resultType): \(problem.reason)"
            }
        }
        var lastFailure = RecipientOutcome.deferred("4.4.1", "no MX host of \(domain) could be reached")
        var anyAcceptable = false
        for host in hosts {
            var entry = DomainCheckReport.Host(name: host, addresses: [], addressStatus: "-", tlsa: [], policy: "-", requirement: "-",
                                               skippedBecause: nil, connections: [])
            if let answers = try? await resolver.addresses(host) {
                entry.addressStatus = answers.ipv4.records.isEmpty && !answers.ipv6.records.isEmpty ? answers.ipv6.status.rawValue : answers.ipv4.status.rawValue
            }
            let (hostPlan, stsTesting) = await effectivePlan(domain: domain, host: host, mxSecure: mxSecure, localLevel: localLevel,
                                                             stsPolicy: stsPolicy, queueID: nil)
            switch hostPlan {
            case .skip(let outcome, _):
                entry.policy = "skipped"
                entry.skippedBecause = outcome.reason
                lastFailure = outcome
            case .connect(let addresses, let policy):
                entry.addresses = addresses
                entry.tlsa = policy.tlsaRecords.map(\.description)
                entry.policy = policy.source == .none ? "opportunistic" : policy.source.rawValue + (stsTesting ? " (testing)" : "")
                entry.requirement = "\(policy.requirement)" + {
                    switch policy.authentication {
                    case .opportunistic: return ", no certificate check"
                    case .encryptOnly: return ", no authentication"
                    case .dane(let base, _, let records): return ", DANE (TLSA base \(base), \(records.count) usable record(s))"
                    case .webPKI(let name): return ", WebPKI for \(name)"
                    }
                }()
                for address in addresses {
                    var job = makeJob(envelope: nil, indexes: [], tls: policy.requirement)
                    job.probeOnly = true
                    var connection = DomainCheckReport.Connection(address: address, acceptable: false, tls: nil, offeredSTARTTLS: false, problem: nil)
                    do {
                        let result = try await connect(address: address, host: policy.tlsaBaseDomain ?? host, job: job, content: [],
                                                       authentication: policy.authentication)
                        connection.tls = result.tls
                        connection.offeredSTARTTLS = result.result.offeredSTARTTLS
                        if let failure = result.result.failure {
                            let outcome = outcome(for: failure, relay: "\(host)[\(address)]:\(settings.port)")
                            connection.problem = outcome.reason
                            lastFailure = policy.requirement == .required && !stsTesting ? .deferred("4.7.5", outcome.reason) : outcome
                            if stsTesting { connection.problem! += " (MTA-STS testing: a delivery would go ahead without authentication)" ; connection.acceptable = true }
                        } else {
                            connection.acceptable = true
                        }
                    } catch {
                        connection.problem = "connect: \(describe(error))"
                        lastFailure = .deferred("4.4.1", "connect to \(host)[\(address)]:\(settings.port): \(describe(error))")
                    }
                    anyAcceptable = anyAcceptable || connection.acceptable
                    entry.connections.append(connection)
                }
            }
            report.hosts.append(entry)
        }
        if !anyAcceptable { report.wouldFail = lastFailure }
        return report
    }
}
