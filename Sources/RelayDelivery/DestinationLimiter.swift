/// Caps simultaneous deliveries to one destination domain (Postfix's
/// `default_destination_concurrency_limit`), so one busy domain cannot take every connection
/// and a receiver is not flooded. Waiters are served in arrival order.
public actor DestinationLimiter {
    public let limit: Int
    private var active: [String: Int] = [:]
    private var waiting: [String: [CheckedContinuation<Void, Never>]] = [:]

    /// - Parameter limit: deliveries at once per destination (≥ 1).
    public init(limit: Int) {
        self.limit = max(1, limit)
    }

    /// Waits for a free slot for `destination`.
    public func acquire(_ destination: String) async {
        if active[destination, default: 0] < limit {
            active[destination, default: 0] += 1
            return
        }
        await withCheckedContinuation { waiting[destination, default: []].append($0) }
    }

    /// Frees a slot; the next waiter for `destination` (if any) takes it over.
    public func release(_ destination: String) {
        if var queue = waiting[destination], !queue.isEmpty {
            let next = queue.removeFirst()
            waiting[destination] = queue.isEmpty ? nil : queue
            next.resume()
            return
        }
        let count = active[destination, default: 1] - 1
        active[destination] = count > 0 ? count : nil
    }

    /// Deliveries running now for `destination`.
    public func running(_ destination: String) -> Int { active[destination, default: 0] }
}
