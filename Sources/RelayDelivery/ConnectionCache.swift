import NIOConcurrencyHelpers
import NIOCore
import RelayTLS
import SMTPCore

/// What an SMTP connection was opened for. A connection is reused only for a message with the
/// very same key: same MX address and port, same TLS reference name, same TLS requirement and
/// same peer authentication (for DANE: the same TLSA records). So a connection that was set up
/// under a weaker policy never carries a message whose policy is stronger, and a connection
/// authenticated against old TLSA records is not used once the records change.
struct ConnectionKey: Hashable, Sendable {
    var address: String
    var port: Int
    var serverName: String
    var tls: ClientSession.TLSRequirement
    var authentication: TLSPeerAuthentication
}

/// Idle SMTP connections kept open between messages (Postfix's connection cache), by key.
/// A connection is in the cache only while idle; `take` hands it to one delivery at a time.
/// A connection that closes (idle time over, peer gone) is removed by its close future; `take`
/// also skips one that closed a moment before that ran.
final class ConnectionCache: Sendable {
    /// One idle connection and the handler that drives it (used on its event loop only).
    struct Entry: Sendable {
        let channel: Channel
        let handler: NIOLoopBound<SMTPClientHandler>

        /// Sends `job` on the connection. Throws `SMTPClientHandler.NotIdle` when it can no
        /// longer take a message (nothing was sent then).
        func run(job: ClientSession.Job, content: [UInt8]) async throws -> ConnectionReport {
            let promise = channel.eventLoop.makePromise(of: ConnectionReport.self)
            let handler = self.handler
            channel.eventLoop.execute { handler.value.run(job: job, content: content, completion: promise) }
            return try await promise.futureResult.get()
        }
    }

    private let idle = NIOLockedValueBox<[ConnectionKey: [Entry]]>([:])

    /// The most recently used idle connection for `key`, removed from the cache; nil when none.
    func take(_ key: ConnectionKey) -> Entry? {
        idle.withLockedValue { table in
            while var list = table[key], let entry = list.popLast() {
                table[key] = list.isEmpty ? nil : list
                if entry.channel.isActive { return entry }
            }
            return nil
        }
    }

    /// Returns an idle connection to the cache (a closed one leaves it through `remove`).
    func put(_ key: ConnectionKey, _ entry: Entry) {
        idle.withLockedValue { table in table[key, default: []].append(entry) }
    }

    /// Forgets `channel` (it closed): called from its close future, so that connections to MX
    /// hosts that get no more mail do not stay in the table.
    func remove(_ key: ConnectionKey, channel: Channel) {
        idle.withLockedValue { table in
            guard var list = table[key] else { return }
            list.removeAll { $0.channel === channel }
            table[key] = list.isEmpty ? nil : list
        }
    }

    /// Sends QUIT on every idle connection, closes them and empties the cache (shutdown);
    /// returns when all are closed.
    func closeAll() async {
        let all = idle.withLockedValue { table in
            let all = table.values.flatMap { $0 }
            table = [:]
            return all
        }
        for entry in all {
            let handler = entry.handler
            entry.channel.eventLoop.execute { handler.value.quitAndCloseIfIdle() }
        }
        for entry in all {
            try? await entry.channel.closeFuture.get()
        }
    }
}
