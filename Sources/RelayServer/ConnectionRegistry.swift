import NIOCore
import NIOConcurrencyHelpers

/// The open inbound connections: enforces `max_connections` and reaches every connection at
/// shutdown. Thread-safe.
public final class ConnectionRegistry: Sendable {
    private let channels = NIOLockedValueBox<[ObjectIdentifier: Channel]>([:])

    public init() {}

    /// Registers `channel` unless `limit` connections are already open.
    /// - Returns: false when the limit is reached (the client then gets 421 4.7.0).
    func admit(_ channel: Channel, limit: Int) -> Bool {
        channels.withLockedValue { open in
            guard open.count < limit else { return false }
            open[ObjectIdentifier(channel)] = channel
            return true
        }
    }

    func remove(_ channel: Channel) {
        _ = channels.withLockedValue { $0.removeValue(forKey: ObjectIdentifier(channel)) }
    }

    /// Number of open, admitted connections.
    public var count: Int { channels.withLockedValue { $0.count } }

    /// Asks every connection to finish its current transaction and close with 421.
    func requestShutdown() {
        let all = channels.withLockedValue { Array($0.values) }
        for channel in all {
            channel.pipeline.fireUserInboundEventTriggered(ShutdownRequest())
        }
    }
}
