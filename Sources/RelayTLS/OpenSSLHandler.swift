import COpenSSL
import NIOCore

/// TLS on one connection, client or server side, driving system OpenSSL through two memory BIOs
/// (network → OpenSSL, OpenSSL → network).
///
/// Client: add it at the front of the pipeline right after the STARTTLS 220 reply (or, on a
/// channel that is not active yet, before connecting: the handshake then starts on
/// `channelActive`). Server (inbound STARTTLS, RFC 3207 §4): add it at the front right after
/// writing the 220; the client's ClientHello is the next thing read. Outbound `ByteBuffer`s are
/// encrypted, inbound ones decrypted.
///
/// `handshakeCompleted` succeeds with the session's parameters, or fails with a
/// `TLSHandshakeError` after the alert (if any) is flushed and the channel closed. For `.dane`
/// (with a usable record) and `.webPKI`, a verification failure fails the handshake itself
/// (`SSL_VERIFY_PEER`). Writes issued before the handshake completes are held back and sent only
/// after it succeeded; when it fails they are failed with the same error and never sent.
///
/// After the handshake: a `close` sends close_notify first; the peer's close_notify closes the
/// channel; a TLS error while reading or writing is fired as `TLSConnectionError` and closes the
/// channel.
///
/// The handler must be used from its channel's event loop only.
public final class OpenSSLHandler: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private enum State {
        /// Added, channel not active yet.
        case idle
        case handshaking
        case active
        /// close_notify sent or received; the channel is closing.
        case closing
        /// The handshake failed, or the channel became inactive.
        case closed
    }

    /// What is enforced on this connection (derived from the request in `setUp`).
    private struct Plan {
        var applied: TLSAuthenticationApplied
        var verifiesPeer: Bool
        var unusableRecords: Int
    }

    /// Which side of the handshake this handler plays.
    private enum Role {
        case client(TLSClientContext, TLSPeerAuthentication, serverName: String?)
        /// The server side: the certificate chain and key of `TLSServerContext`; no client
        /// certificate is asked for.
        case server(TLSServerContext)
    }

    private let role: Role
    private let handshakePromise: EventLoopPromise<TLSSessionInfo>
    private var promiseCompleted = false
    /// Set just before the channel is closed because of a failed handshake, so that the
    /// `channelInactive` this close causes reports it (not `.connectionClosed`).
    private var handshakeFailure: TLSHandshakeError?

    private var state: State = .idle
    private var ssl: OpaquePointer?
    private var readBIO: OpaquePointer?   // network → OpenSSL; owned by `ssl`
    private var writeBIO: OpaquePointer?  // OpenSSL → network; owned by `ssl`
    private var plan = Plan(applied: .opportunistic, verifiesPeer: false, unusableRecords: 0)

    /// Application writes not yet given to OpenSSL (before the handshake completes, or before the
    /// next flush).
    private var pendingWrites: [(data: ByteBuffer, promise: EventLoopPromise<Void>?)] = []
    private var flushRequested = false
    /// Plaintext was passed on since the last channelReadComplete.
    private var deliveredReads = false

    private static let readChunkSize = 16_384

    /// - Parameters:
    ///   - context: the shared client context.
    ///   - authentication: what to check about the server's certificate.
    ///   - serverName: the SNI name for `.opportunistic`, `.encryptOnly` and `.webPKI` (default for
    ///     `.webPKI`: its host name). Ignored for `.dane`, whose SNI is the TLSA base domain
    ///     (RFC 7672 §8.1). A trailing dot is removed; address literals are not sent.
    ///   - handshakeCompleted: completed once, on the channel's event loop.
    /// After an authentication failure: the certificate the server presented, as "server
    /// certificate subject ..., SPKI SHA-256 ... (TLSA 3 1 1 data)" — what tells a missed key
    /// rollover from an attack. Nil otherwise.
    public private(set) var presentedCertificate: String?

    public init(context: TLSClientContext, authentication: TLSPeerAuthentication, serverName: String?,
                handshakeCompleted: EventLoopPromise<TLSSessionInfo>) {
        self.role = .client(context, authentication, serverName: serverName)
        self.handshakePromise = handshakeCompleted
    }

    /// The server side of one connection (inbound STARTTLS).
    /// - Parameters:
    ///   - serverContext: the certificate chain and key to present.
    ///   - handshakeCompleted: completed once, on the channel's event loop: the protocol and
    ///     cipher on success (`verified` false: clients are not asked for certificates), a
    ///     `TLSHandshakeError.handshakeFailed` with OpenSSL's reasons otherwise.
    public init(serverContext: TLSServerContext, handshakeCompleted: EventLoopPromise<TLSSessionInfo>) {
        self.role = .server(serverContext)
        self.handshakePromise = handshakeCompleted
    }

    deinit {
        if let ssl { SSL_free(ssl) }
    }

    // MARK: Channel events

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive {
            startHandshake(context: context)
        }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        let wasHandshaking = state == .idle || state == .handshaking
        state = .closed
        failPendingWrites(with: wasHandshaking ? TLSHandshakeError.connectionClosed : ChannelError.ioOnClosedChannel)
        completeHandshake(.failure(handshakeFailure ?? .connectionClosed))
        if let ssl {
            SSL_free(ssl)
            self.ssl = nil
            readBIO = nil
            writeBIO = nil
        }
    }

    public func channelActive(context: ChannelHandlerContext) {
        if state == .idle {
            startHandshake(context: context)
        }
        context.fireChannelActive()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        let wasHandshaking = state == .idle || state == .handshaking
        state = .closed
        failPendingWrites(with: wasHandshaking ? TLSHandshakeError.connectionClosed : ChannelError.ioOnClosedChannel)
        completeHandshake(.failure(handshakeFailure ?? .connectionClosed))
        context.fireChannelInactive()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        switch state {
        case .handshaking, .active:
            guard feedNetworkInput(&buffer) else {
                fail(context: context, handshakeError: .handshakeFailed(reason: "cannot buffer network input"),
                     connectionError: .readFailed(reason: "cannot buffer network input"))
                return
            }
            if state == .handshaking {
                stepHandshake(context: context)
            } else {
                readPlaintext(context: context)
            }
        case .idle, .closing, .closed:
            // Nothing to do with bytes before the handshake started or after it ended.
            break
        }
    }

    /// Always passed on, plaintext or not: handlers behind this one (an `IdleStateHandler`)
    /// count a read as ended only here; a handshake that stalls must still time out.
    public func channelReadComplete(context: ChannelHandlerContext) {
        deliveredReads = false
        context.fireChannelReadComplete()
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed, state == .idle || state == .handshaking {
            // Half-closure allowed and the peer stopped sending: the handshake cannot finish.
            state = .closed
            failPendingWrites(with: TLSHandshakeError.connectionClosed)
            context.close(promise: nil)
            completeHandshake(.failure(handshakeFailure ?? .connectionClosed))
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: Outbound

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch state {
        case .idle, .handshaking, .active:
            pendingWrites.append((unwrapOutboundIn(data), promise))
        case .closing, .closed:
            promise?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    public func flush(context: ChannelHandlerContext) {
        switch state {
        case .idle, .handshaking:
            flushRequested = true
        case .active:
            encryptPendingWrites(context: context)
        case .closing, .closed:
            context.flush()
        }
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all else {
            context.close(mode: mode, promise: promise)
            return
        }
        switch state {
        case .idle, .handshaking:
            state = .closed
            failPendingWrites(with: TLSHandshakeError.connectionClosed)
            context.close(mode: mode, promise: promise)
            completeHandshake(.failure(handshakeFailure ?? .connectionClosed))
        case .active:
            state = .closing
            // NIO semantics: writes not flushed before close are dropped.
            failPendingWrites(with: ChannelError.ioOnClosedChannel)
            if let ssl {
                ERR_clear_error()
                _ = SSL_shutdown(ssl)  // queues close_notify; no need to wait for the peer's
                ERR_clear_error()
            }
            sendNetworkOutput(context: context, promise: nil)
            context.close(mode: mode, promise: promise)
        case .closing, .closed:
            context.close(mode: mode, promise: promise)
        }
    }

    // MARK: Handshake

    private func startHandshake(context: ChannelHandlerContext) {
        precondition(state == .idle)
        state = .handshaking
        do {
            try setUp()
        } catch {
            fail(context: context, handshakeError: error, connectionError: nil)
            return
        }
        stepHandshake(context: context)
    }

    /// Creates the `SSL` with its BIOs and applies the authentication request.
    private func setUp() throws(TLSHandshakeError) {
        ERR_clear_error()
        let ctx: OpaquePointer
        switch role {
        case .client(let context, _, _): ctx = context.ctx
        case .server(let context): ctx = context.ctx
        }
        guard let ssl = SSL_new(ctx) else {
            throw .handshakeFailed(reason: "SSL_new: " + OpenSSLErrors.message(fallback: "failed"))
        }
        self.ssl = ssl  // freed in handlerRemoved / deinit
        guard let rbio = BIO_new(BIO_s_mem()) else {
            throw .handshakeFailed(reason: "BIO_new: " + OpenSSLErrors.message(fallback: "failed"))
        }
        guard let wbio = BIO_new(BIO_s_mem()) else {
            BIO_free(rbio)
            throw .handshakeFailed(reason: "BIO_new: " + OpenSSLErrors.message(fallback: "failed"))
        }
        // An empty read BIO means "retry later", not EOF.
        _ = tlsrelay_BIO_set_mem_eof_return(rbio, -1)
        SSL_set_bio(ssl, rbio, wbio)
        readBIO = rbio
        writeBIO = wbio
        guard case .client(_, let authentication, let serverName) = role else {
            SSL_set_accept_state(ssl)
            SSL_set_verify(ssl, SSL_VERIFY_NONE, nil)
            plan = Plan(applied: .opportunistic, verifiesPeer: false, unusableRecords: 0)
            return
        }
        SSL_set_connect_state(ssl)

        var sni: String? = serverName
        switch authentication {
        case .opportunistic:
            SSL_set_verify(ssl, SSL_VERIFY_NONE, nil)
            plan = Plan(applied: .opportunistic, verifiesPeer: false, unusableRecords: 0)

        case .encryptOnly:
            SSL_set_verify(ssl, SSL_VERIFY_NONE, nil)
            plan = Plan(applied: .encryptOnly, verifiesPeer: false, unusableRecords: 0)

        case .dane(let tlsaBaseDomain, let hostNames, let records):
            let base = DomainName.withoutTrailingDot(tlsaBaseDomain)
            guard !base.isEmpty else { throw .handshakeFailed(reason: "empty TLSA base domain") }
            sni = base
            let usable = records.filter(\.isUsableForSMTP)
            var unusable = records.count - usable.count
            var added = 0
            if !usable.isEmpty {
                ERR_clear_error()
                // Also sets SNI and makes `base` the first reference identifier for name checks.
                guard SSL_dane_enable(ssl, base) > 0 else {
                    throw .handshakeFailed(reason: "SSL_dane_enable: " + OpenSSLErrors.message(fallback: "failed"))
                }
                SSL_set_hostflags(ssl, UInt32(X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS))
                for name in hostNames.map(DomainName.withoutTrailingDot) where !name.isEmpty && name != base {
                    ERR_clear_error()
                    guard SSL_add1_host(ssl, name) == 1 else {
                        throw .handshakeFailed(reason: "SSL_add1_host(\(name)): " + OpenSSLErrors.message(fallback: "failed"))
                    }
                }
                for record in usable {
                    ERR_clear_error()
                    let result = record.data.withUnsafeBufferPointer {
                        SSL_dane_tlsa_add(ssl, record.usage, record.selector, record.matchingType, $0.baseAddress, $0.count)
                    }
                    if result > 0 {
                        added += 1
                    } else {
                        // 0: unsupported parameters; < 0: malformed (e.g. wrong digest length).
                        // Both are "unusable" records (RFC 6698 §4.1, RFC 7672 §3.1.3).
                        unusable += 1
                        ERR_clear_error()
                    }
                }
            }
            // A DANE request never degrades: without a record OpenSSL can use (all usage 0/1, or
            // data it refuses, such as matching type 0 with bytes that are no certificate), the
            // peer cannot be authenticated and the handshake fails. (A host with only unusable
            // records is asked for `.encryptOnly` by the delivery planner, never for `.dane`.)
            guard added > 0 else {
                throw .authenticationFailed(verifyResult: Int(X509_V_ERR_DANE_NO_MATCH),
                                            reason: "none of the \(records.count) TLSA record(s) can be used by OpenSSL, so DANE cannot authenticate the server")
            }
            SSL_set_verify(ssl, SSL_VERIFY_PEER, nil)
            plan = Plan(applied: .dane, verifiesPeer: true, unusableRecords: unusable)

        case .webPKI(let hostName):
            let host = DomainName.withoutTrailingDot(hostName)
            guard !host.isEmpty else { throw .handshakeFailed(reason: "empty host name") }
            if sni == nil { sni = host }
            SSL_set_verify(ssl, SSL_VERIFY_PEER, nil)
            SSL_set_hostflags(ssl, UInt32(X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS))
            ERR_clear_error()
            guard SSL_set1_host(ssl, host) == 1 else {
                throw .handshakeFailed(reason: "SSL_set1_host(\(host)): " + OpenSSLErrors.message(fallback: "failed"))
            }
            plan = Plan(applied: .webPKI, verifiesPeer: true, unusableRecords: 0)
        }

        if let name = sni.map(DomainName.withoutTrailingDot), !name.isEmpty, !DomainName.isAddressLiteral(name) {
            ERR_clear_error()
            guard tlsrelay_SSL_set_tlsext_host_name(ssl, name) == 1 else {
                throw .handshakeFailed(reason: "SNI \(name): " + OpenSSLErrors.message(fallback: "refused"))
            }
        }
    }

    /// One `SSL_do_handshake` step, after which whatever OpenSSL produced goes to the network.
    private func stepHandshake(context: ChannelHandlerContext) {
        guard state == .handshaking, let ssl else { return }
        ERR_clear_error()
        let result = SSL_do_handshake(ssl)
        if result == 1 {
            sendNetworkOutput(context: context, promise: nil)
            handshakeSucceeded(context: context)
            return
        }
        let code = SSL_get_error(ssl, result)
        switch code {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            sendNetworkOutput(context: context, promise: nil)
            // Make sure the peer's answer is read even when auto-read is off.
            context.read()
        default:
            let reasons = OpenSSLErrors.drain()
            let error = classifyHandshakeFailure(ssl: ssl, code: code, reasons: reasons)
            fail(context: context, handshakeError: error, connectionError: nil)
        }
    }

    private func classifyHandshakeFailure(ssl: OpaquePointer, code: Int32, reasons: [String]) -> TLSHandshakeError {
        let verifyResult = Int(SSL_get_verify_result(ssl))
        if plan.verifiesPeer && verifyResult != Int(X509_V_OK) {
            presentedCertificate = OpenSSLText.presentedCertificate(ssl)
            return .authenticationFailed(verifyResult: verifyResult, reason: OpenSSLText.verifyResultText(verifyResult))
        }
        if !reasons.isEmpty {
            return .handshakeFailed(reason: reasons.joined(separator: "; "))
        }
        switch code {
        case SSL_ERROR_ZERO_RETURN: return .handshakeFailed(reason: "peer sent close_notify during the handshake")
        case SSL_ERROR_SYSCALL: return .handshakeFailed(reason: "unexpected end of input")
        default: return .handshakeFailed(reason: "SSL_do_handshake failed (SSL_get_error \(code))")
        }
    }

    private func handshakeSucceeded(context: ChannelHandlerContext) {
        guard let ssl else { return }
        let verifyResult = Int(SSL_get_verify_result(ssl))
        let peer = SSL_get1_peer_certificate(ssl)
        defer { if let peer { X509_free(peer) } }

        var daneMatch: DANEMatch?
        if plan.applied == .dane {
            var usage: UInt8 = 0, selector: UInt8 = 0, matchingType: UInt8 = 0
            var data: UnsafePointer<UInt8>?
            var length = 0
            let depth = SSL_get0_dane_tlsa(ssl, &usage, &selector, &matchingType, &data, &length)
            if depth >= 0 {
                let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: length)) } ?? []
                daneMatch = DANEMatch(usage: usage, selector: selector, matchingType: matchingType,
                                      dataHex: HexCoding.encode(bytes), depth: Int(depth))
            }
        }
        // Belt and braces: SSL_VERIFY_PEER already aborts the handshake on a failed check.
        if plan.verifiesPeer {
            if verifyResult != Int(X509_V_OK) || peer == nil {
                let code = verifyResult != Int(X509_V_OK) ? verifyResult : Int(X509_V_ERR_UNSPECIFIED)
                presentedCertificate = OpenSSLText.presentedCertificate(ssl)
                fail(context: context, handshakeError: .authenticationFailed(verifyResult: code, reason: OpenSSLText.verifyResultText(code)),
                     connectionError: nil)
                return
            }
            if plan.applied == .dane && daneMatch == nil {
                let code = Int(X509_V_ERR_DANE_NO_MATCH)
                presentedCertificate = OpenSSLText.presentedCertificate(ssl)
                fail(context: context, handshakeError: .authenticationFailed(verifyResult: code, reason: OpenSSLText.verifyResultText(code)),
                     connectionError: nil)
                return
            }
        }

        var algorithmBits: Int32 = 0
        let cipherBits = SSL_get_current_cipher(ssl).map { Int(SSL_CIPHER_get_bits($0, &algorithmBits)) } ?? 0
        let info = TLSSessionInfo(
            protocolVersion: String(cString: SSL_get_version(ssl)),
            cipher: SSL_get_current_cipher(ssl).flatMap { SSL_CIPHER_get_name($0) }.map { String(cString: $0) } ?? "",
            cipherBits: cipherBits, algorithmBits: Int(algorithmBits),
            peerCertificateSubject: peer.flatMap { OpenSSLText.name(X509_get_subject_name($0)) },
            peerCertificateIssuer: peer.flatMap { OpenSSLText.name(X509_get_issuer_name($0)) },
            peerSPKISHA256: peer.flatMap { OpenSSLText.spkiSHA256($0) },
            verified: plan.verifiesPeer,
            verifyResult: verifyResult,
            verifyResultText: OpenSSLText.verifyResultText(verifyResult),
            daneMatch: daneMatch,
            authenticationApplied: plan.applied,
            unusableTLSARecords: plan.unusableRecords)

        state = .active
        // Writes held back during the handshake go first, then the caller hears of success.
        if flushRequested || !pendingWrites.isEmpty {
            flushRequested = false
            encryptPendingWrites(context: context)
        }
        completeHandshake(.success(info))
        // Records that arrived with the server's last flight (session tickets, early replies);
        // channelReadComplete follows, as this runs from channelRead.
        if state == .active {
            readPlaintext(context: context)
        }
    }

    /// Fails the handshake (or, after it, the connection): pending writes are failed, the alert
    /// OpenSSL produced is flushed, the channel closed, then the promise failed.
    private func fail(context: ChannelHandlerContext, handshakeError: TLSHandshakeError, connectionError: TLSConnectionError?) {
        let wasActive = state == .active || state == .closing
        guard state != .closed else { return }
        state = .closed
        if !wasActive { handshakeFailure = handshakeError }
        let writeError: Error = wasActive ? (connectionError ?? .readFailed(reason: "\(handshakeError)")) : handshakeError
        failPendingWrites(with: writeError)
        sendNetworkOutput(context: context, promise: nil)  // the alert, if OpenSSL made one
        if wasActive, let connectionError {
            context.fireErrorCaught(connectionError)
        }
        // Fail the promise before closing: closing runs channelInactive, which would report a
        // mere "connection closed" instead of the real reason.
        completeHandshake(.failure(handshakeError))
        context.close(promise: nil)
    }

    private func completeHandshake(_ result: Result<TLSSessionInfo, TLSHandshakeError>) {
        guard !promiseCompleted else { return }
        promiseCompleted = true
        switch result {
        case .success(let info): handshakePromise.succeed(info)
        case .failure(let error): handshakePromise.fail(error)
        }
    }

    // MARK: Data

    /// Appends network bytes to the read BIO (memory BIOs grow; this fails only when out of memory).
    private func feedNetworkInput(_ buffer: inout ByteBuffer) -> Bool {
        guard let readBIO else { return false }
        while buffer.readableBytes > 0 {
            let written = buffer.withUnsafeReadableBytes { raw in
                BIO_write(readBIO, raw.baseAddress, Int32(min(raw.count, Int(Int32.max))))
            }
            guard written > 0 else { return false }
            buffer.moveReaderIndex(forwardBy: Int(written))
        }
        return true
    }

    /// Decrypts what the read BIO holds and passes the plaintext on.
    private func readPlaintext(context: ChannelHandlerContext) {
        while state == .active, let ssl {
            var buffer = context.channel.allocator.buffer(capacity: Self.readChunkSize)
            var result: Int32 = 0
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: Self.readChunkSize) { raw in
                ERR_clear_error()
                result = SSL_read(ssl, raw.baseAddress, Int32(min(raw.count, Int(Int32.max))))
                return result > 0 ? Int(result) : 0
            }
            let code = result > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl, result)
            let reasons = code == SSL_ERROR_SSL || code == SSL_ERROR_SYSCALL ? OpenSSLErrors.drain() : []
            // SSL_read produces records too (key update answers, alerts).
            sendNetworkOutput(context: context, promise: nil)
            switch code {
            case SSL_ERROR_NONE:
                deliveredReads = true
                context.fireChannelRead(wrapInboundOut(buffer))
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
                return
            case SSL_ERROR_ZERO_RETURN:
                // The peer's close_notify: answer it and close.
                state = .closing
                failPendingWrites(with: ChannelError.ioOnClosedChannel)
                ERR_clear_error()
                _ = SSL_shutdown(ssl)
                ERR_clear_error()
                sendNetworkOutput(context: context, promise: nil)
                context.close(promise: nil)
                return
            default:
                let reason = reasons.isEmpty ? "SSL_read failed (SSL_get_error \(code))" : reasons.joined(separator: "; ")
                fail(context: context, handshakeError: .handshakeFailed(reason: reason), connectionError: .readFailed(reason: reason))
                return
            }
        }
    }

    /// Encrypts every pending write and sends the records, flushed.
    private func encryptPendingWrites(context: ChannelHandlerContext) {
        guard let ssl else { return }
        let writes = pendingWrites
        pendingWrites = []
        var promises: [EventLoopPromise<Void>] = []
        for (index, write) in writes.enumerated() {
            if let promise = write.promise { promises.append(promise) }
            guard write.data.readableBytes > 0 else { continue }
            var failure: String?
            write.data.withUnsafeReadableBytes { raw in
                var offset = 0
                while offset < raw.count {
                    ERR_clear_error()
                    let chunk = min(raw.count - offset, Int(Int32.max))
                    let result = SSL_write(ssl, raw.baseAddress! + offset, Int32(chunk))
                    if result > 0 {
                        offset += Int(result)
                    } else {
                        let code = SSL_get_error(ssl, result)
                        failure = OpenSSLErrors.message(fallback: "SSL_write failed (SSL_get_error \(code))")
                        return
                    }
                }
            }
            if let failure {
                let error = TLSConnectionError.writeFailed(reason: failure)
                for promise in promises { promise.fail(error) }
                for later in writes[(index + 1)...] { later.promise?.fail(error) }
                fail(context: context, handshakeError: .handshakeFailed(reason: failure), connectionError: error)
                return
            }
        }
        var combined: EventLoopPromise<Void>?
        if !promises.isEmpty {
            let promise = context.eventLoop.makePromise(of: Void.self)
            for target in promises { promise.futureResult.cascade(to: target) }
            combined = promise
        }
        sendNetworkOutput(context: context, promise: combined)
    }

    /// Moves everything OpenSSL has written to the write BIO onto the network, flushed.
    /// `promise` (if any) completes with that write, or at once when there was nothing to send.
    private func sendNetworkOutput(context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        guard let writeBIO else {
            promise?.succeed(())
            return
        }
        let pending = Int(tlsrelay_BIO_pending(writeBIO))
        guard pending > 0 else {
            promise?.succeed(())
            return
        }
        var buffer = context.channel.allocator.buffer(capacity: pending)
        while tlsrelay_BIO_pending(writeBIO) > 0 {
            let available = Int(tlsrelay_BIO_pending(writeBIO))
            let read = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: available) { raw in
                Int(max(0, BIO_read(writeBIO, raw.baseAddress, Int32(min(raw.count, Int(Int32.max))))))
            }
            if read == 0 { break }
        }
        context.writeAndFlush(wrapOutboundOut(buffer), promise: promise)
    }

    private func failPendingWrites(with error: Error) {
        let writes = pendingWrites
        pendingWrites = []
        flushRequested = false
        for write in writes { write.promise?.fail(error) }
    }
}

@available(*, unavailable)
extension OpenSSLHandler: Sendable {}
