import DeliveryPolicy

/// `[policy]`: local overrides and downgrade memory.
public struct PolicySettings: Sendable, Equatable {
    /// What to do when a domain's security would be weaker than remembered: the planner's
    /// `MemoryMode` (report, enforce, off).
    public typealias DowngradeMemory = MemoryMode

    /// One `[[policy.domain]]` entry: a local TLS level for a destination (Postfix's levels,
    /// `smtp_tls_policy_maps`). It wins over DANE and MTA-STS and is logged on every delivery.
    public struct DomainLevel: Sendable, Equatable {
        /// Postfix security levels, weakest first: the planner's `LocalLevel`.
        public typealias Level = LocalLevel

        /// The destination domain, lowercased, without trailing dot.
        public var domain: String
        public var level: Level
        /// Why the override exists (logged with every delivery it touches).
        public var reason: String?
        /// Seconds since the epoch after which the entry stops applying (the log says so); nil =
        /// no expiry.
        public var expires: Double?
        /// The expiry as written in the file (YYYY-MM-DD or an RFC 3339 date-time).
        public var expiresText: String?

        /// True once `expires` has passed at `now` (seconds since the epoch): the entry no longer applies.
        public func isExpired(at now: Double) -> Bool {
            expires.map { now >= $0 } ?? false
        }

        public init(domain: String, level: Level, reason: String? = nil, expires: Double? = nil, expiresText: String? = nil) {
            self.domain = domain
            self.level = level
            self.reason = reason
            self.expires = expires
            self.expiresText = expiresText
        }
    }

    public var downgradeMemory: DowngradeMemory = .report
    /// Seconds a downgrade is refused under `downgrade_memory = "enforce"`. Default 86400.
    public var downgradeGrace = 86400
    /// Hold a DNSSEC-secure MX host to its TLSA records even when the MX RRset is insecure
    /// (RFC 7672 §2.2.1 leaves it open; Postfix ≥ 3.6 does). Default true.
    public var daneForInsecureMX = true
    public var domains: [DomainLevel] = []
    /// Honour a message's `TLS-Required: No` header (RFC 8689 §5): deliver it with opportunistic
    /// TLS and no recipient policy, as its sender asked. Never for a REQUIRETLS message. Default
    /// true (Postfix ≥ 3.10 does too).
    public var honorTLSRequiredNo = true

    public init() {}

    /// The entry for `domain`, if any (exact match, case-insensitive).
    public func level(for domain: String) -> DomainLevel? {
        let name = domain.lowercased()
        return domains.first { $0.domain == name }
    }
}
