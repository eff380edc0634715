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

    /// Plausible values only: finite times, not in the far future (a hostile or corrupt file must
    /// not decide anything, nor crash the arithmetic on them).
    func isPlausible(for domain: String, now: Double) -> Bool {
        guard self.domain == domain.lowercased(), achievedAt.isFinite, achievedAt >= 0, achievedAt <= now + 86400 * 366 else { return false }
        if let first = downgradeFirstSeen { return first.isFinite && first >= 0 && first <= now + 86400 * 366 }
        return true
    }
}

/// What the memory file of one domain holds.
public enum MemoryLookup: Sendable, Equatable {
    case nothing
    case remembered(DomainMemory)
    /// The file exists but cannot be read or holds nonsense: never ignored (it may have said
    /// `dane`), reported, and treated as the strongest level by the planner.
    case unreadable(reason: String)
    /// The store (a shared database) cannot be reached or a statement failed: the planner gets
    /// `PolicyStateFact.unavailable` and defers (4.4.3), as for a failed DNS lookup.
    case unavailable(reason: String)

    /// Why the store could not be read, for the planner's `PolicyStateFact`.
    public var unavailable: String? {
        if case .unavailable(let reason) = self { return reason }
        return nil
    }

    /// The planner's view (nil: nothing remembered).
    public var fact: MemoryFact? {
        switch self {
        case .nothing, .unavailable: return nil
        case .remembered(let memory): return memory.fact
        case .unreadable(let reason): return MemoryFact(strongest: .dane, unreadable: reason)
        }
    }

    public var memory: DomainMemory? {
        if case .remembered(let memory) = self { return memory }
        return nil
    }
}

extension DomainMemory {
    /// The merge rule of a delivery that achieved `security` (the files store applies it in a
    /// locked read-modify-write; the PostgreSQL store reproduces it in one `INSERT ... ON
    /// CONFLICT DO UPDATE ... WHERE`): the level only rises — to a weaker level only with
    /// `acceptDowngrade` (the grace window has passed) and only while a refusal is recorded
    /// (`downgradeFirstSeen` set: another relay that reached the stronger level meanwhile cleared
    /// it); a rise or a repeat clears the grace window's first refusal; the same level within the
    /// hour writes nothing.
    /// - Returns: the record to write, or nil for no change.
    public static func merged(_ existing: DomainMemory?, domain: String, security: AchievedSecurity, now: Double,
                              acceptDowngrade: Bool) -> DomainMemory? {
        guard let existing else { return DomainMemory(domain: domain.lowercased(), strongest: security, achievedAt: now) }
        if existing.strongest == security, existing.downgradeFirstSeen == nil, now - existing.achievedAt < 3600 { return nil }
        let lower = security < existing.strongest
        if lower && !(acceptDowngrade && existing.downgradeFirstSeen != nil) { return nil }
        var memory = existing
        memory.strongest = security
        memory.achievedAt = now
        memory.downgradeFirstSeen = nil
        return memory
    }
}

/// Where downgrade memory is kept: the files in `state_directory` (`DowngradeMemoryStore`) or a
/// database several relays share (`[state] backend = "postgresql"`), so that an attacker who
/// strips STARTTLS cannot wait for the relay that has not met the domain yet.
public protocol DowngradeMemoryBackend: Sendable {
    /// What is remembered of `domain`; `.unavailable` when the store cannot be read now.
    func lookup(_ domain: String) async -> MemoryLookup
    /// Records a delivery that achieved `security` (`DomainMemory.merged`), atomically.
    func record(domain: String, security: AchievedSecurity, now: Double, acceptDowngrade: Bool) async throws
    /// Starts the grace window unless started; returns when the downgrade was first refused.
    @discardableResult
    func noteRefusedDowngrade(domain: String, now: Double) async throws -> Double
    /// Every remembered domain (for `tlsrelayctl policy show`).
    func all() async throws -> [DomainMemory]
}

/// Per-domain memory of the strongest transport security achieved ("downgrade memory", a
/// trust-on-first-use defence): when a later delivery would be weaker — STARTTLS gone, TLSA
/// gone, the zone turned insecure, MTA-STS withdrawn — it is reported, and under `enforce`
/// refused for a grace window. Kept in `<state_directory>/memory/<domain>.json`; every update
/// is one locked read-modify-write, written durably (`StateFile.replace`).
public final class DowngradeMemoryStore: DowngradeMemoryBackend {
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

    private func read(_ domain: String) -> MemoryLookup {
        guard let path = path(domain) else { return .nothing }
        guard FileManager.default.fileExists(atPath: path) else { return .nothing }
        guard let data = FileManager.default.contents(atPath: path) else { return .unreadable(reason: "\(path) cannot be read") }
        do {
            let memory = try JSONDecoder().decode(DomainMemory.self, from: data)
            guard memory.isPlausible(for: domain, now: Date().timeIntervalSince1970) else {
                return .unreadable(reason: "\(path) holds implausible values (domain \(memory.domain), times \(memory.achievedAt) / \(memory.downgradeFirstSeen.map { "\($0)" } ?? "-"))")
            }
            return .remembered(memory)
        } catch {
            return .unreadable(reason: "\(path) is not a valid memory record: \(error)")
        }
    }

    private func write(_ memory: DomainMemory) throws {
        guard !readOnly, let path = path(memory.domain) else { return }
        try StateFile.replace(path, with: try JSONEncoder().encode(memory))
    }

    /// The memory of `domain`, or nil (nothing, or an unreadable file: see `lookup(_:)`).
    public func memory(of domain: String) -> DomainMemory? {
        lock.withLock { read(domain) }.memory
    }

    /// What the memory file of `domain` holds, an unreadable file included.
    public func lookup(_ domain: String) -> MemoryLookup {
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
            let lookup = read(domain)
            // An unreadable file is replaced only by the strongest level: it may have said dane.
            if case .unreadable = lookup, security != .dane { return }
            guard let memory = DomainMemory.merged(lookup.memory, domain: domain, security: security, now: now, acceptDowngrade: acceptDowngrade) else { return }
            try write(memory)
        }
    }

    /// Notes that a weaker delivery was refused: starts the grace window unless started.
    /// - Returns: when the downgrade was first refused (seconds since the epoch).
    /// - Throws: `StateFile.WriteError`.
    @discardableResult
    public func noteRefusedDowngrade(domain: String, now: Double) throws -> Double {
        try lock.withLock {
            guard var memory = read(domain).memory else { return now }
            if let first = memory.downgradeFirstSeen { return first }
            memory.downgradeFirstSeen = now
            try write(memory)
            return now
        }
    }
}
