import Foundation
import Testing
@testable import RelayConfig

private func load(_ text: String) throws -> RelayConfiguration {
    try ConfigurationLoader.parse(text: text, file: "test.toml")
}

@Suite("Configuration")
struct ConfigurationTests {
    @Test("every documented key is read")
    func full() throws {
        let config = try load("""
            state_directory = "/tmp/state"
            log_level = "debug"
            [server]
            listen = ["127.0.0.1:2525", "[::1]:2525"]
            hostname = "relay.example.org"
            allowed_clients = ["127.0.0.0/8", "::1/128", "192.0.2.7"]
            max_message_size = 1048576
            max_connections = 7
            max_recipients = 200
            max_command_line_length = 1024
            max_line_length = 2000
            idle_timeout = 60
            [dns]
            trust_anchor_file = "/tmp/ta.ds"
            forwarders = ["127.0.0.53", "127.0.0.1@5353"]
            stub_zones = [{ name = "test.", addresses = ["127.0.1.53@53"] }, { name = "corp", addresses = ["::1"] }]
            [delivery]
            port = 2525
            tls_ca_file = "/tmp/ca.pem"
            concurrency = 3
            min_backoff = 1
            max_backoff = 2
            queue_lifetime = 60
            connect_timeout = 5
            command_timeout = 7
            connection_cache_time_limit = 0
            connection_reuse_time_limit = 60
            """)
        #expect(config.stateDirectory == "/tmp/state")
        #expect(config.logLevel == "debug")
        #expect(config.server.listen.map(\.description) == ["127.0.0.1:2525", "[::1]:2525"])
        #expect(config.server.allowedClients.count == 3)
        #expect(config.server.maxMessageSize == 1_048_576)
        #expect(config.server.maxConnections == 7)
        #expect(config.server.maxRecipients == 200)
        #expect(config.server.idleTimeout == 60)
        #expect(config.dns.forwarders.map(\.unboundNotation) == ["127.0.0.53@53", "127.0.0.1@5353"])
        #expect(config.dns.stubZones.map(\.name) == ["test.", "corp."])
        #expect(config.dns.stubZones[0].addresses.map(\.unboundNotation) == ["127.0.1.53@53"])
        #expect(config.delivery.port == 2525)
        #expect(config.delivery.tlsCAFile == "/tmp/ca.pem")
        #expect(config.delivery.concurrency == 3)
        #expect(config.delivery.minBackoff == 1 && config.delivery.maxBackoff == 2)
        #expect(config.delivery.queueLifetime == 60)
        #expect(config.delivery.connectTimeout == 5 && config.delivery.commandTimeout == 7)
        #expect(config.delivery.connectionCacheTimeLimit == 0 && config.delivery.connectionReuseTimeLimit == 60)
        // The rendered effective configuration reads back to the same values.
        #expect(try load(config.renderTOML()) == config)
    }

    @Test("[policy]: downgrade memory and local levels with expiry")
    func policy() throws {
        let config = try load("""
            [policy]
            downgrade_memory = "enforce"
            downgrade_grace = 3600
            dane_for_insecure_mx = false
            [[policy.domain]]
            name = "Example.COM."
            level = "encrypt"
            reason = "ticket 1"
            expires = "2026-12-06" # brackets in comments and strings do not count: ] } [
            [[policy.domain]]
            name = "other.example"
            level = "dane-only"
            reason = 'stale TLSA } ] see [ticket 2]'
            expires = "2026-12-06T12:00:00Z"
            """)
        #expect(config.policy.downgradeMemory == .enforce)
        #expect(config.policy.downgradeGrace == 3600)
        #expect(!config.policy.daneForInsecureMX)
        #expect(config.policy.domains.count == 2)
        let first = try #require(config.policy.level(for: "example.com"))
        #expect(first.level == .encrypt && first.reason == "ticket 1")
        #expect(first.expires == 1_796_601_599)   // 2026-12-06T23:59:59Z
        #expect(config.policy.level(for: "other.example")?.expires == 1_796_558_400)
        #expect(config.policy.level(for: "none.example") == nil)
        #expect(try load(config.renderTOML()) == config)
    }

    @Test("state_directory: one spelling, so the rendered configuration reads back the same (found by libFuzzer)")
    func stateDirectorySpelling() throws {
        for (written, meant) in [("///", "/"), ("/var//lib/tlsrelay/", "/var/lib/tlsrelay"), ("/", "/"), ("/srv/relay", "/srv/relay")] {
            let config = try load("state_directory = \"\(written)\"\n")
            #expect(config.stateDirectory == meant)
            #expect(try load(config.renderTOML()) == config)
        }
    }

    @Test("defaults: loopback only")
    func defaults() throws {
        let config = try load("")
        #expect(config.stateDirectory == "/var/lib/tlsrelay")
        #expect(config.server.listen.allSatisfy { $0.address.isLoopback })
        #expect(config.server.allowedClients.map(\.description) == ["127.0.0.0/8", "::1/128"])
        #expect(config.server.maxMessageSize == 52_428_800)
        #expect(config.delivery.port == 25)
        // The DNSSEC self-test is on, with names on the public internet; "" turns a check off.
        #expect(config.dns.checkSecureName == "isc.org" && config.dns.checkBogusName == "dnssec-failed.org")
        let off = try load("[dns]\ncheck_secure_name = \"\"\ncheck_bogus_name = \"\"\n")
        #expect(off.dns.checkSecureName.isEmpty && off.dns.checkBogusName.isEmpty)
    }

    struct Bad: Sendable, CustomStringConvertible {
        let text: String
        let line: Int
        let fragment: String
        var description: String { fragment }
    }

    static let bad: [Bad] = [
        Bad(text: "state_directory = \"/x\"\nbogus = 1\n", line: 2, fragment: "unknown key 'bogus'"),
        Bad(text: "[server]\nlisten = [\"127.0.0.1:25\"]\nhostnme = \"x\"\n", line: 3, fragment: "unknown key 'server.hostnme'"),
        Bad(text: "[server]\nmax_message_size = \"big\"\n", line: 2, fragment: "must be an integer"),
        Bad(text: "[server]\n\nmax_message_size = 10\n", line: 3, fragment: "between"),
        Bad(text: "[server]\nlisten = [\"localhost:25\"]\n", line: 2, fragment: "not IP:port"),
        Bad(text: "[server]\nlisten = [\"::1:25\"]\n", line: 2, fragment: "not IP:port"),
        Bad(text: "[server]\nallowed_clients = [\"10.0.0.0/33\"]\n", line: 2, fragment: "not an address"),
        Bad(text: "[server]\nhostname = \"bad host\"\n", line: 2, fragment: "not a valid host name"),
        Bad(text: "[dns]\nforwarders = [\"1.2.3.4@99999\"]\n", line: 2, fragment: "not IP, IP@port or IP:port"),
        Bad(text: "[dns]\nstub_zones = [{ name = \"test.\" }]\n", line: 2, fragment: "needs addresses"),
        Bad(text: "[dns]\nstub_zones = [{ name = \"test.\", addresses = [\"x\"] }]\n", line: 2, fragment: "is not IP, IP@port or IP:port"),
        Bad(text: "[delivery]\nport = 0\n", line: 2, fragment: "between 1 and 65535"),
        Bad(text: "[delivery]\nconnection_cache_time_limit = 301\n", line: 2, fragment: "between 0 and 300"),
        Bad(text: "[delivery]\nconnection_reuse_time_limit = 0\n", line: 2, fragment: "between 1 and 86400"),
        Bad(text: "log_level = \"loud\"\n", line: 1, fragment: "must be one of"),
        Bad(text: "[delivery]\nmin_backoff = 100\nmax_backoff = 10\n", line: 3, fragment: "must not be less than"),
        Bad(text: "[policy]\ndowngrade_memory = \"strict\"\n", line: 2, fragment: "report, enforce or off"),
        // From a new user's attack run.
        Bad(text: "log_level = \"info\"\n\u{0000}\n[server]\nbogus_key = 1\n", line: 2, fragment: "NUL byte"),
        Bad(text: "[[policy.domain]]\nname = \"a.example\"\nlevel = \"may\"\nexpires = \"2026-02-31\"\n", line: 4, fragment: "must be a date"),
        Bad(text: "[server]\nlisten = [\"127.0.0.1:25\", \"127.0.0.1:25\"]\n", line: 2, fragment: "same address twice"),
        Bad(text: "[[policy.domain]]\nname = \"a.example\"\nlevel = \"may\"\n\n[[policy.domain]]\nname = \"b.example\"\nlevel = \"bogus\"\n", line: 7, fragment: "must be none, may"),
        Bad(text: "[[policy.domain]]\nname = \"a.example\"\nlevel = \"may\"\n[[policy.domain]]\nname = \"a.example\"\nlevel = \"may\"\n", line: 5, fragment: "two [[policy.domain]] entries"),
        // Found by the fuzzer: toml++ asserted on these instead of reporting them.
        Bad(text: "state_directory = \"/x\"\n[>[policy.domain]]\nname = \"a.example\"\n", line: 2, fragment: "table header needs a key"),
        // toml++ stops on an assertion for these instead of reporting them (found by libFuzzer).
        Bad(text: "state_directory = \"/x\"\n[server]\nlisten = [\"127.0.0.1:25\", }]\n", line: 3, fragment: "'}' inside an array"),
        Bad(text: "[server]\nlisten = [\n  \"127.0.0.1:25\",\n  }\n]\n", line: 4, fragment: "'}' inside an array"),
        Bad(text: "[dns]\nstub_zones = [{ name = \"t.\", addresses = [\"127.0.0.1\"} ]\n", line: 2, fragment: "'}' inside an array"),
        Bad(text: "[ ]\n", line: 1, fragment: "table header needs a key"),
        // The line of a key written as a table, a top-level dotted key or an inline table.
        Bad(text: "state_directory = \"/x\"\n\n[server]\nhostname = \"a.example\"\n[bogus]\nx = 1\n", line: 5, fragment: "unknown key 'bogus'"),
        Bad(text: "state_directory = \"/x\"\n\n\ndelivery.connection_cache_time_limit = -1\n", line: 4, fragment: "between 0 and 300"),
        Bad(text: "state_directory = \"/x\"\n\n\ndelivery = { connection_reuse_time_limit = 0 }\n", line: 4, fragment: "between 1 and 86400"),
        Bad(text: "[server]\nhostname = \"\"\"a\\\n\"\"\"\n\n\nlisten = [\"x\", }]\n", line: 6, fragment: "'}' inside an array"),
        Bad(text: "[[policy.domain]]\nname = \"a.example\"\nlevel = \"may\"\nexpires = \"\"\n", line: 4, fragment: "must be a date"),
        Bad(text: "[[policy.domain]]\nname = \"a.example\"\nlevel = \"secure\"\n", line: 3, fragment: "must be none, may"),
        Bad(text: "[[policy.domain]]\nname = \"a.example\"\nlevel = \"may\"\nexpires = \"next week\"\n", line: 4, fragment: "must be a date"),
        Bad(text: "[[policy.domain]]\nlevel = \"may\"\n", line: 1, fragment: "needs name"),
        Bad(text: "[[policy.domain]]\nname = \"a.example\"\nlevel = \"may\"\ncolour = 1\n", line: 4, fragment: "unknown key 'policy.domain.colour'"),
        Bad(text: "state_directory = \"relative\"\n", line: 1, fragment: "absolute path"),
        Bad(text: "server = 5\n", line: 1, fragment: "must be a table"),
        Bad(text: "[server]\nlisten = [\"127.0.0.1:25\"\n", line: 2, fragment: "TOML syntax"),
        Bad(text: "\n\n[delivery]\nport = 25\nport = 26\n", line: 5, fragment: "TOML syntax"),
        // Inbound STARTTLS and the sender's TLS wishes (RFC 3207, RFC 8689).
        Bad(text: "[server]\nstarttls = \"yes\"\n", line: 2, fragment: "must be off, offered or required"),
        Bad(text: "[server]\n\nstarttls = \"offered\"\n", line: 3, fragment: "'server.tls_certificate_chain_file' must name a PEM file"),
        Bad(text: "[server]\nlisten = [\"127.0.0.1:2525\"]\nstarttls_required = [\"127.0.0.1:2526\"]\n", line: 3, fragment: "is not one of server.listen"),
        Bad(text: "[server]\nstarttls = \"offered\"\ntls_certificate_chain_file = \"relay.pem\"\n", line: 3, fragment: "must be an absolute path"),
        Bad(text: "[server]\nstarttls = \"offered\"\ntls_certificate_chain_file = \"/nonexistent/relay.pem\"\ntls_private_key_file = \"/nonexistent/relay.key\"\n",
            line: 3, fragment: "/nonexistent/relay.pem: No such file or directory"),
        Bad(text: "[policy]\nhonor_tls_required_no = \"yes\"\n", line: 2, fragment: "must be true or false"),
        // TLS reporting (RFC 8460).
        Bad(text: "[tlsrpt]\nenabled = true\norganization_name = \"Org\"\n", line: 2, fragment: "'tlsrpt.contact_info' must be set"),
        Bad(text: "[tlsrpt]\nfrom = \"not an address\"\n", line: 2, fragment: "is not a mail address"),
        Bad(text: "[tlsrpt]\ncontact_info = \"mailto:postmaster@example.org\"\n", line: 2, fragment: "must be an e-mail address"),
        Bad(text: "[tlsrpt]\nsubmitter = \"bad host\"\n", line: 2, fragment: "is not a domain name"),
        Bad(text: "[tlsrpt]\n\nsend_delay = 90000\n", line: 3, fragment: "between 0 and 86000"),
        Bad(text: "[tlsrpt]\nreport_to = \"x\"\n", line: 2, fragment: "unknown key 'tlsrpt.report_to'"),
    ]

    @Test("[tlsrpt] is read and renders back the same")
    func tlsrpt() throws {
        let config = try load("""
            [tlsrpt]
            enabled = true
            organization_name = "Example Org"
            contact_info = "tlsrpt@example.org"
            from = "tlsrpt-noreply@example.org"
            submitter = "Relay.Example.org"
            send_delay = 0
            send_without_failures = false
            skip_reused_handshakes = false
            max_disk_mb = 64
            give_up_after_days = 3
            https_attempts = 1
            https_retry_delay = 5
            """)
        #expect(config.tlsrpt.enabled && config.tlsrpt.submitter == "relay.example.org" && config.tlsrpt.maxDiskMB == 64)
        #expect(!config.tlsrpt.sendWithoutFailures && !config.tlsrpt.skipReusedHandshakes && config.tlsrpt.giveUpAfterDays == 3)
        #expect(try load(config.renderTOML()) == config)
        #expect(try !load("").tlsrpt.enabled)
    }

    @Test("[server] STARTTLS per listener and [policy] honor_tls_required_no")
    func starttls() throws {
        let pem = NSTemporaryDirectory() + "tlsrelay-config-\(UUID().uuidString).pem"
        try "not read here".write(toFile: pem, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: pem) }
        let config = try load("""
            [server]
            listen = ["127.0.0.1:2525", "192.0.2.10:2525"]
            starttls = "offered"
            starttls_required = ["192.0.2.10:2525"]
            tls_certificate_chain_file = "\(pem)"
            tls_private_key_file = "\(pem)"
            [policy]
            honor_tls_required_no = false
            """)
        #expect(config.server.listenerPolicies.map(\.starttls) == [.offered, .required])
        #expect(config.server.offersSTARTTLS && !config.policy.honorTLSRequiredNo)
        let rendered = try load(config.renderTOML())
        #expect(rendered == config)
        let defaults = try load("")
        #expect(!defaults.server.offersSTARTTLS && defaults.policy.honorTLSRequiredNo)
        #expect(defaults.server.listenerPolicies.allSatisfy { $0.starttls == .off })
        // A remote listener without required STARTTLS is a warning.
        let open = try load("[server]\nhostname = \"relay.example.org\"\nlisten = [\"192.0.2.10:2525\"]\nallowed_clients = [\"192.0.2.0/24\"]\n")
        #expect(ConfigurationCheck.warnings(open, now: 0).contains { $0.contains("can cross the network in clear") })
    }

    @Test("bad input names file, line and reason", arguments: bad)
    func errors(_ bad: Bad) {
        do {
            _ = try load(bad.text)
            Issue.record("accepted: \(bad.text)")
        } catch let error as ConfigurationError {
            #expect(error.file == "test.toml")
            #expect(error.line == bad.line, "\(error)")
            #expect(error.reason.contains(bad.fragment), "\(error)")
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    @Test("CIDR matching")
    func cidr() {
        let block = CIDRBlock("127.0.0.0/8")!
        #expect(block.contains(IPAddress("127.1.2.3")!))
        #expect(block.contains(IPAddress("::ffff:127.0.0.1")!))
        #expect(!block.contains(IPAddress("128.0.0.1")!))
        #expect(CIDRBlock("::1/128")!.contains(IPAddress("::1")!))
        #expect(!CIDRBlock("::1/128")!.contains(IPAddress("::2")!))
        #expect(CIDRBlock("192.0.2.0/25")!.contains(IPAddress("192.0.2.127")!))
        #expect(!CIDRBlock("192.0.2.0/25")!.contains(IPAddress("192.0.2.128")!))
    }
}

@Suite("Configuration: what a first-time administrator trips over")
struct AdministratorConfigurationTests {
    @Test("the default listener is 10030 on loopback, off the content-filter ports 10024-10029")
    func defaultPort() throws {
        let config = try load("")
        #expect(config.server.listen.map(\.description) == ["127.0.0.1:10030", "[::1]:10030"])
    }

    @Test("dns.forwarders and stub zone addresses take IP:port as listen does, IP@port and IP still")
    func forwarderNotation() throws {
        let config = try load("""
            [dns]
            forwarders = ["127.0.0.1:5353", "[::1]:5354", "127.0.0.2@5355", "127.0.0.3"]
            stub_zones = [{ name = "test.", addresses = ["127.0.1.53:53"] }]
            """)
        #expect(config.dns.forwarders.map(\.unboundNotation) == ["127.0.0.1@5353", "::1@5354", "127.0.0.2@5355", "127.0.0.3@53"])
        #expect(config.dns.stubZones.first?.addresses.map(\.unboundNotation) == ["127.0.1.53@53"])
        #expect(throws: ConfigurationError.self) { try load("[dns]\nforwarders = [\"127.0.0.1:99999\"]\n") }
    }

    @Test("warnings: a non-FQDN host name, an expired local level, a wide listener with loopback-only clients")
    func warnings() throws {
        let config = try load("""
            [server]
            listen = ["127.0.0.1:10030", "0.0.0.0:10030"]
            hostname = "vm"
            [[policy.domain]]
            name = "stale.example"
            level = "encrypt"
            expires = "2020-01-01"
            [[policy.domain]]
            name = "current.example"
            level = "encrypt"
            expires = "2099-01-01"
            """)
        let warnings = ConfigurationCheck.warnings(config, now: 1_800_000_000)
        #expect(warnings.contains { $0.contains("server.hostname \"vm\" is not a fully qualified domain name") })
        #expect(warnings.contains { $0.contains("[[policy.domain]] stale.example: level encrypt expired on 2020-01-01") })
        #expect(!warnings.contains { $0.contains("current.example") })
        #expect(warnings.contains { $0.contains("server.listen includes 0.0.0.0:10030 but server.allowed_clients admits only loopback") })
        let quiet = try load("[server]\nhostname = \"relay.example.org\"\n")
        #expect(ConfigurationCheck.warnings(quiet, now: 1_800_000_000).isEmpty)
    }

    @Test("the example configuration ships no active host name")
    func exampleHostname() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("etc/tlsrelay.toml")
        let text = try String(contentsOf: url, encoding: .utf8)
        #expect(!text.split(separator: "\n").contains { $0.hasPrefix("hostname") })
        #expect(try load(text).server.hostname == RelayConfiguration.systemHostname())
    }
}

@Suite("Configuration: [state]")
struct StateConfigurationTests {
    @Test("files by default; postgresql with every key read and rendered back the same")
    func postgresql() throws {
        #expect(try load("").state.backend == .files)
        let config = try load("""
            [state]
            backend = "postgresql"
            host = "db.example.org"
            port = 6432
            dbname = "relays"
            user = "relay"
            password_file = "/etc/tlsrelay/db.password"
            sslmode = "verify-full"
            sslrootcert = "/etc/tlsrelay/db-ca.pem"
            connect_timeout = 3
            statement_timeout = 2
            cache_seconds = 10
            """)
        let state = config.state
        #expect(state.backend == .postgresql && state.host == "db.example.org" && state.port == 6432 && state.dbname == "relays")
        #expect(state.user == "relay" && state.passwordFile == "/etc/tlsrelay/db.password" && state.sslMode == "verify-full")
        #expect(state.sslRootCert == "/etc/tlsrelay/db-ca.pem" && state.connectTimeout == 3 && state.statementTimeout == 2 && state.cacheSeconds == 10)
        #expect(try load(config.renderTOML()) == config)
        #expect(try load("[state]\nbackend = \"postgresql\"\nhost = \"/run/postgresql\"\n").state.host == "/run/postgresql")
    }

    @Test("bad values name the file, the line and the reason", arguments: [
        ("backend = \"mysql\"", "'state.backend' must be \"files\" or \"postgresql\""),
        ("port = 0", "'state.port' must be between 1 and 65535"),
        ("sslmode = \"strict\"", "'state.sslmode' must be one of disable, allow, prefer, require, verify-ca, verify-full"),
        ("sslmode = \"verify-ca\"", "needs 'state.sslrootcert'"),
        ("password_file = \"db.password\"", "'state.password_file' must be an absolute path"),
        ("host = \"db host\"", "'state.host' must be a non-empty word"),
        ("user = \"o'brien\"", "'state.user' must be a non-empty word"),
        ("cache_seconds = -1", "'state.cache_seconds' must be between 0 and 3600"),
        ("cache_seconds = \"5\"", "'state.cache_seconds' must be an integer"),
        ("database = \"x\"", "unknown key 'state.database' in [state]"),
    ])
    func errors(_ line: String, _ reason: String) throws {
        do {
            let backend = line.hasPrefix("backend") ? "# backend\n" : "backend = \"postgresql\"\n"
            _ = try load("log_level = \"info\"\n[state]\n" + backend + "\(line)\n")
            Issue.record("accepted: \(line)")
        } catch let error as ConfigurationError {
            #expect(error.line == 4 && error.file == "test.toml", "\(error)")
            #expect(error.reason.contains(reason), "\(error)")
        }
    }
}
