import NIOConcurrencyHelpers

/// Caps outbound SMTP sessions: at most `total` at once (`delivery.concurrency`) and at most
/// `perAddress` to one MX address (`delivery.address_concurrency`). A session holds its slot
/// from the TCP connect (or the take of a cached connection) to the end of its transaction.
///
/// Waiters are served in arrival order, except that a waiter for a full address never holds up
/// one for another address: so MX addresses that accept TCP and never answer (a tarpit shared by
/// many domains) take at most `perAddress` sessions, and mail to every other host keeps
/// flowing. A waiting task that is cancelled (shutdown) leaves the line at once.
public final class ConnectionSlots: Sendable {
    private struct Waiter {
        let ticket: UInt64
        let address: String
        let continuation: CheckedContinuation<Bool, Never>
    }

    private struct State {
        var running = 0
        var perAddress: [String: Int] = [:]
        var waiters: [Waiter] = []
        var nextTicket: UInt64 = 0
    }

    public let total: Int
    public let perAddress: Int
    private let state = NIOLockedValueBox(State())

    /// - Parameters:
    ///   - total: sessions at once (≥ 1).
    ///   - perAddress: sessions at once to one address (≥ 1).
    public init(total: Int, perAddress: Int) {
        self.total = max(1, total)
        self.perAddress = max(1, perAddress)
    }

    /// Waits for a slot to `address`.
    /// - Returns: false when the task was cancelled while waiting (no slot is held then).
    public func acquire(_ address: String) async -> Bool {
        let ticket: UInt64? = state.withLockedValue { state in
            if state.waiters.isEmpty || !state.waiters.contains(where: { $0.address == address }),
               state.running < total, state.perAddress[address, default: 0] < perAddress {
                state.running += 1
                state.perAddress[address, default: 0] += 1
                return nil
            }
            state.nextTicket += 1
            return state.nextTicket
        }
        guard let ticket else { return true }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let resumeNow: Bool = state.withLockedValue { state in
                    if Task.isCancelled { return true }
                    state.waiters.append(Waiter(ticket: ticket, address: address, continuation: continuation))
                    return false
                }
                if resumeNow { continuation.resume(returning: false) }
                self.grant()
            }
        } onCancel: {
            let waiter: Waiter? = state.withLockedValue { state in
                guard let index = state.waiters.firstIndex(where: { $0.ticket == ticket }) else { return nil }
                return state.waiters.remove(at: index)
            }
            waiter?.continuation.resume(returning: false)
        }
    }

    /// Frees a slot to `address` and hands it on to the first waiter that may have it.
    public func release(_ address: String) {
        state.withLockedValue { state in
            state.running -= 1
            let count = state.perAddress[address, default: 1] - 1
            state.perAddress[address] = count > 0 ? count : nil
        }
        grant()
    }

    /// Sessions running now, in total and to `address`.
    public func running(_ address: String? = nil) -> Int {
        state.withLockedValue { state in address.map { state.perAddress[$0, default: 0] } ?? state.running }
    }

    private func grant() {
        let ready: [CheckedContinuation<Bool, Never>] = state.withLockedValue { state in
            var ready: [CheckedContinuation<Bool, Never>] = []
            var index = 0
            while index < state.waiters.count, state.running < total {
                let waiter = state.waiters[index]
                if state.perAddress[waiter.address, default: 0] < perAddress {
                    state.running += 1
                    state.perAddress[waiter.address, default: 0] += 1
                    state.waiters.remove(at: index)
                    ready.append(waiter.continuation)
                } else {
                    index += 1
                }
            }
            return ready
        }
        for continuation in ready { continuation.resume(returning: true) }
    }
}
