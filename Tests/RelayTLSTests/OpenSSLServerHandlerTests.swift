import Foundation
import NIOCore
import NIOPosix
import Testing
@testable import RelayTLS

/// Answers the first decrypted read with "echo: <bytes>" and closes (close_notify first).
private final class EchoOnceHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        let text = buffer.readString(length: buffer.readableBytes) ?? ""
        var out = context.channel.allocator.buffer(capacity: 64)
        out.writeString("echo: " + text)
        context.writeAndFlush(wrapOutboundOut(out)).whenComplete { _ in context.close(promise: nil) }
    }
}

/// The server role of `OpenSSLHandler` (inbound STARTTLS) and the loading of its certificate.
@Suite(.throwawayPKI, .timeLimit(.minutes(2)))
struct OpenSSLServerHandlerTests {
    let pki: ThrowawayPKI

    init() throws {
        pki = try #require(ThrowawayPKI.current)
    }

    /// The good leaf followed by its CA, as `tls_certificate_chain_file` holds it.
    func chainFile() throws -> String {
        let path = pki.directory + "/good-chain.pem"
        let chain = try String(contentsOfFile: pki.certificateFile(.good), encoding: .utf8) + String(contentsOfFile: pki.caFile, encoding: .utf8)
        try chain.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// A listener on 127.0.0.1 whose one connection runs the server role (and, with `echo`,
    /// answers the first read): the channel, its port and the server handshake's result.
    func listen(_ context: TLSServerContext, echo: Bool) async throws -> (Channel, Int, EventLoopFuture<TLSSessionInfo>) {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let handshake = loop.makePromise(of: TLSSessionInfo.self)
        let server = try await ServerBootstrap(group: loop)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(OpenSSLHandler(serverContext: context, handshakeCompleted: handshake))
                    if echo { try channel.pipeline.syncOperations.addHandler(EchoOnceHandler()) }
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return (server, try #require(server.localAddress?.port), handshake.futureResult)
    }

    @Test("our client, checking WebPKI against the test CA, completes a handshake with the server role and exchanges data")
    func handshake() async throws {
        let context = try TLSServerContext(certificateChainFile: chainFile(), privateKeyFile: pki.keyFile(.good))
        #expect(context.certificateSubject.contains("mx.example.test") && !context.certificateExpired)
        let (server, port, serverHandshake) = try await listen(context, echo: true)
        defer { server.close(promise: nil) }
        let connection = try await TestConnection.open(port: port, context: TLSClientContext(extraCAFile: pki.caFile),
                                                       authentication: .webPKI(hostName: "mx.example.test"), earlyWrite: "EHLO client")
        let client = try await connection.handshake.get()
        #expect(client.verified && client.protocolVersion == "TLSv1.3")
        let info = try await serverHandshake.get()
        #expect(info.protocolVersion == "TLSv1.3" && info.cipher == client.cipher && info.cipherBits >= 128 && info.algorithmBits >= 128)
        #expect(try await connection.received.get() == "echo: EHLO client")
    }

    @Test("a client that speaks no TLS fails the server handshake")
    func plaintextClient() async throws {
        let context = try TLSServerContext(certificateChainFile: chainFile(), privateKeyFile: pki.keyFile(.good))
        let (server, port, serverHandshake) = try await listen(context, echo: false)
        defer { server.close(promise: nil) }
        let client = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port).get()
        var buffer = client.allocator.buffer(capacity: 32)
        buffer.writeString("MAIL FROM:<a@example.org>\r\n")
        try await client.writeAndFlush(buffer)
        await #expect(throws: TLSHandshakeError.self) { try await serverHandshake.get() }
        client.close(promise: nil)
    }

    @Test("a bad chain or key names the file and OpenSSL's reason")
    func loadErrors() throws {
        let missing = pki.directory + "/missing.pem"
        #expect { try TLSServerContext(certificateChainFile: missing, privateKeyFile: pki.keyFile(.good)) } throws: { error in
            guard case .cannotLoadCertificateChain(let path, let reason)? = error as? TLSContextError else { return false }
            return path == missing && !reason.isEmpty && "\(error)".contains(missing)
        }
        let chain = try chainFile()
        #expect { try TLSServerContext(certificateChainFile: chain, privateKeyFile: pki.certificateFile(.good)) } throws: { error in
            guard case .cannotLoadPrivateKey(let path, _)? = error as? TLSContextError else { return false }
            return path == pki.certificateFile(.good)
        }
        #expect { try TLSServerContext(certificateChainFile: chain, privateKeyFile: pki.keyFile(.otherCA)) } throws: { error in
            guard case .keyDoesNotMatchCertificate(let key, let certificate, _)? = error as? TLSContextError else { return false }
            return key == pki.keyFile(.otherCA) && certificate == chain
        }
        let expired = try TLSServerContext(certificateChainFile: pki.certificateFile(.expired), privateKeyFile: pki.keyFile(.expired))
        #expect(expired.certificateExpired)
    }
}
