import ServiceLifecycle

/// One part of the running daemon under the `ServiceGroup`: `start` runs when the group starts
/// it (binding a socket, starting a loop), `body` — when there is one — runs until graceful
/// shutdown (it is cancelled then), and `stop` runs when the group shuts the service down.
/// The group starts services in order and shuts them down in reverse order, each after the
/// one started after it has stopped.
struct DaemonService: Service, CustomStringConvertible {
    let description: String
    var start: @Sendable () async throws -> Void = {}
    /// Work that lasts until shutdown (a loop); cancelled when graceful shutdown begins.
    var body: (@Sendable () async -> Void)?
    var stop: @Sendable () async -> Void = {}

    init(_ name: String, start: @escaping @Sendable () async throws -> Void = {}, body: (@Sendable () async -> Void)? = nil,
         stop: @escaping @Sendable () async -> Void = {}) {
        self.description = name
        self.start = start
        self.body = body
        self.stop = stop
    }

    func run() async throws {
        try await start()
        if let body {
            try? await cancelWhenGracefulShutdown { await body() }
        } else {
            try? await gracefulShutdown()
        }
        await stop()
    }
}
