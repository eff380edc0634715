import Foundation
import NIOCore
import NIOPosix

/// The daemon's control socket (`<state_directory>/control.sock`, mode 0660): one JSON request
/// per connection, one line, answered with one JSON line, then closed. Only root and the
/// service user reach it (the state directory is 0700).
///
/// Request: `{"command": "queue.list" | "queue.show" | "queue.flush" | "queue.hold" |
/// "queue.release" | "queue.delete" | "status" | "policy.show", "id": "...", "domain": "..."}`.
/// Response: `{"ok": true, "result": ...}` or `{"ok": false, "error": "reason"}`.
public final class ControlServer: Sendable {
    /// Answers one request (the JSON object as bytes) with the response bytes.
    public typealias Dispatch = @Sendable (Data) async -> Data

    /// Largest request, bytes.
    public static let maxRequestSize = 65536

    private let group: EventLoopGroup
    private let dispatch: Dispatch
    private let channelBox = ChannelBox()
    public let path: String

    public init(path: String, group: EventLoopGroup, dispatch: @escaping Dispatch) {
        self.path = path
        self.group = group
        self.dispatch = dispatch
    }

    /// Binds the socket (replacing a stale socket file) and restricts it to mode 0660.
    /// - Throws: the bind error.
    public func start() async throws {
        let dispatch = self.dispatch
        let channel = try await ServerBootstrap(group: group)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // A client that sends nothing (or never ends its line) is dropped after 10 s.
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: .seconds(10)))
                    try channel.pipeline.syncOperations.addHandler(ControlConnectionHandler(dispatch: dispatch))
                }
            }
            .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
        chmod(path, 0o660)
        channelBox.set(channel)
    }

    /// Closes the socket and removes its file.
    public func stop() async {
        if let channel = channelBox.take() { try? await channel.close() }
        unlink(path)
    }
}

final class ChannelBox: @unchecked Sendable {
    private let lock = NSLock()
    private var channel: Channel?
    func set(_ value: Channel) { lock.lock(); channel = value; lock.unlock() }
    func take() -> Channel? { lock.lock(); defer { channel = nil; lock.unlock() }; return channel }
}

final class ControlConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let dispatch: ControlServer.Dispatch
    private var buffer: [UInt8] = []
    private var answered = false

    init(dispatch: @escaping ControlServer.Dispatch) {
        self.dispatch = dispatch
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        guard !answered else { return }
        buffer += bytes.readBytes(length: bytes.readableBytes) ?? []
        if buffer.count > ControlServer.maxRequestSize {
            answer(Data(#"{"ok":false,"error":"request too large"}"#.utf8), context: context)
            return
        }
        guard let newline = buffer.firstIndex(of: 10) else { return }
        handle(Data(buffer[..<newline]), context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed, !answered {
            // The client half-closed after its request without a newline: that is the request.
            handle(Data(buffer), context: context)
            return
        }
        if event is IdleStateHandler.IdleStateEvent, !answered {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func handle(_ request: Data, context: ChannelHandlerContext) {
        answered = true
        let dispatch = self.dispatch
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let promise = context.eventLoop.makePromise(of: Data.self)
        promise.completeWithTask { await dispatch(request) }
        promise.futureResult.whenSuccess { response in
            let (handler, context) = loopBound.value
            handler.answer(response, context: context)
        }
    }

    private func answer(_ response: Data, context: ChannelHandlerContext) {
        answered = true
        var out = context.channel.allocator.buffer(capacity: response.count + 1)
        out.writeBytes(response)
        out.writeInteger(UInt8(10))
        context.writeAndFlush(wrapOutboundOut(out)).whenComplete { [channel = context.channel] _ in
            channel.close(promise: nil)
        }
    }
}
