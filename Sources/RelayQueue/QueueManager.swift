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
/// - a destination that fails again while its window is 1 is *suspended* for `suspendTime`
///   seconds: its waiting jobs end at once, deferred with its last failure, without a connection
///   (Postfix's "delivery temporarily suspended").
/// The limit per MX address and on connections overall is applied where the address is known
/// (`ConnectionSlots` in the delivery agent).
public struct QueueManager<ID: Hashable & Comparable & Sendable, Failure: Sendable>: Sendable {
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
    public enum Place: Sendable, Equatable {
        case fresh
        case deferred(until: Double)
        /// In a round (being read, or jobs waiting or running).
        case active
        case held
    }

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
    private var fresh: [ID] = []
    private var freshHead = 0
    private var freshSet: Set<ID> = []
    private var deferred = DueTimeHeap<ID>()
    private var active: Set<ID> = []
    private var held: Set<ID> = []
    private var destinations: [String: Destination] = [:]
    /// Destinations with waiting jobs, in round-robin order.
    private var rotation: [String] = []
    private var lastNow: Double?
    private var preferFresh = true
    /// Destinations of the messages seen in a round since start (for `flush --domain`).
    private var destinationsOf: [ID: [String]] = [:]

    public init(limits: Limits = Limits()) {
        self.limits = limits
    }

    // MARK: - Messages in and out

    /// A message that was never tried (new mail, a DSN, a released message): it opens in
    /// arrival order, alternating with due deferred ones.
    public mutating func addFresh(_ id: ID) {
        guard !contains(id) else { return }
        fresh.append(id)
        freshSet.insert(id)
    }

    /// A message that waits until `due` (seconds since the epoch; 0 = now).
    public mutating func addDeferred(_ id: ID, due: Double) {
        guard !contains(id) else { return }
        deferred.set(id, due: due)
    }

    /// A message on hold: it opens only after `release`.
    public mutating func addHeld(_ id: ID) {
        guard !contains(id) else { return }
        held.insert(id)
    }

    /// Forgets a message that is not in a round (deleted, or found gone when opened).
    public mutating func remove(_ id: ID) {
        if active.remove(id) != nil { destinationsOf[id] = nil; return }
        removeWaiting(id)
        held.remove(id)
        destinationsOf[id] = nil
    }

    /// Where `id` is, nil when unknown.
    public func place(of id: ID) -> Place? {
        if active.contains(id) { return .active }
        if held.contains(id) { return .held }
        if freshSet.contains(id) { return .fresh }
        if let due = deferred.due(of: id) { return .deferred(until: due) }
        return nil
    }

    /// The smallest id known in any place (for queue ids: the oldest message); O(n).
    public func minimumID() -> ID? {
        var smallest: ID?
        func consider(_ id: ID) { if smallest.map({ id < $0 }) ?? true { smallest = id } }
        freshSet.forEach(consider)
        deferred.ids.forEach(consider)
        active.forEach(consider)
        held.forEach(consider)
        return smallest
    }

    /// True when the message is known in any place.
    public func contains(_ id: ID) -> Bool { place(of: id) != nil }

    // MARK: - Operator requests

    /// Puts a waiting message on hold. Returns false when it is in a round or unknown.
    public mutating func hold(_ id: ID) -> Bool {
        guard !active.contains(id), contains(id) else { return false }
        removeWaiting(id)
        held.insert(id)
        return true
    }

    /// Releases a held message: it becomes fresh (opens at once). Returns false when not held.
    public mutating func release(_ id: ID) -> Bool {
        guard held.remove(id) != nil else { return false }
        fresh.append(id)
        freshSet.insert(id)
        return true
    }

    /// Makes deferred messages due now: all when `ids` is nil. Held and active ones stay.
    /// - Returns: how many were deferred and are due now.
    public mutating func flush(_ ids: [ID]?, now: Double) -> Int {
        guard let ids else {
            let count = deferred.count
            deferred.makeAllDue(at: -.infinity)
            return count
        }
        var count = 0
        for id in ids where deferred.due(of: id) != nil {
            deferred.set(id, due: -.infinity)
            count += 1
        }
        return count
    }

    /// The deferred messages with a pending recipient in `domain` as last seen in a round, and
    /// the deferred ones not opened since start (their destinations are unknown here).
    public func deferred(inDomain domain: String) -> (known: [ID], unknown: [ID]) {
        var known: [ID] = [], unknown: [ID] = []
        for id in deferred.ids {
            if let list = destinationsOf[id] {
                if list.contains(domain) { known.append(id) }
            } else {
                unknown.append(id)
            }
        }
        return (known, unknown)
    }

    /// Queue counts at `now`: in a round or due now; waiting for a later retry; on hold.
    public func counts(now: Double) -> (active: Int, deferred: Int, held: Int) {
        let dueNow = deferred.countDue(at: now)
        return (active.count + fresh.count - freshHead + dueNow, deferred.count - dueNow, held.count)
    }

    // MARK: - Scheduling

    /// The actions due at `now`: rounds to open, jobs to start or to suspend.
    public mutating func nextActions(now: Double) -> [Action] {
        if let lastNow, now < lastNow - 1 {
            // The clock stepped back: no retry waits more than maximumWait from now.
            deferred.cap(at: now + limits.maximumWait)
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
        while active.count < limits.activeLimit {
            let freshReady = freshHead < fresh.count
            let id: ID
            if preferFresh && freshReady {
                id = takeFresh()
                preferFresh = false
            } else if let due = deferred.popDue(at: now) {
                id = due
                preferFresh = true
            } else if freshReady {
                id = takeFresh()
            } else {
                break
            }
            active.insert(id)
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
        var earliest = active.count < limits.activeLimit ? deferred.earliest() : nil
        for destination in destinations.values where destination.hasWaiting {
            if let until = destination.suspendedUntil { earliest = min(earliest ?? until, until) }
        }
        return earliest
    }

    /// The round of `id` is open: its pending recipients are in `destinations` (lowercased
    /// domains). With none, call `roundFinished` at once.
    public mutating func opened(_ id: ID, destinations names: [String]) {
        guard active.contains(id) else { return }
        var unique: [String] = []
        for name in names where !unique.contains(name) { unique.append(name) }
        destinationsOf[id] = unique
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
        guard active.remove(id) != nil else { return }
        if let nextAttempt {
            deferred.set(id, due: nextAttempt)
        } else {
            destinationsOf[id] = nil
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

    private mutating func takeFresh() -> ID {
        let id = fresh[freshHead]
        freshHead += 1
        freshSet.remove(id)
        if freshHead > 1024 && freshHead * 2 > fresh.count {
            fresh.removeFirst(freshHead)
            freshHead = 0
        }
        return id
    }

    private mutating func removeWaiting(_ id: ID) {
        if freshSet.remove(id) != nil {
            if let index = fresh[freshHead...].firstIndex(of: id) { fresh.remove(at: index) }
        }
        deferred.remove(id)
    }
}
