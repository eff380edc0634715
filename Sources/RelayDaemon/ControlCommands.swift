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

    static let version = "0.1.0"

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
                "recent_alerts": alerts.recent().map { entry in
                    ["time": entry.time, "kind": entry.alert.kind.rawValue, "domain": entry.alert.domain,
                     "result_type": entry.alert.resultType, "message": entry.alert.message] as [String: Any]
                },
            ] as [String: Any]
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
            var result: [String: Any] = ["domain": domain]
            if let cached = stsCache.policy(for: domain) {
                result["mta_sts"] = ["id": cached.id, "mode": cached.policy.mode.rawValue, "max_age": cached.policy.maxAge,
                                     "mx": cached.policy.mx, "fetched_at": cached.fetchedAt, "expires_at": cached.expiresAt,
                                     "expired": cached.isExpired(now: Date().timeIntervalSince1970)] as [String: Any]
            }
            if let remembered = memory.memory(of: domain) {
                var entry: [String: Any] = ["strongest": remembered.strongest.rawValue, "achieved_at": remembered.achievedAt]
                if let first = remembered.downgradeFirstSeen { entry["downgrade_first_seen"] = first }
                result["downgrade_memory"] = entry
            }
            if let level = configuration.policy.level(for: domain) {
                var entry: [String: Any] = ["level": level.level.rawValue]
                if let reason = level.reason { entry["reason"] = reason }
                if let expires = level.expiresText { entry["expires"] = expires }
                if level.expires != nil { entry["expired"] = level.isExpired(at: Date().timeIntervalSince1970) }
                result["local_level"] = entry
            }
            result["downgrade_memory_mode"] = configuration.policy.downgradeMemory.rawValue
            return result
        default:
            throw CommandError("unknown command '\(command)'")
        }
    }

    func describe(_ id: QueueID, withContent: Bool) async throws -> [String: Any]? {
        guard let envelope = try? spool.envelope(of: id) else { return nil }
        let record = try? spool.deliveryRecord(of: id)
        let held = await scheduler.isHeld(id)
        let inFlight = await scheduler.isInFlight(id)
        var recipients: [[String: Any]] = []
        for (index, recipient) in envelope.transaction.recipients.enumerated() {
            let state = record?.recipients[index]
            var entry: [String: Any] = ["address": recipient.mailbox.address, "status": state?.status.rawValue ?? "pending"]
            if let reason = state?.lastReason { entry["last_reason"] = reason }
            if let code = state?.lastStatusCode { entry["dsn"] = code }
            recipients.append(entry)
        }
        var entry: [String: Any] = [
            "queue_id": id.rawValue, "size": envelope.size, "arrival_time": envelope.arrivalTime,
            "sender": envelope.transaction.sender?.address ?? "", "recipients": recipients,
            "attempts": record?.attempts ?? 0, "held": held, "in_delivery": inFlight,
        ]
        if let next = record?.nextAttempt, !held { entry["next_attempt"] = next }
        if withContent {
            entry["client_address"] = envelope.clientAddress
            entry["helo"] = envelope.heloName
            if let content = try? spool.content(of: id) {
                let headers = content.prefix(64 * 1024)
                let end = headers.firstRange(of: [13, 10, 13, 10]).map { $0.upperBound } ?? headers.endIndex
                entry["headers"] = String(decoding: headers[..<end], as: UTF8.self)
            }
        }
        return entry
    }
}
