import Foundation
import SMTPCore
internal import TOMLKit
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads a TOML configuration file into a `RelayConfiguration`.
///
/// Every key is optional and has a default; an unknown key, a value of the wrong type or an
/// out-of-range value is an error that names the file, the line and the reason.
public enum ConfigurationLoader {
    /// The log levels swift-log knows.
    public static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    /// Largest configuration file read, bytes.
    public static let maxFileSize = 1 << 20

    /// Reads and validates `path`.
    /// - Throws: `ConfigurationError` when the file cannot be read, is not TOML, or holds an
    ///   unknown key, a wrong type or a bad value.
    public static func load(path: String) throws -> RelayConfiguration {
        guard let file = fopen(path, "r") else {
            throw ConfigurationError(file: path, line: 0, reason: "cannot read: \(String(cString: strerror(errno)))")
        }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            if count <= 0 { break }
            bytes += chunk[0..<count]
            if bytes.count > maxFileSize {
                throw ConfigurationError(file: path, line: 0, reason: "larger than \(maxFileSize) bytes: not a configuration file")
            }
        }
        if ferror(file) != 0 {
            throw ConfigurationError(file: path, line: 0, reason: "cannot read: \(String(cString: strerror(errno)))")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ConfigurationError(file: path, line: 1, reason: "not valid UTF-8")
        }
        return try parse(text: text, file: path)
    }

    /// Parses configuration text; `file` names it in errors.
    /// - Throws: `ConfigurationError`.
    /// The `state_directory` of a file that may be invalid elsewhere (so that `tlsrelayctl reload`
    /// still reaches the daemon to have it refuse the file): the key's value when the TOML parses
    /// and the value is an absolute path, else the default.
    public static func stateDirectory(path: String) -> String {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
              let table = try? TOMLTable(string: text), let value = table["state_directory"]?.string, value.hasPrefix("/")
        else { return RelayConfiguration().stateDirectory }
        return "/" + value.split(separator: "/").joined(separator: "/")
    }

    public static func parse(text: String, file: String) throws -> RelayConfiguration {
        if let index = text.utf8.firstIndex(of: 0) {
            // toml++ reads a C string: everything after a NUL would be ignored silently.
            let line = text.utf8[..<index].filter { $0 == 10 }.count + 1
            throw ConfigurationError(file: file, line: line, reason: "contains a NUL byte")
        }
        if let problem = TOMLPrecheck.firstError(in: text) {
            throw ConfigurationError(file: file, line: problem.line, reason: problem.reason)
        }
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigurationError(file: file, line: error.source.begin.line, reason: "TOML syntax: \(error.description)")
        }
        var reader = Reader(file: file, locator: KeyLocator(text: text))
        return try reader.read(table)
    }

    /// Parses `YYYY-MM-DD` (the end of that day, UTC) or `YYYY-MM-DDTHH:MM:SSZ` into seconds
    /// since the epoch; nil when malformed.
    static func parseExpiry(_ text: String) -> Double? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let parts = trimmed.split(separator: "T", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        guard let day0 = parts.first, !day0.isEmpty else { return nil }
        let date = day0.split(separator: "-", omittingEmptySubsequences: false)
        guard date.count == 3, date[0].count == 4, date[1].count == 2, date[2].count == 2,
              let year = Int(date[0]), let month = Int(date[1]), let day = Int(date[2]),
              (1...12).contains(month), (1...31).contains(day) else { return nil }
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
        let daysInMonth = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
        guard day <= daysInMonth else { return nil }
        var hour = 23, minute = 59, second = 59
        if parts.count == 2 {
            var time = parts[1]
            guard time.hasSuffix("Z") else { return nil }
            time.removeLast()
            let fields = time.split(separator: ":", omittingEmptySubsequences: false)
            guard fields.count == 3, let h = Int(fields[0]), let m = Int(fields[1]), let s = Int(fields[2]),
                  (0...23).contains(h), (0...59).contains(m), (0...60).contains(s) else { return nil }
            (hour, minute, second) = (h, m, s)
        }
        // Days from the civil date (proleptic Gregorian), then seconds.
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146097 + doe - 719468
        return Double(days * 86400 + hour * 3600 + minute * 60 + second)
    }

    struct Reader {
        let file: String
        let locator: KeyLocator

        /// Which `[[policy.domain]]` entry is being read, for line numbers.
        var occurrence = 0

        func error(_ section: String?, _ key: String?, _ reason: String) -> ConfigurationError {
            ConfigurationError(file: file, line: locator.line(section: section, key: key, occurrence: section == "policy.domain" ? occurrence : 0), reason: reason)
        }

        func name(_ section: String?, _ key: String) -> String { section.map { "\($0).\(key)" } ?? key }

        func checkKeys(_ table: TOMLTable, section: String?, allowed: [String]) throws {
            for key in table.keys where !allowed.contains(key) {
                throw error(section, key, "unknown key '\(name(section, key))'" + (section == nil ? "" : " in [\(section!)]")
                            + "; known keys: \(allowed.joined(separator: ", "))")
            }
        }

        func string(_ table: TOMLTable, _ section: String?, _ key: String) throws -> String? {
            guard let value = table[key] else { return nil }
            guard let text = value.string else {
                throw error(section, key, "'\(name(section, key))' must be a string, not \(value.type)")
            }
            return text
        }

        func integer(_ table: TOMLTable, _ section: String?, _ key: String, range: ClosedRange<Int>) throws -> Int? {
            guard let value = table[key] else { return nil }
            guard value.type == .int, let number = value.int else {
                throw error(section, key, "'\(name(section, key))' must be an integer, not \(value.type)")
            }
            guard range.contains(number) else {
                throw error(section, key, "'\(name(section, key))' must be between \(range.lowerBound) and \(range.upperBound), got \(number)")
            }
            return number
        }

        func stringList(_ table: TOMLTable, _ section: String?, _ key: String) throws -> [String]? {
            guard let value = table[key] else { return nil }
            guard let array = value.array else {
                throw error(section, key, "'\(name(section, key))' must be an array of strings, not \(value.type)")
            }
            return try array.map { element in
                guard let text = element.string else {
                    throw error(section, key, "'\(name(section, key))' must contain only strings, found \(element.type)")
                }
                return text
            }
        }

        func subtable(_ table: TOMLTable, _ key: String) throws -> TOMLTable? {
            guard let value = table[key] else { return nil }
            guard let sub = value.table else { throw error(nil, key, "'\(key)' must be a table ([\(key)]), not \(value.type)") }
            return sub
        }

        mutating func read(_ root: TOMLTable) throws -> RelayConfiguration {
            var config = RelayConfiguration()
            try checkKeys(root, section: nil, allowed: ["state_directory", "log_level", "server", "dns", "delivery", "policy", "metrics", "tlsrpt", "state"])
            if let value = try string(root, nil, "state_directory") {
                guard value.hasPrefix("/") else { throw error(nil, "state_directory", "'state_directory' must be an absolute path, got \"\(value)\"") }
                // One spelling per directory: no repeated or trailing slashes ("/var//lib/x/" is "/var/lib/x").
                config.stateDirectory = "/" + value.split(separator: "/").joined(separator: "/")
            }
            if let value = try string(root, nil, "log_level") {
                guard ConfigurationLoader.logLevels.contains(value) else {
                    throw error(nil, "log_level", "'log_level' must be one of \(ConfigurationLoader.logLevels.joined(separator: ", ")), got \"\(value)\"")
                }
                config.logLevel = value
            }
            if let server = try subtable(root, "server") { try readServer(server, into: &config.server) }
            if let dns = try subtable(root, "dns") { try readDNS(dns, into: &config.dns) }
            if let delivery = try subtable(root, "delivery") { try readDelivery(delivery, into: &config.delivery) }
            if let policy = try subtable(root, "policy") { try readPolicy(policy, into: &config.policy) }
            if let metrics = try subtable(root, "metrics") { try readMetrics(metrics, into: &config.metrics) }
            if let tlsrpt = try subtable(root, "tlsrpt") { try readTLSRPT(tlsrpt, into: &config.tlsrpt) }
            if let state = try subtable(root, "state") { try readState(state, into: &config.state) }
            return config
        }

        func readState(_ table: TOMLTable, into state: inout RelayConfiguration.State) throws {
            let section = "state"
            try checkKeys(table, section: section, allowed: [
                "backend", "host", "port", "dbname", "user", "password_file", "sslmode", "sslrootcert",
                "connect_timeout", "statement_timeout", "cache_seconds",
            ])
            if let value = try string(table, section, "backend") {
                guard let backend = RelayConfiguration.State.Backend(rawValue: value) else {
                    throw error(section, "backend", "'state.backend' must be \"files\" or \"postgresql\", got \"\(value)\"")
                }
                state.backend = backend
            }
            func plain(_ key: String, _ value: String) throws {
                // libpq's conninfo is built from these: no quotes, backslashes or control characters.
                guard !value.isEmpty, value.utf8.allSatisfy({ $0 > 0x20 && $0 != 0x7F && $0 != UInt8(ascii: "'") && $0 != UInt8(ascii: "\\") }) else {
                    throw error(section, key, "'state.\(key)' must be a non-empty word without spaces, quotes or backslashes, got \"\(value)\"")
                }
            }
            if let value = try string(table, section, "host") { try plain("host", value); state.host = value }
            if let value = try integer(table, section, "port", range: 1...65535) { state.port = value }
            if let value = try string(table, section, "dbname") { try plain("dbname", value); state.dbname = value }
            if let value = try string(table, section, "user") { try plain("user", value); state.user = value }
            if let value = try string(table, section, "password_file") {
                guard value.isEmpty || value.hasPrefix("/") else {
                    throw error(section, "password_file", "'state.password_file' must be an absolute path or \"\", got \"\(value)\"")
                }
                state.passwordFile = value
            }
            if let value = try string(table, section, "sslmode") {
                guard RelayConfiguration.State.sslModes.contains(value) else {
                    throw error(section, "sslmode", "'state.sslmode' must be one of \(RelayConfiguration.State.sslModes.joined(separator: ", ")), got \"\(value)\"")
                }
                state.sslMode = value
            }
            if let value = try string(table, section, "sslrootcert") {
                guard value.isEmpty || value.hasPrefix("/") else {
                    throw error(section, "sslrootcert", "'state.sslrootcert' must be an absolute path or \"\", got \"\(value)\"")
                }
                if !value.isEmpty { try plain("sslrootcert", value) }
                state.sslRootCert = value
            }
            if let value = try integer(table, section, "connect_timeout", range: 1...300) { state.connectTimeout = value }
            if let value = try integer(table, section, "statement_timeout", range: 1...300) { state.statementTimeout = value }
            if let value = try integer(table, section, "cache_seconds", range: 0...3600) { state.cacheSeconds = value }
            if state.sslMode.hasPrefix("verify"), state.sslRootCert.isEmpty {
                throw error(section, "sslmode", "'state.sslmode' = \"\(state.sslMode)\" needs 'state.sslrootcert' (the CA file that signed the database's certificate)")
            }
        }

        func readTLSRPT(_ table: TOMLTable, into tlsrpt: inout RelayConfiguration.TLSRPT) throws {
            let section = "tlsrpt"
            try checkKeys(table, section: section, allowed: [
                "enabled", "organization_name", "contact_info", "submitter", "from", "send_delay", "send_without_failures",
                "skip_reused_handshakes", "max_disk_mb", "give_up_after_days", "https_attempts", "https_retry_delay",
            ])
            for key in ["enabled", "send_without_failures", "skip_reused_handshakes"] {
                guard let value = table[key] else { continue }
                guard let flag = value.bool else { throw error(section, key, "'tlsrpt.\(key)' must be true or false, not \(value.type)") }
                switch key {
                case "enabled": tlsrpt.enabled = flag
                case "send_without_failures": tlsrpt.sendWithoutFailures = flag
                default: tlsrpt.skipReusedHandshakes = flag
                }
            }
            if let value = try string(table, section, "organization_name") { tlsrpt.organizationName = value }
            if let value = try string(table, section, "contact_info") {
                // RFC 8460 §4.4: an e-mail address (addr-spec), not a URI.
                guard value.isEmpty || isMailAddress(value) else {
                    throw error(section, "contact_info", "'tlsrpt.contact_info' must be an e-mail address (RFC 8460 §4.4 addr-spec, e.g. postmaster@example.org), got \"\(value)\"")
                }
                tlsrpt.contactInfo = value
            }
            if let value = try string(table, section, "submitter") {
                guard value.isEmpty || isHostname(value) else { throw error(section, "submitter", "'tlsrpt.submitter' \"\(value)\" is not a domain name") }
                tlsrpt.submitter = value.lowercased()
            }
            if let value = try string(table, section, "from") {
                guard value.isEmpty || isMailAddress(value) else {
                    throw error(section, "from", "'tlsrpt.from' \"\(value)\" is not a mail address (local@domain)")
                }
                tlsrpt.from = value
            }
            if let value = try integer(table, section, "send_delay", range: 0...86_000) { tlsrpt.sendDelay = value }
            if let value = try integer(table, section, "max_disk_mb", range: 1...1_048_576) { tlsrpt.maxDiskMB = value }
            if let value = try integer(table, section, "give_up_after_days", range: 1...365) { tlsrpt.giveUpAfterDays = value }
            if let value = try integer(table, section, "https_attempts", range: 1...10) { tlsrpt.httpsAttempts = value }
            if let value = try integer(table, section, "https_retry_delay", range: 1...3600) { tlsrpt.httpsRetryDelay = value }
            if tlsrpt.enabled {
                for (key, value) in [("organization_name", tlsrpt.organizationName), ("contact_info", tlsrpt.contactInfo), ("from", tlsrpt.from)] where value.isEmpty {
                    throw error(section, "enabled", "'tlsrpt.enabled' is true, so 'tlsrpt.\(key)' must be set (RFC 8460 §4.4: reports name their sender)")
                }
            }
        }

        func readMetrics(_ table: TOMLTable, into metrics: inout RelayConfiguration.Metrics) throws {
            let section = "metrics"
            try checkKeys(table, section: section, allowed: ["listen"])
            if let value = try string(table, section, "listen") {
                if value.isEmpty {
                    metrics.listen = nil
                } else {
                    guard let address = SocketAddressText.parseListen(value) else {
                        throw error(section, "listen", "'metrics.listen' must be \"IP:port\" or \"[IPv6]:port\" (for example \"127.0.0.1:9125\") or \"\" for no metrics endpoint, got \"\(value)\"")
                    }
                    metrics.listen = address
                }
            }
        }

        func readServer(_ table: TOMLTable, into server: inout RelayConfiguration.Server) throws {
            let section = "server"
            try checkKeys(table, section: section, allowed: [
                "listen", "hostname", "allowed_clients", "max_message_size", "max_connections", "max_recipients",
                "max_command_line_length", "max_line_length", "idle_timeout",
                "starttls", "starttls_required", "tls_certificate_chain_file", "tls_private_key_file",
            ])
            if let list = try stringList(table, section, "listen") {
                guard !list.isEmpty else { throw error(section, "listen", "'server.listen' must name at least one address") }
                server.listen = try list.map { text in
                    guard let address = SocketAddressText.parseListen(text) else {
                        throw error(section, "listen", "'server.listen' entry \"\(text)\" is not IP:port or [IPv6]:port")
                    }
                    return address
                }
                if Set(server.listen).count != server.listen.count {
                    throw error(section, "listen", "'server.listen' names the same address twice")
                }
            }
            if let name = try string(table, section, "hostname") {
                guard isHostname(name) else { throw error(section, "hostname", "'server.hostname' \"\(name)\" is not a valid host name") }
                server.hostname = name
            }
            if let list = try stringList(table, section, "allowed_clients") {
                server.allowedClients = try list.map { text in
                    guard let block = CIDRBlock(text) else {
                        throw error(section, "allowed_clients", "'server.allowed_clients' entry \"\(text)\" is not an address or address/prefix")
                    }
                    return block
                }
            }
            if let value = try integer(table, section, "max_message_size", range: 1024...(1 << 40)) { server.maxMessageSize = value }
            if let value = try integer(table, section, "max_connections", range: 1...100_000) { server.maxConnections = value }
            // RFC 5321 §4.5.3.1.8: at least 100 recipients must be accepted.
            if let value = try integer(table, section, "max_recipients", range: 100...1_000_000) { server.maxRecipients = value }
            // RFC 5321 §4.5.3.1.4 / §4.5.3.1.6 minimums.
            if let value = try integer(table, section, "max_command_line_length", range: 512...65536) { server.maxCommandLineLength = value }
            if let value = try integer(table, section, "max_line_length", range: 1000...1_048_576) { server.maxLineLength = value }
            if let value = try integer(table, section, "idle_timeout", range: 1...86400) { server.idleTimeout = value }
            if let value = try string(table, section, "starttls") {
                guard let policy = ServerSession.STARTTLSPolicy(rawValue: value) else {
                    throw error(section, "starttls", "'server.starttls' must be off, offered or required, got \"\(value)\"")
                }
                server.starttls = policy
            }
            if let list = try stringList(table, section, "starttls_required") {
                server.starttlsRequired = try list.map { text in
                    guard let address = SocketAddressText.parseListen(text) else {
                        throw error(section, "starttls_required", "'server.starttls_required' entry \"\(text)\" is not IP:port or [IPv6]:port")
                    }
                    guard server.listen.contains(address) else {
                        throw error(section, "starttls_required", "'server.starttls_required' entry \"\(text)\" is not one of server.listen")
                    }
                    return address
                }
            }
            for key in ["tls_certificate_chain_file", "tls_private_key_file"] {
                guard let path = try string(table, section, key) else { continue }
                guard path.isEmpty || path.hasPrefix("/") else {
                    throw error(section, key, "'server.\(key)' must be an absolute path, got \"\(path)\"")
                }
                if key == "tls_certificate_chain_file" { server.tlsCertificateChainFile = path } else { server.tlsPrivateKeyFile = path }
            }
            if server.offersSTARTTLS {
                for (key, path) in [("tls_certificate_chain_file", server.tlsCertificateChainFile), ("tls_private_key_file", server.tlsPrivateKeyFile)] {
                    guard !path.isEmpty else {
                        throw error(section, table.contains(key: "starttls") ? "starttls" : "starttls_required",
                                    "STARTTLS is offered, so 'server.\(key)' must name a PEM file")
                    }
                    guard access(path, R_OK) == 0 else {
                        throw error(section, key, "'server.\(key)' \(path): \(String(cString: strerror(errno)))")
                    }
                }
            }
        }

        func readDNS(_ table: TOMLTable, into dns: inout RelayConfiguration.DNS) throws {
            let section = "dns"
            try checkKeys(table, section: section, allowed: ["trust_anchor_file", "auto_trust_anchor", "forwarders", "stub_zones", "timeout", "check_secure_name", "check_bogus_name"])
            for key in ["check_secure_name", "check_bogus_name"] {
                guard let value = try string(table, section, key) else { continue }
                let name = value.hasSuffix(".") ? String(value.dropLast()) : value
                guard value.isEmpty || isHostname(name) else { throw error(section, key, "'dns.\(key)' \"\(value)\" is not a domain name") }
                if key == "check_secure_name" { dns.checkSecureName = name } else { dns.checkBogusName = name }
            }
            if let value = try integer(table, section, "timeout", range: 1...300) { dns.timeout = value }
            if let value = table["auto_trust_anchor"] {
                guard let flag = value.bool else { throw error(section, "auto_trust_anchor", "'dns.auto_trust_anchor' must be true or false, not \(value.type)") }
                dns.autoTrustAnchor = flag
            }
            if let value = try string(table, section, "trust_anchor_file") {
                guard value.hasPrefix("/") else { throw error(section, "trust_anchor_file", "'dns.trust_anchor_file' must be an absolute path") }
                dns.trustAnchorFile = value
            }
            if let list = try stringList(table, section, "forwarders") {
                dns.forwarders = try list.map { text in
                    guard let address = SocketAddressText.parseDNS(text) else {
                        throw error(section, "forwarders", "'dns.forwarders' entry \"\(text)\" is not IP, IP@port or IP:port")
                    }
                    return address
                }
            }
            if let value = table["stub_zones"] {
                guard let array = value.array else { throw error(section, "stub_zones", "'dns.stub_zones' must be an array of tables") }
                dns.stubZones = try array.map { element in
                    guard let zone = element.table else {
                        throw error(section, "stub_zones", "'dns.stub_zones' entries must be tables like { name = \"example.\", addresses = [\"192.0.2.53@53\"] }")
                    }
                    for key in zone.keys where !["name", "addresses"].contains(key) {
                        throw error(section, "stub_zones", "unknown key '\(key)' in a dns.stub_zones entry; known keys: name, addresses")
                    }
                    guard let name = zone["name"]?.string, isHostname(name.hasSuffix(".") ? String(name.dropLast()) : name) || name == "." else {
                        throw error(section, "stub_zones", "a dns.stub_zones entry needs name = \"zone.\" (a domain name)")
                    }
                    guard let list = zone["addresses"]?.array, !list.isEmpty else {
                        throw error(section, "stub_zones", "dns.stub_zones entry \"\(name)\" needs addresses = [\"IP@port\", ...]")
                    }
                    let addresses = try list.map { item -> SocketAddressText in
                        guard let text = item.string, let address = SocketAddressText.parseDNS(text) else {
                            throw error(section, "stub_zones", "dns.stub_zones entry \"\(name)\": address \(item.debugDescription) is not IP, IP@port or IP:port")
                        }
                        return address
                    }
                    return RelayConfiguration.StubZone(name: name.hasSuffix(".") ? name.lowercased() : name.lowercased() + ".", addresses: addresses)
                }
            }
        }

        func readDelivery(_ table: TOMLTable, into delivery: inout RelayConfiguration.Delivery) throws {
            let section = "delivery"
            try checkKeys(table, section: section, allowed: [
                "port", "tls_ca_file", "concurrency", "destination_concurrency", "min_backoff", "max_backoff", "queue_lifetime", "connect_timeout", "command_timeout", "hold",
                "tls_handshake_timeout", "initial_destination_concurrency", "address_concurrency", "delay_warning_time",
                "connection_cache_time_limit", "connection_reuse_time_limit", "dsn_relay",
            ])
            if let value = try string(table, section, "dsn_relay") {
                if value.isEmpty {
                    delivery.dsnRelay = nil
                } else {
                    guard let address = SocketAddressText.parseNextHop(value) else {
                        throw error(section, "dsn_relay", "'delivery.dsn_relay' must be \"[IP]:port\" or \"IP:port\" (for example \"[127.0.0.1]:25\", the upstream Postfix; \"[IPv6]:port\" for IPv6) or \"\" to send DSNs to the sender domain's MX, got \"\(value)\"")
                    }
                    delivery.dsnRelay = address
                }
            }
            if let value = try integer(table, section, "concurrency", range: 1...1000) { delivery.concurrency = value }
            if let value = try integer(table, section, "destination_concurrency", range: 1...1000) { delivery.destinationConcurrency = value }
            if let value = try integer(table, section, "initial_destination_concurrency", range: 1...1000) { delivery.initialDestinationConcurrency = value }
            if let value = try integer(table, section, "address_concurrency", range: 1...1000) { delivery.addressConcurrency = value }
            if let value = try integer(table, section, "min_backoff", range: 1...86400) { delivery.minBackoff = value }
            if let value = try integer(table, section, "max_backoff", range: 1...604_800) { delivery.maxBackoff = value }
            if let value = try integer(table, section, "queue_lifetime", range: 0...(100 * 86400)) { delivery.queueLifetime = value }
            if let value = try integer(table, section, "delay_warning_time", range: 0...(100 * 86400)) { delivery.delayWarningTime = value }
            if let value = try integer(table, section, "connect_timeout", range: 1...600) { delivery.connectTimeout = value }
            if let value = try integer(table, section, "command_timeout", range: 1...3600) { delivery.commandTimeout = value }
            if let value = try integer(table, section, "tls_handshake_timeout", range: 1...600) { delivery.tlsHandshakeTimeout = value }
            if let value = try integer(table, section, "connection_cache_time_limit", range: 0...300) { delivery.connectionCacheTimeLimit = value }
            if let value = try integer(table, section, "connection_reuse_time_limit", range: 1...86400) { delivery.connectionReuseTimeLimit = value }
            if let value = table["hold"] {
                guard let flag = value.bool else { throw error(section, "hold", "'delivery.hold' must be true or false, not \(value.type)") }
                delivery.hold = flag
            }
            if delivery.maxBackoff < delivery.minBackoff {
                throw error(section, "max_backoff", "'delivery.max_backoff' (\(delivery.maxBackoff)) must not be less than 'delivery.min_backoff' (\(delivery.minBackoff))")
            }
            if let value = try integer(table, section, "port", range: 1...65535) { delivery.port = value }
            if let value = try string(table, section, "tls_ca_file") {
                guard value.isEmpty || value.hasPrefix("/") else {
                    throw error(section, "tls_ca_file", "'delivery.tls_ca_file' must be empty or an absolute path")
                }
                delivery.tlsCAFile = value
            }
        }

        func readPolicy(_ table: TOMLTable, into policy: inout PolicySettings) throws {
            let section = "policy"
            try checkKeys(table, section: section, allowed: ["downgrade_memory", "downgrade_grace", "dane_for_insecure_mx", "honor_tls_required_no", "domain"])
            if let value = table["honor_tls_required_no"] {
                guard let flag = value.bool else {
                    throw error(section, "honor_tls_required_no", "'policy.honor_tls_required_no' must be true or false, not \(value.type)")
                }
                policy.honorTLSRequiredNo = flag
            }
            if let value = try string(table, section, "downgrade_memory") {
                guard let mode = PolicySettings.DowngradeMemory(rawValue: value) else {
                    throw error(section, "downgrade_memory", "'policy.downgrade_memory' must be report, enforce or off, got \"\(value)\"")
                }
                policy.downgradeMemory = mode
            }
            if let value = try integer(table, section, "downgrade_grace", range: 0...(365 * 86400)) { policy.downgradeGrace = value }
            if let value = table["dane_for_insecure_mx"] {
                guard let flag = value.bool else {
                    throw error(section, "dane_for_insecure_mx", "'policy.dane_for_insecure_mx' must be true or false, not \(value.type)")
                }
                policy.daneForInsecureMX = flag
            }
            if let value = table["domain"] {
                guard let array = value.array else {
                    throw error("policy.domain", nil, "'policy.domain' must be an array of tables ([[policy.domain]])")
                }
                var seen: Set<String> = []
                var entries: [PolicySettings.DomainLevel] = []
                for (index, element) in array.enumerated() {
                    var reader = self
                    reader.occurrence = index
                    entries.append(try reader.readDomainLevel(element, seen: &seen))
                }
                policy.domains = entries
            }
        }

        func readDomainLevel(_ element: TOMLValueConvertible, seen: inout Set<String>) throws -> PolicySettings.DomainLevel {
                do {
                    guard let entry = element.table else {
                        throw error("policy.domain", nil, "'policy.domain' entries must be tables ([[policy.domain]])")
                    }
                    let sub = "policy.domain"
                    try checkKeys(entry, section: sub, allowed: ["name", "level", "reason", "expires"])
                    guard let rawName = try string(entry, sub, "name") else { throw error(sub, nil, "a [[policy.domain]] entry needs name = \"example.com\"") }
                    let name = (rawName.hasSuffix(".") ? String(rawName.dropLast()) : rawName).lowercased()
                    guard isHostname(name) else { throw error(sub, "name", "'policy.domain' name \"\(rawName)\" is not a domain name") }
                    guard seen.insert(name).inserted else { throw error(sub, "name", "domain \"\(name)\" has two [[policy.domain]] entries") }
                    guard let rawLevel = try string(entry, sub, "level") else {
                        throw error(sub, nil, "[[policy.domain]] \"\(name)\" needs level = none, may, encrypt, dane, dane-only or verify")
                    }
                    guard let level = PolicySettings.DomainLevel.Level(rawValue: rawLevel) else {
                        throw error(sub, "level", "level \"\(rawLevel)\" of \"\(name)\" must be none, may, encrypt, dane, dane-only or verify")
                    }
                    let reason = try string(entry, sub, "reason")
                    var expires: Double?
                    var expiresText: String?
                    if let value = entry["expires"] {
                        guard let text = value.string ?? (value.type == .date || value.type == .dateTime ? value.debugDescription : nil),
                              let seconds = ConfigurationLoader.parseExpiry(text)
                        else {
                            throw error(sub, "expires", "expires of \"\(name)\" must be a date \"YYYY-MM-DD\" or \"YYYY-MM-DDTHH:MM:SSZ\"")
                        }
                        expires = seconds
                        expiresText = text
                    }
                    return PolicySettings.DomainLevel(domain: name, level: level, reason: reason, expires: expires, expiresText: expiresText)
                }
        }

        /// Letters, digits, hyphens and dots; labels of 1 to 63 characters (RFC 1123 §2.1).
        /// `local@domain` as an SMTP path would take it (ASCII).
        func isMailAddress(_ value: String) -> Bool {
            (try? PathParser.parsePath(Substring("<\(value)>"), allowUTF8: false)) != nil
        }

        func isHostname(_ name: String) -> Bool {
            guard !name.isEmpty, name.utf8.count <= 253 else { return false }
            return name.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
                !label.isEmpty && label.count <= 63 && label.first != "-" && label.last != "-"
                    && label.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }
            }
        }
    }
}
