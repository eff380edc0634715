import CPostgreSQL
import Foundation
import NIOConcurrencyHelpers
import NIOPosix

/// An error of libpq or of the server, with the SQLSTATE when the server sent one.
public struct PostgresError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var sqlState: String?
    /// The connection is gone (not a statement's error).
    public var connectionLost: Bool

    public init(_ message: String, sqlState: String? = nil, connectionLost: Bool = false) {
        // libpq's messages span lines ("...\n\tThis probably means..."): one line for logs.
        self.message = message.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }.joined(separator: " ")
        self.sqlState = sqlState
        self.connectionLost = connectionLost
    }

    public var description: String { sqlState.map { "\(message) (SQLSTATE \($0))" } ?? message }
}

/// How to reach the database (`[state]` with `backend = "postgresql"`).
public struct PostgresSettings: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var dbname: String
    public var user: String
    /// The password, read from `password_file` by the caller; nil: none.
    public var password: String?
    public var sslMode: String
    public var sslRootCert: String
    public var connectTimeout: Int
    public var statementTimeout: Int
    public var applicationName: String

    public init(host: String, port: Int, dbname: String, user: String, password: String?, sslMode: String, sslRootCert: String,
                connectTimeout: Int, statementTimeout: Int, applicationName: String = "tlsrelayd") {
        self.host = host
        self.port = port
        self.dbname = dbname
        self.user = user
        self.password = password
        self.sslMode = sslMode
        self.sslRootCert = sslRootCert
        self.connectTimeout = connectTimeout
        self.statementTimeout = statementTimeout
        self.applicationName = applicationName
    }

    /// `postgresql://user@host:port/dbname`, for logs and alerts (never the password).
    public var display: String { "postgresql://\(user)@\(host.hasPrefix("/") ? "[\(host)]" : host):\(port)/\(dbname)" }

    /// libpq's keyword/value connection string, each value quoted (libpq's own rules: `'` and
    /// `\` escaped by a backslash).
    var conninfo: String {
        func quoted(_ value: String) -> String {
            "'" + value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + "'"
        }
        var pairs: [(String, String)] = [
            ("host", host), ("port", String(port)), ("dbname", dbname), ("user", user), ("sslmode", sslMode),
            ("connect_timeout", String(connectTimeout)), ("application_name", applicationName),
            // Every statement is bounded; a lock wait too.
            ("options", "-c statement_timeout=\(statementTimeout * 1000) -c lock_timeout=\(statementTimeout * 1000)"),
            // No ~/.pgpass or environment of the service user decides anything.
            ("passfile", "/dev/null"),
        ]
        if let password { pairs.append(("password", password)) }
        if !sslRootCert.isEmpty { pairs.append(("sslrootcert", sslRootCert)) }
        return pairs.map { "\($0.0)=\(quoted($0.1))" }.joined(separator: " ")
    }
}

/// One libpq connection. Not thread-safe: used by one thread at a time (`PostgresClient`'s lock,
/// or a `PostgresSession`'s owner). Every call blocks: callers run it on a thread pool, never on
/// an event loop.
public final class PostgresConnection: @unchecked Sendable {
    private var conn: OpaquePointer?

    /// Connects (blocking, up to `connect_timeout`).
    /// - Throws: `PostgresError` with libpq's message.
    public init(_ settings: PostgresSettings) throws {
        conn = PQconnectdb(settings.conninfo)
        guard let conn, PQstatus(conn) == CONNECTION_OK else {
            let message = conn.map { String(cString: PQerrorMessage($0)) } ?? "out of memory"
            if let conn { PQfinish(conn) }
            self.conn = nil
            throw PostgresError("cannot connect to \(settings.display): \(message.trimmingCharacters(in: .whitespacesAndNewlines))", connectionLost: true)
        }
    }

    deinit { close() }

    public func close() {
        if let conn { PQfinish(conn) }
        conn = nil
    }

    public var isUsable: Bool { conn.map { PQstatus($0) == CONNECTION_OK } ?? false }

    /// Runs one parameterized statement (PQexecParams, text format; nil is SQL NULL).
    /// - Returns: the rows, each column as text or nil.
    /// - Throws: `PostgresError`.
    @discardableResult
    public func query(_ sql: String, _ parameters: [String?] = []) throws -> [[String?]] {
        guard let conn else { throw PostgresError("not connected", connectionLost: true) }
        let copies: [UnsafeMutablePointer<CChar>?] = parameters.map { $0.map { strdup($0) } ?? nil }
        defer { copies.forEach { free($0) } }
        let result: OpaquePointer? = copies.map { UnsafePointer($0) }.withUnsafeBufferPointer { values in
            PQexecParams(conn, sql, Int32(parameters.count), nil, values.baseAddress, nil, nil, 0)
        }
        defer { PQclear(result) }
        guard let result else {
            throw PostgresError(String(cString: PQerrorMessage(conn)).trimmingCharacters(in: .whitespacesAndNewlines),
                                connectionLost: PQstatus(conn) != CONNECTION_OK)
        }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK:
            return []
        case PGRES_TUPLES_OK:
            let rows = PQntuples(result), columns = PQnfields(result)
            return (0..<rows).map { row in
                (0..<columns).map { column in
                    PQgetisnull(result, row, column) == 1 ? nil : String(cString: PQgetvalue(result, row, column))
                }
            }
        default:
            let state = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
            let message = String(cString: PQresultErrorMessage(result)).trimmingCharacters(in: .whitespacesAndNewlines)
            throw PostgresError(message.isEmpty ? "statement failed" : message, sqlState: state, connectionLost: PQstatus(conn) != CONNECTION_OK)
        }
    }
}

/// The shared connections of one daemon: a few libpq connections, each behind a lock, used on a
/// dedicated thread pool (libpq blocks). Tracks whether the database is reachable and reports
/// each change once (`onAvailability`): the first failure after success, the first success
/// after failure. While it is down, calls fail at once (deliveries do not each wait for
/// `connect_timeout`) and one probe tries to connect every `retryInterval` seconds until the
/// database answers again.
public final class PostgresClient: Sendable {
    public let settings: PostgresSettings
    let pool: NIOThreadPool
    private let slots: [NIOLockedValueBox<PostgresConnection?>]
    private let next = NIOLockedValueBox(0)
    private struct Health {
        var down: String?
        var probing = false
        var stopped = false
    }
    private let health = NIOLockedValueBox(Health())
    private let onAvailability: @Sendable (_ reason: String?) -> Void
    let retryInterval: Double

    /// - Parameters:
    ///   - connections: how many statements may run at once.
    ///   - onAvailability: called with a reason when the database becomes unavailable, with nil
    ///     when it is back.
    public init(settings: PostgresSettings, connections: Int = 2, retryInterval: Double = 1,
                onAvailability: @escaping @Sendable (String?) -> Void = { _ in }) {
        self.settings = settings
        self.slots = (0..<max(1, connections)).map { _ in NIOLockedValueBox<PostgresConnection?>(nil) }
        self.pool = NIOThreadPool(numberOfThreads: max(1, connections) + 1)
        self.onAvailability = onAvailability
        self.retryInterval = retryInterval
        pool.start()
    }

    public func shutdown() async {
        health.withLockedValue { $0.stopped = true }
        for slot in slots { slot.withLockedValue { $0?.close(); $0 = nil } }
        try? await pool.shutdownGracefully()
    }

    /// Why the database is unavailable now, nil when it answered last time.
    public var unavailable: String? { health.withLockedValue { $0.down } }

    /// Runs `body` on one of the connections (connecting first when needed), on the pool.
    /// - Throws: `PostgresError`; the connection is dropped after a connection error.
    public func run<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        if let down = health.withLockedValue({ $0.down }) {
            throw PostgresError(down, connectionLost: true)
        }
        let index = next.withLockedValue { value -> Int in defer { value = (value + 1) % slots.count }; return value }
        let slot = slots[index]
        let settings = self.settings
        do {
            let value = try await pool.runIfActive {
                try slot.withLockedValue { connection -> T in
                    var fresh = false
                    if connection == nil || connection?.isUsable != true {
                        connection?.close()
                        connection = nil
                        connection = try PostgresConnection(settings)
                        fresh = true
                    }
                    do {
                        return try body(connection!)
                    } catch let error as PostgresError where !fresh && (error.connectionLost || connection?.isUsable != true) {
                        // A kept connection the server closed meanwhile (a restart): once more on
                        // a new one before calling the database unavailable.
                        connection?.close()
                        connection = nil
                        connection = try PostgresConnection(settings)
                        return try body(connection!)
                    } catch let error as PostgresError {
                        if error.connectionLost || connection?.isUsable != true { connection?.close(); connection = nil }
                        throw error
                    }
                }
            }
            noteSuccess()
            return value
        } catch let error as PostgresError {
            noteFailure(error.description)
            throw error
        } catch {
            noteFailure("\(error)")
            throw PostgresError("\(error)")
        }
    }

    /// A connection of its own (the advisory lock of a TLS report is held by its session).
    public func session() async throws -> PostgresSession {
        let settings = self.settings
        do {
            let connection = try await pool.runIfActive { try PostgresConnection(settings) }
            return PostgresSession(connection: connection, client: self)
        } catch let error as PostgresError {
            noteFailure(error.description)
            throw error
        }
    }

    func noteSuccess() {
        let wasDown = health.withLockedValue { state -> Bool in
            defer { state.down = nil }
            return state.down != nil
        }
        if wasDown { onAvailability(nil) }
    }

    func noteFailure(_ reason: String) {
        let (first, probe) = health.withLockedValue { state -> (Bool, Bool) in
            defer { state.down = reason; state.probing = true }
            return (state.down == nil, !state.probing && !state.stopped)
        }
        if first { onAvailability(reason) }
        if probe { Task { await self.probe() } }
    }

    /// While the database is down: one connection attempt every `retryInterval` seconds, on the
    /// first slot, until one succeeds (the slot then keeps that connection).
    private func probe() async {
        let settings = self.settings
        let slot = slots[0]
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(retryInterval))
            if health.withLockedValue({ $0.stopped }) { return }
            let reached: Result<Void, Error>
            do {
                try await pool.runIfActive {
                    try slot.withLockedValue { connection in
                        connection?.close()
                        connection = try PostgresConnection(settings)
                        try connection!.query("SELECT 1")
                    }
                }
                reached = .success(())
            } catch {
                reached = .failure(error)
            }
            if case .failure(let error) = reached {
                health.withLockedValue { $0.down = (error as? PostgresError)?.description ?? "\(error)" }
                continue
            }
            // The other slots' connections did not survive the outage.
            for other in slots.dropFirst() { other.withLockedValue { $0?.close(); $0 = nil } }
            health.withLockedValue { $0.probing = false }
            noteSuccess()
            return
        }
    }
}

/// A connection held by one task (for a session-level advisory lock); its statements run on the
/// client's pool.
public final class PostgresSession: Sendable {
    private let connection: NIOLockedValueBox<PostgresConnection?>
    private let client: PostgresClient

    init(connection: PostgresConnection, client: PostgresClient) {
        self.connection = NIOLockedValueBox(connection)
        self.client = client
    }

    @discardableResult
    public func query(_ sql: String, _ parameters: [String?] = []) async throws -> [[String?]] {
        let box = connection
        do {
            let rows = try await client.pool.runIfActive {
                try box.withLockedValue { connection -> [[String?]] in
                    guard let connection else { throw PostgresError("session closed", connectionLost: true) }
                    return try connection.query(sql, parameters)
                }
            }
            client.noteSuccess()
            return rows
        } catch let error as PostgresError {
            client.noteFailure(error.description)
            throw error
        }
    }

    /// Closes the connection (the server ends the session and releases its locks).
    public func close() async {
        let box = connection
        _ = try? await client.pool.runIfActive { box.withLockedValue { $0?.close(); $0 = nil } }
    }
}
