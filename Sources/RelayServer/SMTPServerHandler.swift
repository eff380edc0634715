import RelayMetrics
import NIOCore
import NIOPosix
import Logging
import RelayConfig
import RelayIDNA
import RelayQueue
import RelayTLS
import SMTPCore
#if canImport(Glibc)
import Glibc
#endif

/// One inbound SMTP connection: frames bytes into command lines or DATA content, feeds the
/// `ServerSession` state machine and carries out its actions (replies, spool writes, close).
///
/// While a message is being committed to disk, further input is held back and processed after
/// the reply, so pipelined commands keep their order (RFC 2920 §3.1).
final class SMTPServerHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum Mode {
        case commands
        case data(DataReceiver, ServerSession.ReceiveDataContext)
        case storing
    }

    private let settings: InboundSettings
    private let connections: ConnectionRegistry
    private var session: ServerSession
    private var framer: LineFramer
    private var mode: Mode = .commands
    private var writer: SpoolWriter?
    private var pending: [UInt8] = []
    private var clientAddress = "unknown"
    /// The verified reverse name, once looked up ("unknown" until then and without one).
    private var clientName = "unknown"
    /// Refused with 554 at connect: its commands (all 503) are not logged one by one.
    private var refusedAtConnect = false
    /// `name[address]`, as Postfix logs a client.
    private var client: String { "\(clientName)[\(clientAddress)]" }
    private var logger: Logger
    private var closing = false
    private var registered = false
    private var contentBuffer: [UInt8] = []

    init(settings: InboundSettings, connections: ConnectionRegistry, starttls: ServerSession.STARTTLSPolicy = .off) {
        self.settings = settings
        self.connections = connections
        self.session = ServerSession(hostname: settings.hostname, limits: settings.limits, starttls: starttls,
                                     toASCII: Self.toASCII)
        self.framer = LineFramer(maxLineLength: settings.limits.maxCommandLineLength)
        self.logger = settings.logger
        contentBuffer.reserveCapacity(65536)
    }

    func channelActive(context: ChannelHandlerContext) {
        let remote = context.channel.remoteAddress
        clientAddress = remote?.ipAddress ?? "unknown"
        let address = remote?.ipAddress.flatMap { IPAddress($0) }
        let allowed = address.map { settings.isAllowed($0) } ?? false
        let admitted = allowed && connections.admit(context.channel, limit: settings.limits.maxConnections)
        registered = admitted
        if admitted { RelayMetrics.inboundSession() }
        if !allowed {
            RelayMetrics.inboundRefusal(.clientNotAllowed)
            logger.warning("NOQUEUE: reject: CONNECT from \(client): 554 5.7.1 client address not in server.allowed_clients")
        } else if !admitted {
            RelayMetrics.inboundRefusal(.tooManyConnections)
            logger.warning("NOQUEUE: reject: CONNECT from \(client): 421 4.7.0 too many connections (server.max_connections = \(settings.limits.maxConnections))")
        }
        perform(session.start(clientAllowed: allowed, overConnectionLimit: allowed && !admitted), context: context)
        context.flush()
        if admitted {
            let lookup = settings.clientName
            let address = clientAddress
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            let eventLoop = context.eventLoop
            Task {
                guard let name = await lookup(address) else { return }
                eventLoop.execute { handler.value.clientName = name }
            }
        }
        if session.isRefused {
            refusedAtConnect = true
            // RFC 5321 §3.1: wait for QUIT after the 554, but not for long.
            let channel = context.channel
            channel.eventLoop.scheduleTask(in: .seconds(Int64(settings.limits.refusedSessionSeconds))) {
                channel.close(promise: nil)
            }
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if registered { connections.remove(context.channel) }
        writer?.abandon()
        writer = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        guard !closing else { return }
        if case .storing = mode {
            pending += buffer.readBytes(length: buffer.readableBytes) ?? []
            return
        }
        let bytes = buffer.readBytes(length: buffer.readableBytes) ?? []
        process(bytes, context: context)
        context.flush()
        applyBackpressure(context: context)
    }

    /// A client that sends commands but does not read the replies would make the replies pile
    /// up in memory: stop reading from it until its side of the connection drains.
    private func applyBackpressure(context: ChannelHandlerContext) {
        if !context.channel.isWritable && readingPaused == false {
            readingPaused = true
            context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
        }
    }

    private var readingPaused = false
    /// The command being answered, for refusal log lines (nil outside command handling).
    private var lastCommand: String?

    /// The verb and its argument, cut to 200 characters, without control characters; the
    /// argument of AUTH (credentials) is never logged.
    static func loggable(_ line: String) -> String {
        if line.prefix(5).uppercased() == "AUTH " || line.uppercased() == "AUTH" { return "AUTH (arguments not logged)" }
        return String(line.prefix(200).map { $0.isASCII && ($0.asciiValue! < 32 || $0.asciiValue! == 127) ? "?" : $0 })
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable && readingPaused {
            readingPaused = false
            context.channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
            context.read()
        }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            if case .storing = mode { return }
            logger.info("timeout after \(settings.limits.idleTimeoutSeconds) s from [\(clientAddress)]")
            perform(session.idleTimeout(), context: context)
            context.flush()
            return
        }
        if event is ShutdownRequest {
            switch mode {
            case .commands:
                perform(session.shutdown(), context: context)
                context.flush()
            case .data, .storing:
                // Finish this message first; the next command line gets the 421.
                pendingShutdown = true
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private var pendingShutdown = false

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        logger.debug("connection error from [\(clientAddress)]: \(error)")
        context.close(promise: nil)
    }

    /// Feeds bytes to whichever mode is current, switching modes as the session says.
    private func process(_ input: [UInt8], context: ChannelHandlerContext) {
        var input = input[...]
        while !closing {
            switch mode {
            case .storing:
                pending += input
                return
            case .data(var receiver, let dataContext):
                var consumed = 0
                var outcome: ServerSession.DataOutcome?
                contentBuffer.removeAll(keepingCapacity: true)
                input.withUnsafeBytes { raw in
                    (consumed, outcome) = receiver.consume(raw, into: &contentBuffer)
                }
                if !receiver.isRefused {
                    writer?.write(contentBuffer)
                    headerScanner.consume(contentBuffer)
                }
                input = input.dropFirst(consumed)
                guard let outcome else {
                    mode = .data(receiver, dataContext)
                    return
                }
                finishData(outcome, context: dataContext, channelContext: context)
                if input.isEmpty { return }
            case .commands:
                if !input.isEmpty {
                    framer.append(Array(input))
                    input = []
                }
                guard let event = framer.nextEvent() else { return }
                if pendingShutdown {
                    perform(session.shutdown(), context: context)
                    return
                }
                switch event {
                case .line(let bytes):
                    guard let line = String(validating: bytes, as: UTF8.self) else {
                        perform(session.receiveMalformedLine(.invalidUTF8), context: context)
                        continue
                    }
                    lastCommand = Self.loggable(line)
                    perform(session.receiveLine(line), context: context)
                    lastCommand = nil
                case .malformed(let problem):
                    perform(session.receiveMalformedLine(problem), context: context)
                }
                if case .data = mode {
                    input = framer.takeBuffered()[...]
                } else if case .storing = mode {
                    pending += framer.takeBuffered()
                    return
                }
            }
        }
    }

    private func finishData(_ outcome: ServerSession.DataOutcome, context dataContext: ServerSession.ReceiveDataContext, channelContext: ChannelHandlerContext) {
        mode = .commands
        let actions = session.dataEnded(outcome)
        if case .complete = outcome {
            perform(actions, context: channelContext)
        } else {
            writer?.abandon()
            writer = nil
            let transaction = dataContext.transaction
            logger.warning("NOQUEUE: reject: END-OF-MESSAGE from \(client): \(actions.firstReply?.description ?? "rejected"); from=<\(transaction.sender?.address ?? "")> nrcpt=\(transaction.recipients.count) helo=<\(dataContext.heloName)>")
            perform(actions, context: channelContext)
        }
        self.dataContext = dataContext
    }

    private var dataContext: ServerSession.ReceiveDataContext?

    /// Carries out the session's actions in order.
    private func perform(_ actions: [ServerSession.Action], context: ChannelHandlerContext) {
        for action in actions {
            switch action {
            case .reply(let reply):
                if reply.code >= 400, let command = lastCommand, !refusedAtConnect {
                    RelayMetrics.inboundRefusal(Self.refusalReason(command: command, code: reply.code))
                    // Postfix-style refusal line for MAIL, RCPT, DATA and everything else refused.
                    logger.info("NOQUEUE: reject: \(command) from \(client): \(reply); helo=<\(session.heloName ?? "")>")
                }
                var buffer = context.channel.allocator.buffer(capacity: 64)
                buffer.writeBytes(reply.wireBytes)
                context.write(wrapOutboundOut(buffer), promise: nil)
            case .receiveData(let dataContext):
                beginData(dataContext, context: context)
            case .storeMessage(let transaction):
                store(transaction, context: context)
            case .startTLS(let reply):
                startTLS(reply: reply, context: context)
            case .close:
                closing = true
                if tlsHandshaking {
                    // The TLS handler holds writes until its handshake ends: close at once.
                    context.close(promise: nil)
                    break
                }
                context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0))).whenComplete { [channel = context.channel] _ in
                    channel.close(promise: nil)
                }
            }
        }
    }

    /// IDNA 2008 through libidn2 (RFC 5891, UTS #46).
    static let toASCII: ServerSession.DomainToASCII = { domain in
        do throws(IDNA.ConversionError) {
            return .success(try IDNA.toASCII(domain))
        } catch {
            return .failure(DomainConversionFailure(reason: error.reason))
        }
    }

    /// The metric reason of a refused command.
    static func refusalReason(command: String, code: Int) -> RelayMetrics.Refusal {
        if command.uppercased().hasPrefix("RCPT") { return .recipient }
        if code == 552 { return .messageTooLarge }
        if code == 451 || code == 452 { return .spool }
        return .protocolViolation
    }

    private var storeStarted: NIODeadline?
    /// The server TLS handshake after STARTTLS is running.
    private var tlsHandshaking = false
    /// Reads the header of the message being received (for `TLS-Required: No`).
    private var headerScanner = MessageHeaderScanner()

    /// STARTTLS (RFC 3207 §4): the 220, then the server handshake before anything else is read.
    /// Bytes already behind the STARTTLS line would be taken as commands of the TLS session
    /// (CVE-2011-0411): the session is ended instead.
    private func startTLS(reply: Reply, context: ChannelHandlerContext) {
        guard let certificate = settings.tlsCertificate else {
            // Not reachable: a listener without a certificate never offers STARTTLS.
            logger.error("STARTTLS from \(client) on a listener without a certificate; session closed")
            perform(session.shutdown(), context: context)
            return
        }
        if framer.bufferedByteCount > 0 {
            // Logged as "NOQUEUE: reject: STARTTLS from ...: 554 5.7.0 ..." by perform().
            _ = framer.takeBuffered()
            perform(session.pipelinedAfterSTARTTLS(), context: context)
            return
        }
        var buffer = context.channel.allocator.buffer(capacity: 32)
        buffer.writeBytes(reply.wireBytes)
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        let promise = context.eventLoop.makePromise(of: TLSSessionInfo.self)
        let tls = OpenSSLHandler(serverContext: certificate.current, handshakeCompleted: promise)
        do {
            try context.pipeline.syncOperations.addHandler(tls, position: .first)
        } catch {
            logger.error("STARTTLS from \(client): cannot start TLS: \(error)")
            closing = true
            context.close(promise: nil)
            return
        }
        tlsHandshaking = true
        // A client that stalls in the handshake does not hold its connection: it has as long as
        // it may stay idle between commands, at most 60 s (Postfix's smtpd_starttls_timeout).
        let seconds = Int64(min(60, settings.limits.idleTimeoutSeconds))
        let deadline = context.eventLoop.scheduleTask(in: .seconds(seconds)) { [channel = context.channel, logger, client] in
            logger.info("STARTTLS from \(client): TLS handshake not finished after \(seconds) s; connection closed")
            channel.close(promise: nil)
        }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        promise.futureResult.whenComplete { result in
            let (handler, context) = loopBound.value
            deadline.cancel()
            handler.tlsHandshaking = false
            switch result {
            case .success(let info):
                let inbound = InboundTLS(protocolVersion: info.protocolVersion, cipher: info.cipher,
                                         cipherBits: info.cipherBits, algorithmBits: info.algorithmBits)
                handler.session.tlsStarted(inbound)
                handler.logger.info("STARTTLS from \(handler.client): \(inbound.commentText)")
            case .failure(let error):
                handler.logger.info("STARTTLS from \(handler.client): \(error)")
                handler.closing = true
                context.close(promise: nil)
            }
        }
    }

    private func beginData(_ dataContext: ServerSession.ReceiveDataContext, context: ChannelHandlerContext) {
        let receiver = DataReceiver(maxMessageSize: settings.limits.maxMessageSize, maxLineLength: settings.limits.maxTextLineLength)
        mode = .data(receiver, dataContext)
        self.dataContext = dataContext
        headerScanner = MessageHeaderScanner()
        do {
            let writer = try settings.spool.beginMessage()
            let recipients = dataContext.transaction.recipients
            let header = ReceivedHeader.make(
                heloName: dataContext.heloName, clientAddress: clientAddress, hostname: settings.hostname,
                protocolName: dataContext.protocolName, queueID: writer.queueID.rawValue,
                recipient: recipients.count == 1 ? recipients[0].mailbox : nil,
                date: MessageDate.format(secondsSinceEpoch: Int(time(nil))), tls: dataContext.tls)
            writer.write(header)
            self.writer = writer
        } catch {
            // Keep reading DATA to its end, then answer 451/452 (see store()).
            logger.error("cannot create a spool file: \(error)")
            self.writer = nil
            self.writerError = error as? SpoolError
        }
    }

    private var writerError: SpoolError?

    private func store(_ transaction: MailTransaction, context: ChannelHandlerContext) {
        mode = .storing
        guard let writer = self.writer else {
            let error = writerError ?? SpoolError.io(operation: "create", path: "spool/tmp", errno: EIO)
            writerError = nil
            let failure: ServerSession.StoreFailure
            if case .insufficientStorage = error { failure = .insufficientStorage } else { failure = .ioError }
            storeFinished(.failure(error), failure: failure, context: context)
            return
        }
        self.writer = nil
        storeStarted = .now()
        var envelope = QueuedEnvelope(
            queueID: writer.queueID, arrivalTime: currentTime(), clientAddress: clientAddress,
            heloName: dataContext?.heloName ?? "", transaction: transaction, size: writer.contentLength)
        headerScanner.finish()
        envelope.tlsRequiredNo = headerScanner.tlsRequiredNo
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        settings.threadPool.runIfActive(eventLoop: context.eventLoop) {
            try writer.commit(envelope: envelope)
            return envelope
        }.whenComplete { result in
            let (handler, context) = loopBound.value
            switch result {
            case .success(let envelope):
                handler.storeFinished(.success(envelope), failure: nil, context: context)
            case .failure(let error):
                let failure: ServerSession.StoreFailure
                if case SpoolError.insufficientStorage = error { failure = .insufficientStorage } else { failure = .ioError }
                handler.storeFinished(.failure(error), failure: failure, context: context)
            }
        }
    }

    private func storeFinished(_ result: Result<QueuedEnvelope, Error>, failure: ServerSession.StoreFailure?, context: ChannelHandlerContext) {
        mode = .commands
        switch result {
        case .success(let envelope):
            if let started = storeStarted { RelayMetrics.inboundData(seconds: Double((NIODeadline.now() - started).nanoseconds) / 1e9) }
            storeStarted = nil
            let transaction = envelope.transaction
            var wishes = ""
            if transaction.parameters.requireTLS { wishes += ", REQUIRETLS" }
            if envelope.tlsRequiredNo { wishes += transaction.parameters.requireTLS ? ", TLS-Required: No (ignored: REQUIRETLS)" : ", TLS-Required: No" }
            let idn = ([transaction.sender].compactMap { $0 } + transaction.recipients.map(\.mailbox)).filter { $0.asciiDomain != nil }
            if !idn.isEmpty {
                wishes += ", IDN " + Set(idn.map { IDNA.display($0.domain, ascii: $0.routingDomain) }).sorted().joined(separator: ", ")
            }
            logger.info("\(envelope.queueID): client=\(client), helo=<\(envelope.heloName)>, from=<\(transaction.sender?.address ?? "")>, size=\(envelope.size), nrcpt=\(transaction.recipients.count)\(wishes) (queued)")
            perform(session.messageStored(queueID: envelope.queueID.rawValue), context: context)
            settings.onMessageQueued(envelope)
        case .failure(let error):
            logger.error("NOQUEUE: cannot queue message from [\(clientAddress)]: \(error)")
            perform(session.storeFailed(failure ?? .ioError), context: context)
        }
        context.flush()
        guard context.channel.isActive, !closing else { return }
        let held = pending
        pending = []
        if !held.isEmpty { process(held, context: context) }
        // Input held back while storing may also sit in the framer.
        else if framer.bufferedByteCount > 0 { process([], context: context) }
        context.flush()
    }

    private func currentTime() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }
}

/// Asks a connection to end as soon as it is between transactions (graceful shutdown).
struct ShutdownRequest: Sendable {}

extension Array where Element == ServerSession.Action {
    var firstReply: Reply? {
        for action in self { if case .reply(let reply) = action { return reply } }
        return nil
    }
}
