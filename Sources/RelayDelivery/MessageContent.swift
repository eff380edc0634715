import NIOConcurrencyHelpers

/// The content of one queued message (with our Received header), read from the spool the first
/// time a session of its round needs it and kept until the round ends. A delivery that waits
/// for a connection slot, or ends before connecting, holds no content in memory.
public final class MessageContent: Sendable {
    private let load: @Sendable () async throws -> [UInt8]
    private let cached = NIOLockedValueBox<[UInt8]?>(nil)

    /// - Parameter load: reads the content; called at most once per successful read.
    public init(load: @escaping @Sendable () async throws -> [UInt8]) {
        self.load = load
    }

    /// Content already in memory.
    public init(_ bytes: [UInt8]) {
        self.load = { bytes }
        cached.withLockedValue { $0 = bytes }
    }

    /// The content bytes.
    /// - Throws: what the loader throws (the queue file is unreadable or gone).
    public func bytes() async throws -> [UInt8] {
        if let bytes = cached.withLockedValue({ $0 }) { return bytes }
        let bytes = try await load()
        cached.withLockedValue { $0 = bytes }
        return bytes
    }
}
