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
        return problems
    }

    /// Warnings that do not stop start-up: listening beyond loopback with clients allowed from
    /// everywhere makes an open relay.
    public static func warnings(_ configuration: RelayConfiguration) -> [String] {
        let publicListener = configuration.server.listen.contains { !$0.address.isLoopback }
        let everyone = configuration.server.allowedClients.contains { $0.prefixLength <= 8 && !$0.network.isLoopback }
        if publicListener && everyone {
            return ["server.listen is not loopback-only and server.allowed_clients admits very large address ranges: anyone who can reach the listener can relay through tlsrelay (an open relay)"]
        }
        return []
    }
}
