/// When to try a deferred message again, and when to give up (RFC 5321 §4.5.4.1: retry
/// intervals of at least 30 minutes are suggested, give up after 4-5 days).
public struct RetrySchedule: Sendable, Equatable {
    /// Delay after the first failed attempt, seconds. Default 300 (Postfix `minimal_backoff_time`).
    public var minimumBackoff: Double = 300
    /// Longest delay between attempts, seconds. Default 4000 (Postfix `maximal_backoff_time`).
    public var maximumBackoff: Double = 4000
    /// Age after which pending recipients bounce with 5.4.7, seconds. Default 432000 (5 days).
    public var queueLifetime: Double = 432_000

    public init() {}

    public init(minimumBackoff: Double, maximumBackoff: Double, queueLifetime: Double) {
        self.minimumBackoff = minimumBackoff
        self.maximumBackoff = maximumBackoff
        self.queueLifetime = queueLifetime
    }

    /// The delay before attempt number `attempts + 1`, after `attempts` failed ones:
    /// `minimumBackoff * 2^(attempts-1)`, capped at `maximumBackoff`.
    public func delay(afterAttempts attempts: Int) -> Double {
        guard attempts > 0 else { return 0 }
        let exponent = min(attempts - 1, 30)
        return min(maximumBackoff, minimumBackoff * Double(1 << exponent))
    }

    /// True when a message that arrived at `arrival` has been queued too long at `now`.
    public func hasExpired(arrival: Double, now: Double) -> Bool {
        now - arrival >= queueLifetime
    }
}
