import DeliveryPolicy
import Foundation
import Logging
import NIOConcurrencyHelpers
import RelayPolicy
import TLSRPTCore

/// One result standing for `count` sessions.
public struct WeightedResult: Sendable, Equatable {
    public var result: TLSSessionResult
    public var count: Int
    /// How a shared store keys this result (its stored text), to mark exactly it as reported.
    public var storeKey: [String]?

    public init(result: TLSSessionResult, count: Int, storeKey: [String]? = nil) {
        self.result = result
        self.count = count
        self.storeKey = storeKey
    }
}

/// One policy domain's sessions of one day not yet reported.
public struct PendingSessions: Sendable, Equatable {
    /// Where the report's range starts: the end of the last report of that day, or the day's start.
    public var since: Double
    /// Distinct results with their counts, in the order first seen.
    public var results: [WeightedResult]

    public init(since: Double, results: [WeightedResult]) {
        self.since = since
        self.results = results
    }

    public var successes: Int { results.filter(\.result.isSuccess).reduce(0) { $0 + $1.count } }
    public var failures: Int { results.filter { !$0.result.isSuccess }.reduce(0) { $0 + $1.count } }
}

/// Consecutive days on which a domain's reports did not arrive.
public struct FailedDays: Codable, Sendable, Equatable {
    public var days: Int
    public var lastDay: Int

    public init(days: Int, lastDay: Int) {
        self.days = days
        self.lastDay = lastDay
    }
}

/// Where TLS-RPT state lives: the session results of days not yet reported, what was sent, and
/// the domains whose reports fail. The files in `state_directory` (`FileTLSRPTState`, one relay's
/// own sessions) or a database several relays share (`[state] backend = "postgresql"`: their
/// counts add up, and one relay sends each domain's one report of the day).
public protocol TLSRPTStateStore: Sendable {
    /// Several relays share the store: a domain's pending sessions are read again once the right
    /// to report is held (`whileReporting`), since another relay may have reported them meanwhile.
    var shared: Bool { get }
    /// Counts one session (never blocks: a shared store batches and writes on `sync`).
    func record(_ result: TLSSessionResult, at time: Double)
    /// Makes what was recorded durable (the daemon calls it every second and at shutdown).
    func sync() async
    /// Days (their first second) with sessions not yet reported, or state to clean up, oldest first.
    func days() async throws -> [Int]
    /// Per policy domain (only `domain` when given), the sessions of the day not yet reported, up to `until`.
    func pending(dayStart: Int, until: Double, domain: String?) async throws -> [String: PendingSessions]
    /// Records that `reported` (what a report of `domain` covered) was sent, up to `until`.
    func markSent(domain: String, dayStart: Int, until: Double, reported: PendingSessions) async throws
    /// Runs `body` holding the right to report `domain`'s day; nil (without running it) when
    /// another relay holds it now.
    func whileReporting<T: Sendable>(domain: String, dayStart: Int, _ body: @Sendable () async -> T) async throws -> T?
    /// Forgets a past day once nothing of it is pending.
    func finish(dayStart: Int) async
    func failedDays(_ domain: String) async -> FailedDays
    func noteDelivered(_ domain: String) async
    /// Counts a day of failed delivery; returns the days in a row.
    func noteFailed(_ domain: String, dayStart: Int) async -> Int
}

extension PendingSessions {
    /// Groups timed results into the sessions from `since` up to `until`.
    static func from(_ stored: [(time: Double, result: TLSSessionResult)], since: Double, until: Double) -> PendingSessions {
        var order: [TLSSessionResult] = []
        var counts: [TLSSessionResult: Int] = [:]
        for (time, result) in stored where time >= since && time < until {
            if counts[result] == nil { order.append(result) }
            counts[result, default: 0] += 1
        }
        return PendingSessions(since: since, results: order.map { WeightedResult(result: $0, count: counts[$0]!) })
    }
}

/// The files backend: results in `SessionResultStore` (one JSON line per session, with its
/// time), what was sent in `<state>/tlsrpt/sent/DAY.json` (per domain, the time up to which the
/// day was reported), failed deliveries in `<state>/tlsrpt/delivery-failures.json`.
public final class FileTLSRPTState: TLSRPTStateStore {
    public let results: SessionResultStore
    let directory: String
    let logger: Logger
    private let reporting = NIOLockedValueBox<Set<String>>([])
    public var shared: Bool { false }

    /// - Throws: when `<stateDirectory>/tlsrpt/sent` cannot be made.
    public init(results: SessionResultStore, stateDirectory: String, logger: Logger) throws {
        self.results = results
        self.directory = stateDirectory + "/tlsrpt"
        self.logger = logger
        try FileManager.default.createDirectory(atPath: directory + "/sent", withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
    }

    public func record(_ result: TLSSessionResult, at time: Double) { results.record(result, at: time) }
    public func sync() async { results.sync() }
    public func days() async throws -> [Int] { results.days() }

    func sentPath(dayStart: Int) -> String { directory + "/sent/" + TLSReport.dayName(dayStart) + ".json" }

    /// Per domain, the time up to which the day's sessions were reported.
    func sentUntil(dayStart: Int) -> [String: Double] {
        guard let data = FileManager.default.contents(atPath: sentPath(dayStart: dayStart)),
              let map = try? JSONDecoder().decode([String: Double].self, from: data) else { return [:] }
        return map
    }

    public func pending(dayStart: Int, until: Double, domain: String?) async throws -> [String: PendingSessions] {
        let sent = sentUntil(dayStart: dayStart)
        // The day's file is read once for every domain.
        let grouped = Dictionary(grouping: results.results(dayStart: dayStart).results, by: { $0.result.policy.domain })
        var out: [String: PendingSessions] = [:]
        for (name, stored) in grouped where domain == nil || name == domain {
            let pending = PendingSessions.from(stored, since: sent[name] ?? Double(dayStart), until: until)
            if !pending.results.isEmpty { out[name] = pending }
        }
        return out
    }

    public func markSent(domain: String, dayStart: Int, until: Double, reported: PendingSessions) async throws {
        var map = sentUntil(dayStart: dayStart)
        map[domain] = until
        try StateFile.replace(sentPath(dayStart: dayStart), with: try JSONEncoder().encode(map))
    }

    /// One relay: a process-local guard, so that a `tlsrelayctl tlsrpt send` and the daily run do
    /// not report the same domain at once.
    public func whileReporting<T: Sendable>(domain: String, dayStart: Int, _ body: @Sendable () async -> T) async throws -> T? {
        let key = "\(domain)|\(dayStart)"
        guard reporting.withLockedValue({ $0.insert(key).inserted }) else { return nil }
        defer { reporting.withLockedValue { _ = $0.remove(key) } }
        return await body()
    }

    public func finish(dayStart: Int) async {
        results.remove(dayStart: dayStart)
        try? FileManager.default.removeItem(atPath: sentPath(dayStart: dayStart))
    }

    var failuresPath: String { directory + "/delivery-failures.json" }

    private func failures() -> [String: FailedDays] {
        FileManager.default.contents(atPath: failuresPath).flatMap { try? JSONDecoder().decode([String: FailedDays].self, from: $0) } ?? [:]
    }

    private let failuresLock = NIOLock()

    public func failedDays(_ domain: String) async -> FailedDays {
        failuresLock.withLock { failures()[domain] } ?? FailedDays(days: 0, lastDay: 0)
    }

    public func noteDelivered(_ domain: String) async {
        failuresLock.withLock {
            var map = failures()
            guard map[domain] != nil else { return }
            map[domain] = nil
            try? StateFile.replace(failuresPath, with: (try? JSONEncoder().encode(map)) ?? Data())
        }
    }

    public func noteFailed(_ domain: String, dayStart: Int) async -> Int {
        failuresLock.withLock {
            var map = failures()
            var entry = map[domain] ?? FailedDays(days: 0, lastDay: 0)
            if entry.lastDay != dayStart { entry.days += 1; entry.lastDay = dayStart }
            map[domain] = entry
            try? StateFile.replace(failuresPath, with: (try? JSONEncoder().encode(map)) ?? Data())
            return entry.days
        }
    }
}
