/// The queue manager's decisions, without I/O and with the clock passed in (`now`, seconds
/// since the epoch), in the way of Postfix's qmgr. The `Scheduler` actor carries out its
/// actions: it reads messages, runs deliveries and saves records.
///
/// A message goes through rounds. A waiting message is *fresh* (never tried: it waits in
/// arrival order) or *deferred* (it waits for its retry time in a heap). A round *opens* when it
/// is due: the driver reads the message and reports its destinations (the domains of its
/// pending recipients). Each destination becomes a *job*, started when that destination has a
/// free slot. When the last job ended the driver reports the next retry time, or that the
/// message is gone.
///
/// Fairness (what keeps one slow or dead next hop from starving the rest):
/// - at most `activeLimit` rounds are open at once; fresh and deferred messages open
///   alternately, so a retry storm delays new mail by at most one round;
/// - jobs start round-robin across destinations, at most the destination's *window* at once;
///   a window starts at `initialDestinationConcurrency`, grows by one with every job in which
///   the destination answered, up to `destinationConcurrency`, and drops to 1 when a job fails
///   without any answer (slow start, as Postfix's `initial_destination_concurrency`);
/// - a destination whose job fails without any answer while its window is already 1 (at
///   once when `initialDestinationConcurrency` is 1) is *suspended* for `suspendTime` seconds:
///   its waiting jobs end at once, deferred with its last failure, without a connection
///   (Postfix's "delivery temporarily suspended").
/// The limit per MX address and on connections overall is applied where the address is known
/// (`ConnectionSlots` in the delivery agent).
public struct QueueManager<ID: QueueManagerID, Failure: Sendable>: Sendable {
    public struct Limits: Sendable, Equatable {
        /// Jobs at once to one destination domain. Default 5.
        public var destinationConcurrency = 5
        /// The window of a destination without history, or after a suspension. Default 2.
        public var initialDestinationConcurrency = 2
        /// Messages with an open round at once. Default 1000.
        public var activeLimit = 1000
        /// Seconds a destination stays suspended. Default 60.
        public var suspendTime: Double = 60
        /// The longest any retry waits from now, seconds (`max_backoff`): after the clock steps
        /// back, no message waits longer than this.
        public var maximumWait: Double = 4000

        public init() {}
    }

    /// What the driver must do.
    public enum Action: Sendable {
        /// Read the message and call `opened(_:destinations:now:)` (or `remove` when it is gone).
        case open(ID)
        /// Deliver the message's pending recipients of `destination`; then `jobFinished`.
        case start(ID, destination: String)
        /// The destination is suspended: end this job at once, its recipients deferred with
        /// `failure` and no connection made; then `jobFinished(..., .suspended)`.
        case suspend(ID, destination: String, failure: Failure)
    }

    /// How a job ended, for the destination's window.
    public enum JobResult: Sendable {
        /// The destination answered (a recipient delivered, bounced or deferred by a reply).
        case answered
        /// No answer at all (no connection, timeouts, session or policy failures), with the
        /// failure its waiting jobs get if the destination is suspended.
        case failed(Failure)
        /// Ended by `Action.suspend`.
        case suspended
    }

    /// Where a message is.
    public typealias Place = QueuePlace

    struct Destination: Sendable {
        var window: Int
        var running = 0
        var waiting: [ID] = []
        var waitingHead = 0
        var suspendedUntil: Double?
        var lastFailure: Failure?
        var hasWaiting: Bool { waitingHead < waiting.count }

        mutating func takeWaiting() -> ID {
            let id = waiting[waitingHead]
            waitingHead += 1
            if waitingHead > 32 && waitingHead * 2 > waiting.count {
                waiting.removeFirst(waitingHead)
                waitingHead = 0
            }
            return id
        }
    }

    public var limits: Limits
    /// Every known message: its place, due time and destination list.
    private var index = MessageIndex<ID>()
    /// The fresh messages in arrival order (from `freshHead` on).
    private var fresh: [ID] = []
    private var freshHead = 0
    private var destinations: [String: Destination] = [:]
    /// Destinations with waiting jobs, in round-robin order.
    private var rotation: [String] = []
    private var lastNow: Double?
    private var preferFresh = true
    /// Destinations of the messages seen in a round since start (for `flush --domain`).
    private var destinationLists = DestinationLists()

    public init(limits: Limits = Limits()) {
        self.limits = limits
    }

    // MARK: - Messages in and out

    /// A message that was never tried (new mail, a DSN, a released message): fresh messages
    /// open in the order they were added, alternating with due deferred ones.
    public mutating func addFresh(_ id: ID) {
        guard index.insert(id, .fresh) else { return }
        appendFresh(id)
    }

    /// A message that waits until `due` (seconds since the epoch; 0 = now).
    public mutating func addDeferred(_ id: ID, due: Double) {
        index.insert(id, .deferred(until: due))
    }

    /// A message on hold: it opens only after `release`.
    public mutating func addHeld(_ id: ID) {
        index.insert(id, .held)
    }

    /// Forgets a message that has no jobs queued or running: one deleted while fresh, held or
    /// deferred, or one found gone when opened (before `opened` queued its jobs).
    public mutating func remove(_ id: ID) {
        guard let removed = index.remove(id) else { return }
        if removed.place == .fresh { removeFresh(id) }
        destinationLists.release(removed.destinations)
    }

    /// Where `id` is, nil when unknown.
    public func place(of id: ID) -> Place? { index.place(of: id) }

    /// The smallest id known in any place (for queue ids: the oldest message); O(n).
    public func minimumID() -> ID? {
        var smallest: ID?
        index.forEach { id, _, _ in if smallest.map({ id < $0 }) ?? true { smallest = id } }
        return smallest
    }

    /// True when the message is known in any place.
    public func contains(_ id: ID) -> Bool { index.place(of: id) != nil }

    // MARK: - Operator requests

    /// Puts a waiting message on hold. Returns false when it is in a round or unknown.
    public mutating func hold(_ id: ID) -> Bool {
        guard let place = index.place(of: id), place != .active else { return false }
        if place == .fresh { removeFresh(id) }
        index.move(id, to: .held)
        return true
    }

    /// Releases a held message: it becomes fresh, behind the fresh messages already waiting.
    /// Returns false when not held.
    public mutating func release(_ id: ID) -> Bool {
        guard index.place(of: id) == .held else { return false }
        index.move(id, to: .fresh)
        appendFresh(id)
        return true
    }

    /// Makes deferred messages due now: all when `ids` is nil. Held and active ones stay.
    /// - Returns: how many were deferred and are due now.
    public mutating func flush(_ ids: [ID]?, now: Double) -> Int {
        guard let ids else {
            let count = index.deferredCount
            index.makeAllDue(at: -.infinity)
            return count
        }
        var count = 0
        for id in ids {
            guard case .deferred = index.place(of: id) else { continue }
            index.move(id, to: .deferred(until: -.infinity))
            count += 1
        }
        return count
    }

    /// The deferred messages with a pending recipient in `domain` as last seen in a round, and
    /// the deferred ones not opened since start (their destinations are unknown here).
    public func deferred(inDomain domain: String) -> (known: [ID], unknown: [ID]) {
        var known: [ID] = [], unknown: [ID] = []
        let matching = destinationLists.numbers(containing: domain)
        index.forEach { id, place, list in
            guard case .deferred = place else { return }
            if list == 0 {
                unknown.append(id)
            } else if matching.contains(list) {
                known.append(id)
            }
        }
        return (known, unknown)
    }

    /// Queue counts at `now`: in a round or due now; waiting for a later retry; on hold.
    public func counts(now: Double) -> (active: Int, deferred: Int, held: Int) {
        let dueNow = index.countDue(at: now)
        return (index.activeCount + index.freshCount + dueNow, index.deferredCount - dueNow, index.heldCount)
    }

    // MARK: - Scheduling

    /// The actions due at `now`: rounds to open, jobs to start or to suspend.
    public mutating func nextActions(now: Double) -> [Action] {
        if let lastNow, now < lastNow - 1 {
            // The clock stepped back: no retry waits more than maximumWait from now.
            index.capDue(at: now + limits.maximumWait)
            for (name, var destination) in destinations {
                if let until = destination.suspendedUntil, until > now + limits.suspendTime {
                    destination.suspendedUntil = now + limits.suspendTime
                    destinations[name] = destination
                }
            }
        }
        lastNow = now
        var actions: [Action] = []
        // Rounds: fresh and due deferred messages alternately.
        while index.activeCount < limits.activeLimit {
            let freshReady = freshHead < fresh.count
            let id: ID
            if preferFresh && freshReady {
                id = takeFresh()
                preferFresh = false
            } else if let due = index.popDue(at: now) {
                id = due
                preferFresh = true
            } else if freshReady {
                id = takeFresh()
            } else {
                break
            }
            actions.append(.open(id))
        }
        // Jobs: round-robin over the destinations with waiting jobs.
        var progress = true
        while progress {
            progress = false
            var index = 0
            while index < rotation.count {
                let name = rotation[index]
                guard var destination = destinations[name], destination.hasWaiting else {
                    rotation.remove(at: index)
                    continue
                }
                if let until = destination.suspendedUntil, until <= now {
                    destination.suspendedUntil = nil
                    destination.window = min(limits.initialDestinationConcurrency, limits.destinationConcurrency)
                }
                if destination.suspendedUntil != nil, let failure = destination.lastFailure {
                    while destination.hasWaiting {
                        actions.append(.suspend(destination.takeWaiting(), destination: name, failure: failure))
                    }
                } else if destination.running < destination.window {
                    destination.running += 1
                    actions.append(.start(destination.takeWaiting(), destination: name))
                    progress = true
                }
                destinations[name] = destination
                index += 1
            }
        }
        rotation.removeAll { destinations[$0]?.hasWaiting != true }
        if rotation.count > 1 { rotation.append(rotation.removeFirst()) }
        // Forget suspensions that ran out on destinations with nothing left.
        for (name, destination) in destinations
        where destination.running <= 0 && !destination.hasWaiting && (destination.suspendedUntil ?? now) <= now {
            destinations[name] = nil
        }
        return actions
    }

    /// The earliest time at which `nextActions` will have something new without any other
    /// event (a retry or a suspension coming due); nil when nothing waits for a time.
    public mutating func nextWake() -> Double? {
        var earliest = index.activeCount < limits.activeLimit ? index.earliestDue : nil
        for destination in destinations.values where destination.hasWaiting {
            if let until = destination.suspendedUntil { earliest = min(earliest ?? until, until) }
        }
        return earliest
    }

    /// The round of `id` is open: its pending recipients are in `destinations` (lowercased
    /// domains). With none, call `roundFinished` at once.
    public mutating func opened(_ id: ID, destinations names: [String]) {
        guard index.place(of: id) == .active else { return }
        var unique: [String] = []
        for name in names where !unique.contains(name) { unique.append(name) }
        destinationLists.release(index.setDestinations(id, destinationLists.retain(unique)))
        for name in unique {
            var destination = destinations[name] ?? Destination(window: min(limits.initialDestinationConcurrency, limits.destinationConcurrency))
            if !destination.hasWaiting { rotation.append(name) }
            destination.waiting.append(id)
            destinations[name] = destination
        }
    }

    /// One job ended.
    public mutating func jobFinished(_ id: ID, destination name: String, _ result: JobResult, now: Double) {
        guard var destination = destinations[name] else { return }
        switch result {
        case .answered:
            destination.running -= 1
            destination.window = min(limits.destinationConcurrency, destination.window + 1)
        case .failed(let failure):
            destination.running -= 1
            destination.lastFailure = failure
            if destination.window <= 1 {
                destination.suspendedUntil = now + limits.suspendTime
            }
            destination.window = 1
        case .suspended:
            break
        }
        if destination.running <= 0, !destination.hasWaiting, destination.suspendedUntil == nil {
            destinations[name] = nil
        } else {
            destinations[name] = destination
        }
    }

    /// Every job of the round of `id` ended: it waits until `nextAttempt`, or is gone (nil:
    /// delivered or bounced completely).
    public mutating func roundFinished(_ id: ID, nextAttempt: Double?) {
        guard index.place(of: id) == .active else { return }
        if let nextAttempt {
            index.move(id, to: .deferred(until: nextAttempt))
        } else if let removed = index.remove(id) {
            destinationLists.release(removed.destinations)
        }
    }

    /// The state of a destination (for tests and `status`): its window, running jobs, waiting
    /// jobs, and until when it is suspended.
    public func destination(_ name: String) -> (window: Int, running: Int, waiting: Int, suspendedUntil: Double?)? {
        destinations[name].map { ($0.window, $0.running, $0.waiting.count - $0.waitingHead, $0.suspendedUntil) }
    }

    /// Destinations suspended at `now` (Postfix's "delivery temporarily suspended"), soonest
    /// end first: the name, until when (seconds since the epoch) and the failure that suspended
    /// it, for `tlsrelayctl status`.
    public func suspendedDestinations(now: Double) -> [(name: String, until: Double, failure: Failure?)] {
        destinations.compactMap { name, destination in
            guard let until = destination.suspendedUntil, until > now else { return nil }
            return (name, until, destination.lastFailure)
        }.sorted { ($0.until, $0.name) < ($1.until, $1.name) }
    }

    // MARK: - Helpers

    private mutating func appendFresh(_ id: ID) {
        growByHalf(&fresh)
        fresh.append(id)
    }

    /// The next fresh message, now active.
    private mutating func takeFresh() -> ID {
        let id = fresh[freshHead]
        freshHead += 1
        index.move(id, to: .active)
        if freshHead > 1024 && freshHead * 2 > fresh.count {
            // Copied rather than shifted in place, so that a start-up's million fresh ids do not
            // keep their array's capacity once opened.
            fresh = Array(fresh[freshHead...])
            freshHead = 0
        }
        return id
    }

    /// Takes a fresh message out of the arrival order (hold or delete: O(n), an operator's request).
    private mutating func removeFresh(_ id: ID) {
        if let position = fresh[freshHead...].firstIndex(of: id) { fresh.remove(at: position) }
    }
}
