import NIOCore
import NIOHTTP1
import NIOPosix
import RelayTLS

/// One HTTPS request (HTTP/1.1, RFC 9112) to one host.
public struct HTTPSRequest: Sendable {
    public enum Method: String, Sendable {
        case get = "GET"
        case post = "POST"
    }

    public var method: Method
    public var url: HTTPSURL
    /// Extra header fields. `Host`, `Connection: close` and, with a body, `Content-Length` are
    /// added by the client.
    public var headers: [(name: String, value: String)]
    /// The request body (sent only for `.post`).
    public var body: [UInt8]

    public init(method: Method, url: HTTPSURL, headers: [(name: String, value: String)] = [], body: [UInt8] = []) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
    }
}

/// A complete response: status, header fields and the whole body (never more than the limit the
/// request was sent with).
public struct HTTPSResponse: Sendable {
    public let status: HTTPResponseStatus
    public let headers: HTTPHeaders
    public let body: [UInt8]

    public init(status: HTTPResponseStatus, headers: HTTPHeaders, body: [UInt8]) {
        self.status = status
        self.headers = headers
        self.body = body
    }
}

/// Why an HTTPS exchange produced no complete response.
public enum HTTPSClientError: Error, Sendable, Equatable, CustomStringConvertible {
    /// `address` is not an IPv4 or IPv6 address literal.
    case invalidAddress(String)
    /// The TCP connection could not be made (refused, unreachable, connect timeout).
    case connectFailed(address: String, port: Int, reason: String)
    /// The TLS handshake failed; `.authenticationFailed` is a certificate that does not pass the
    /// WebPKI check (RFC 6125 name, chain to a trusted CA, dates). No request byte was sent.
    case tls(TLSHandshakeError)
    /// The whole exchange took longer than the bound, seconds.
    case timedOut(seconds: Double)
    /// The response body is longer than the limit, bytes.
    case bodyTooLarge(limit: Int)
    /// The server's bytes are not an HTTP/1.1 response.
    case malformedResponse(reason: String)
    /// The connection ended (or TLS failed after the handshake) before the response was complete.
    case connectionClosed(reason: String)

    public var description: String {
        switch self {
        case .invalidAddress(let address): return "\(address) is not an IP address"
        case .connectFailed(let address, let port, let reason): return "cannot connect to \(address) port \(port): \(reason)"
        case .tls(let error): return error.description
        case .timedOut(let seconds): return "no complete response within \(Int(seconds)) seconds"
        case .bodyTooLarge(let limit): return "response body larger than \(limit) bytes"
        case .malformedResponse(let reason): return "malformed HTTP response: \(reason)"
        case .connectionClosed(let reason): return "connection closed before the response was complete: \(reason)"
        }
    }
}

/// HTTPS over the system OpenSSL: the MTA-STS policy fetch (RFC 8461 §3.3) and the TLS-RPT
/// report POST (RFC 8460 §5.4).
///
/// One connection per request, `Connection: close`, SNI and a WebPKI check (RFC 6125 host name,
/// a chain to the trusted CAs of the shared `TLSClientContext`: the system store plus
/// `delivery.tls_ca_file`) of the URL's host, TLS 1.2 at least. Redirects are never followed:
/// a 3xx is returned like any other status. The connection goes to the address the caller
/// resolved (through the validating resolver), never to a name the system's resolver looks up.
public final class HTTPSClient: Sendable {
    private let group: any EventLoopGroup
    private let tlsContext: TLSClientContext
    /// The `User-Agent` header field value.
    public let userAgent: String

    /// - Parameters:
    ///   - group: the event loops connections run on.
    ///   - tlsContext: the shared TLS client context (trusted CAs).
    public init(group: any EventLoopGroup, tlsContext: TLSClientContext, userAgent: String = "tlsrelay") {
        self.group = group
        self.tlsContext = tlsContext
        self.userAgent = userAgent
    }

    /// Sends `request` to `address` (IPv4 or IPv6 literal) on the URL's port, naming and verifying
    /// the URL's host, and reads the whole response.
    /// - Parameters:
    ///   - timeoutSeconds: bound on the whole exchange: connect, handshake, request, response.
    ///   - maxBodyBytes: the longest body accepted, bytes.
    /// - Returns: the response, whatever its status.
    /// - Throws: `HTTPSClientError`.
    public func send(_ request: HTTPSRequest, to address: String, timeoutSeconds: Double,
                     maxBodyBytes: Int) async throws(HTTPSClientError) -> HTTPSResponse {
        let socketAddress: SocketAddress
        do {
            socketAddress = try SocketAddress(ipAddress: address, port: request.url.port)
        } catch {
            throw .invalidAddress(address)
        }
        let loop = group.next()
        let handshake = loop.makePromise(of: TLSSessionInfo.self)
        let response = loop.makePromise(of: HTTPSResponse.self)
        let head = Self.head(for: request, userAgent: userAgent)
        let context = tlsContext
        let host = request.url.host
        let body = request.method == .post ? request.body : []
        let timeout = TimeAmount.nanoseconds(Int64(max(0.001, timeoutSeconds) * 1_000_000_000))
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let operations = channel.pipeline.syncOperations
                    try operations.addHandler(OpenSSLHandler(context: context, authentication: .webPKI(hostName: host),
                                                             serverName: host, handshakeCompleted: handshake))
                    try operations.addHTTPClientHandlers()
                    try operations.addHandler(HTTPSExchangeHandler(head: head, body: body, maxBodyBytes: maxBodyBytes, promise: response))
                }
            }
        let channel: Channel
        do {
            channel = try await bootstrap.connect(to: socketAddress).get()
        } catch {
            handshake.fail(TLSHandshakeError.connectionClosed)
            response.fail(HTTPSClientError.connectionClosed(reason: "not connected"))
            throw .connectFailed(address: address, port: request.url.port, reason: "\(error)")
        }
        let deadline = loop.scheduleTask(in: timeout) {
            response.fail(HTTPSClientError.timedOut(seconds: timeoutSeconds))
            channel.close(promise: nil)
        }
        let result: Result<HTTPSResponse, any Error>
        do {
            result = .success(try await response.futureResult.get())
        } catch {
            result = .failure(error)
        }
        deadline.cancel()
        channel.close(promise: nil)
        switch result {
        case .success(let value):
            return value
        case .failure(let error):
            // A failed handshake closes the channel, which the exchange sees as a closed
            // connection: the handshake's own error says why.
            if case .failure(let tlsError as TLSHandshakeError) = await handshake.futureResult.completedResult(),
               tlsError != .connectionClosed {
                throw .tls(tlsError)
            }
            if let error = error as? HTTPSClientError { throw error }
            throw .connectionClosed(reason: "\(error)")
        }
    }

    static func head(for request: HTTPSRequest, userAgent: String) -> HTTPRequestHead {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: request.url.hostHeader)
        headers.add(name: "User-Agent", value: userAgent)
        for field in request.headers { headers.add(name: field.name, value: field.value) }
        headers.add(name: "Connection", value: "close")
        if request.method == .post { headers.add(name: "Content-Length", value: String(request.body.count)) }
        return HTTPRequestHead(version: .http1_1, method: request.method == .post ? .POST : .GET,
                               uri: request.url.target, headers: headers)
    }
}

extension EventLoopFuture {
    /// The future's result, awaited.
    fileprivate func completedResult() async -> Result<Value, any Error> where Value: Sendable {
        do {
            return .success(try await self.get())
        } catch {
            return .failure(error)
        }
    }
}

/// Writes the request once the channel is active (the TLS handler holds it back until the
/// handshake succeeded) and collects the response up to the body limit.
private final class HTTPSExchangeHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    private let head: HTTPRequestHead
    private let body: [UInt8]
    private let maxBodyBytes: Int
    private let promise: EventLoopPromise<HTTPSResponse>
    private var responseHead: HTTPResponseHead?
    private var received: [UInt8] = []
    private var done = false

    init(head: HTTPRequestHead, body: [UInt8], maxBodyBytes: Int, promise: EventLoopPromise<HTTPSResponse>) {
        self.head = head
        self.body = body
        self.maxBodyBytes = maxBodyBytes
        self.promise = promise
    }

    func channelActive(context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if !body.isEmpty {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            responseHead = head
        case .body(var buffer):
            guard received.count + buffer.readableBytes <= maxBodyBytes else {
                finish(context: context, .failure(HTTPSClientError.bodyTooLarge(limit: maxBodyBytes)))
                return
            }
            received += buffer.readBytes(length: buffer.readableBytes) ?? []
        case .end:
            guard let responseHead else {
                finish(context: context, .failure(HTTPSClientError.malformedResponse(reason: "no status line")))
                return
            }
            finish(context: context, .success(HTTPSResponse(status: responseHead.status, headers: responseHead.headers, body: received)))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(context: context, .failure(HTTPSClientError.connectionClosed(reason: responseHead == nil ? "no response" : "response incomplete")))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is HTTPParserError {
            finish(context: context, .failure(HTTPSClientError.malformedResponse(reason: "\(error)")))
        } else {
            finish(context: context, .failure(HTTPSClientError.connectionClosed(reason: "\(error)")))
        }
    }

    private func finish(context: ChannelHandlerContext, _ result: Result<HTTPSResponse, any Error>) {
        guard !done else { return }
        done = true
        promise.completeWith(result)
        context.close(promise: nil)
    }
}
