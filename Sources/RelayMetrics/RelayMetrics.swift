import DeliveryPolicy
import Metrics

/// Every metric tlsrelay exposes, and the calls that record them (swift-metrics API; the
/// daemon bootstraps swift-prometheus as the backend when `[metrics] listen` is set, and
/// without a backend every call is a no-op).
///
/// Names follow the Prometheus conventions: prefix `tlsrelay_`, `_total` on counters, base
/// units (seconds) in the name. Label values come from closed sets only — outcomes, policy
/// sources, RFC 8460 result types, lookup types, TLS versions — never a domain name, an
/// address or a queue id, so the number of series stays bounded.
public enum RelayMetrics {
    /// One metric family: its name, type and help text (the `# HELP` line).
    public struct Family: Sendable {
        public enum Kind: String, Sendable { case counter, gauge, histogram }
        public let name: String
        public let kind: Kind
        public let help: String
    }

    /// The catalogue, in the order README lists it.
    public static let families: [Family] = [
        Family(name: "tlsrelay_deliveries_total", kind: .counter,
               help: "Recipient delivery attempts by outcome (delivered, deferred, bounced) and the policy that decided them (dane, mta-sts, local, memory, opportunistic, requiretls, tls-required-no, none)."),
        Family(name: "tlsrelay_policy_failures_total", kind: .counter,
               help: "TLS policy failures by RFC 8460 result type, policy source, and whether the mail was deferred or delivered anyway (testing, report mode)."),
        Family(name: "tlsrelay_alerts_total", kind: .counter, help: "Security alerts written to the journal, by kind."),
        Family(name: "tlsrelay_tls_handshakes_total", kind: .counter,
               help: "Outbound TLS handshakes on new connections, by result (success, failure) and protocol version."),
        Family(name: "tlsrelay_connection_reuses_total", kind: .counter, help: "Messages sent on a reused (cached) SMTP connection."),
        Family(name: "tlsrelay_starttls_not_offered_total", kind: .counter,
               help: "New outbound connections whose EHLO reply did not offer STARTTLS."),
        Family(name: "tlsrelay_queue_messages", kind: .gauge, help: "Queued messages by state (active, deferred, held)."),
        Family(name: "tlsrelay_queue_oldest_message_age_seconds", kind: .gauge, help: "Age of the oldest queued message, 0 when the queue is empty."),
        Family(name: "tlsrelay_dns_lookup_seconds", kind: .histogram,
               help: "Duration of DNSSEC-validated lookups of a delivery, by type (mx, address, tlsa, mta-sts)."),
        Family(name: "tlsrelay_tls_handshake_seconds", kind: .histogram, help: "Duration of successful outbound TLS handshakes."),
        Family(name: "tlsrelay_attempt_seconds", kind: .histogram, help: "Duration of one delivery attempt to one MX address, connect to the end of the transaction."),
        Family(name: "tlsrelay_inbound_data_seconds", kind: .histogram,
               help: "Time from the end of DATA to the 250 reply (spool write and fsync)."),
        Family(name: "tlsrelay_mta_sts_cache_entries", kind: .gauge, help: "MTA-STS policies in the cache."),
        Family(name: "tlsrelay_mta_sts_fetches_total", kind: .counter,
               help: "MTA-STS policy fetches over HTTPS by result (success, failure)."),
        Family(name: "tlsrelay_downgrade_memory_entries", kind: .gauge, help: "Domains in the downgrade memory by remembered level."),
        Family(name: "tlsrelay_tlsrpt_sessions_total", kind: .counter,
               help: "TLS sessions and failed policy lookups counted for TLS reports (RFC 8460), by result (success, failure)."),
        Family(name: "tlsrelay_tlsrpt_reports_total", kind: .counter,
               help: "TLS reports sent, by transport (mailto, https) and result (sent, failed)."),
        Family(name: "tlsrelay_inbound_sessions_total", kind: .counter, help: "Inbound SMTP sessions accepted by the listener."),
        Family(name: "tlsrelay_inbound_messages_total", kind: .counter, help: "Messages accepted with 250 and queued."),
        Family(name: "tlsrelay_inbound_refusals_total", kind: .counter, help: "Inbound refusals by reason."),
        Family(name: "tlsrelay_build_info", kind: .gauge, help: "Always 1; the version label says which tlsrelay runs."),
        Family(name: "tlsrelay_process_start_time_seconds", kind: .gauge, help: "Start time of the daemon, seconds since the Unix epoch."),
    ]

    /// Histogram buckets in seconds, per histogram family.
    public static let buckets: [String: [Double]] = [
        "tlsrelay_dns_lookup_seconds": [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
        "tlsrelay_tls_handshake_seconds": [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
        "tlsrelay_attempt_seconds": [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600],
        "tlsrelay_inbound_data_seconds": [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    ]

    // MARK: - Label values

    /// What decided a recipient's outcome, as a label value: `dane`, `mta-sts`, `local`,
    /// `memory` (downgrade memory), `opportunistic` (a host plan without a floor), `requiretls`
    /// (the sender's REQUIRETLS, RFC 8689 §4), `tls-required-no` (the sender's `TLS-Required: No`,
    /// honoured: no recipient policy, RFC 8689 §5), or `none` (decided before any host: DNS,
    /// null MX, a suspended destination).
    public static func policyLabel(_ source: PolicySource?) -> String {
        switch source {
        case nil: return "none"
        case .none?: return "opportunistic"
        case .memory?: return "memory"
        case let other?: return other.rawValue
        }
    }

    /// A TLS protocol version as a label value (`TLSv1.3`, `TLSv1.2`, ...; anything else `other`).
    public static func versionLabel(_ version: String?) -> String {
        guard let version else { return "none" }
        return ["TLSv1.3", "TLSv1.2", "TLSv1.1", "TLSv1"].contains(version) ? version : "other"
    }

    // MARK: - Recording

    /// One recipient's outcome after an attempt.
    public static func delivery(_ outcome: RecipientOutcome.Kind, policy: PolicySource?) {
        Counter(label: "tlsrelay_deliveries_total", dimensions: [("outcome", outcome.rawValue), ("policy", policyLabel(policy))]).increment()
    }

    /// One policy failure (an alert of the planner): deferred when enforced, else delivered anyway.
    public static func policyFailure(_ alert: PolicyAlert) {
        Counter(label: "tlsrelay_policy_failures_total", dimensions: [
            ("result_type", alert.resultType.rawValue), ("policy", policyLabel(alert.policySource)),
            ("action", alert.enforced ? "deferred" : "delivered"),
        ]).increment()
    }

    /// One alert written to the journal; `kind` is the alert's kind name (a closed set).
    public static func alert(kind: String) {
        Counter(label: "tlsrelay_alerts_total", dimensions: [("kind", kind)]).increment()
    }

    /// A TLS handshake on a new outbound connection; `seconds` for a successful one.
    public static func handshake(success: Bool, version: String?, seconds: Double?) {
        Counter(label: "tlsrelay_tls_handshakes_total", dimensions: [("result", success ? "success" : "failure"),
                                                                       ("version", versionLabel(success ? version : nil))]).increment()
        if let seconds { Metrics.Timer(label: "tlsrelay_tls_handshake_seconds").recordSeconds(seconds) }
    }

    /// A message sent on a reused connection.
    public static func connectionReused() { Counter(label: "tlsrelay_connection_reuses_total").increment() }

    /// A new connection whose EHLO reply had no STARTTLS.
    public static func starttlsNotOffered() { Counter(label: "tlsrelay_starttls_not_offered_total").increment() }

    /// The lookup types of `dnsLookup`.
    public enum Lookup: String, Sendable { case mx, address, tlsa, mtaSTS = "mta-sts" }

    /// A lookup's duration in seconds.
    public static func dnsLookup(_ type: Lookup, seconds: Double) {
        Metrics.Timer(label: "tlsrelay_dns_lookup_seconds", dimensions: [("type", type.rawValue)]).recordSeconds(seconds)
    }

    /// One attempt's duration in seconds.
    public static func attempt(seconds: Double) {
        Metrics.Timer(label: "tlsrelay_attempt_seconds").recordSeconds(seconds)
    }

    /// End of DATA → 250, seconds.
    public static func inboundData(seconds: Double) {
        Metrics.Timer(label: "tlsrelay_inbound_data_seconds").recordSeconds(seconds)
        Counter(label: "tlsrelay_inbound_messages_total").increment()
    }

    /// An inbound session accepted by the listener.
    public static func inboundSession() { Counter(label: "tlsrelay_inbound_sessions_total").increment() }

    /// Why the inbound side refused something.
    public enum Refusal: String, Sendable, CaseIterable {
        /// The client address is not in `allowed_clients` (554).
        case clientNotAllowed = "client-not-allowed"
        /// `max_connections` reached (421).
        case tooManyConnections = "too-many-connections"
        /// A relay attempt or invalid recipient (RCPT refused).
        case recipient = "recipient"
        /// Message over the size limit (552).
        case messageTooLarge = "message-too-large"
        /// Spool full or unwritable (452/451).
        case spool = "spool"
        /// Protocol violations: bad syntax, bare line endings, pipelining abuse, too many errors.
        case protocolViolation = "protocol"
    }

    public static func inboundRefusal(_ reason: Refusal) {
        Counter(label: "tlsrelay_inbound_refusals_total", dimensions: [("reason", reason.rawValue)]).increment()
    }

    /// One session result recorded for TLS reports.
    public static func tlsrptSession(success: Bool) {
        Counter(label: "tlsrelay_tlsrpt_sessions_total", dimensions: [("result", success ? "success" : "failure")]).increment()
    }

    /// One TLS report at one URI: queued as mail or POSTed (`sent`), or not.
    public static func tlsrptReport(https: Bool, sent: Bool) {
        Counter(label: "tlsrelay_tlsrpt_reports_total", dimensions: [("transport", https ? "https" : "mailto"), ("result", sent ? "sent" : "failed")]).increment()
    }

    /// An MTA-STS policy fetch.
    public static func stsFetch(success: Bool) {
        Counter(label: "tlsrelay_mta_sts_fetches_total", dimensions: [("result", success ? "success" : "failure")]).increment()
    }

    /// Sets the gauges that are read at scrape time.
    public static func queue(active: Int, deferred: Int, held: Int, oldestAgeSeconds: Double) {
        Gauge(label: "tlsrelay_queue_messages", dimensions: [("state", "active")]).record(active)
        Gauge(label: "tlsrelay_queue_messages", dimensions: [("state", "deferred")]).record(deferred)
        Gauge(label: "tlsrelay_queue_messages", dimensions: [("state", "held")]).record(held)
        Gauge(label: "tlsrelay_queue_oldest_message_age_seconds").record(oldestAgeSeconds)
    }

    public static func policyState(stsCacheEntries: Int, memoryByLevel: [AchievedSecurity: Int]) {
        Gauge(label: "tlsrelay_mta_sts_cache_entries").record(stsCacheEntries)
        for level in AchievedSecurity.allCases {
            Gauge(label: "tlsrelay_downgrade_memory_entries", dimensions: [("level", level.rawValue)]).record(memoryByLevel[level, default: 0])
        }
    }

    public static func process(version: String, startTime: Double) {
        Gauge(label: "tlsrelay_build_info", dimensions: [("version", version)]).record(1)
        Gauge(label: "tlsrelay_process_start_time_seconds").record(startTime)
    }

    /// Creates every counter series with value 0 at start-up, so that `increase()` over the
    /// first event works and dashboards show zeros instead of gaps.
    /// - Parameter alertKinds: the alert kinds (`SecurityAlert.Kind` raw values).
    public static func registerZeroSeries(alertKinds: [String]) {
        for kind in alertKinds { _ = Counter(label: "tlsrelay_alerts_total", dimensions: [("kind", kind)]) }
        for kind in ["delivered", "deferred", "bounced"] {
            for policy in PolicySource.allCases.map({ policyLabel($0) }) + [policyLabel(nil)] {
                _ = Counter(label: "tlsrelay_deliveries_total", dimensions: [("outcome", kind), ("policy", policy)])
            }
        }
        _ = Counter(label: "tlsrelay_connection_reuses_total")
        for result in ["success", "failure"] { _ = Counter(label: "tlsrelay_tlsrpt_sessions_total", dimensions: [("result", result)]) }
        for transport in ["mailto", "https"] {
            for result in ["sent", "failed"] {
                _ = Counter(label: "tlsrelay_tlsrpt_reports_total", dimensions: [("transport", transport), ("result", result)])
            }
        }
        _ = Counter(label: "tlsrelay_starttls_not_offered_total")
        _ = Counter(label: "tlsrelay_inbound_sessions_total")
        _ = Counter(label: "tlsrelay_inbound_messages_total")
        for reason in Refusal.allCases { _ = Counter(label: "tlsrelay_inbound_refusals_total", dimensions: [("reason", reason.rawValue)]) }
        for result in ["success", "failure"] { _ = Counter(label: "tlsrelay_mta_sts_fetches_total", dimensions: [("result", result)]) }
    }
}
