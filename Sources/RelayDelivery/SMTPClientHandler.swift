import NIOCore
import RelayTLS
import SMTPCore

/// What one connection to one MX address produced.
public struct ConnectionReport: Sendable {
    public var result: ClientSession.Result
    /// The TLS session, when STARTTLS succeeded.
    public var tls: TLSSessionInfo?
    /// The reason TLS failed, when it did.
    public var tlsError: TLSHandshakeError?
}

/// Drives a `ClientSession` over one TCP connection: frames replies, writes commands and
/// content, installs `OpenSSLClientHandler` after the 220 to STARTTLS, runs per-stage timers.
final class SMTPClientHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var session: ClientSession
    private var parser = ReplyParser()
    private let content: [UInt8]
    private let tlsContext: TLSClientContext
    private let authentication: TLSPeerAuthentication
    private let serverName: String
    private let timeouts: ClientTimeouts
    private let completion: EventLoopPromise<ConnectionReport>
    private var timer: Scheduled<Void>?
    private var tlsInfo: TLSSessionInfo?
    private var tlsError: TLSHandshakeError?
    private var finished = false

    init(job: ClientSession.Job, content: [UInt8], tlsContext: TLSClientContext, authentication: TLSPeerAuthentication,
         serverName: String, timeouts: ClientTimeouts, completion: EventLoopPromise<ConnectionReport>) {
        self.session = ClientSession(job: job)
        self.content = content
        self.tlsContext = tlsContext
        self.authentication = authentication
        self.serverName = serverName
        self.timeouts = timeouts
        self.completion = completion
    }

    func channelActive(context: ChannelHandlerContext) {
        armTimer(context: context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        guard !finished else { return }
        parser.append(buffer.readBytes(length: buffer.readableBytes) ?? [])
        while !finished {
            let reply: Reply?
            do {
                reply = try parser.next()
            } catch {
                perform(session.protocolViolation("\(error)"), context: context)
                return
            }
            guard let reply else { break }
            perform(session.receive(reply, bytesFollow: parser.hasBufferedBytes), context: context)
        }
        context.flush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !finished { perform(session.connectionClosed(), context: context) }
        timer?.cancel()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let tls = error as? TLSHandshakeError, tlsError == nil { tlsError = tls }
        context.close(promise: nil)
    }

    private func armTimer(context: ChannelHandlerContext) {
        timer?.cancel()
        let seconds = timeouts.seconds(for: session.stage)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: .milliseconds(Int64(seconds * 1000))) {
            let (handler, context) = loopBound.value
            handler.perform(handler.session.timedOut(), context: context)
        }
    }

    private func perform(_ actions: [ClientSession.Action], context: ChannelHandlerContext) {
        for action in actions {
            switch action {
            case .send(let bytes):
                var buffer = context.channel.allocator.buffer(capacity: bytes.count)
                buffer.writeBytes(bytes)
                context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
            case .sendContent:
                let stuffed = DotStuffing.encode(content)
                var buffer = context.channel.allocator.buffer(capacity: stuffed.count)
                buffer.writeBytes(stuffed)
                context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
            case .startTLS:
                startTLS(context: context)
            case .finish(let result):
                finished = true
                timer?.cancel()
                completion.succeed(ConnectionReport(result: result, tls: tlsInfo, tlsError: tlsError))
                context.close(promise: nil)
                return
            }
        }
        if !finished { armTimer(context: context) }
    }

    private func startTLS(context: ChannelHandlerContext) {
        let handshake = context.eventLoop.makePromise(of: TLSSessionInfo.self)
        let tls = OpenSSLClientHandler(context: tlsContext, authentication: authentication, serverName: serverName,
                                       handshakeCompleted: handshake)
        do {
            try context.pipeline.syncOperations.addHandler(tls, position: .first)
        } catch {
            perform(session.tlsFailed("cannot start TLS: \(error)"), context: context)
            return
        }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        handshake.futureResult.whenComplete { result in
            let (handler, context) = loopBound.value
            switch result {
            case .success(let info):
                handler.tlsInfo = info
                handler.perform(handler.session.tlsEstablished(), context: context)
            case .failure(let error):
                let reason: String
                if let tlsError = error as? TLSHandshakeError {
                    handler.tlsError = tlsError
                    reason = "\(tlsError)"
                } else {
                    reason = "\(error)"
                }
                handler.perform(handler.session.tlsFailed(reason), context: context)
            }
            context.flush()
        }
    }
}
