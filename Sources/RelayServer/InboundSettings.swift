import RelayConfig
import RelayQueue
import SMTPCore
import Logging
import NIOPosix
import NIOConcurrencyHelpers
import RelayTLS

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
    /// The certificate STARTTLS presents; nil when no listener offers STARTTLS.
    public var tlsCertificate: InboundCertificate?

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

/// The inbound listener's certificate chain and key (`server.tls_certificate_chain_file`,
/// `server.tls_private_key_file`), replaced on SIGHUP. A session takes the current one when its
/// STARTTLS begins.
public final class InboundCertificate: Sendable {
    private let box: NIOLockedValueBox<TLSServerContext>

    public init(_ context: TLSServerContext) {
        box = NIOLockedValueBox(context)
    }

    /// The context new STARTTLS handshakes use.
    public var current: TLSServerContext { box.withLockedValue { $0 } }

    /// Puts a freshly loaded context in place; sessions already in TLS keep theirs.
    public func replace(with context: TLSServerContext) {
        box.withLockedValue { $0 = context }
    }
}

/// One listening socket and whether it offers or requires STARTTLS.
public struct InboundListener: Sendable, Hashable {
    public var address: SocketAddressText
    public var starttls: ServerSession.STARTTLSPolicy

    public init(address: SocketAddressText, starttls: ServerSession.STARTTLSPolicy) {
        self.address = address
        self.starttls = starttls
    }
}
