import Foundation
import NIOCore
import NIOPosix
@testable import RelayTLS

/// A real `openssl s_server` on 127.0.0.1 with an ephemeral port. Its stdout and stderr are
/// collected (in the default mode it prints the application data it receives). Stop it with
/// `stop()` (in a `defer`).
final class OpenSSLServer: @unchecked Sendable {
    enum Mode {
        /// Prints received application data and (`-msg`) every TLS message; sends nothing by itself.
        case printReceived
        /// `-www`: answers "GET /" with an HTTP status page, then close_notify.
        case www
        /// `-rev`: sends every line back reversed; a line "CLOSE" ends the connection (close_notify).
        case reverse
    }

    struct StartFailure: Error, CustomStringConvertible {
        let output: String
        var description: String { "s_server did not start: \(output)" }
    }

    let port: Int
    private let process: Process
    private let input: Pipe
    private let output: LockedData

    private init(port: Int, process: Process, input: Pipe, output: LockedData) {
        self.port = port
        self.process = process
        self.input = input
        self.output = output
    }

    static func start(certificate: String, key: String, chain: String?, mode: Mode, extraArguments: [String] = []) throws -> OpenSSLServer {
        let process = Process()
        // s_server's own messages go through a stdio stream: line-buffer it (stdbuf execs openssl).
        process.executableURL = URL(fileURLWithPath: "/usr/bin/stdbuf")
        var arguments = ["-oL", "/usr/bin/openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", certificate, "-key", key]
        if let chain { arguments += ["-cert_chain", chain] }
        switch mode {
        case .www: arguments.append("-www")
        case .reverse: arguments.append("-rev")
        case .printReceived: arguments.append("-msg")  // also logs each record and alert received
        }
        process.arguments = arguments + extraArguments
        // s_server quits on end of input: keep a pipe open until stop().
        let input = Pipe()
        let outputPipe = Pipe()
        let output = LockedData()
        process.standardInput = input
        process.standardOutput = outputPipe
        process.standardError = outputPipe
        outputPipe.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if data.isEmpty {
                handle.readabilityHandler = nil
                output.markFinished()
            } else {
                output.append(data)
            }
        }
        try process.run()
        let server: OpenSSLServer
        let deadline = Date().addingTimeInterval(10)
        while true {
            let text = output.text
            if let range = text.range(of: "ACCEPT 127.0.0.1:") {
                let digits = text[range.upperBound...].prefix { $0.isNumber }
                if let port = Int(digits), text[range.upperBound...].dropFirst(digits.count).first == "\n" {
                    server = OpenSSLServer(port: port, process: process, input: input, output: output)
                    break
                }
            }
            if !process.isRunning || Date() > deadline {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
                throw StartFailure(output: text)
            }
            usleep(5_000)
        }
        return server
    }

    /// Everything s_server wrote so far.
    var outputText: String { output.text }

    /// Waits until the output contains `text` (true) or `seconds` passed (false).
    func waitForOutput(containing text: String, seconds: Double = 30) async -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if output.text.contains(text) { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return output.text.contains(text)
    }

    /// Kills s_server and waits for it. SIGKILL: children spawned by Foundation inherit the
    /// spawning thread's signal mask, in which SIGTERM is blocked.
    func stop() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        try? input.fileHandleForWriting.close()
    }
}

/// A TLS-less TCP server on 127.0.0.1 whose connections are served by `makeHandler`.
final class PlainServer: Sendable {
    let channel: Channel
    var port: Int { channel.localAddress!.port! }

    init(makeHandler: @escaping @Sendable () -> ChannelHandler) async throws {
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(makeHandler())
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    func stop() async {
        try? await channel.close()
    }
}

/// Closes the connection as soon as the client's first bytes (its ClientHello) arrive.
final class CloseOnFirstReadHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.close(promise: nil)
    }
}

/// Answers whatever arrives with a line of plaintext, as a confused SMTP server would; keeps the
/// connection open.
final class PlaintextAnswerHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let reply = context.channel.allocator.buffer(string: "500 5.5.1 this is not TLS\r\n")
        context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
    }
}

/// Collects the first TLS record (the ClientHello), hands it over and closes.
final class CaptureClientHelloHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private let promise: EventLoopPromise<[UInt8]>
    private var bytes: [UInt8] = []

    init(promise: EventLoopPromise<[UInt8]>) {
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        bytes += buffer.readBytes(length: buffer.readableBytes) ?? []
        if bytes.count >= 5, bytes.count >= 5 + (Int(bytes[3]) << 8 | Int(bytes[4])) {
            promise.succeed(bytes)
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(ChannelError.eof)
    }
}

/// Reads the server_name extension of a ClientHello record (RFC 8446 §4.1.2, RFC 6066 §3).
enum ClientHello {
    static func serverName(in record: [UInt8]) -> String? {
        var p = 5 + 4 + 2 + 32          // record header, handshake header, version, random
        func u8() -> Int? { guard p < record.count else { return nil }; defer { p += 1 }; return Int(record[p]) }
        func u16() -> Int? { guard let a = u8(), let b = u8() else { return nil }; return a << 8 | b }
        guard let sessionIDLength = u8() else { return nil }
        p += sessionIDLength
        guard let suitesLength = u16() else { return nil }
        p += suitesLength
        guard let compressionLength = u8() else { return nil }
        p += compressionLength
        guard let extensionsLength = u16() else { return nil }
        let end = p + extensionsLength
        while p + 4 <= end {
            guard let type = u16(), let length = u16() else { return nil }
            if type == 0 {
                // server_name_list length, name type (0 = host_name), name length, name
                guard u16() != nil, u8() == 0, let nameLength = u16(), p + nameLength <= record.count else { return nil }
                return String(decoding: record[p..<(p + nameLength)], as: UTF8.self)
            }
            p += length
        }
        return nil
    }
}

/// The application side of a test connection: optionally writes `earlyWrite` as soon as the
/// channel is active (so, while the handshake is under way), and collects the decrypted input
/// until the channel closes.
final class ProbeHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let earlyWrite: String?
    private let earlyWritePromise: EventLoopPromise<Void>
    private let receivedPromise: EventLoopPromise<String>
    private var received = ""

    init(earlyWrite: String?, earlyWritePromise: EventLoopPromise<Void>, receivedPromise: EventLoopPromise<String>) {
        self.earlyWrite = earlyWrite
        self.earlyWritePromise = earlyWritePromise
        self.receivedPromise = receivedPromise
    }

    func channelActive(context: ChannelHandlerContext) {
        if let earlyWrite {
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: earlyWrite)), promise: earlyWritePromise)
        } else {
            earlyWritePromise.succeed(())
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += String(buffer: unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        receivedPromise.succeed(received)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// One client connection through `OpenSSLHandler`.
struct TestConnection {
    let channel: Channel
    let handshake: EventLoopFuture<TLSSessionInfo>
    /// The early write's completion (succeeded at once when there was none).
    let earlyWrite: EventLoopFuture<Void>
    /// All decrypted input, when the channel has closed.
    let received: EventLoopFuture<String>

    static func open(port: Int, context: TLSClientContext, authentication: TLSPeerAuthentication,
                     serverName: String? = nil, earlyWrite: String? = nil) async throws -> TestConnection {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let handshake = loop.makePromise(of: TLSSessionInfo.self)
        let early = loop.makePromise(of: Void.self)
        let received = loop.makePromise(of: String.self)
        let channel: Channel
        do {
            channel = try await ClientBootstrap(group: loop)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(OpenSSLHandler(
                            context: context, authentication: authentication, serverName: serverName, handshakeCompleted: handshake))
                        try channel.pipeline.syncOperations.addHandler(ProbeHandler(
                            earlyWrite: earlyWrite, earlyWritePromise: early, receivedPromise: received))
                    }
                }
                .connect(host: "127.0.0.1", port: port).get()
        } catch {
            let failure = TLSHandshakeError.connectionClosed
            handshake.fail(failure)
            early.fail(failure)
            received.fail(failure)
            throw error
        }
        return TestConnection(channel: channel, handshake: handshake.futureResult, earlyWrite: early.futureResult,
                              received: received.futureResult)
    }

    /// The handshake's error (nil when it succeeded).
    func handshakeError() async -> TLSHandshakeError? {
        do {
            _ = try await handshake.get()
            return nil
        } catch let error as TLSHandshakeError {
            return error
        } catch {
            return .handshakeFailed(reason: "unexpected error type: \(error)")
        }
    }

    /// Waits until the channel is closed.
    func closed() async {
        try? await channel.closeFuture.get()
    }
}
