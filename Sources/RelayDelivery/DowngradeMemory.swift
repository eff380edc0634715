import Foundation
import NIOConcurrencyHelpers

/// The security a delivery to a domain achieved, weakest first.
public enum AchievedSecurity: String, Sendable, Codable, Comparable, CaseIterable {
    /// Delivered in clear.
    case none
    /// TLS, certificate not authenticated.
    case tls
    /// TLS authenticated by WebPKI under an MTA-STS policy (RFC 8461).
    case mtaSTS = "mta-sts"
    /// TLS authenticated by DANE (RFC 7672).
    case dane

    var rank: Int { Self.allCases.firstIndex(of: self)! }
    public static func < (lhs: AchievedSecurity, rhs: AchievedSecurity) -> Bool { lhs.rank < rhs.rank }
}

/// What was remembered of one destination domain.
public struct DomainMemory: Sendable, Codable, Equatable {
    public var domain: String
    /// The strongest security achieved so far.
    public var strongest: AchievedSecurity
    /// When it was last achieved, seconds since the epoch.
    public var achievedAt: Double
    /// When a weaker delivery was first refused (enforce mode), for the grace window.
    public var downgradeFirstSeen: Double?

    public init(domain: String, strongest: AchievedSecurity, achievedAt: Double) {
        self.domain = domain
        self.strongest = strongest
        self.achievedAt = achievedAt
    }
}

/// Per-domain memory of the strongest transport security achieved ("downgrade memory", a
/// trust-on-first-use defence): when a later delivery would be weaker — STARTTLS gone, TLSA
/// gone, the zone turned insecure, MTA-STS withdrawn — it is reported, and under `enforce`
/// refused for a grace window. Kept in `<state_directory>/memory/<domain>.json`.
public final class DowngradeMemoryStore: Sendable {
    public let directory: String
    private let lock = NIOLockedValueBox<Void>(())

    /// - Throws: when the directory cannot be created.
    public init(stateDirectory: String) throws {
        directory = stateDirectory + "/memory"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
    }

    func path(_ domain: String) -> String? {
        let name = domain.lowercased()
        guard !name.isEmpty, !name.hasPrefix("."), !name.contains(".."),
              name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == ".") }) else { return nil }
        return directory + "/" + name + ".json"
    }

    /// The memory of `domain`, or nil.
    public func memory(of domain: String) -> DomainMemory? {
        lock.withLockedValue { _ in
            guard let path = path(domain), let data = FileManager.default.contents(atPath: path) else { return nil }
            return try? JSONDecoder().decode(DomainMemory.self, from: data)
        }
    }

    /// Replaces the memory of its domain (atomic write).
    public func store(_ memory: DomainMemory) {
        lock.withLockedValue { _ in
            guard let path = path(memory.domain), let data = try? JSONEncoder().encode(memory) else { return }
            try? data.write(to: URL(fileURLWithPath: path), options: [.atomic])
        }
    }

    /// Every remembered domain (for `tlsrelayctl policy show`).
    public func all() -> [DomainMemory] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasSuffix(".json") }.compactMap { memory(of: String($0.dropLast(5))) }.sorted { $0.domain < $1.domain }
    }

    /// Records a delivery that achieved `security`: raises the remembered level, or — when
    /// `acceptDowngrade` — sets it to the weaker level (the grace window has passed).
    public func record(domain: String, security: AchievedSecurity, now: Double, acceptDowngrade: Bool) {
        let existing = self.memory(of: domain)
        // Nothing new to remember (same level, recorded within the hour): no write on the
        // delivery path.
        if let existing, existing.strongest == security, existing.downgradeFirstSeen == nil, now - existing.achievedAt < 3600 {
            return
        }
        var memory = existing ?? DomainMemory(domain: domain, strongest: security, achievedAt: now)
        if security >= memory.strongest || acceptDowngrade {
            memory.strongest = security
            memory.achievedAt = now
            memory.downgradeFirstSeen = nil
        }
        store(memory)
    }

    /// Notes that a weaker delivery was refused; returns when the downgrade was first seen.
    public func noteRefusedDowngrade(domain: String, now: Double) -> Double {
        guard var memory = self.memory(of: domain) else { return now }
        if memory.downgradeFirstSeen == nil {
            memory.downgradeFirstSeen = now
            store(memory)
        }
        return memory.downgradeFirstSeen ?? now
    }
}
