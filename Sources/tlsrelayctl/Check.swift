import ArgumentParser
import RelayIDNA
import Foundation
import Logging
import NIOPosix
import RelayConfig
import RelayDaemon
import RelayDelivery
import RelayDNS
import RelayHTTPS
import RelayPolicy
import RelayTLS

/// `tlsrelayctl check DOMAIN` — the posttls-finger of tlsrelay. Works without a running daemon:
/// it reads the configuration (resolver, CA file, local levels, downgrade memory mode) and the
/// daemon's MTA-STS cache and downgrade memory in `state_directory` (read-only: a policy it has
/// to fetch is not stored), drives the same planner as a delivery, and opens a STARTTLS
/// connection for every attempt the planner asks for, verified exactly as a delivery would be,
/// quitting before MAIL FROM.
/// Exit status: 0 deliverable securely as policy requires, 1 a delivery would defer or bounce, 2 error.
struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check how mail to DOMAIN would be delivered now (like posttls-finger).")
    @OptionGroup var options: Options
    @Argument(help: "Destination domain.") var domain: String

    func run() async throws {
        let written = domain.hasSuffix(".") ? String(domain.dropLast()) : domain
        // DNS, DANE and MTA-STS use the A-label form (RFC 5891).
        let name: String
        do throws(IDNA.ConversionError) {
            name = try IDNA.toASCII(written)
        } catch {
            FileHandle.standardError.write(Data("tlsrelayctl: \(error)\n".utf8))
            throw ExitCode(2)
        }
        if name != written.lowercased() && !options.json { print("\(IDNA.display(written, ascii: name))") }
        guard !name.isEmpty, name.utf8.count <= 253, name.split(separator: ".", omittingEmptySubsequences: false).allSatisfy({ label in
            !label.isEmpty && label.utf8.count <= 63 && label.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }
        }) else {
            let hint = name.contains("@") ? " (give the domain, not an address)" : ""
            FileHandle.standardError.write(Data("tlsrelayctl: '\(domain)' is not a domain name\(hint)\n".utf8))
            throw ExitCode(2)
        }
        let settings: RelayConfiguration
        do {
            settings = try options.settings()
        } catch let failure as Failure {
            FileHandle.standardError.write(Data("tlsrelayctl: \(failure.description)\n".utf8))
            throw ExitCode(2)
        }
        var logger = Logger(label: "tlsrelayctl")
        logger.logLevel = .critical
        let group = MultiThreadedEventLoopGroup.singleton
        let resolver: RelayDNS.Resolver
        let report: DomainCheckReport
        do {
            resolver = try RelayDNS.Resolver(configuration: Daemon.resolverConfiguration(settings.dns))
            let caFile = settings.delivery.tlsCAFile.isEmpty ? nil : settings.delivery.tlsCAFile
            let tls = try TLSClientContext(extraCAFile: caFile)
            // The daemon's policy state, read-only: state_directory or the shared database.
            let stores = try await PolicyStateStores.open(settings, logger: logger, readOnly: true, applicationName: "tlsrelayctl")
            let sts = STSPolicyService(resolver: resolver, cache: stores.sts,
                                       fetcher: STSPolicyFetcher(client: HTTPSClient(group: group, tlsContext: tls, userAgent: "tlsrelayctl/\(TLSRelayVersion.string)")),
                                       logger: logger)
            let memory = stores.memory
            var timeouts = ClientTimeouts()
            timeouts.connect = Double(min(settings.delivery.connectTimeout, 15))
            timeouts.command = Double(min(settings.delivery.commandTimeout, 30))
            timeouts.tlsHandshake = Double(min(settings.delivery.tlsHandshakeTimeout, 30))
            let agent = DeliveryAgent(
                resolver: resolver, group: group, tlsContext: tls,
                settings: .init(heloName: settings.server.hostname, port: settings.delivery.port, timeouts: timeouts,
                                daneForInsecureMX: settings.policy.daneForInsecureMX, localLevels: settings.policy.domains,
                                downgradeMemory: settings.policy.downgradeMemory, downgradeGrace: Double(settings.policy.downgradeGrace),
                                connectionCacheTime: 0),
                logger: logger, sts: sts, memory: memory)
            report = await agent.check(domain: name)
            resolver.shutdown()
        } catch {
            FileHandle.standardError.write(Data("tlsrelayctl: cannot check \(domain): \(error)\n".utf8))
            throw ExitCode(2)
        }
        if options.json {
            options.printJSON(Self.json(report))
        } else {
            Self.printTable(report)
        }
        throw ExitCode(report.deliverable ? 0 : 1)
    }

    static func demandJSON(_ demand: TLSDemand) -> [String: Any] {
        var result: [String: Any] = ["starttls": "\(demand.requirement)"]
        switch demand.authentication {
        case .none: result["authentication"] = "none"
        case .webPKI(let name): result["authentication"] = "webpki"; result["name"] = name
        case .dane(let base, _, let records): result["authentication"] = "dane"; result["tlsa_base"] = base; result["usable_records"] = records.count
        }
        return result
    }

    static func tlsJSON(_ tls: TLSSessionInfo) -> [String: Any] {
        var info: [String: Any] = ["protocol": tls.protocolVersion, "cipher": tls.cipher, "verified": tls.verified,
                                   "peer_subject": tls.peerCertificateSubject ?? "", "peer_issuer": tls.peerCertificateIssuer ?? ""]
        if let spki = tls.peerSPKISHA256 { info["spki_sha256"] = spki }
        if let match = tls.daneMatch {
            info["dane_match"] = ["usage": match.usage, "selector": match.selector, "matching_type": match.matchingType,
                                  "data": match.dataHex, "depth": match.depth] as [String: Any]
        }
        return info
    }

    static func json(_ report: DomainCheckReport) -> [String: Any] {
        var result: [String: Any] = [
            "domain": report.domain, "checked_at": report.time, "deliverable": report.deliverable,
            "mx": ["dnssec": report.mxStatus.map { $0.rawValue as Any } ?? NSNull(), "result": report.mxResult,
                   "records": report.mx.map { ["preference": $0.preference, "exchange": $0.exchange] as [String: Any] }] as [String: Any],
        ]
        if let sts = report.mtaSTS {
            var entry: [String: Any] = ["cached": sts.fromCache]
            if let policy = sts.policy { entry["mode"] = policy.mode.rawValue; entry["mx"] = policy.mx; entry["max_age"] = policy.maxAge }
            else { entry["mode"] = NSNull() }
            if let problem = sts.problem { entry["problem"] = ["result_type": problem.resultType.rawValue, "reason": problem.reason] }
            if let failure = sts.temporaryFailure { entry["temporary_failure"] = failure }
            result["mta_sts"] = entry
        } else {
            result["mta_sts"] = NSNull()
        }
        if let level = report.localLevel {
            var entry: [String: Any] = ["level": level.level.rawValue, "expired": report.localLevelExpired]
            if let reason = level.reason { entry["reason"] = reason }
            if let expires = level.expiresText { entry["expires"] = expires }
            result["local_level"] = entry
        } else {
            result["local_level"] = NSNull()
        }
        if let memory = report.memory {
            var entry: [String: Any] = ["mode": report.memoryMode.rawValue, "strongest": memory.strongest.rawValue, "grace_seconds": report.memoryGrace]
            if let first = memory.downgradeFirstSeen { entry["downgrade_first_refused"] = first }
            result["downgrade_memory"] = entry
        } else if let unreadable = report.memoryUnreadable {
            result["downgrade_memory"] = ["mode": report.memoryMode.rawValue, "strongest": "dane", "unreadable": unreadable]
        } else {
            result["downgrade_memory"] = NSNull()
        }
        result["hosts"] = report.hosts.map { host -> [String: Any] in
            var entry: [String: Any] = ["name": host.name, "addresses": host.addresses]
            switch host.decision {
            case .skip(let rule, let outcome, _, _):
                entry["skipped"] = true
                entry["rule"] = rule.rawValue
                entry["skip_reason"] = outcome.reason
                entry["skip_status"] = outcome.status.description
            case .connect(let plan):
                entry["skipped"] = false
                entry["rule"] = plan.rule.rawValue
                entry["policy"] = ["source": plan.source.rawValue, "testing": plan.testingFallback != nil, "name": plan.policyName(plan.source)] as [String: Any]
                entry["floor"] = plan.floor.rawValue
                entry["demand"] = demandJSON(plan.demand)
                if case .records(_, _, let all, let usable) = plan.dane {
                    entry["tlsa"] = all.map { ["record": $0.description, "usable": usable.contains($0)] as [String: Any] }
                } else {
                    entry["tlsa"] = [Any]()
                }
            }
            entry["connections"] = host.connections.map { connection -> [String: Any] in
                var item: [String: Any] = ["address": connection.address, "attempt": connection.attempt.rawValue,
                                           "demand": demandJSON(connection.demand), "connected": connection.connected,
                                           "acceptable": connection.acceptable, "starttls_offered": connection.offeredSTARTTLS]
                if let problem = connection.problem { item["problem"] = problem }
                if let tls = connection.tls { item["tls"] = tlsJSON(tls) }
                return item
            }
            return entry
        }
        result["alerts"] = report.alerts.map { alert -> [String: Any] in
            ["result_type": alert.resultType.rawValue, "policy_source": alert.policySource.rawValue, "enforced": alert.enforced,
             "mx_host": alert.mxHost.map { $0 as Any } ?? NSNull(), "reason": alert.reason]
        }
        if let failure = report.wouldFail {
            result["verdict"] = ["action": failure.kind.rawValue, "status": failure.status.description, "reason": failure.reason]
        } else {
            result["verdict"] = ["action": "delivered", "status": "2.0.0", "in_clear": report.deliversInClear,
                                 "reason": "a delivery now would go ahead as its policy requires" + (report.deliversInClear ? ", in clear" : "")]
        }
        return result
    }

    static func printTable(_ report: DomainCheckReport) {
        print("domain:     \(report.domain)")
        let mx = report.mx.sorted { ($0.preference, $0.exchange) < ($1.preference, $1.exchange) }
            .map { "\($0.preference) \($0.exchange)" }.joined(separator: ", ")
        let mxText: String
        switch report.mxResult {
        case "failed": mxText = "lookup failed"
        case "nxdomain": mxText = "the domain does not exist (NXDOMAIN)"
        case "nodata": mxText = "no MX records: the domain itself is the host"
        default: mxText = mx
        }
        print("MX:         \(mxText)\(report.mxStatus.map { " [DNSSEC: \($0.rawValue)]" } ?? "")")
        if let sts = report.mtaSTS {
            var text: String
            if let failure = sts.temporaryFailure {
                text = "discovery failed: \(failure)"
            } else if let policy = sts.policy {
                text = "mode \(policy.mode.rawValue), mx \(policy.mx.joined(separator: " ")), max_age \(policy.maxAge)\(sts.fromCache ? " (cached)" : "")"
            } else {
                text = "none"
            }
            if let problem = sts.problem { text += " [\(problem.resultType.rawValue): \(problem.reason)]" }
            print("MTA-STS:    \(text)")
        } else if report.localLevel != nil && !report.localLevelExpired {
            print("MTA-STS:    not consulted (a local level applies)")
        }
        if let level = report.localLevel {
            print("local:      \(level.level.rawValue)\(level.reason.map { " (\($0))" } ?? "")\(level.expiresText.map { ", until \($0)" } ?? "")\(report.localLevelExpired ? " [EXPIRED, not applied]" : "")")
        }
        if let memory = report.memory {
            print("memory:     \(memory.strongest.rawValue) (\(report.memoryMode.rawValue))" + (memory.downgradeFirstSeen.map {
                ", downgrade first refused \(Int(max(0, report.time - $0))) s ago, grace \(Int(report.memoryGrace)) s" } ?? ""))
        } else if let unreadable = report.memoryUnreadable {
            print("memory:     UNREADABLE, treated as dane (\(report.memoryMode.rawValue)): \(unreadable)")
        }
        for host in report.hosts {
            print("")
            switch host.decision {
            case .skip(let rule, let outcome, _, _):
                print("host \(host.name)")
                print("  skipped (\(outcome.status), rule \(rule.rawValue)): \(outcome.reason)")
                continue
            case .connect(let plan):
                print("host \(host.name) [addresses: \(plan.addresses.joined(separator: ", "))]")
                let policy = plan.source == .none ? "no policy" : plan.source == .memory ? "downgrade memory (tofu)"
                    : plan.source.rawValue + (plan.testingFallback != nil ? " (testing)" : "")
                if let fallback = plan.testingFallback {
                    print("  policy: \(policy); tries \(plan.demand), reports a failure, then \(fallback) [rule \(plan.rule.rawValue), floor \(plan.floor.rawValue)]")
                } else {
                    print("  policy: \(policy); \(plan.demand) [rule \(plan.rule.rawValue), floor \(plan.floor.rawValue)]")
                }
                if case .records(_, _, let all, let usable) = plan.dane {
                    for record in all { print("  TLSA \(record)\(usable.contains(record) ? "" : " (unusable)")") }
                }
            }
            for connection in host.connections {
                var line = "  \(connection.address)\(connection.attempt == .first ? "" : " (\(connection.attempt.rawValue): \(connection.demand))"): "
                if !connection.connected {
                    line += "connect failed: \(connection.problem ?? "?")"
                } else {
                    if let tls = connection.tls {
                        line += "\(tls.verified ? "Verified" : "Untrusted") \(tls.protocolVersion) \(tls.cipher), peer \(tls.peerCertificateSubject ?? "?")"
                        if let spki = tls.peerSPKISHA256 { line += ", SPKI SHA-256 \(spki)" }
                        if let match = tls.daneMatch { line += ", DANE TLSA \(match.usage) \(match.selector) \(match.matchingType) matched at depth \(match.depth)" }
                    } else if connection.problem == nil {
                        line += connection.offeredSTARTTLS ? "no TLS (STARTTLS offered, not used): in clear" : "no STARTTLS offered: in clear"
                    }
                    if let problem = connection.problem { line += (connection.tls == nil ? "" : " -- ") + problem }
                }
                line += connection.acceptable ? "  [ok]" : "  [FAIL]"
                print(line)
            }
        }
        for alert in report.alerts {
            print("")
            print("alert (\(alert.enforced ? "enforced" : "reported")): \(alert.resultType.rawValue) [\(alert.policySource.rawValue)] \(alert.reason)")
        }
        print("")
        if let failure = report.wouldFail {
            print("verdict: a delivery now would be \(failure.kind.rawValue) (\(failure.status)): \(failure.reason)")
        } else if report.deliversInClear {
            print("verdict: deliverable as its policy requires, IN CLEAR (no policy asks for TLS here)")
        } else {
            print("verdict: deliverable as its policy requires")
        }
    }
}
