import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Checks of a configuration against this host, beyond its syntax: the files it names exist and
/// are readable. `--check-config` runs them so that a configuration it passes also starts (the
/// systemd unit runs `--check-config` before every start).
public enum ConfigurationCheck {
    /// - Returns: problems that stop start-up (empty when none).
    public static func problems(_ configuration: RelayConfiguration) -> [String] {
        var problems: [String] = []
        func readable(_ path: String, _ key: String) {
            guard !path.isEmpty else { return }
            if access(path, R_OK) != 0 {
                problems.append("\(key) \"\(path)\": \(String(cString: strerror(errno)))")
            }
        }
        readable(configuration.dns.trustAnchorFile, "dns.trust_anchor_file")
        readable(configuration.delivery.tlsCAFile, "delivery.tls_ca_file")
        if configuration.state.backend == .postgresql {
            // Checked without the database: it need not be up for --check-config.
            readable(configuration.state.passwordFile, "state.password_file")
            readable(configuration.state.sslRootCert, "state.sslrootcert")
        }
        // The state directory must be usable by this user (the unit runs --check-config as the
        // service user): an existing one writable, a missing one creatable.
        let state = configuration.stateDirectory
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: state, isDirectory: &isDirectory) {
            if !isDirectory.boolValue {
                problems.append("state_directory \"\(state)\" is not a directory")
            } else if access(state, W_OK | X_OK) != 0 {
                problems.append("state_directory \"\(state)\": \(String(cString: strerror(errno))) for this user (uid \(getuid()))")
            }
        } else {
            let parent = (state as NSString).deletingLastPathComponent
            if access(parent, W_OK | X_OK) != 0 {
                problems.append("state_directory \"\(state)\" does not exist and cannot be created: \(parent): \(String(cString: strerror(errno)))")
            }
        }
        return problems
    }

    /// Warnings that do not stop start-up: listening beyond loopback with clients allowed from
    /// everywhere (an open relay), or with only loopback clients allowed (remote clients get 554);
    /// a host name that is not fully qualified; local levels that have expired.
    /// - Parameter now: seconds since the epoch, for the expiry of local levels.
    public static func warnings(_ configuration: RelayConfiguration, now: Double) -> [String] {
        var warnings: [String] = []
        if let metrics = configuration.metrics.listen, !metrics.address.isLoopback {
            warnings.append("metrics.listen \(metrics) is not a loopback address: anyone who can reach it reads the relay's counters (protect it with a firewall, or use 127.0.0.1)")
        }
        let state = configuration.state
        if state.backend == .postgresql, !state.host.hasPrefix("/"), !["localhost", "127.0.0.1", "::1"].contains(state.host),
           !state.sslMode.hasPrefix("verify") {
            warnings.append("state.host \(state.host) is not on this host and state.sslmode = \"\(state.sslMode)\" does not authenticate the database: whoever sits in between can read and change the policy state (downgrade memory, MTA-STS policies); use sslmode = \"verify-full\" with state.sslrootcert")
        }
        let wide = configuration.server.listen.filter { !$0.address.isLoopback }
        let everyone = configuration.server.allowedClients.contains { $0.prefixLength <= 8 && !$0.network.isLoopback }
        if !wide.isEmpty && everyone {
            warnings.append("server.listen is not loopback-only and server.allowed_clients admits very large address ranges: anyone who can reach the listener can relay through tlsrelay (an open relay)")
        }
        if !wide.isEmpty && configuration.server.allowedClients.allSatisfy({ $0.network.isLoopback }) {
            warnings.append("server.listen includes \(wide.map(\.description).joined(separator: ", ")) but server.allowed_clients admits only loopback: remote clients will be refused with 554 5.7.1; add their addresses to server.allowed_clients")
        }
        let clear = configuration.server.listenerPolicies.filter { !$0.address.address.isLoopback && $0.starttls != .required }
        if !clear.isEmpty {
            let how = clear.contains { $0.starttls == .off } ? "does not offer STARTTLS" : "offers STARTTLS without requiring it"
            warnings.append("server.listen \(clear.map(\.address.description).joined(separator: ", ")) is not loopback and \(how): mail from other hosts can cross the network in clear; list it in server.starttls_required (server.starttls = \"required\" would require it on the loopback listeners too) and pin the relay's key in the clients' TLS policy")
        }
        let hostname = configuration.server.hostname
        if !hostname.contains(".") || hostname.hasSuffix(".") {
            warnings.append("server.hostname \"\(hostname)\" is not a fully qualified domain name: set it to this host's FQDN (it is the name in the greeting, in EHLO to other MTAs and in the Received header)")
        }
        for entry in configuration.policy.domains where entry.isExpired(at: now) {
            warnings.append("[[policy.domain]] \(entry.domain): level \(entry.level.rawValue) expired on \(entry.expiresText ?? "?") and no longer applies; remove the entry")
        }
        return warnings
    }
}
