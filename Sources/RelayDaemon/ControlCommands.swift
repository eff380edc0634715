import Foundation
import NIOConcurrencyHelpers
import RelayConfig
import RelayDelivery
import RelayObservability
import RelayPolicy
import RelayQueue

/// Carries out control-socket requests (see `ControlServer`) against the running daemon.
struct ControlCommands: Sendable {
    /// Replaced in part on reload.
    let configuration: NIOLockedValueBox<RelayConfiguration>
    let spool: Spool
    let scheduler: Scheduler
    let stsCache: STSPolicyCache
    let memory: DowngradeMemoryStore
    let alerts: AlertJournal
    let startTime: Double
    /// The result of the last reload (SIGHUP or `tlsrelayctl reload`), nil before the first.
    let lastReload = NIOLockedValueBox<ReloadOutcome?>(nil)
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
            let now = Date().timeIntervalSince1970
            return [
                "version": Self.version,
                "uptime_seconds": Int(now - startTime),
                "hostname": configuration.server.hostname,
                "queue": ["active": counts.active, "deferred": counts.deferred, "held": counts.held, "total": counts.total],
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
                return ["flushed": await scheduler.flush(domain: domain)]
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
            return StateReports.policy(domain: domain, configuration: configuration, stsCache: stsCache, memory: memory,
                                       now: Date().timeIntervalSince1970)
        default:
            throw CommandError("unknown command '\(command)'")
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
