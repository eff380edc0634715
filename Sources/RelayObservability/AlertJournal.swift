import CSystemd
import Logging
import NIOConcurrencyHelpers
import RelayMetrics
#if canImport(Glibc)
import Glibc
#endif

/// A security alert: one event where a TLS policy stopped or would have stopped delivery.
public struct SecurityAlert: Sendable, Equatable {
    /// Kinds of alert, each with a fixed journald MESSAGE_ID (see systemd/tlsrelay.catalog).
    public enum Kind: String, Sendable, CaseIterable {
        /// An enforced policy (DANE, MTA-STS enforce) failed on a connection: nothing sent to that
        /// host (another MX host may still take the mail; else it is deferred).
        case policyFailure = "policy-failure"
        /// DNSSEC validation failed (bogus) for data a policy depends on.
        case dnssecFailure = "dnssec-failure"
        /// A policy in testing mode failed: mail delivered anyway.
        case testingPolicyFailure = "testing-policy-failure"
        /// A delivery would have been weaker than remembered for the domain: refused (deferred).
        case downgradeRefused = "downgrade-refused"
        /// A delivery was weaker than remembered for the domain (downgrade_memory = "report").
        case downgradeReported = "downgrade-reported"
        /// The relay's own set-up is broken (the DNSSEC self-test failed).
        case configuration = "configuration"

        /// The journald MESSAGE_ID (128-bit, hex).
        public var messageID: String {
            switch self {
            case .policyFailure: return "2b7c1d6e9a1f4c0e8f3d5a6b7c8d9e01"
            case .dnssecFailure: return "2b7c1d6e9a1f4c0e8f3d5a6b7c8d9e02"
            case .testingPolicyFailure: return "2b7c1d6e9a1f4c0e8f3d5a6b7c8d9e03"
            case .downgradeRefused: return "2b7c1d6e9a1f4c0e8f3d5a6b7c8d9e04"
            case .downgradeReported: return "2b7c1d6e9a1f4c0e8f3d5a6b7c8d9e05"
            case .configuration: return "2b7c1d6e9a1f4c0e8f3d5a6b7c8d9e06"
            }
        }

        /// syslog priority: 2 (crit) for an attack on an enforced policy, 4 (warning) for testing mode.
        public var priority: Int { self == .testingPolicyFailure || self == .downgradeReported ? 4 : 2 }

        /// True when the mail was delivered despite the event.
        public var delivered: Bool { self == .testingPolicyFailure || self == .downgradeReported }
    }

    public var kind: Kind
    public var queueID: String?
    public var domain: String
    public var mxHost: String?
    public var address: String?
    /// dane, mta-sts, local, tofu.
    public var policySource: String
    /// RFC 8460 §4.3 result type.
    public var resultType: String
    public var reason: String

    public init(kind: Kind, queueID: String?, domain: String, mxHost: String?, address: String?, policySource: String,
                resultType: String, reason: String) {
        self.kind = kind
        self.queueID = queueID
        self.domain = domain
        self.mxHost = mxHost
        self.address = address
        self.policySource = policySource
        self.resultType = resultType
        self.reason = reason
    }

    /// The one-line human message.
    public var message: String {
        var text = "TLS policy alert (\(resultType)) for \(domain)"
        if let mxHost { text += " MX \(mxHost)" }
        if let address { text += "[\(address)]" }
        text += ": \(reason)"
        if kind == .configuration { return "tlsrelay configuration alert: \(reason)" }
        switch kind {
        case .testingPolicyFailure: text += "; delivered anyway (policy in testing mode)"
        case .downgradeReported: text += "; delivered anyway (policy.downgrade_memory = report)"
        default: text += "; nothing sent to this host (the next MX host is tried, else the mail is deferred)"
        }
        return text
    }
}

/// Sends alerts to journald with structured fields (sd_journal_sendv) when running under
/// journald (`JOURNAL_STREAM` set), else to the log as lines marked `ALERT`. Repeats of the
/// same (domain, result type) within `windowSeconds` are counted, not dropped: the count is
/// reported with the next alert after the window or by `flush()`.
public final class AlertJournal: Sendable {
    private struct Window {
        var start: Double
        var suppressed: Int
        var last: SecurityAlert
    }

    private let logger: Logger
    private let useJournal: Bool
    private let windowSeconds: Double
    private let windows = NIOLockedValueBox<[String: Window]>([:])
    private let recentAlerts = NIOLockedValueBox<[(time: Double, alert: SecurityAlert)]>([])

    /// The last 20 alerts reported (emitted or counted), newest last, for `tlsrelayctl status`.
    public func recent() -> [(time: Double, alert: SecurityAlert)] {
        recentAlerts.withLockedValue { $0 }
    }

    /// - Parameters:
    ///   - logger: where alerts go when not under journald.
    ///   - windowSeconds: rate-limit window per domain and result type. Default 300.
    ///   - useJournal: override the `JOURNAL_STREAM` detection (tests).
    public init(logger: Logger, windowSeconds: Double = 300, useJournal: Bool? = nil) {
        self.logger = logger
        self.windowSeconds = windowSeconds
        self.useJournal = useJournal ?? (getenv("JOURNAL_STREAM") != nil)
    }

    /// Reports one alert (subject to the rate limit).
    public func report(_ alert: SecurityAlert, now: Double = AlertJournal.now()) {
        RelayMetrics.alert(kind: alert.kind.rawValue)
        recentAlerts.withLockedValue { list in
            list.append((now, alert))
            if list.count > 20 { list.removeFirst(list.count - 20) }
        }
        let key = alert.domain + "|" + alert.resultType
        let emitWithCount: Int? = windows.withLockedValue { windows in
            if var window = windows[key], now - window.start < windowSeconds {
                window.suppressed += 1
                window.last = alert
                windows[key] = window
                return nil
            }
            let previous = windows[key]?.suppressed ?? 0
            windows[key] = Window(start: now, suppressed: 0, last: alert)
            return previous
        }
        if let count = emitWithCount { emit(alert, repeated: count) }
    }

    /// Emits the counts of alerts suppressed in windows that have ended. Call periodically.
    /// - Parameter all: emit every held repeat count now, whatever its window's age (shutdown).
    public func flush(now: Double = AlertJournal.now(), all: Bool = false) {
        let due: [(SecurityAlert, Int)] = windows.withLockedValue { windows in
            var due: [(SecurityAlert, Int)] = []
            for (key, window) in windows where all || now - window.start >= windowSeconds {
                if window.suppressed > 0 { due.append((window.last, window.suppressed)) }
                windows[key] = nil
            }
            return due
        }
        for (alert, count) in due { emit(alert, repeated: count) }
    }

    private func emit(_ alert: SecurityAlert, repeated: Int) {
        var message = alert.message
        if repeated > 0 { message += " (\(repeated) more like it in the last \(Int(windowSeconds)) s)" }
        if useJournal {
            var fields = [
                "MESSAGE=\(message)",
                "MESSAGE_ID=\(alert.kind.messageID)",
                "PRIORITY=\(alert.kind.priority)",
                "SYSLOG_IDENTIFIER=tlsrelayd",
                "TLSRELAY_ALERT=\(alert.kind.rawValue)",
                "RECIPIENT_DOMAIN=\(alert.domain)",
                "POLICY_SOURCE=\(alert.policySource)",
                "TLSRPT_RESULT_TYPE=\(alert.resultType)",
                "REASON=\(alert.reason)",
                "REPEATED=\(repeated)",
            ]
            if let queueID = alert.queueID { fields.append("QUEUE_ID=\(queueID)") }
            if let host = alert.mxHost { fields.append("MX_HOST=\(host)") }
            if let address = alert.address { fields.append("MX_ADDRESS=\(address)") }
            if Journal.send(fields) { return }
        }
        var line = "ALERT \(alert.kind.rawValue): \(message)"
        line += " queue_id=\(alert.queueID ?? "-") domain=\(alert.domain) mx=\(alert.mxHost ?? "-") address=\(alert.address ?? "-")"
        line += " policy=\(alert.policySource) result_type=\(alert.resultType)"
        if alert.kind.delivered { logger.warning("\(line)") } else { logger.critical("\(line)") }
    }

    public static func now() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }
}

/// journald's native protocol through libsystemd.
public enum Journal {
    /// Sends one entry made of `FIELD=value` strings with `sd_journal_sendv`.
    /// - Returns: true when libsystemd accepted it (it also returns success when no journald
    ///   listens, so tests must read entries back).
    @discardableResult
    public static func send(_ fields: [String]) -> Bool {
        let buffers = fields.map { Array($0.utf8) }
        let pointers: [UnsafeMutableRawPointer] = buffers.map { bytes in
            let pointer = UnsafeMutableRawPointer.allocate(byteCount: max(bytes.count, 1), alignment: 1)
            bytes.withUnsafeBytes { pointer.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
            return pointer
        }
        defer { pointers.forEach { $0.deallocate() } }
        var vectors = zip(pointers, buffers).map { iovec(iov_base: $0.0, iov_len: $0.1.count) }
        let result = vectors.withUnsafeMutableBufferPointer { sd_journal_sendv($0.baseAddress, Int32($0.count)) }
        return result >= 0
    }
}
