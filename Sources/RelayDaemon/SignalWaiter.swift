import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// Waits for POSIX signals without a signal handler: the signals are ignored for the process
/// and delivered through Dispatch sources instead.
final class SignalWaiter: @unchecked Sendable {
    private let sources: [DispatchSourceSignal]
    private let stream: AsyncStream<Int32>
    private let continuation: AsyncStream<Int32>.Continuation

    init(signals: [Int32]) {
        var continuation: AsyncStream<Int32>.Continuation!
        stream = AsyncStream { continuation = $0 }
        self.continuation = continuation
        let queue = DispatchQueue(label: "tlsrelay.signals")
        sources = signals.map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler { [continuation] in continuation!.yield(number) }
            source.resume()
            return source
        }
    }

    /// The next signal received.
    func next() async -> Int32 {
        for await number in stream { return number }
        return 0
    }
}
