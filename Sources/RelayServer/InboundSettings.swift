import RelayConfig
import RelayQueue
import SMTPCore
import Logging
import NIOPosix

/// What every inbound session shares: immutable settings and thread-safe services.
public struct InboundSettings: Sendable {
    public var hostname: String
    public var limits: ServerLimits
    public var allowedClients: [CIDRBlock]
    public var spool: Spool
    /// Where fsync and rename run, off the event loops.
    public var threadPool: NIOThreadPool
    public var logger: Logger
    /// Called on every message accepted with 250 (after it is durable).
    public var onMessageQueued: @Sendable (QueuedEnvelope) -> Void
    /// The verified reverse name of a client address (nil: "unknown"), for Postfix-style
    /// `client=name[address]` log fields. Looked up while the session runs; never delays it.
    public var clientName: @Sendable (String) async -> String? = { _ in nil }

    public init(hostname: String, limits: ServerLimits, allowedClients: [CIDRBlock], spool: Spool,
                threadPool: NIOThreadPool, logger: Logger, onMessageQueued: @escaping @Sendable (QueuedEnvelope) -> Void = { _ in }) {
        self.hostname = hostname
        self.limits = limits
        self.allowedClients = allowedClients
        self.spool = spool
        self.threadPool = threadPool
        self.logger = logger
        self.onMessageQueued = onMessageQueued
    }

    /// True when `address` falls in one of `allowedClients`.
    public func isAllowed(_ address: IPAddress) -> Bool {
        allowedClients.contains { $0.contains(address) }
    }
}
