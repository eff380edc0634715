import ArgumentParser
import Foundation
import Logging
import NIOPosix
import RelayConfig
import RelayDaemon
import RelayDelivery
import RelayDNS
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
            let sts = STSPolicyService(resolver: resolver, cache: try STSPolicyCache(stateDirectory: settings.stateDirectory, readOnly: true),
                                       fetcher: STSPolicyFetcher(extraCAFile: caFile), logger: logger)
            let memory = try DowngradeMemoryStore(stateDirectory: settings.stateDirectory, readOnly: true)
            var timeouts = ClientTimeouts()
            timeouts.connect = Double(min(settings.delivery.connectTimeout, 15))
            timeouts.command = Double(min(settings.delivery.commandTimeout, 30))
            let agent = DeliveryAgent(
                resolver: resolver, group: group, tlsContext: tls,
                settings: .init(heloName: settings.server.hostname, port: settings.delivery.port, timeouts: timeouts,
                                daneForInsecureMX: settings.policy.daneForInsecureMX, localLevels: settings.policy.domains,
                                downgradeMemory: settings.policy.downgradeMemory, downgradeGrace: Double(settings.policy.downgradeGrace),
                                connectionCacheTime: 0),
                logger: logger, sts: sts, memory: memory)
            report = await agent.check(domain: domain)
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

    static func json(_ report: DomainCheckReport) -> [String: Any] {
        var result: [String: Any] = [
            "domain": report.domain, "mx_status": report.mxStatus, "mx": report.mxRecords, "mta_sts": report.mtaSTS,
            "deliverable": report.deliverable,
            "hosts": report.hosts.map { host -> [String: Any] in
                var entry: [String: Any] = ["name": host.name, "addresses": host.addresses, "tlsa": host.tlsa, "policy": host.policy,
                                            "rule": host.rule, "requirement": host.requirement, "floor": host.floor]
                if let reason = host.skippedBecause { entry["skipped_because"] = reason }
                entry["connections"] = host.connections.map { connection -> [String: Any] in
                    var item: [String: Any] = ["address": connection.address, "attempt": connection.attempt, "demand": connection.demand,
                                               "acceptable": connection.acceptable, "starttls_offered": connection.offeredSTARTTLS]
                    if let problem = connection.problem { item["problem"] = problem }
                    if let tls = connection.tls {
                        var info: [String: Any] = ["protocol": tls.protocolVersion, "cipher": tls.cipher, "verified": tls.verified,
                                                   "peer_subject": tls.peerCertificateSubject ?? "", "peer_issuer": tls.peerCertificateIssuer ?? ""]
                        if let match = tls.daneMatch {
                            info["dane_match"] = "\(match.usage) \(match.selector) \(match.matchingType) \(match.dataHex) at depth \(match.depth)"
                        }
                        item["tls"] = info
                    }
                    return item
                }
                return entry
            },
        ]
        if let level = report.localLevel { result["local_level"] = level }
        if let memory = report.memory { result["downgrade_memory"] = memory }
        result["alerts"] = report.alerts.map { alert -> [String: Any] in
            ["result_type": alert.resultType.rawValue, "policy_source": alert.policySource.rawValue, "enforced": alert.enforced,
             "mx_host": alert.mxHost ?? "", "reason": alert.reason]
        }
        if let failure = report.wouldFail {
            result["verdict"] = ["action": failure.kind.rawValue, "status": failure.status.description, "reason": failure.reason]
        }
        return result
    }

    static func printTable(_ report: DomainCheckReport) {
        print("domain:     \(report.domain)")
        print("MX:         \(report.mxRecords.isEmpty ? "-" : report.mxRecords.joined(separator: ", ")) [DNSSEC: \(report.mxStatus)]")
        print("MTA-STS:    \(report.mtaSTS)")
        if let level = report.localLevel { print("local:      \(level)") }
        if let memory = report.memory { print("memory:     \(memory)") }
        for host in report.hosts {
            print("")
            print("host \(host.name) [addresses: \(host.addresses.joined(separator: ", "))]")
            if let reason = host.skippedBecause {
                print("  skipped: \(reason)")
                continue
            }
            print("  policy: \(host.policy); \(host.requirement) [rule \(host.rule), floor \(host.floor)]")
            for record in host.tlsa { print("  TLSA \(record)") }
            for connection in host.connections {
                var line = "  \(connection.address)\(connection.attempt == "first" ? "" : " (\(connection.attempt): \(connection.demand))"): "
                if let tls = connection.tls {
                    line += "\(tls.verified ? "Verified" : "Untrusted") \(tls.protocolVersion) \(tls.cipher), peer \(tls.peerCertificateSubject ?? "?")"
                    if let match = tls.daneMatch { line += ", DANE TLSA \(match.usage) \(match.selector) \(match.matchingType) matched at depth \(match.depth)" }
                } else {
                    line += connection.offeredSTARTTLS ? "no TLS" : "no STARTTLS offered"
                }
                if let problem = connection.problem { line += " -- \(problem)" }
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
        } else {
            print("verdict: deliverable as its policy requires")
        }
    }
}
