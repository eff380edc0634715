import Foundation

/// A policy as cached: keyed by policy domain (never by MX host, RFC 8461 §10.2), kept across
/// restarts in `<state_directory>/mta-sts/<domain>.json` (RFC 8461 §5.1).
public struct CachedSTSPolicy: Sendable, Equatable, Codable {
    public var domain: String
    /// The `id` of the TXT record the policy was fetched for.
    public var id: String
    public var policy: STSPolicy
    /// Seconds since the epoch.
    public var fetchedAt: Double
    /// `fetchedAt + max_age`, seconds since the epoch.
    public var expiresAt: Double

    public init(domain: String, id: String, policy: STSPolicy, fetchedAt: Double) {
        self.domain = domain
        self.id = id
        self.policy = policy
        self.fetchedAt = fetchedAt
        self.expiresAt = fetchedAt + Double(policy.maxAge)
    }

    public func isExpired(now: Double) -> Bool { now >= expiresAt }
}

/// Where MTA-STS policies are kept, keyed by policy domain: the files in `state_directory`
/// (`STSPolicyCache`) or a database several relays share (`[state] backend = "postgresql"`).
public protocol STSPolicyStore: Sendable {
    /// What the store holds for `domain`; `.unavailable` when the store cannot be read now.
    func lookup(_ domain: String) async -> STSPolicyCache.Lookup
    /// Stores (replaces) the policy of its domain.
    func store(_ cached: CachedSTSPolicy) async throws
    /// Every stored policy (for `tlsrelayctl policy show`).
    func all() async throws -> [CachedSTSPolicy]
}

/// The persistent MTA-STS policy cache. Thread-safe; each write replaces one file durably
/// (`StateFile.replace`: temp file, fsync, rename, directory fsync).
public final class STSPolicyCache: STSPolicyStore {
    public let directory: String
    /// A read-only cache (`tlsrelayctl check` reads the daemon's) never writes.
    public let readOnly: Bool

    /// Opens `<stateDirectory>/mta-sts`, creating it when missing unless `readOnly`.
    /// - Throws: when the directory cannot be created.
    public init(stateDirectory: String, readOnly: Bool = false) throws {
        directory = stateDirectory + "/mta-sts"
        self.readOnly = readOnly
        if !readOnly {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        }
    }

    /// A domain is a file name only when it is a plain host name (no "/", no "..").
    static func fileName(for domain: String) -> String? {
        let name = domain.lowercased()
        guard !name.isEmpty, name.count <= 253, !name.hasPrefix("."), !name.contains(".."),
              name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == ".") })
        else { return nil }
        return name + ".json"
    }

    /// What the cache holds for one domain.
    public enum Lookup: Sendable, Equatable {
        case nothing
        case cached(CachedSTSPolicy)
        /// The file exists but cannot be read or holds nonsense: never read as "no policy".
        case unreadable(reason: String)
        /// The store (a shared database) cannot be reached or a statement failed: the policy in
        /// force is unknown, so the delivery is deferred, never made as if there were none.
        case unavailable(reason: String)

        public var policy: CachedSTSPolicy? {
            if case .cached(let policy) = self { return policy }
            return nil
        }
    }

    /// The cached policy of `domain`, expired or not; nil when none is cached or it is unreadable
    /// (see `lookup(_:)`).
    public func policy(for domain: String) -> CachedSTSPolicy? {
        lookup(domain).policy
    }

    /// What the cache file of `domain` holds, an unreadable one included.
    public func lookup(_ domain: String) -> Lookup {
        guard let name = Self.fileName(for: domain) else { return .nothing }
        let path = directory + "/" + name
        guard FileManager.default.fileExists(atPath: path) else { return .nothing }
        guard let data = FileManager.default.contents(atPath: path) else { return .unreadable(reason: "\(path) cannot be read") }
        do {
            let cached = try JSONDecoder().decode(CachedSTSPolicy.self, from: data)
            let policy = cached.policy
            // Times must be finite and the lifetime bounded by the largest max_age (plus slack for
            // a clock set back): nonsense there must not decide anything.
            let lifetime = cached.expiresAt - cached.fetchedAt
            guard cached.domain == domain.lowercased(), cached.fetchedAt.isFinite, cached.expiresAt.isFinite,
                  (0...STSPolicy.maxAllowedAge).contains(policy.maxAge), lifetime >= 0, lifetime <= Double(STSPolicy.maxAllowedAge + 7 * 86400),
                  policy.mode == .none || !policy.mx.isEmpty, (1...32).contains(cached.id.count)
            else { return .unreadable(reason: "\(path) holds an implausible policy") }
            return .cached(cached)
        } catch {
            return .unreadable(reason: "\(path) is not a valid cached policy: \(error)")
        }
    }

    /// Stores (replaces) the policy of its domain; does nothing when `readOnly`.
    /// - Throws: `StateFile.WriteError` on write errors.
    public func store(_ cached: CachedSTSPolicy) throws {
        guard !readOnly, let name = Self.fileName(for: cached.domain) else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        let data = try encoder.encode(cached)
        try StateFile.replace(directory + "/" + name, with: data)
    }

    /// Every cached policy (for `tlsrelayctl policy show`).
    public func all() -> [CachedSTSPolicy] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasSuffix(".json") }.compactMap { policy(for: String($0.dropLast(5))) }
            .sorted { $0.domain < $1.domain }
    }
}
