import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing
@testable import RelayHTTPS
@testable import RelayTLS

/// What the test server does with one request.
enum CannedAnswer: Sendable {
    /// These bytes, then close (close_notify first).
    case raw(String)
    /// Never answer.
    case silence
    /// These bytes as soon as the connection is up (a server that speaks first, in clear).
    case greeting(String)
}

/// Reads one HTTP request (head and a Content-Length body) on a TLS connection, records it and
/// answers with canned bytes.
private final class CannedHTTPServerHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let answer: CannedAnswer
    let received: NIOLockedValueBox<[String]>
    private var buffer: [UInt8] = []
    private var answered = false

    init(answer: CannedAnswer, received: NIOLockedValueBox<[String]>) {
        self.answer = answer
        self.received = received
    }

    func channelActive(context: ChannelHandlerContext) {
        if case .greeting(let text) = answer {
            var out = context.channel.allocator.buffer(capacity: text.utf8.count)
            out.writeString(text)
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        buffer += bytes.readBytes(length: bytes.readableBytes) ?? []
        let text = String(decoding: buffer, as: UTF8.self)
        guard !answered, let end = text.range(of: "\r\n\r\n") else { return }
        let head = text[..<end.lowerBound]
        let length = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
            .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
        guard text.utf8.count - text[..<end.upperBound].utf8.count >= length else { return }
        answered = true
        received.withLockedValue { $0.append(text) }
        guard case .raw(let response) = answer else { return }
        var out = context.channel.allocator.buffer(capacity: response.utf8.count)
        out.writeString(response)
        context.writeAndFlush(wrapOutboundOut(out)).whenComplete { _ in context.close(promise: nil) }
    }
}

/// `HTTPSClient` against a loopback HTTPS server made of the server role of our own TLS handler
/// and canned HTTP answers, with certificates of the throwaway test CA.
@Suite(.throwawayPKI, .timeLimit(.minutes(2)))
struct HTTPSClientTests {
    let pki: ThrowawayPKI

    init() throws {
        pki = try #require(ThrowawayPKI.current)
    }

    func serverContext(_ leaf: ThrowawayPKI.Leaf = .good) throws -> TLSServerContext {
        let path = pki.directory + "/\(leaf.rawValue)-chain.pem"
        var chain = try String(contentsOfFile: pki.certificateFile(leaf), encoding: .utf8)
        if let ca = pki.chainFile(leaf) { chain += try String(contentsOfFile: ca, encoding: .utf8) }
        try chain.write(toFile: path, atomically: true, encoding: .utf8)
        return try TLSServerContext(certificateChainFile: path, privateKeyFile: pki.keyFile(leaf))
    }

    /// Starts a server on 127.0.0.1; returns its channel, port and the requests it read.
    func server(_ answer: CannedAnswer, leaf: ThrowawayPKI.Leaf = .good, tls: Bool = true) async throws
        -> (Channel, Int, NIOLockedValueBox<[String]>) {
        let context = try serverContext(leaf)
        let received = NIOLockedValueBox<[String]>([])
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if tls {
                        let promise = channel.eventLoop.makePromise(of: TLSSessionInfo.self)
                        promise.futureResult.whenFailure { _ in }
                        try channel.pipeline.syncOperations.addHandler(OpenSSLHandler(serverContext: context, handshakeCompleted: promise))
                    }
                    try channel.pipeline.syncOperations.addHandler(CannedHTTPServerHandler(answer: answer, received: received))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return (channel, try #require(channel.localAddress?.port), received)
    }

    func client() throws -> HTTPSClient {
        HTTPSClient(group: MultiThreadedEventLoopGroup.singleton, tlsContext: try TLSClientContext(extraCAFile: pki.caFile),
                    userAgent: "tlsrelay-test")
    }

    func get(_ port: Int, host: String = "mx.example.test", path: String = "/.well-known/mta-sts.txt",
             timeout: Double = 10, limit: Int = 65536) async throws(HTTPSClientError) -> HTTPSResponse {
        let request = HTTPSRequest(method: .get, url: HTTPSURL(host: host, port: port, target: path))
        return try await (try! client()).send(request, to: "127.0.0.1", timeoutSeconds: timeout, maxBodyBytes: limit)
    }

    @Test("a GET over TLS verified for the URL's host: the request line, Host with its port, Connection: close; the whole body back")
    func getWithContentLength() async throws {
        let (server, port, received) = try await server(.raw("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nversion: 1\n"))
        defer { server.close(promise: nil) }
        let response = try await get(port)
        #expect(response.status == .ok)
        #expect(response.headers.first(name: "content-type") == "text/plain")
        #expect(String(decoding: response.body, as: UTF8.self) == "version: 1\n")
        let request = try #require(received.withLockedValue { $0 }.first)
        #expect(request.hasPrefix("GET /.well-known/mta-sts.txt HTTP/1.1\r\n"))
        #expect(request.contains("\r\nHost: mx.example.test:\(port)\r\n"))
        #expect(request.contains("\r\nConnection: close\r\n"))
        #expect(request.contains("\r\nUser-Agent: tlsrelay-test\r\n"))
    }

    @Test("chunked and close-delimited bodies are read to their end")
    func otherFramings() async throws {
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        let (first, port1, _) = try await server(.raw(chunked))
        defer { first.close(promise: nil) }
        #expect(String(decoding: try await get(port1).body, as: UTF8.self) == "hello world")
        let (second, port2, _) = try await server(.raw("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"))
        defer { second.close(promise: nil) }
        #expect(String(decoding: try await get(port2).body, as: UTF8.self) == "until the end")
    }

    @Test("a redirect is returned as it is, never followed (RFC 8461 §3.3)")
    func redirectNotFollowed() async throws {
        let (server, port, received) = try await server(
            .raw("HTTP/1.1 301 Moved Permanently\r\nLocation: https://mx.example.test/elsewhere\r\nContent-Length: 0\r\n\r\n"))
        defer { server.close(promise: nil) }
        let response = try await get(port)
        #expect(response.status == .movedPermanently)
        #expect(received.withLockedValue { $0.count } == 1)
    }

    @Test("a body over the limit is refused, whether its length is announced or not")
    func bodyTooLarge() async throws {
        let big = String(repeating: "x", count: 2000)
        for framing in ["Content-Length: 2000\r\n\r\n", "Connection: close\r\n\r\n"] {
            let (server, port, _) = try await server(.raw("HTTP/1.1 200 OK\r\n" + framing + big))
            defer { server.close(promise: nil) }
            await #expect(throws: HTTPSClientError.bodyTooLarge(limit: 1000)) { try await get(port, limit: 1000) }
        }
    }

    @Test("a POST sends its body with Content-Length")
    func post() async throws {
        let (server, port, received) = try await server(.raw("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"))
        defer { server.close(promise: nil) }
        let body = Array("report bytes \u{1}\u{2}".utf8)
        let request = HTTPSRequest(method: .post, url: try #require(HTTPSURL("https://mx.example.test:\(port)/tlsrpt/x?y=1")),
                                   headers: [("Content-Type", "application/tlsrpt+gzip")], body: body)
        let response = try await client().send(request, to: "127.0.0.1", timeoutSeconds: 10, maxBodyBytes: 100)
        #expect(response.status == .created)
        let text = try #require(received.withLockedValue { $0 }.first)
        #expect(text.hasPrefix("POST /tlsrpt/x?y=1 HTTP/1.1\r\n"))
        #expect(text.contains("\r\nContent-Length: \(body.count)\r\n"))
        #expect(text.contains("\r\nContent-Type: application/tlsrpt+gzip\r\n"))
        #expect(text.hasSuffix("\r\n\r\n" + String(decoding: body, as: UTF8.self)))
    }

    @Test("a certificate for another name, from another CA or self-signed fails the handshake; no request is sent",
          arguments: [(ThrowawayPKI.Leaf.wrongName, 62), (.otherCA, 19), (.selfSigned, 18), (.expired, 10)])
    func certificateFailures(leaf: ThrowawayPKI.Leaf, code: Int) async throws {
        let (server, port, received) = try await server(.raw("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), leaf: leaf)
        defer { server.close(promise: nil) }
        do {
            _ = try await get(port)
            Issue.record("a \(leaf) certificate was accepted")
        } catch {
            guard case .tls(.authenticationFailed(let verifyResult, _)) = error else {
                Issue.record("unexpected error \(error)")
                return
            }
            #expect(verifyResult == code)
        }
        try await Task.sleep(for: .milliseconds(100))
        #expect(received.withLockedValue { $0.isEmpty })
    }

    @Test("a server that does not speak TLS fails the handshake")
    func plaintextServer() async throws {
        let (server, port, received) = try await server(.greeting("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"), tls: false)
        defer { server.close(promise: nil) }
        do {
            _ = try await get(port, timeout: 5)
            Issue.record("a plaintext server was accepted")
        } catch {
            guard case .tls(.handshakeFailed) = error else { Issue.record("unexpected error \(error)"); return }
        }
        #expect(received.withLockedValue { $0.isEmpty })
    }

    @Test("a silent server ends the exchange at the bound")
    func silentServer() async throws {
        let (server, port, received) = try await server(.silence)
        defer { server.close(promise: nil) }
        let start = ContinuousClock.now
        await #expect(throws: HTTPSClientError.timedOut(seconds: 1)) { try await get(port, timeout: 1) }
        #expect(ContinuousClock.now - start < .seconds(5))
        #expect(received.withLockedValue { $0.count } == 1)
    }

    @Test("garbage instead of a status line is a malformed response")
    func malformed() async throws {
        let (server, port, _) = try await server(.raw("SMTP? 220 hello\r\n\r\n"))
        defer { server.close(promise: nil) }
        do {
            _ = try await get(port)
            Issue.record("garbage accepted")
        } catch {
            guard case .malformedResponse = error else { Issue.record("unexpected error \(error)"); return }
        }
    }

    @Test("a refused connection and an address that is not one")
    func connectFailures() async throws {
        let (server, port, _) = try await server(.silence)
        try await server.close()
        do {
            _ = try await get(port)
            Issue.record("connected to a closed port")
        } catch {
            guard case .connectFailed = error else { Issue.record("unexpected error \(error)"); return }
        }
        let request = HTTPSRequest(method: .get, url: HTTPSURL(host: "mx.example.test"))
        await #expect(throws: HTTPSClientError.invalidAddress("mx.example.test")) {
            try await client().send(request, to: "mx.example.test", timeoutSeconds: 1, maxBodyBytes: 1)
        }
    }

    @Test("https URLs: host, port and request target; everything else refused")
    func urls() {
        #expect(HTTPSURL("https://Reports.Example.COM/tlsrpt") == HTTPSURL(host: "reports.example.com", target: "/tlsrpt"))
        #expect(HTTPSURL("https://r.example:8443") == HTTPSURL(host: "r.example", port: 8443, target: "/"))
        #expect(HTTPSURL("https://r.example?x=1") == HTTPSURL(host: "r.example", target: "/?x=1"))
        #expect(HTTPSURL("https://r.example./a") == HTTPSURL(host: "r.example", target: "/a"))
        #expect(HTTPSURL("https://[::1]:444/a")?.hostHeader == "[::1]:444")
        #expect(HTTPSURL("https://r.example:443/a")?.hostHeader == "r.example")
        for bad in ["http://r.example/", "https://", "https:///a", "https://u@r.example/", "https://r.example:0/",
                    "https://r.example:99999/", "https://r.example:x/", "https://r.example/a b", "https://r.example/#f",
                    "https://[::1/", "mailto:a@b"] {
            #expect(HTTPSURL(bad) == nil, "\(bad)")
        }
    }
}
