import NIOCore
import NIOPosix
import Logging
import RelayConfig
import SMTPCore

/// The inbound ESMTP listener (RFC 5321) on one or more sockets.
public final class InboundServer: Sendable {
    private let settings: InboundSettings
    private let group: EventLoopGroup
    public let connections = ConnectionRegistry()
    private let listeners: ListenerSet

    /// - Parameters:
    ///   - settings: shared session settings and services.
    ///   - group: the event loops to run on.
    public init(settings: InboundSettings, group: EventLoopGroup) {
        self.settings = settings
        self.group = group
        self.listeners = ListenerSet()
    }

    /// Binds every listener and starts accepting.
    /// - Parameter listeners: the sockets, each with its STARTTLS policy (`offered` and `required`
    ///   need `settings.tlsCertificate`).
    /// - Returns: the bound addresses (with the real port when 0 was asked), in order.
    /// - Throws: the bind error (address in use, permission denied), after closing any sockets
    ///   bound before it.
    public func start(listeners: [InboundListener]) async throws -> [SocketAddress] {
        var bound: [SocketAddress] = []
        for listener in listeners {
            let bootstrap = self.bootstrap(starttls: settings.tlsCertificate == nil ? .off : listener.starttls)
            let address = listener.address
            do {
                let channel = try await bootstrap.bind(host: address.address.description, port: address.port).get()
                self.listeners.append(channel)
                if let local = channel.localAddress { bound.append(local) }
            } catch {
                await stopAccepting()
                throw ListenError(address: address.description, underlying: error)
            }
        }
        return bound
    }

    /// Binds every address without STARTTLS.
    public func start(listen addresses: [SocketAddressText]) async throws -> [SocketAddress] {
        try await start(listeners: addresses.map { InboundListener(address: $0, starttls: .off) })
    }

    private func bootstrap(starttls: ServerSession.STARTTLSPolicy) -> ServerBootstrap {
        let settings = self.settings
        let connections = self.connections
        return ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        IdleStateHandler(readTimeout: .seconds(Int64(settings.limits.idleTimeoutSeconds))))
                    try channel.pipeline.syncOperations.addHandler(SMTPServerHandler(settings: settings, connections: connections, starttls: starttls))
                }
            }
    }

    /// Closes the listening sockets; open sessions go on.
    public func stopAccepting() async {
        for channel in listeners.takeAll() {
            try? await channel.close()
        }
    }

    /// Graceful stop: no new connections, each session finishes its transaction and gets 421;
    /// waits up to `timeoutSeconds` for sessions to end, then closes what is left.
    public func shutdown(timeoutSeconds: Double) async {
        await stopAccepting()
        connections.requestShutdown()
        let deadline = ContinuousClock.now + .milliseconds(Int(timeoutSeconds * 1000))
        while connections.count > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }
}

import NIOConcurrencyHelpers

/// The listening channels, guarded by a lock.
final class ListenerSet: Sendable {
    private let box = NIOLockedValueBox<[Channel]>([])
    func append(_ channel: Channel) { box.withLockedValue { $0.append(channel) } }
    func takeAll() -> [Channel] { box.withLockedValue { all in defer { all = [] }; return all } }
}

/// A listening socket could not be opened: names the address and the system's reason
/// ("cannot listen on 127.0.0.1:10030: Address already in use").
public struct ListenError: Error, CustomStringConvertible {
    public let address: String
    public let underlying: Error

    public var description: String {
        if let io = underlying as? IOError { return "cannot listen on \(address): \(String(cString: strerror(io.errnoCode)))" }
        return "cannot listen on \(address): \(underlying)"
    }
}
