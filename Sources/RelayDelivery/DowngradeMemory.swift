import DeliveryPolicy
import Foundation
import NIOConcurrencyHelpers
import RelayPolicy

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

    /// The planner's view of this memory.
    public var fact: MemoryFact { MemoryFact(strongest: strongest, firstRefused: downgradeFirstSeen) }
}

/// Per-domain memory of the strongest transport security achieved ("downgrade memory", a
/// trust-on-first-use defence): when a later delivery would be weaker — STARTTLS gone, TLSA
/// gone, the zone turned insecure, MTA-STS withdrawn — it is reported, and under `enforce`
/// refused for a grace window. Kept in `<state_directory>/memory/<domain>.json`; every update
/// is one locked read-modify-write, written durably (`StateFile.replace`).
public final class DowngradeMemoryStore: Sendable {
    public let directory: String
    /// A read-only store (`tlsrelayctl check` reads the daemon's memory) never writes.
    public let readOnly: Bool
    private let lock = NIOLock()

    /// Opens `<stateDirectory>/memory`, creating it unless `readOnly`.
    /// - Throws: when the directory cannot be created.
    public init(stateDirectory: String, readOnly: Bool = false) throws {
        directory = stateDirectory + "/memory"
        self.readOnly = readOnly
        if !readOnly {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        }
    }

    func path(_ domain: String) -> String? {
        let name = domain.lowercased()
        guard !name.isEmpty, !name.hasPrefix("."), !name.contains(".."),
              name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == ".") }) else { return nil }
        return directory + "/" + name + ".json"
    }

    private func read(_ domain: String) -> DomainMemory? {
        guard let path = path(domain), let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? JSONDecoder().decode(DomainMemory.self, from: data)
    }

    private func write(_ memory: DomainMemory) throws {
        guard !readOnly, let path = path(memory.domain) else { return }
        try StateFile.replace(path, with: try JSONEncoder().encode(memory))
    }

    /// The memory of `domain`, or nil.
    public func memory(of domain: String) -> DomainMemory? {
        lock.withLock { read(domain) }
    }

    /// Replaces the memory of its domain.
    /// - Throws: `StateFile.WriteError`.
    public func store(_ memory: DomainMemory) throws {
        try lock.withLock { try write(memory) }
    }

    /// Every remembered domain (for `tlsrelayctl policy show`).
    public func all() -> [DomainMemory] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasSuffix(".json") }.compactMap { memory(of: String($0.dropLast(5))) }.sorted { $0.domain < $1.domain }
    }

    /// Records a delivery that achieved `security`: raises the remembered level, or — when
    /// `acceptDowngrade` — sets it to the weaker level (the grace window has passed). One locked
    /// read-modify-write, so two deliveries at once never lower a level by racing.
    /// - Throws: `StateFile.WriteError`.
    public func record(domain: String, security: AchievedSecurity, now: Double, acceptDowngrade: Bool) throws {
        try lock.withLock {
            let existing = read(domain)
            // Nothing new to remember (same level, recorded within the hour): no write on the
            // delivery path.
            if let existing, existing.strongest == security, existing.downgradeFirstSeen == nil, now - existing.achievedAt < 3600 {
                return
            }
            var memory = existing ?? DomainMemory(domain: domain, strongest: security, achievedAt: now)
            guard security >= memory.strongest || acceptDowngrade else { return }
            memory.strongest = security
            memory.achievedAt = now
            memory.downgradeFirstSeen = nil
            try write(memory)
        }
    }

    /// Notes that a weaker delivery was refused: starts the grace window unless started.
    /// - Returns: when the downgrade was first refused (seconds since the epoch).
    /// - Throws: `StateFile.WriteError`.
    @discardableResult
    public func noteRefusedDowngrade(domain: String, now: Double) throws -> Double {
        try lock.withLock {
            guard var memory = read(domain) else { return now }
            if let first = memory.downgradeFirstSeen { return first }
            memory.downgradeFirstSeen = now
            try write(memory)
            return now
        }
    }
}
