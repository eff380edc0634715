import SMTPCore

/// How the server's certificate must be checked on one connection.
public enum PeerAuthentication: Sendable, Hashable {
    /// No check (opportunistic TLS, RFC 7435, or TLS required without authentication).
    case none
    /// DANE (RFC 7672 §3): the usable TLSA records; SNI is `base`; DANE-TA matches are
    /// name-checked against `base` and `hostNames`.
    case dane(base: String, hostNames: [String], records: [TLSAEntry])
    /// WebPKI chain to the trusted CAs and a certificate naming `hostName` (RFC 8461 §4.2, RFC 6125).
    case webPKI(hostName: String)
}

/// The exact TLS a connection attempt must use: whether STARTTLS is needed and how the peer is
/// authenticated.
public struct TLSDemand: Sendable, Hashable, CustomStringConvertible {
    public var requirement: ClientSession.TLSRequirement
    public var authentication: PeerAuthentication

    public init(requirement: ClientSession.TLSRequirement, authentication: PeerAuthentication) {
        self.requirement = requirement
        self.authentication = authentication
    }

    /// Never STARTTLS (local level `none`, or the clear retry after a failed opportunistic handshake).
    public static let cleartext = TLSDemand(requirement: .none, authentication: .none)
    /// STARTTLS when offered, no certificate check (RFC 7435).
    public static let opportunistic = TLSDemand(requirement: .opportunistic, authentication: .none)
    /// STARTTLS required, no certificate check.
    public static let encrypted = TLSDemand(requirement: .required, authentication: .none)
    /// STARTTLS required, WebPKI for `host`.
    public static func webPKI(_ host: String) -> TLSDemand { TLSDemand(requirement: .required, authentication: .webPKI(hostName: host)) }

    /// The weakest security an attempt under this demand can end with (and still send mail).
    public var guaranteed: AchievedSecurity {
        guard requirement == .required else { return .none }
        switch authentication {
        case .none: return .tls
        case .webPKI: return .mtaSTS
        case .dane(_, _, let records): return records.contains(where: \.isUsable) ? .dane : .tls
        }
    }

    /// Server name for SNI (RFC 7672 §8.1: the TLSA base domain under DANE).
    public func serverName(host: String) -> String {
        if case .dane(let base, _, _) = authentication { return base }
        return host
    }

    public var description: String {
        switch (requirement, authentication) {
        case (.none, _): return "no TLS"
        case (.opportunistic, _): return "opportunistic TLS, no certificate check"
        case (.required, .none): return "TLS required, no authentication"
        case (.required, .webPKI(let name)): return "TLS required, WebPKI for \(name)"
        case (.required, .dane(let base, _, let records)):
            return "TLS required, DANE (TLSA base \(base), \(records.count) usable record(s))"
        }
    }
}
