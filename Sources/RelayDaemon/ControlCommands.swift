import Foundation
import NIOConcurrencyHelpers
import RelayConfig
import RelayDelivery
import RelayObservability
import RelayPolicy
import RelayQueue
import RelayIDNA
import RelayTLSRPT
import TLSRPTCore

/// Carries out control-socket requests (see `ControlServer`) against the running daemon.
struct ControlCommands: Sendable {
    /// Replaced in part on reload.
    let configuration: NIOLockedValueBox<RelayConfiguration>
    let spool: Spool
    let scheduler: Scheduler
    let stsCache: any STSPolicyStore
    let memory: any DowngradeMemoryBackend
    let alerts: AlertJournal
    let startTime: Double
    /// TLS reporting; nil when `tlsrpt.enabled` is false.
    let reports: TLSReportService?
    /// The result of the last reload (SIGHUP or `tlsrelayctl reload`), nil before the first.
    let lastReload = NIOLockedValueBox<ReloadOutcome?>(nil)

    init(configuration: NIOLockedValueBox<RelayConfiguration>, spool: Spool, scheduler: Scheduler, stsCache: any STSPolicyStore,
         memory: any DowngradeMemoryBackend, alerts: AlertJournal, startTime: Double, reports: TLSReportService? = nil) {
        self.configuration = configuration
        self.spool = spool
        self.scheduler = scheduler
        self.stsCache = stsCache
        self.memory = memory
        self.alerts = alerts
        self.startTime = startTime
        self.reports = reports
    }
    /// Re-reads the configuration (set by the daemon once the parts exist).
    let reloader = NIOLockedValueBox<(@Sendable () -> ReloadOutcome)?>(nil)

    static let version = TLSRelayVersion.string

    func handle(_ data: Data) async -> Data {
        let response: [String: Any]
        do {
            guard let request = try JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let command = request["command"] as? String
            else { throw CommandError("request must be a JSON object with a \"command\"") }
            response = ["ok": true, "result": try await run(command, request)]
        } catch let error as CommandError {
            response = ["ok": false, "error": error.reason]
        } catch let error as Scheduler.OperationError {
            response = ["ok": false, "error": error.description]
        } catch {
            response = ["ok": false, "error": "\(error)"]
        }
        return (try? JSONSerialization.data(withJSONObject: response, options: [.sortedKeys])) ?? Data(#"{"ok":false}"#.utf8)
    }

    struct CommandError: Error {
        let reason: String
        init(_ reason: String) { self.reason = reason }
    }

    func queueID(_ request: [String: Any]) throws -> QueueID {
        guard let text = request["id"] as? String else { throw CommandError("this command needs a queue id") }
        guard let id = QueueID(text) else { throw CommandError("'\(text)' is not a queue id") }
        return id
    }

    func run(_ command: String, _ request: [String: Any]) async throws -> Any {
        switch command {
        case "status":
            let configuration = self.configuration.withLockedValue { $0 }
            let counts = await scheduler.counts()
            let suspended = await scheduler.suspendedDestinations()
            let now = Date().timeIntervalSince1970
            return [
                "version": Self.version,
                "uptime_seconds": Int(now - startTime),
                "hostname": configuration.server.hostname,
                "queue": ["active": counts.active, "deferred": counts.deferred, "held": counts.held, "total": counts.total],
                "suspended_destinations": suspended.map { destination in
                    ["domain": destination.domain, "display": IDNA.display(IDNA.toUnicode(destination.domain) ?? destination.domain, ascii: destination.domain), "until": destination.until,
                     "status": destination.status ?? NSNull(), "reason": destination.reason ?? NSNull()] as [String: Any]
                },
                "last_reload": lastReload.withLockedValue { $0 }.map { $0.json } ?? NSNull(),
                "recent_alerts": alerts.recent().map { entry in
                    ["time": entry.time, "kind": entry.alert.kind.rawValue, "domain": entry.alert.domain,
                     "result_type": entry.alert.resultType, "message": entry.alert.message] as [String: Any]
                },
            ] as [String: Any]
        case "reload":
            guard let reload = reloader.withLockedValue({ $0 }) else { throw CommandError("the daemon is still starting") }
            return reload().json
        case "queue.list":
            var list: [[String: Any]] = []
            for id in try spool.list() {
                if let entry = try await describe(id, withContent: false) { list.append(entry) }
            }
            return list
        case "queue.show":
            let id = try queueID(request)
            guard let entry = try await describe(id, withContent: true) else { throw CommandError("no queued message \(id)") }
            return entry
        case "queue.flush":
            if let domain = request["domain"] as? String {
                // Queued mail is routed by the A-label form (RFC 5891).
                let ascii: String
                do throws(IDNA.ConversionError) { ascii = try IDNA.toASCII(domain) } catch { throw CommandError("\(error)") }
                return ["flushed": await scheduler.flush(domain: ascii)]
            }
            if request["id"] != nil {
                let id = try queueID(request)
                if await scheduler.isHeld(id) { throw CommandError("message \(id) is on hold; release it first") }
                return ["flushed": await scheduler.flush([id])]
            }
            return ["flushed": await scheduler.flush(nil)]
        case "queue.hold":
            try await scheduler.hold(try queueID(request))
            return ["held": true]
        case "queue.release":
            try await scheduler.release(try queueID(request))
            return ["released": true]
        case "queue.delete":
            try await scheduler.delete(try queueID(request))
            return ["deleted": true]
        case "policy.show":
            let configuration = self.configuration.withLockedValue { $0 }
            guard let domain = (request["domain"] as? String)?.lowercased() else { throw CommandError("policy.show needs a domain") }
            return await StateReports.policy(domain: domain, configuration: configuration, stsCache: stsCache, memory: memory,
                                       now: Date().timeIntervalSince1970)
        case "tlsrpt.list", "tlsrpt.show", "tlsrpt.send":
            return try await tlsrpt(command, request)
        default:
            throw CommandError("unknown command '\(command)'")
        }
    }

    /// `tlsrelayctl tlsrpt list | show DOMAIN [--date D] | send [DOMAIN] [--date D]`.
    func tlsrpt(_ command: String, _ request: [String: Any]) async throws -> Any {
        guard let reports else {
            throw CommandError("TLS reporting is off in the running daemon (tlsrpt.enabled was false when it started; [tlsrpt] changes need a restart)")
        }
        let now = Date().timeIntervalSince1970
        var day = TLSReport.dayStart(now)
        if let text = request["date"] as? String {
            guard let start = SessionResultStore.dayStart(named: text) else { throw CommandError("'\(text)' is not a date (YYYY-MM-DD)") }
            day = start
        }
        var domain = (request["domain"] as? String)?.lowercased()
        if let name = domain {
            let trimmed = name.hasSuffix(".") ? String(name.dropLast()) : name
            do throws(IDNA.ConversionError) { domain = try IDNA.toASCII(trimmed) } catch { throw CommandError("\(error)") }
        }
        switch command {
        case "tlsrpt.list":
            let counts = try await reports.counts(dayStart: day)
            return [
                "date": TLSReport.dayName(day),
                "domains": counts.keys.sorted().map { ["domain": $0, "successful": counts[$0]!.successes, "failed": counts[$0]!.failures] as [String: Any] },
            ] as [String: Any]
        case "tlsrpt.show":
            guard let domain else { throw CommandError("tlsrpt show needs a domain") }
            guard let report = try await reports.report(domain: domain, dayStart: day, until: min(now, Double(day + TLSReport.day))) else {
                throw CommandError("no unreported TLS sessions to \(domain) on \(TLSReport.dayName(day))")
            }
            return try JSONSerialization.jsonObject(with: Data(report.json()))
        default:
            let outcomes = await reports.send(now: now, only: domain, dayStart: request["date"] != nil || domain != nil ? day : nil)
            return outcomes.map { outcome in
                ["domain": outcome.domain, "report_id": outcome.reportID ?? NSNull(), "skipped": outcome.skipped ?? NSNull(),
                 "retry_later": outcome.retryLater,
                 "deliveries": outcome.deliveries.map { ["uri": $0.uri, "sent": $0.succeeded, "detail": $0.detail] as [String: Any] }] as [String: Any]
            }
        }
    }

    func describe(_ id: QueueID, withContent: Bool) async throws -> [String: Any]? {
        let held = await scheduler.isHeld(id)
        let inFlight = await scheduler.isInFlight(id)
        return StateReports.message(id, spool: spool, withContent: withContent, held: held, inDelivery: inFlight)
    }
}

/// What a reload did: applied, or refused with the file's error.
struct ReloadOutcome: Sendable {
    /// Seconds since the epoch.
    var time: Double
    var applied: Bool
    var message: String

    var json: [String: Any] { ["time": time, "applied": applied, "message": message] }
}
