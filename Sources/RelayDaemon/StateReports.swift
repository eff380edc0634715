import Foundation
import RelayConfig
import RelayDelivery
import RelayPolicy
import RelayQueue

/// The version of tlsrelayd and tlsrelayctl (`--version`, `tlsrelayctl status`).
public enum TLSRelayVersion {
    public static let string = "0.1.0"
}

/// What the daemon's state says about a message or a domain, as JSON-ready dictionaries: built
/// the same way by the control socket and by `tlsrelayctl` reading `state_directory` itself
/// when the daemon is not running.
public enum StateReports {
    /// The cached MTA-STS policy, the downgrade memory and the local level of `domain`.
    /// - Parameter now: seconds since the epoch (for expiry).
    public static func policy(domain: String, configuration: RelayConfiguration, stsCache: any STSPolicyStore, memory: any DowngradeMemoryBackend,
                              now: Double) async -> [String: Any] {
        var result: [String: Any] = ["domain": domain, "state_backend": configuration.state.backend.rawValue]
        let stsLookup = await stsCache.lookup(domain)
        let memoryLookup = await memory.lookup(domain)
        if case .unreadable(let reason) = stsLookup { result["mta_sts_unreadable"] = reason }
        if case .unavailable(let reason) = stsLookup { result["mta_sts_unreadable"] = "the policy state store cannot be read: \(reason)" }
        if case .unreadable(let reason) = memoryLookup { result["downgrade_memory_unreadable"] = reason }
        if case .unavailable(let reason) = memoryLookup { result["downgrade_memory_unreadable"] = "the policy state store cannot be read: \(reason)" }
        if let cached = stsLookup.policy {
            result["mta_sts"] = ["id": cached.id, "mode": cached.policy.mode.rawValue, "max_age": cached.policy.maxAge,
                                 "mx": cached.policy.mx, "fetched_at": cached.fetchedAt, "expires_at": cached.expiresAt,
                                 "expired": cached.isExpired(now: now)] as [String: Any]
        }
        if let remembered = memoryLookup.memory {
            var entry: [String: Any] = ["strongest": remembered.strongest.rawValue, "achieved_at": remembered.achievedAt]
            if let first = remembered.downgradeFirstSeen { entry["downgrade_first_seen"] = first }
            result["downgrade_memory"] = entry
        }
        if let level = configuration.policy.level(for: domain) {
            var entry: [String: Any] = ["level": level.level.rawValue]
            if let reason = level.reason { entry["reason"] = reason }
            if let expires = level.expiresText { entry["expires"] = expires }
            if level.expires != nil { entry["expired"] = level.isExpired(at: now) }
            result["local_level"] = entry
        }
        result["downgrade_memory_mode"] = configuration.policy.downgradeMemory.rawValue
        return result
    }

    /// One queued message: envelope, per-recipient state and, `withContent`, its headers; nil
    /// when `id` is not queued.
    public static func message(_ id: QueueID, spool: Spool, withContent: Bool, held: Bool, inDelivery: Bool) -> [String: Any]? {
        guard let envelope = try? spool.envelope(of: id) else { return nil }
        let record = try? spool.deliveryRecord(of: id)
        var recipients: [[String: Any]] = []
        for (index, recipient) in envelope.transaction.recipients.enumerated() {
            let state = record?.recipients[index]
            var entry: [String: Any] = ["address": recipient.mailbox.address, "status": state?.status.rawValue ?? "pending"]
            if let reason = state?.lastReason { entry["last_reason"] = reason }
            if let code = state?.lastStatusCode { entry["dsn"] = code }
            if let notify = recipient.notify {
                entry["notify"] = notify.never ? "NEVER" : [notify.success ? "SUCCESS" : nil, notify.failure ? "FAILURE" : nil, notify.delay ? "DELAY" : nil]
                    .compactMap { $0 }.joined(separator: ",")
            }
            if let original = recipient.originalRecipient { entry["orcpt"] = "\(original.addressType);\(original.address)" }
            recipients.append(entry)
        }
        var entry: [String: Any] = [
            "queue_id": id.rawValue, "size": envelope.size, "arrival_time": envelope.arrivalTime,
            "sender": envelope.transaction.sender?.address ?? "", "recipients": recipients,
            "attempts": record?.attempts ?? 0, "held": held, "in_delivery": inDelivery,
            "requiretls": envelope.transaction.parameters.requireTLS, "tls_required_no": envelope.tlsRequiredNo,
        ]
        if let next = record?.nextAttempt, !held { entry["next_attempt"] = next }
        if withContent {
            if let ret = envelope.transaction.parameters.ret { entry["ret"] = ret == .headers ? "HDRS" : "FULL" }
            if let envid = envelope.transaction.parameters.envelopeID { entry["envid"] = envid }
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
