import DeliveryPolicy
import Foundation
import Logging
import NIOConcurrencyHelpers
import RelayDelivery
import RelayMetrics
import RelayPolicy
import RelayTLSRPT
import TLSRPTCore

/// The schema tlsrelayd creates and migrates itself; `tlsrelay_schema` holds its version.
public enum PostgresSchema {
    /// The version this binary writes and reads.
    public static let version = 1

    /// The statements that bring the schema from version n-1 to n.
    static let migrations: [Int: [String]] = [
        1: [
            """
            CREATE TABLE tlsrelay_sts_policy (
                domain text PRIMARY KEY,
                entry text NOT NULL,
                fetched_at double precision NOT NULL
            )
            """,
            // strongest: 0 none, 1 tls, 2 mta-sts, 3 dane (AchievedSecurity's order).
            """
            CREATE TABLE tlsrelay_memory (
                domain text PRIMARY KEY,
                strongest smallint NOT NULL CHECK (strongest BETWEEN 0 AND 3),
                achieved_at double precision NOT NULL,
                first_refused double precision
            )
            """,
            """
            CREATE TABLE tlsrelay_tlsrpt_counts (
                domain text NOT NULL,
                day bigint NOT NULL,
                policy text NOT NULL,
                failure text NOT NULL,
                count bigint NOT NULL CHECK (count >= 0),
                reported bigint NOT NULL DEFAULT 0 CHECK (reported >= 0),
                PRIMARY KEY (domain, day, policy, failure)
            )
            """,
            """
            CREATE TABLE tlsrelay_tlsrpt_sent (
                domain text NOT NULL,
                day bigint NOT NULL,
                sent_until double precision NOT NULL,
                PRIMARY KEY (domain, day)
            )
            """,
            """
            CREATE TABLE tlsrelay_tlsrpt_failures (
                domain text PRIMARY KEY,
                days integer NOT NULL,
                last_day bigint NOT NULL
            )
            """,
        ],
    ]

    /// The database holds a schema newer than this binary knows.
    public struct TooNew: Error, CustomStringConvertible {
        public var found: Int
        public var display: String
        public init(found: Int, display: String) {
            self.found = found
            self.display = display
        }
        public var description: String {
            "the database \(display) holds tlsrelay schema version \(found), newer than this tlsrelayd knows (\(PostgresSchema.version)): another relay runs a newer release; upgrade this one (a downgrade of the schema is not supported)"
        }
    }

    /// Creates or migrates the schema (under a transaction-level advisory lock, so that relays
    /// starting together migrate once).
    /// - Returns: the version found before (0: none).
    /// - Throws: `TooNew`, `PostgresError`.
    @discardableResult
    public static func migrate(_ client: PostgresClient) async throws -> Int {
        let session = try await client.session()
        do {
            try await session.query("BEGIN")
            try await session.query("SELECT pg_advisory_xact_lock($1::bigint)", ["7632871"])
            try await session.query("CREATE TABLE IF NOT EXISTS tlsrelay_schema (version integer NOT NULL)")
            let found = Int((try await session.query("SELECT coalesce(max(version), 0) FROM tlsrelay_schema").first?.first ?? nil) ?? "0") ?? 0
            guard found <= version else {
                try? await session.query("ROLLBACK")
                await session.close()
                throw TooNew(found: found, display: client.settings.display)
            }
            if found < version {
                for step in (found + 1)...version {
                    for statement in migrations[step] ?? [] { try await session.query(statement) }
                }
                try await session.query("DELETE FROM tlsrelay_schema")
                try await session.query("INSERT INTO tlsrelay_schema (version) VALUES ($1::integer)", [String(version)])
            }
            try await session.query("COMMIT")
            await session.close()
            return found
        } catch {
            await session.close()
            throw error
        }
    }

    /// The version in the database without changing anything (nil: no schema yet).
    public static func currentVersion(_ client: PostgresClient) async throws -> Int? {
        let exists = try await client.run { try $0.query("SELECT to_regclass('tlsrelay_schema') IS NOT NULL") }
        guard exists.first?.first == "t" else { return nil }
        return try await client.run { Int((try $0.query("SELECT coalesce(max(version), 0) FROM tlsrelay_schema").first?.first ?? nil) ?? "0") }
    }
}

/// Reads kept for `seconds`, per key (a downgrade learnt by another relay is seen within that).
final class ReadCache<Value: Sendable>: Sendable {
    private let entries = NIOLockedValueBox<[String: (value: Value, at: Double)]>([:])
    let seconds: Double

    init(seconds: Double) { self.seconds = seconds }

    func get(_ key: String, now: Double = Date().timeIntervalSince1970) -> Value? {
        guard seconds > 0 else { return nil }
        return entries.withLockedValue { entries in
            guard let entry = entries[key] else { return nil }
            if now - entry.at >= seconds || now < entry.at { entries[key] = nil; return nil }
            return entry.value
        }
    }

    func set(_ key: String, _ value: Value, now: Double = Date().timeIntervalSince1970) {
        guard seconds > 0 else { return }
        entries.withLockedValue { entries in
            if entries.count > 100_000 { entries.removeAll(keepingCapacity: true) }
            entries[key] = (value, now)
        }
    }

    func remove(_ key: String) { _ = entries.withLockedValue { $0.removeValue(forKey: key) } }
}

extension AchievedSecurity {
    /// The column value: the levels' order (`none` < `tls` < `mta-sts` < `dane`).
    var rankValue: Int {
        switch self { case .none: 0; case .tls: 1; case .mtaSTS: 2; case .dane: 3 }
    }

    init?(rankValue: Int) {
        switch rankValue { case 0: self = .none; case 1: self = .tls; case 2: self = .mtaSTS; case 3: self = .dane; default: return nil }
    }
}

/// Text of a JSON value, keys sorted: the stored form of policies and TLS-RPT keys.
func canonicalJSON<T: Encodable>(_ value: T) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}

/// A PostgreSQL text array literal (`{"a","b"}`) for `$n::text[]`.
func textArray(_ values: [String]) -> String {
    "{" + values.map { "\"" + $0.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\"" }
        .joined(separator: ",") + "}"
}

func double(_ text: String??) -> Double? { text.flatMap { $0 }.flatMap(Double.init) }

// MARK: - MTA-STS policies

/// MTA-STS policies in `tlsrelay_sts_policy`, keyed by policy domain; the newest fetch wins.
public final class PostgresSTSPolicyStore: STSPolicyStore {
    let client: PostgresClient
    let cache: ReadCache<STSPolicyCache.Lookup>

    public init(client: PostgresClient, cacheSeconds: Int) {
        self.client = client
        self.cache = ReadCache(seconds: Double(cacheSeconds))
    }

    public func lookup(_ domain: String) async -> STSPolicyCache.Lookup {
        let name = domain.lowercased()
        if let cached = cache.get(name) { return cached }
        let rows: [[String?]]
        do {
            rows = try await client.run { try $0.query("SELECT entry FROM tlsrelay_sts_policy WHERE domain = $1", [name]) }
        } catch {
            return .unavailable(reason: "\(error)")
        }
        let lookup: STSPolicyCache.Lookup
        if let text = rows.first?.first ?? nil {
            if let entry = try? JSONDecoder().decode(CachedSTSPolicy.self, from: Data(text.utf8)), entry.domain == name,
               entry.fetchedAt.isFinite, entry.expiresAt.isFinite, entry.expiresAt >= entry.fetchedAt {
                lookup = .cached(entry)
            } else {
                lookup = .unreadable(reason: "the row of \(name) in tlsrelay_sts_policy is not a valid cached policy")
            }
        } else {
            lookup = .nothing
        }
        cache.set(name, lookup)
        return lookup
    }

    public func store(_ cached: CachedSTSPolicy) async throws {
        let name = cached.domain.lowercased()
        let text = try canonicalJSON(cached)
        try await client.run {
            try $0.query("""
                INSERT INTO tlsrelay_sts_policy AS p (domain, entry, fetched_at) VALUES ($1, $2, $3::double precision)
                ON CONFLICT (domain) DO UPDATE SET entry = EXCLUDED.entry, fetched_at = EXCLUDED.fetched_at
                WHERE EXCLUDED.fetched_at >= p.fetched_at
                """, [name, text, String(cached.fetchedAt)])
        }
        cache.remove(name)
    }

    public func all() async throws -> [CachedSTSPolicy] {
        let rows = try await client.run { try $0.query("SELECT entry FROM tlsrelay_sts_policy ORDER BY domain") }
        return rows.compactMap { row in (row.first ?? nil).flatMap { try? JSONDecoder().decode(CachedSTSPolicy.self, from: Data($0.utf8)) } }
    }
}

// MARK: - Downgrade memory

/// Downgrade memory in `tlsrelay_memory`: every update is one statement, so relays racing never
/// lower a level (the rule of `DomainMemory.merged`, in SQL).
public final class PostgresDowngradeMemory: DowngradeMemoryBackend {
    let client: PostgresClient
    let cache: ReadCache<MemoryLookup>

    public init(client: PostgresClient, cacheSeconds: Int) {
        self.client = client
        self.cache = ReadCache(seconds: Double(cacheSeconds))
    }

    /// `DomainMemory.merged` as one atomic upsert: a higher level always wins; the same level
    /// clears a started grace window or refreshes after an hour; a lower level only with
    /// `$4` (grace over) and only while a refusal is recorded in the row itself.
    static let recordStatement = """
        INSERT INTO tlsrelay_memory AS m (domain, strongest, achieved_at, first_refused)
        VALUES ($1, $2::smallint, $3::double precision, NULL)
        ON CONFLICT (domain) DO UPDATE SET strongest = EXCLUDED.strongest, achieved_at = EXCLUDED.achieved_at, first_refused = NULL
        WHERE EXCLUDED.strongest > m.strongest
           OR (EXCLUDED.strongest = m.strongest AND (m.first_refused IS NOT NULL OR EXCLUDED.achieved_at - m.achieved_at >= 3600))
           OR ($4::boolean AND EXCLUDED.strongest < m.strongest AND m.first_refused IS NOT NULL)
        RETURNING strongest, achieved_at, first_refused
        """

    static func memory(_ domain: String, _ row: [String?]) -> MemoryLookup {
        guard row.count == 3, let rank = row[0].flatMap({ Int($0) }), let level = AchievedSecurity(rankValue: rank),
              let achieved = double(row[1]), achieved.isFinite else {
            return .unreadable(reason: "the row of \(domain) in tlsrelay_memory holds implausible values")
        }
        var memory = DomainMemory(domain: domain, strongest: level, achievedAt: achieved)
        memory.downgradeFirstSeen = double(row[2])
        return .remembered(memory)
    }

    public func lookup(_ domain: String) async -> MemoryLookup {
        let name = domain.lowercased()
        if let cached = cache.get(name) { return cached }
        do {
            let rows = try await client.run {
                try $0.query("SELECT strongest, achieved_at, first_refused FROM tlsrelay_memory WHERE domain = $1", [name])
            }
            let lookup = rows.first.map { Self.memory(name, $0) } ?? .nothing
            cache.set(name, lookup)
            return lookup
        } catch {
            return .unavailable(reason: "\(error)")
        }
    }

    public func record(domain: String, security: AchievedSecurity, now: Double, acceptDowngrade: Bool) async throws {
        let name = domain.lowercased()
        // Nothing new for what this relay read recently: no round trip on the delivery path.
        if case .remembered(let known) = cache.get(name),
           DomainMemory.merged(known, domain: name, security: security, now: now, acceptDowngrade: acceptDowngrade) == nil { return }
        let rows = try await client.run {
            try $0.query(Self.recordStatement, [name, String(security.rankValue), String(now), acceptDowngrade ? "true" : "false"])
        }
        if let row = rows.first { cache.set(name, Self.memory(name, row)) } else { cache.remove(name) }
    }

    @discardableResult
    public func noteRefusedDowngrade(domain: String, now: Double) async throws -> Double {
        let name = domain.lowercased()
        let rows = try await client.run {
            try $0.query("""
                UPDATE tlsrelay_memory SET first_refused = coalesce(first_refused, $2::double precision) WHERE domain = $1
                RETURNING strongest, achieved_at, first_refused
                """, [name, String(now)])
        }
        cache.remove(name)
        guard let row = rows.first else { return now }
        if case .remembered(let memory) = Self.memory(name, row) { cache.set(name, .remembered(memory)) }
        return double(row[2]) ?? now
    }

    public func all() async throws -> [DomainMemory] {
        let rows = try await client.run { try $0.query("SELECT domain, strongest, achieved_at, first_refused FROM tlsrelay_memory ORDER BY domain") }
        return rows.compactMap { row in
            guard let name = row.first ?? nil else { return nil }
            return Self.memory(name, Array(row.dropFirst())).memory
        }
    }
}

// MARK: - TLS-RPT

/// TLS-RPT counts in `tlsrelay_tlsrpt_counts`, one row per (policy domain, day, policy, failure
/// details), added to atomically (`count = count + EXCLUDED.count`) by every relay; `reported`
/// is what reports covered. Sessions are batched in memory and written once a second (`sync`);
/// while the database is unreachable the batch is kept (up to 100,000 distinct rows) and
/// written when it is back. The relay that takes `pg_try_advisory_lock` for (domain, day) on a
/// session of its own sends the report; the lock goes with the session when that relay dies.
public final class PostgresTLSRPTState: TLSRPTStateStore {
    struct Key: Hashable {
        var domain: String
        var day: Int
        var policy: String
        var failure: String
    }

    let client: PostgresClient
    let logger: Logger
    private let batch = NIOLockedValueBox<[Key: Int]>([:])
    private let overflowLogged = NIOLockedValueBox(false)
    static let maxBatch = 100_000
    public var shared: Bool { true }

    public init(client: PostgresClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    public func record(_ result: TLSSessionResult, at time: Double) {
        guard let policy = try? canonicalJSON(result.policy) else { return }
        let failure = result.failure.flatMap { try? canonicalJSON($0) } ?? ""
        let key = Key(domain: result.policy.domain, day: TLSReport.dayStart(time), policy: policy, failure: failure)
        let kept = batch.withLockedValue { batch -> Bool in
            guard batch[key] != nil || batch.count < Self.maxBatch else { return false }
            batch[key, default: 0] += 1
            return true
        }
        if kept {
            RelayMetrics.tlsrptSession(success: result.isSuccess)
        } else if overflowLogged.withLockedValue({ logged in defer { logged = true }; return !logged }) {
            logger.error("TLS-RPT: \(Self.maxBatch) distinct session results wait for the database \(client.settings.display); further sessions are not counted until it is back")
        }
    }

    /// Writes the batch in one statement; on failure it stays for the next call.
    public func sync() async {
        let pending = batch.withLockedValue { batch -> [Key: Int] in defer { batch = [:] }; return batch }
        guard !pending.isEmpty else { return }
        let keys = Array(pending.keys)
        let parameters: [String?] = [
            textArray(keys.map(\.domain)), textArray(keys.map { String($0.day) }), textArray(keys.map(\.policy)),
            textArray(keys.map(\.failure)), textArray(keys.map { String(pending[$0]!) }),
        ]
        do {
            try await client.run {
                try $0.query("""
                    INSERT INTO tlsrelay_tlsrpt_counts AS c (domain, day, policy, failure, count)
                    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[])
                    ON CONFLICT (domain, day, policy, failure) DO UPDATE SET count = c.count + EXCLUDED.count
                    """, parameters)
            }
            overflowLogged.withLockedValue { $0 = false }
        } catch {
            batch.withLockedValue { batch in
                for (key, count) in pending { batch[key, default: 0] += count }
            }
        }
    }

    public func days() async throws -> [Int] {
        try await client.run { try $0.query("SELECT DISTINCT day FROM tlsrelay_tlsrpt_counts ORDER BY day") }
            .compactMap { ($0.first ?? nil).flatMap { Int($0) } }
    }

    /// Counts carry no time: a report covers every count not yet reported when it is read
    /// (`until` only ends its range).
    public func pending(dayStart: Int, until: Double, domain: String?) async throws -> [String: PendingSessions] {
        let rows = try await client.run {
            try $0.query("""
                SELECT c.domain, c.policy, c.failure, c.count - c.reported, s.sent_until
                FROM tlsrelay_tlsrpt_counts c LEFT JOIN tlsrelay_tlsrpt_sent s ON s.domain = c.domain AND s.day = c.day
                WHERE c.day = $1::bigint AND c.count > c.reported AND ($2::text IS NULL OR c.domain = $2::text)
                ORDER BY c.domain, c.policy, c.failure
                """, [String(dayStart), domain])
        }
        var out: [String: PendingSessions] = [:]
        let decoder = JSONDecoder()
        for row in rows {
            guard row.count == 5, let name = row[0], let policyText = row[1], let failureText = row[2],
                  let count = row[3].flatMap({ Int($0) }), count > 0,
                  let policy = try? decoder.decode(TLSRPTPolicy.self, from: Data(policyText.utf8)) else { continue }
            var failure: TLSRPTFailure?
            if !failureText.isEmpty {
                guard let decoded = try? decoder.decode(TLSRPTFailure.self, from: Data(failureText.utf8)) else { continue }
                failure = decoded
            }
            var entry = out[name] ?? PendingSessions(since: double(row[4]) ?? Double(dayStart), results: [])
            entry.results.append(WeightedResult(result: TLSSessionResult(policy: policy, failure: failure), count: count,
                                                storeKey: [policyText, failureText]))
            out[name] = entry
        }
        return out
    }

    public func markSent(domain: String, dayStart: Int, until: Double, reported: PendingSessions) async throws {
        var policies: [String] = [], failures: [String] = [], counts: [String] = []
        for item in reported.results {
            guard let key = item.storeKey, key.count == 2 else { continue }
            policies.append(key[0]); failures.append(key[1]); counts.append(String(item.count))
        }
        let parameters: [String?] = [domain, String(dayStart), textArray(policies), textArray(failures), textArray(counts), String(until)]
        // One statement: the counts reported and the end of the range, or neither.
        try await client.run {
            try $0.query("""
                WITH r AS (SELECT * FROM unnest($3::text[], $4::text[], $5::bigint[]) AS r(policy, failure, n)),
                u AS (UPDATE tlsrelay_tlsrpt_counts c SET reported = least(c.count, c.reported + r.n) FROM r
                      WHERE c.domain = $1 AND c.day = $2::bigint AND c.policy = r.policy AND c.failure = r.failure RETURNING 1)
                INSERT INTO tlsrelay_tlsrpt_sent AS s (domain, day, sent_until) VALUES ($1, $2::bigint, $6::double precision)
                ON CONFLICT (domain, day) DO UPDATE SET sent_until = greatest(s.sent_until, EXCLUDED.sent_until)
                """, parameters)
        }
    }

    public func whileReporting<T: Sendable>(domain: String, dayStart: Int, _ body: @Sendable () async -> T) async throws -> T? {
        let session = try await client.session()
        let key = ["tlsrpt:" + domain, String(dayStart / TLSReport.day)]
        do {
            let taken = try await session.query("SELECT pg_try_advisory_lock(hashtext($1), $2::integer)", key)
            guard taken.first?.first == "t" else {
                await session.close()
                return nil
            }
        } catch {
            await session.close()
            throw error
        }
        let value = await body()
        _ = try? await session.query("SELECT pg_advisory_unlock(hashtext($1), $2::integer)", key)
        await session.close()
        return value
    }

    public func finish(dayStart: Int) async {
        _ = try? await client.run {
            try $0.query("DELETE FROM tlsrelay_tlsrpt_counts WHERE day = $1::bigint AND count <= reported", [String(dayStart)])
            try $0.query("""
                DELETE FROM tlsrelay_tlsrpt_sent s WHERE day = $1::bigint
                AND NOT EXISTS (SELECT 1 FROM tlsrelay_tlsrpt_counts c WHERE c.domain = s.domain AND c.day = s.day)
                """, [String(dayStart)])
        }
    }

    public func failedDays(_ domain: String) async -> FailedDays {
        guard let row = try? await client.run({ try $0.query("SELECT days, last_day FROM tlsrelay_tlsrpt_failures WHERE domain = $1", [domain]) }).first,
              let days = row[0].flatMap({ Int($0) }), let last = row[1].flatMap({ Int($0) }) else { return FailedDays(days: 0, lastDay: 0) }
        return FailedDays(days: days, lastDay: last)
    }

    public func noteDelivered(_ domain: String) async {
        _ = try? await client.run { try $0.query("DELETE FROM tlsrelay_tlsrpt_failures WHERE domain = $1", [domain]) }
    }

    public func noteFailed(_ domain: String, dayStart: Int) async -> Int {
        let rows = try? await client.run {
            try $0.query("""
                INSERT INTO tlsrelay_tlsrpt_failures AS f (domain, days, last_day) VALUES ($1, 1, $2::bigint)
                ON CONFLICT (domain) DO UPDATE SET days = CASE WHEN f.last_day = EXCLUDED.last_day THEN f.days ELSE f.days + 1 END,
                    last_day = EXCLUDED.last_day
                RETURNING days
                """, [domain, String(dayStart)])
        }
        return rows?.first?.first.flatMap { $0 }.flatMap { Int($0) } ?? 0
    }
}
