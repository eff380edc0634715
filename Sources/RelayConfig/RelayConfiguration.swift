import SMTPCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The daemon's whole configuration with the default of every key. The TOML file layer
/// (`ConfigurationLoader`) fills it; every other part reads only this.
public struct RelayConfiguration: Sendable, Equatable {
    /// Spool and every other persistent state. Default `/var/lib/tlsrelay`.
    public var stateDirectory = "/var/lib/tlsrelay"
    /// Log level: trace, debug, info, notice, warning, error, critical. Default info.
    public var logLevel = "info"
    public var server = Server()
    public var dns = DNS()
    public var delivery = Delivery()
    public var policy = PolicySettings()
    public var metrics = Metrics()
    public var tlsrpt = TLSRPT()
    public var state = State()

    /// `[state]`: where policy state lives — the MTA-STS policy cache, downgrade memory and the
    /// TLS-RPT session counts and sent state. `files` (default): in `state_directory`, one relay's
    /// own. `postgresql`: in a PostgreSQL database shared by several relays (README "Several relays").
    public struct State: Sendable, Equatable {
        public enum Backend: String, Sendable, CaseIterable { case files, postgresql }
        public static let sslModes = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
        public var backend = Backend.files
        /// Host name, IP address, or (starting with "/") the directory of the server's unix socket.
        public var host = "127.0.0.1"
        public var port = 5432
        public var dbname = "tlsrelay"
        public var user = "tlsrelay"
        /// A file whose first line is the password ("" = none: peer or certificate authentication).
        public var passwordFile = ""
        /// libpq's `sslmode`; TLS to the database goes through the system OpenSSL. Default `prefer`.
        public var sslMode = "prefer"
        /// CA file for `verify-ca` / `verify-full`.
        public var sslRootCert = ""
        /// Seconds to connect (libpq `connect_timeout`). Default 5.
        public var connectTimeout = 5
        /// Seconds a statement may run (`statement_timeout`). Default 5.
        public var statementTimeout = 5
        /// Seconds a read stays cached in memory (a downgrade learnt by another relay is seen
        /// within this time). Default 5; 0 = every delivery reads the database.
        public var cacheSeconds = 5
    }

    /// `[tlsrpt]`: TLS reporting (RFC 8460): daily reports to the domains that ask for them.
    public struct TLSRPT: Sendable, Equatable {
        /// Record session results and send reports. Default false: a report names its sender
        /// (organization, contact, From address), which only the administrator can say.
        public var enabled = false
        /// `organization-name` of the reports.
        public var organizationName = ""
        /// `contact-info`: the e-mail address (addr-spec, RFC 8460 §4.4) where receivers reach the sender.
        public var contactInfo = ""
        /// The submitter's domain (file name, `TLS-Report-Submitter`). Empty: `server.hostname`.
        public var submitter = ""
        /// Envelope sender and `From:` of report mails.
        public var from = ""
        /// Largest random delay after 00:00 UTC before the day's reports go out, seconds.
        /// Default 3600 (spreads receivers' load, as RFC 8460 §4.1 asks).
        public var sendDelay = 3600
        /// Report days without a failed session too. Default true (RFC 8460 §4.1: reports
        /// cover all sessions, so a receiver also learns that its TLS works).
        public var sendWithoutFailures = true
        /// A reused connection's session is counted once (Postfix's
        /// `smtp_tlsrpt_skip_reused_handshakes`). Default true.
        public var skipReusedHandshakes = true
        /// Cap on the stored results of days not yet reported, MiB. Default 512.
        public var maxDiskMB = 512
        /// Days of failed report delivery in a row after which the daily run sends a domain no
        /// more reports (until `tlsrelayctl tlsrpt send DOMAIN` gets one through). Default 7.
        public var giveUpAfterDays = 7
        /// HTTPS POST attempts per report, and the first pause between them (doubling), seconds.
        public var httpsAttempts = 3
        public var httpsRetryDelay = 60
    }

    /// `[metrics]`: the Prometheus endpoint.
    public struct Metrics: Sendable, Equatable {
        /// Where `GET /metrics` is served; nil (`""`, the default) = no endpoint. Off by default:
        /// a second listening port is the administrator's choice (9125 may be taken by another
        /// exporter on the host), and everything the metrics count is in the journal as well.
        public var listen: SocketAddressText?
    }

    public init() {}

    /// `[server]`: the inbound ESMTP listener.
    public struct Server: Sendable, Equatable {
        /// Listening sockets. Default loopback only: 127.0.0.1:10030 and [::1]:10030 (10024-10029
        /// are taken on many Postfix hosts by amavisd-new, dkimproxy and other content filters).
        public var listen: [SocketAddressText] = [
            SocketAddressText(address: IPAddress("127.0.0.1")!, port: 10030),
            SocketAddressText(address: IPAddress("::1")!, port: 10030),
        ]
        /// Name in the greeting, EHLO reply and Received header. Default: the system host name.
        public var hostname = RelayConfiguration.systemHostname()
        /// Clients that may connect and relay; all others get 554 5.7.1. Default loopback only.
        public var allowedClients: [CIDRBlock] = [CIDRBlock("127.0.0.0/8")!, CIDRBlock("::1/128")!]
        /// Largest message in bytes (advertised with SIZE). Default 52428800 (50 MiB).
        public var maxMessageSize = 52_428_800
        /// Concurrent inbound sessions. Default 100.
        public var maxConnections = 100
        /// Recipients per message. Default 1000.
        public var maxRecipients = 1000
        /// Longest command line in bytes including CRLF. Default 2048.
        public var maxCommandLineLength = 2048
        /// Longest message line in bytes including CRLF. Default 10000.
        public var maxLineLength = 10_000
        /// Seconds of client silence before 421 4.4.2. Default 300.
        public var idleTimeout = 300
        /// STARTTLS (RFC 3207) on every listener: off (default: loopback clients need none),
        /// offered, or required (530 5.7.0 before STARTTLS).
        public var starttls: ServerSession.STARTTLSPolicy = .off
        /// Listeners (entries of `listen`) that require STARTTLS whatever `starttls` says.
        public var starttlsRequired: [SocketAddressText] = []
        /// PEM certificate chain (server certificate first) and unencrypted PEM key for STARTTLS;
        /// both needed once a listener offers it. Read again on SIGHUP.
        public var tlsCertificateChainFile = ""
        public var tlsPrivateKeyFile = ""

        /// The STARTTLS policy of each listener, in `listen` order.
        public var listenerPolicies: [(address: SocketAddressText, starttls: ServerSession.STARTTLSPolicy)] {
            listen.map { ($0, starttlsRequired.contains($0) ? .required : starttls) }
        }

        /// True when some listener offers STARTTLS.
        public var offersSTARTTLS: Bool { starttls != .off || !starttlsRequired.isEmpty }

        public static func == (lhs: Server, rhs: Server) -> Bool {
            lhs.listen == rhs.listen && lhs.hostname == rhs.hostname && lhs.allowedClients == rhs.allowedClients
                && lhs.maxMessageSize == rhs.maxMessageSize && lhs.maxConnections == rhs.maxConnections && lhs.maxRecipients == rhs.maxRecipients
                && lhs.maxCommandLineLength == rhs.maxCommandLineLength && lhs.maxLineLength == rhs.maxLineLength && lhs.idleTimeout == rhs.idleTimeout
                && lhs.starttls == rhs.starttls && lhs.starttlsRequired == rhs.starttlsRequired
                && lhs.tlsCertificateChainFile == rhs.tlsCertificateChainFile && lhs.tlsPrivateKeyFile == rhs.tlsPrivateKeyFile
        }
    }

    /// `[dns]`: the validating resolver (libunbound).
    public struct DNS: Sendable, Equatable {
        /// DNSSEC trust anchor file (DS or DNSKEY lines). Default the root key from dns-root-data.
        public var trustAnchorFile = "/usr/share/dns/root.key"
        /// Keep the trust anchor up to date by RFC 5011 (libunbound's automated trust anchor):
        /// `trust_anchor_file` seeds `<state_directory>/trust-anchor/` at the first start, and
        /// that copy follows key rollovers. Default true.
        public var autoTrustAnchor = true
        /// Upstream resolvers to forward to ("IP" or "IP@port"); answers are still validated
        /// locally. Empty (default): full recursion from the root.
        public var forwarders: [SocketAddressText] = []
        /// Zones answered by given authoritative servers (private zones, tests).
        public var stubZones: [StubZone] = []
        /// Seconds to wait for one lookup before treating it as a temporary failure. Default 10.
        public var timeout = 10
        /// A name whose MX lookup must validate as secure (start-up self-test); empty = no check.
        /// Default `isc.org`: signed since 2009 and in the root's chain of trust.
        public var checkSecureName = "isc.org"
        /// A name whose MX lookup must be bogus (start-up self-test); empty = no check.
        /// Default `dnssec-failed.org`: signed wrongly on purpose (Comcast's test domain).
        public var checkBogusName = "dnssec-failed.org"
    }

    /// One `dns.stub_zones` entry.
    public struct StubZone: Sendable, Equatable {
        /// Zone name, stored with a trailing dot.
        public var name: String
        public var addresses: [SocketAddressText]
    }

    /// `[delivery]`: the outbound SMTP client.
    public struct Delivery: Sendable, Equatable {
        /// Destination port of MX hosts. Default 25 (RFC 5321 §4.5.4.2).
        public var port = 25
        /// Extra trusted CA certificates (PEM) for WebPKI checks; empty = system store only.
        public var tlsCAFile = ""
        /// Outbound SMTP sessions at the same time. Default 20.
        public var concurrency = 20
        /// Deliveries at the same time to one destination domain (the most a destination's
        /// slow-start window grows to). Default 5 (Postfix's `default_destination_concurrency_limit`
        /// is 20 for 100 processes: the same share of a smaller relay).
        public var destinationConcurrency = 5
        /// The window of a destination without recent history: deliveries at once before the
        /// destination has answered. Default 2 (Postfix's `initial_destination_concurrency`).
        public var initialDestinationConcurrency = 2
        /// Sessions at the same time to one MX address, whatever the domains behind it. Default 10.
        public var addressConcurrency = 10
        /// Seconds before the first retry of a deferred message; doubles per attempt. Default 300.
        public var minBackoff = 300
        /// Longest seconds between retries. Default 4000.
        public var maxBackoff = 4000
        /// Seconds a message may stay queued before pending recipients bounce with 5.4.7
        /// (RFC 5321 §4.5.4.1). Default 432000 (5 days).
        public var queueLifetime = 432_000
        /// Seconds for a TCP connection to an MX. Default 30.
        public var connectTimeout = 30
        /// Seconds to wait for each reply (greeting, EHLO, MAIL, RCPT, ...). Default 300.
        public var commandTimeout = 300
        /// Seconds for the TLS handshake after the 220 to STARTTLS. Default 60 (Postfix's
        /// `smtp_starttls_timeout`).
        public var tlsHandshakeTimeout = 60
        /// Seconds a connection to an MX stays open and idle after a message, ready for the next
        /// message to the same address under the same TLS policy; 0 = no connection reuse.
        /// Default 2 (Postfix's `smtp_connection_cache_time_limit`).
        public var connectionCacheTimeLimit = 2
        /// Seconds after which a connection is given no further message. Default 300 (Postfix's
        /// `smtp_connection_reuse_time_limit`).
        public var connectionReuseTimeLimit = 300
        /// Seconds after arrival when recipients still pending get one delay DSN (NOTIFY absent
        /// or with DELAY, RFC 3461 §4.1); 0 = none. Default 14400 (4 h).
        public var delayWarningTime = 14400
        /// Accept and queue but deliver nothing: every message is held. Default false.
        public var hold = false
        /// Where the DSNs tlsrelay writes (bounces) go: this MTA, usually the upstream Postfix
        /// that knows the senders' own domains (virtual mailboxes, internal domains), instead of
        /// the sender domain's MX. Never subject to recipient TLS policy. nil (`""`): to the
        /// sender domain's MX. Default `[127.0.0.1]:25`: the Postfix of the quick-start topology.
        public var dsnRelay: SocketAddressText? = SocketAddressText(address: IPAddress("127.0.0.1")!, port: 25)
    }

    static func systemHostname() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? "localhost" : name
    }

    /// The effective configuration as TOML, every key shown (for `--check-config`).
    public func renderTOML() -> String {
        func quote(_ text: String) -> String {
            var out = "\""
            for scalar in text.unicodeScalars {
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\t": out += "\\t"
                default:
                    if scalar.value < 0x20 { out += "\\u" + String(format4: scalar.value) } else { out.unicodeScalars.append(scalar) }
                }
            }
            return out + "\""
        }
        func list(_ items: [String]) -> String { "[" + items.map(quote).joined(separator: ", ") + "]" }
        var lines: [String] = []
        lines.append("state_directory = \(quote(stateDirectory))")
        lines.append("log_level = \(quote(logLevel))")
        lines.append("")
        lines.append("[server]")
        lines.append("listen = \(list(server.listen.map(\.description)))")
        lines.append("hostname = \(quote(server.hostname))")
        lines.append("allowed_clients = \(list(server.allowedClients.map(\.description)))")
        lines.append("max_message_size = \(server.maxMessageSize)")
        lines.append("max_connections = \(server.maxConnections)")
        lines.append("max_recipients = \(server.maxRecipients)")
        lines.append("max_command_line_length = \(server.maxCommandLineLength)")
        lines.append("max_line_length = \(server.maxLineLength)")
        lines.append("idle_timeout = \(server.idleTimeout)")
        lines.append("starttls = \(quote(server.starttls.rawValue))")
        lines.append("starttls_required = \(list(server.starttlsRequired.map(\.description)))")
        lines.append("tls_certificate_chain_file = \(quote(server.tlsCertificateChainFile))")
        lines.append("tls_private_key_file = \(quote(server.tlsPrivateKeyFile))")
        lines.append("")
        lines.append("[dns]")
        lines.append("trust_anchor_file = \(quote(dns.trustAnchorFile))")
        lines.append("auto_trust_anchor = \(dns.autoTrustAnchor)")
        lines.append("forwarders = \(list(dns.forwarders.map(\.unboundNotation)))")
        let zones = dns.stubZones.map { "{ name = \(quote($0.name)), addresses = \(list($0.addresses.map(\.unboundNotation))) }" }
        lines.append("stub_zones = [" + zones.joined(separator: ", ") + "]")
        lines.append("timeout = \(dns.timeout)")
        lines.append("check_secure_name = \(quote(dns.checkSecureName))")
        lines.append("check_bogus_name = \(quote(dns.checkBogusName))")
        lines.append("")
        lines.append("[delivery]")
        lines.append("port = \(delivery.port)")
        lines.append("tls_ca_file = \(quote(delivery.tlsCAFile))")
        lines.append("concurrency = \(delivery.concurrency)")
        lines.append("destination_concurrency = \(delivery.destinationConcurrency)")
        lines.append("initial_destination_concurrency = \(delivery.initialDestinationConcurrency)")
        lines.append("address_concurrency = \(delivery.addressConcurrency)")
        lines.append("min_backoff = \(delivery.minBackoff)")
        lines.append("max_backoff = \(delivery.maxBackoff)")
        lines.append("queue_lifetime = \(delivery.queueLifetime)")
        lines.append("delay_warning_time = \(delivery.delayWarningTime)")
        lines.append("connect_timeout = \(delivery.connectTimeout)")
        lines.append("command_timeout = \(delivery.commandTimeout)")
        lines.append("tls_handshake_timeout = \(delivery.tlsHandshakeTimeout)")
        lines.append("connection_cache_time_limit = \(delivery.connectionCacheTimeLimit)")
        lines.append("connection_reuse_time_limit = \(delivery.connectionReuseTimeLimit)")
        lines.append("hold = \(delivery.hold)")
        lines.append("dsn_relay = \(quote(delivery.dsnRelay.map { $0.address.isIPv4 ? "[\($0.address)]:\($0.port)" : $0.description } ?? ""))")
        lines.append("")
        lines.append("[metrics]")
        lines.append("listen = \(quote(metrics.listen?.description ?? ""))")
        lines.append("")
        lines.append("[tlsrpt]")
        lines.append("enabled = \(tlsrpt.enabled)")
        lines.append("organization_name = \(quote(tlsrpt.organizationName))")
        lines.append("contact_info = \(quote(tlsrpt.contactInfo))")
        lines.append("submitter = \(quote(tlsrpt.submitter))")
        lines.append("from = \(quote(tlsrpt.from))")
        lines.append("send_delay = \(tlsrpt.sendDelay)")
        lines.append("send_without_failures = \(tlsrpt.sendWithoutFailures)")
        lines.append("skip_reused_handshakes = \(tlsrpt.skipReusedHandshakes)")
        lines.append("max_disk_mb = \(tlsrpt.maxDiskMB)")
        lines.append("give_up_after_days = \(tlsrpt.giveUpAfterDays)")
        lines.append("https_attempts = \(tlsrpt.httpsAttempts)")
        lines.append("https_retry_delay = \(tlsrpt.httpsRetryDelay)")
        lines.append("")
        lines.append("[state]")
        lines.append("backend = \(quote(state.backend.rawValue))")
        do {
            lines.append("host = \(quote(state.host))")
            lines.append("port = \(state.port)")
            lines.append("dbname = \(quote(state.dbname))")
            lines.append("user = \(quote(state.user))")
            lines.append("password_file = \(quote(state.passwordFile))")
            lines.append("sslmode = \(quote(state.sslMode))")
            lines.append("sslrootcert = \(quote(state.sslRootCert))")
            lines.append("connect_timeout = \(state.connectTimeout)")
            lines.append("statement_timeout = \(state.statementTimeout)")
            lines.append("cache_seconds = \(state.cacheSeconds)")
        }
        lines.append("")
        lines.append("[policy]")
        lines.append("downgrade_memory = \(quote(policy.downgradeMemory.rawValue))")
        lines.append("downgrade_grace = \(policy.downgradeGrace)")
        lines.append("dane_for_insecure_mx = \(policy.daneForInsecureMX)")
        lines.append("honor_tls_required_no = \(policy.honorTLSRequiredNo)")
        for entry in policy.domains {
            lines.append("")
            lines.append("[[policy.domain]]")
            lines.append("name = \(quote(entry.domain))")
            lines.append("level = \(quote(entry.level.rawValue))")
            if let reason = entry.reason { lines.append("reason = \(quote(reason))") }
            if let expires = entry.expiresText { lines.append("expires = \(quote(expires))") }
        }
        return lines.joined(separator: "\n") + "\n"
    }
}

extension String {
    init(format4 value: UInt32) {
        let hex = String(value, radix: 16)
        self = String(repeating: "0", count: 4 - hex.count) + hex
    }
}
