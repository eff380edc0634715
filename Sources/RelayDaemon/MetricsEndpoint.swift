import Logging
import Metrics
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import RelayConfig
import RelayMetrics

/// The Prometheus endpoint (`[metrics] listen`): `GET /metrics` answers the text exposition
/// format 0.0.4 with every family of `RelayMetrics` and its `# HELP` line; any other path is
/// 404, any other method 405. One request per connection (`Connection: close`); a connection
/// that sends no complete request within 10 s is closed; at most 16 connections at once (more
/// are closed at accept). It runs on the daemon's event loops without blocking them, so a slow
/// or malformed client cannot hold up delivery.
final class MetricsEndpoint: Sendable {
    let registry: PrometheusCollectorRegistry
    /// Sets the gauges read at scrape time (queue, caches); called before each exposition.
    let refresh: @Sendable () async -> Void
    private let channel = NIOLockedValueBox<Channel?>(nil)
    private let open = NIOLockedValueBox(0)
    static let maxConnections = 16

    init(registry: PrometheusCollectorRegistry, refresh: @escaping @Sendable () async -> Void) {
        self.registry = registry
        self.refresh = refresh
    }

    /// Makes the swift-metrics API record into a new Prometheus registry, with the histogram
    /// buckets of `RelayMetrics.buckets`. Call once per process, before anything records.
    static func bootstrap() -> PrometheusCollectorRegistry {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        for (name, buckets) in RelayMetrics.buckets {
            factory.durationHistogramBuckets[name] = buckets.map { .nanoseconds(Int64($0 * 1e9)) }
        }
        MetricsSystem.bootstrap(factory)
        return registry
    }

    /// The exposition text with a `# HELP` line before each family's `# TYPE` line.
    func exposition() -> String {
        let help = Dictionary(uniqueKeysWithValues: RelayMetrics.families.map { ($0.name, $0.help) })
        var out = ""
        for line in registry.emitToString().split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("# TYPE ") {
                let name = line.dropFirst(7).split(separator: " ").first.map(String.init) ?? ""
                if let text = help[name] { out += "# HELP \(name) \(text)\n" }
            }
            out += line
            out += "\n"
        }
        while out.hasSuffix("\n\n") { out.removeLast() }
        return out
    }

    /// Binds and serves.
    /// - Throws: the bind error (address in use, not local).
    func start(listen: SocketAddressText, group: EventLoopGroup) async throws {
        let endpoint = self
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let admitted = endpoint.open.withLockedValue { count -> Bool in
                        guard count < MetricsEndpoint.maxConnections else { return false }
                        count += 1
                        return true
                    }
                    guard admitted else {
                        channel.close(promise: nil)
                        return
                    }
                    channel.closeFuture.whenComplete { _ in endpoint.open.withLockedValue { $0 -= 1 } }
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: .seconds(10)))
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(MetricsRequestHandler(endpoint: endpoint))
                }
            }
        let bound = try await bootstrap.bind(to: SocketAddress(ipAddress: listen.address.description, port: listen.port)).get()
        channel.withLockedValue { $0 = bound }
    }

    /// Stops listening.
    func stop() async {
        let bound = channel.withLockedValue { value -> Channel? in
            defer { value = nil }
            return value
        }
        try? await bound?.close()
    }
}

/// One HTTP connection of the metrics endpoint.
private final class MetricsRequestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let endpoint: MetricsEndpoint
    private var head: HTTPRequestHead?
    private var answered = false

    init(endpoint: MetricsEndpoint) {
        self.endpoint = endpoint
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request):
            head = request
        case .body:
            break
        case .end:
            guard let head, !answered else { return }
            answered = true
            let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
            guard head.method == .GET || head.method == .HEAD else {
                respond(context: context, status: .methodNotAllowed, body: "only GET /metrics\n", head: head, extra: [("Allow", "GET, HEAD")])
                return
            }
            guard path == "/metrics" else {
                respond(context: context, status: .notFound, body: "not found: the metrics are at /metrics\n", head: head)
                return
            }
            let endpoint = self.endpoint
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let eventLoop = context.eventLoop
            Task {
                await endpoint.refresh()
                let text = endpoint.exposition()
                eventLoop.execute {
                    let (handler, context) = loopBound.value
                    handler.respond(context: context, status: .ok, body: text, head: head,
                                    contentType: "text/plain; version=0.0.4; charset=utf-8")
                }
            }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func respond(context: ChannelHandlerContext, status: HTTPResponseStatus, body: String, head: HTTPRequestHead,
                         contentType: String = "text/plain; charset=utf-8", extra: [(String, String)] = []) {
        guard context.channel.isActive else { return }
        var headers = HTTPHeaders([("Content-Type", contentType), ("Content-Length", "\(body.utf8.count)"), ("Connection", "close")])
        for (name, value) in extra { headers.add(name: name, value: value) }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD {
            var buffer = context.channel.allocator.buffer(capacity: body.utf8.count)
            buffer.writeString(body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}
