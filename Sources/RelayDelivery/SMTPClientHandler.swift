import NIOCore
import RelayTLS
import SMTPCore

/// What one transaction on a connection to one MX address produced.
public struct ConnectionReport: Sendable {
    public var result: ClientSession.Result
    /// The TLS session, when STARTTLS succeeded (on a reused connection: the handshake that
    /// opened it).
    public var tls: TLSSessionInfo?
    /// The reason TLS failed, when it did.
    public var tlsError: TLSHandshakeError?
    /// Which transaction of its connection this was: 1 on a new connection, 2 and up on a
    /// reused one (Postfix's `conn_use`).
    public var connectionUse = 1
    /// Seconds the TLS handshake took, when this transaction's connection made one just now.
    public var tlsHandshakeSeconds: Double?
    /// This relay's address on the connection.
    public var localAddress: String?
    /// The server's name in its 220 greeting.
    public var greetingName: String?
}

/// Drives a `ClientSession` over one TCP connection: frames replies, writes commands and
/// content, installs `OpenSSLHandler` after the 220 to STARTTLS, runs per-stage timers.
/// With `Job.keepOpen` the connection stays open and idle after a completed transaction for
/// at most `idleLimit` seconds, and `run(job:content:completion:)` sends the next message on
/// it; a connection older than `reuseLimit` seconds is closed with QUIT instead.
/// Every method runs on the channel's event loop.
final class SMTPClientHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Why an idle connection could not take a job.
    struct NotIdle: Error {}

    private var session: ClientSession
    private var parser = ReplyParser()
    private var content: [UInt8]
    private let tlsContext: TLSClientContext
    private let authentication: TLSPeerAuthentication
    private let serverName: String
    private let timeouts: ClientTimeouts
    private let idleLimit: Double
    private let reuseLimit: Double
    private var completion: EventLoopPromise<ConnectionReport>?
    private var timer: Scheduled<Void>?
    private var tlsInfo: TLSSessionInfo?
    private var tlsError: TLSHandshakeError?
    /// Set when the connection is being closed: nothing more is read or sent.
    private var closing = false
    private var uses = 1
    private var openedAt = NIODeadline.now()
    private var handshakeSeconds: Double?
    private var context: ChannelHandlerContext?

    /// - Parameters:
    ///   - idleLimit: seconds an idle connection waits for its next job (Postfix's
    ///     `smtp_connection_cache_time_limit`).
    ///   - reuseLimit: seconds after which a connection is not given another job (Postfix's
    ///     `smtp_connection_reuse_time_limit`).
    init(job: ClientSession.Job, content: [UInt8], tlsContext: TLSClientContext, authentication: TLSPeerAuthentication,
         serverName: String, timeouts: ClientTimeouts, idleLimit: Double = 2, reuseLimit: Double = 300,
         completion: EventLoopPromise<ConnectionReport>) {
        self.session = ClientSession(job: job)
        self.content = content
        self.tlsContext = tlsContext
        self.authentication = authentication
        self.serverName = serverName
        self.timeouts = timeouts
        self.idleLimit = idleLimit
        self.reuseLimit = reuseLimit
        self.completion = completion
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    /// Sends the next message on this idle connection; `completion` gets its report. Fails
    /// `completion` with `NotIdle` (nothing sent) when the connection is no longer idle (it was
    /// closed, or its idle time ran out).
    func run(job: ClientSession.Job, content: [UInt8], completion: EventLoopPromise<ConnectionReport>) {
        guard let context, !closing, session.isIdle, context.channel.isActive else {
            completion.fail(NotIdle())
            return
        }
        self.content = content
        self.completion = completion
        uses += 1
        perform(session.begin(job), context: context)
        context.flush()
    }

    /// Sends QUIT on an idle connection and closes it without waiting for the reply (idle time
    /// over, shutdown; no timer is involved, so a stopped clock cannot hold up an exit). Does
    /// nothing to a busy connection.
    func quitAndCloseIfIdle() {
        guard let context, !closing, session.isIdle else { return }
        perform(session.closeIdle(), context: context)
        context.flush()
        timer?.cancel()
        closing = true
        context.close(promise: nil)
    }

    /// This relay's address on the connection (for TLS reports).
    private var localAddress: String?

    func channelActive(context: ChannelHandlerContext) {
        openedAt = .now()
        localAddress = context.channel.localAddress?.ipAddress
        armTimer(context: context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        guard !closing else { return }
        parser.append(buffer.readBytes(length: buffer.readableBytes) ?? [])
        while !closing {
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
        if !closing { perform(session.connectionClosed(), context: context) }
        timer?.cancel()
        // A connection that dies without a verdict must not leave its caller waiting.
        completion?.fail(ChannelError.ioOnClosedChannel)
        completion = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let tls = error as? TLSHandshakeError, tlsError == nil { tlsError = tls }
        context.close(promise: nil)
    }

    private func armTimer(context: ChannelHandlerContext) {
        timer?.cancel()
        let seconds = session.stage == .idle ? idleLimit : timeouts.seconds(for: session.stage)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: .milliseconds(Int64(seconds * 1000))) {
            let (handler, context) = loopBound.value
            if handler.session.isIdle {
                // Idle time over: QUIT and close, without waiting for the reply.
                handler.quitAndCloseIfIdle()
                return
            }
            handler.perform(handler.session.timedOut(), context: context)
            context.flush()
        }
    }

    private func perform(_ actions: [ClientSession.Action], context: ChannelHandlerContext) {
        for action in actions {
            switch action {
            case .send(let bytes):
                var buffer = context.channel.allocator.buffer(capacity: bytes.count)
                buffer.writeBytes(bytes)
                context.write(wrapOutboundOut(buffer), promise: nil)
            case .sendContent:
                let stuffed = DotStuffing.encode(content)
                var buffer = context.channel.allocator.buffer(capacity: stuffed.count)
                buffer.writeBytes(stuffed)
                // Only once the dot is written may the final reply count (RFC 5321 §4.1.1.4).
                let written = context.eventLoop.makePromise(of: Void.self)
                let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                written.futureResult.whenSuccess {
                    let (handler, context) = loopBound.value
                    guard !handler.closing else { return }
                    handler.perform(handler.session.contentWritten(), context: context)
                }
                context.write(wrapOutboundOut(buffer), promise: written)
            case .startTLS:
                context.flush()
                startTLS(context: context)
            case .finish(var result):
                timer?.cancel()
                let age = Double((NIODeadline.now() - openedAt).nanoseconds) / 1e9
                let keep = result.reusable && session.isIdle && age < reuseLimit
                result.reusable = keep
                completion?.succeed(ConnectionReport(result: result, tls: tlsInfo, tlsError: tlsError, connectionUse: uses,
                                                     tlsHandshakeSeconds: uses == 1 ? handshakeSeconds : nil,
                                                     localAddress: localAddress, greetingName: session.greetingName))
                completion = nil
                content = []
                if keep {
                    armTimer(context: context)
                } else if session.isIdle {
                    // Too old to be given another message: say goodbye properly.
                    perform(session.closeIdle(), context: context)
                } else {
                    closing = true
                    context.close(promise: nil)
                }
                return
            }
        }
        armTimer(context: context)
    }

    private func startTLS(context: ChannelHandlerContext) {
        let handshake = context.eventLoop.makePromise(of: TLSSessionInfo.self)
        let started = NIODeadline.now()
        let tls = OpenSSLHandler(context: tlsContext, authentication: authentication, serverName: serverName,
                                       handshakeCompleted: handshake)
        do {
            try context.pipeline.syncOperations.addHandler(tls, position: .first)
        } catch {
            perform(session.tlsFailed("cannot start TLS: \(error)"), context: context)
            return
        }
        let loopBound = NIOLoopBound((self, context, tls), eventLoop: context.eventLoop)
        handshake.futureResult.whenComplete { result in
            let (handler, context, tls) = loopBound.value
            switch result {
            case .success(let info):
                handler.tlsInfo = info
                handler.handshakeSeconds = Double((NIODeadline.now() - started).nanoseconds) / 1e9
                handler.perform(handler.session.tlsEstablished(), context: context)
            case .failure(let error):
                let reason: String
                if let tlsError = error as? TLSHandshakeError {
                    handler.tlsError = tlsError
                    reason = "\(tlsError)" + (tls.presentedCertificate.map { "; \($0)" } ?? "")
                } else {
                    reason = "\(error)"
                }
                handler.perform(handler.session.tlsFailed(reason), context: context)
            }
            context.flush()
        }
    }
}
