import Testing
@testable import RelayQueue

/// The queue manager with a test clock: message ids are Ints, failures Strings.
private typealias Manager = QueueManager<Int, String>

private func opens(_ actions: [Manager.Action]) -> [Int] {
    actions.compactMap { if case .open(let id) = $0 { return id } else { return nil } }
}

private func starts(_ actions: [Manager.Action]) -> [(Int, String)] {
    actions.compactMap { if case .start(let id, let destination) = $0 { return (id, destination) } else { return nil } }
}

private func suspends(_ actions: [Manager.Action]) -> [(Int, String, String)] {
    actions.compactMap { if case .suspend(let id, let destination, let failure) = $0 { return (id, destination, failure) } else { return nil } }
}

@Suite("Queue manager (test clock)")
struct QueueManagerTests {
    @Test("deferred messages open at their due time, earliest first, ties in id order; nextWake says when")
    func dueTimes() {
        var manager = Manager()
        manager.addDeferred(1, due: 300)
        manager.addDeferred(2, due: 100)
        manager.addDeferred(3, due: 100)
        #expect(opens(manager.nextActions(now: 50)).isEmpty)
        let firstWake = manager.nextWake()
        #expect(firstWake == 100)
        #expect(opens(manager.nextActions(now: 100)) == [2, 3])
        let secondWake = manager.nextWake()
        #expect(secondWake == 300)
        #expect(opens(manager.nextActions(now: 299)).isEmpty)
        #expect(opens(manager.nextActions(now: 301)) == [1])
        let lastWake = manager.nextWake()
        #expect(lastWake == nil)
        #expect(manager.place(of: 1) == .active)
    }

    @Test("fresh mail and due retries take turns: a retry storm delays new mail by at most one message")
    func freshInterleaved() {
        var limits = Manager.Limits()
        limits.activeLimit = 4
        var manager = Manager(limits: limits)
        for id in 100..<200 { manager.addDeferred(id, due: 10) }
        manager.addFresh(1)
        manager.addFresh(2)
        let first = opens(manager.nextActions(now: 20))
        #expect(first == [1, 100, 2, 101])
    }

    @Test("at most activeLimit rounds at once; a finished round makes room")
    func activeLimit() {
        var limits = Manager.Limits()
        limits.activeLimit = 2
        var manager = Manager(limits: limits)
        for id in 1...5 { manager.addFresh(id) }
        #expect(opens(manager.nextActions(now: 0)) == [1, 2])
        #expect(opens(manager.nextActions(now: 0)).isEmpty)
        manager.opened(1, destinations: [])
        manager.roundFinished(1, nextAttempt: nil)
        #expect(opens(manager.nextActions(now: 0)) == [3])
        #expect(manager.counts(now: 0).active == 4)
    }

    @Test("slow start: a destination begins at the initial window and grows by one per answered job, up to the limit")
    func slowStart() {
        var limits = Manager.Limits()
        limits.destinationConcurrency = 4
        limits.initialDestinationConcurrency = 2
        var manager = Manager(limits: limits)
        for id in 1...10 { manager.addFresh(id) }
        _ = manager.nextActions(now: 0)
        for id in 1...10 { manager.opened(id, destinations: ["busy.example"]) }
        #expect(starts(manager.nextActions(now: 0)).map(\.0) == [1, 2])
        manager.jobFinished(1, destination: "busy.example", .answered, now: 1)
        // Window 3: two more start (one freed + one grown).
        #expect(starts(manager.nextActions(now: 1)).map(\.0) == [3, 4])
        manager.jobFinished(2, destination: "busy.example", .answered, now: 2)
        manager.jobFinished(3, destination: "busy.example", .answered, now: 2)
        // Window 4 (the limit) with one running: three start.
        #expect(starts(manager.nextActions(now: 2)).map(\.0) == [5, 6, 7])
        #expect(manager.destination("busy.example")?.window == 4)
        manager.jobFinished(4, destination: "busy.example", .answered, now: 3)
        #expect(manager.destination("busy.example")?.window == 4)
    }

    @Test("a failure drops the window to 1; a second failure suspends: waiting jobs end deferred, no connection; then it resumes")
    func suspension() {
        var limits = Manager.Limits()
        limits.suspendTime = 60
        var manager = Manager(limits: limits)
        for id in 1...5 { manager.addFresh(id) }
        _ = manager.nextActions(now: 0)
        for id in 1...5 { manager.opened(id, destinations: ["dead.example"]) }
        #expect(starts(manager.nextActions(now: 0)).map(\.0) == [1, 2])
        manager.jobFinished(1, destination: "dead.example", .failed("4.4.1 connection refused"), now: 10)
        #expect(manager.destination("dead.example")?.window == 1)
        #expect(starts(manager.nextActions(now: 10)).isEmpty, "job 2 still runs: window 1 is full")
        manager.jobFinished(2, destination: "dead.example", .failed("4.4.1 connection refused"), now: 20)
        let actions = manager.nextActions(now: 20)
        #expect(starts(actions).isEmpty)
        let suspended = suspends(actions)
        #expect(suspended.map(\.0) == [3, 4, 5])
        #expect(suspended.allSatisfy { $0.2 == "4.4.1 connection refused" })
        for id in 3...5 { manager.jobFinished(id, destination: "dead.example", .suspended, now: 20) }
        #expect(manager.destination("dead.example")?.suspendedUntil == 80)
        let listed = manager.suspendedDestinations(now: 20)
        #expect(listed.map(\.name) == ["dead.example"] && listed.map(\.until) == [80] && listed.map(\.failure) == ["4.4.1 connection refused"])
        #expect(manager.suspendedDestinations(now: 80).isEmpty, "the suspension has ended at 80")
        // Mail to it during the suspension is deferred at once too.
        manager.addFresh(6)
        _ = manager.nextActions(now: 30)
        manager.opened(6, destinations: ["dead.example", "alive.example"])
        let mixed = manager.nextActions(now: 30)
        #expect(suspends(mixed).map(\.0) == [6])
        #expect(starts(mixed).map(\.1) == ["alive.example"], "the message's other destination is not held back")
        manager.jobFinished(6, destination: "dead.example", .suspended, now: 30)
        // After the suspension: the initial window again.
        manager.addFresh(7)
        _ = manager.nextActions(now: 81)
        manager.opened(7, destinations: ["dead.example"])
        #expect(starts(manager.nextActions(now: 81)).map(\.0) == [7])
        #expect(manager.destination("dead.example")?.window == 2)
    }

    @Test("one destination at its limit never holds back another: every destination with room starts in the same pass")
    func destinationsIndependent() {
        var limits = Manager.Limits()
        limits.destinationConcurrency = 1
        limits.initialDestinationConcurrency = 1
        var manager = Manager(limits: limits)
        for id in 1...30 { manager.addFresh(id) }
        _ = manager.nextActions(now: 0)
        for id in 1...25 { manager.opened(id, destinations: ["tarpit-\(id).example"]) }
        for id in 26...30 { manager.opened(id, destinations: ["slow.example"]) }
        manager.addFresh(31)
        _ = manager.nextActions(now: 1)
        manager.opened(31, destinations: ["healthy.example"])
        let started = starts(manager.nextActions(now: 1))
        #expect(started.contains { $0 == (31, "healthy.example") })
        #expect(started.filter { $0.1 == "slow.example" }.count == 0, "slow.example already runs one (26)")
    }

    @Test("the clock steps back: no retry waits longer than maximumWait from the new now")
    func clockBack() {
        var limits = Manager.Limits()
        limits.maximumWait = 4000
        var manager = Manager(limits: limits)
        _ = manager.nextActions(now: 1_000_000)
        manager.addDeferred(1, due: 1_000_300)
        manager.addDeferred(2, due: 1_003_000)
        // 30,000 s (about 8 hours) back.
        _ = manager.nextActions(now: 970_000)
        #expect(manager.place(of: 1) == .deferred(until: 974_000))
        #expect(manager.place(of: 2) == .deferred(until: 974_000))
        #expect(opens(manager.nextActions(now: 974_000)) == [1, 2], "their order is kept")
        // A jump forward makes everything due at once (nothing is lost).
        manager.addDeferred(3, due: 980_000)
        #expect(opens(manager.nextActions(now: 2_000_000)) == [3])
    }

    @Test("hold, release, flush, remove")
    func operatorRequests() {
        var manager = Manager()
        manager.addDeferred(1, due: 500)
        manager.addDeferred(2, due: 600)
        let held = manager.hold(1)
        #expect(held)
        #expect(manager.place(of: 1) == .held)
        #expect(opens(manager.nextActions(now: 700)) == [2])
        let heldActive = manager.hold(2)
        #expect(!heldActive, "a message in a round cannot be held")
        #expect(manager.flush(nil, now: 700) == 0, "held and active messages are not flushed")
        let released = manager.release(1)
        #expect(released)
        #expect(manager.place(of: 1) == .fresh)
        #expect(opens(manager.nextActions(now: 700)) == [1])
        manager.addDeferred(3, due: 10_000)
        manager.addDeferred(4, due: 20_000)
        #expect(manager.flush([4], now: 800) == 1)
        #expect(opens(manager.nextActions(now: 800)) == [4])
        #expect(manager.flush(nil, now: 800) == 1)
        #expect(opens(manager.nextActions(now: 800)) == [3])
        manager.addDeferred(5, due: 900)
        manager.remove(5)
        #expect(manager.place(of: 5) == nil)
        #expect(opens(manager.nextActions(now: 1000)).isEmpty)
        #expect(manager.counts(now: 1000) == (active: 4, deferred: 0, held: 0))
    }

    @Test("flush --domain: the index knows the destinations of messages seen in a round")
    func domainIndex() {
        var manager = Manager()
        manager.addFresh(1)
        manager.addDeferred(2, due: 5000)
        _ = manager.nextActions(now: 0)
        manager.opened(1, destinations: ["a.example", "b.example"])
        _ = manager.nextActions(now: 0)
        manager.jobFinished(1, destination: "a.example", .answered, now: 1)
        manager.jobFinished(1, destination: "b.example", .answered, now: 1)
        manager.roundFinished(1, nextAttempt: 600)
        let (known, unknown) = manager.deferred(inDomain: "b.example")
        #expect(known == [1])
        #expect(unknown == [2])
        #expect(manager.deferred(inDomain: "c.example").known.isEmpty)
    }

    @Test("the index returns 100,000 random due times in order, with moves and removals")
    func heapOrder() {
        var index = MessageIndex<Int>()
        var generator = SplitMix(seed: 11)
        var expected: [Int: Double] = [:]
        for id in 0..<100_000 {
            let due = Double(UInt32.random(in: 0...1_000_000, using: &generator))
            index.insert(id, .deferred(until: due))
            expected[id] = due
        }
        for id in stride(from: 0, to: 100_000, by: 7) {
            let due = Double(UInt32.random(in: 0...1_000_000, using: &generator))
            index.move(id, to: .deferred(until: due))
            expected[id] = due
        }
        for id in stride(from: 3, to: 100_000, by: 11) {
            index.remove(id)
            expected[id] = nil
        }
        #expect(index.deferredCount == expected.count)
        var last = -Double.infinity
        var outOfOrder = 0
        var unknown = 0
        while let id = index.popDue(at: .infinity) {
            guard let due = expected.removeValue(forKey: id) else { unknown += 1; continue }
            if due < last { outOfOrder += 1 }
            last = due
        }
        #expect(outOfOrder == 0)
        #expect(unknown == 0)
        #expect(expected.isEmpty)
        #expect(index.activeCount == 100_000 - Array(stride(from: 3, to: 100_000, by: 11)).count)
    }

    @Test("a NaN due time is due at once and blocks nothing behind it")
    func nanDueTime() {
        var index = MessageIndex<Int>()
        index.insert(1, .deferred(until: 10))
        index.insert(2, .deferred(until: .nan))
        index.insert(3, .deferred(until: 20))
        index.move(3, to: .deferred(until: .nan))
        #expect(index.popDue(at: 0) == 2)
        #expect(index.popDue(at: 0) == 3)
        #expect(index.popDue(at: 0) == nil)
        #expect(index.popDue(at: 10) == 1)
    }

    @Test("the index agrees with a dictionary over 200,000 random inserts, moves and removals")
    func indexAgainstModel() {
        var index = MessageIndex<Int>()
        var model: [Int: MessageIndex<Int>.Place] = [:]
        var generator = SplitMix(seed: 7)
        let places: [MessageIndex<Int>.Place] = [.fresh, .active, .held]
        func randomPlace() -> MessageIndex<Int>.Place {
            let pick = Int(generator.next() % 5)
            return pick < 3 ? places[pick] : .deferred(until: Double(generator.next() % 1000))
        }
        var mismatches = 0
        for step in 0..<200_000 {
            // Ids from a range that first grows and then shrinks, so the table grows and shrinks.
            let range = step < 100_000 ? 50_000 : 2_000
            let id = Int(generator.next() % UInt64(range))
            switch generator.next() % 4 {
            case 0, 1:
                let place = randomPlace()
                let inserted = index.insert(id, place)
                if inserted != (model[id] == nil) { mismatches += 1 }
                if inserted { model[id] = place }
            case 2:
                let place = randomPlace()
                if index.move(id, to: place) != (model[id] != nil) { mismatches += 1 }
                if model[id] != nil { model[id] = place }
            default:
                if (index.remove(id)?.place) != model.removeValue(forKey: id) { mismatches += 1 }
            }
            if step == 99_999 {
                for id in 2_000..<50_000 { if index.remove(id)?.place != model.removeValue(forKey: id) { mismatches += 1 } }
            }
        }
        for id in 0..<50_000 where index.place(of: id) != model[id] { mismatches += 1 }
        #expect(mismatches == 0)
        #expect(index.count == model.count)
        var deferred = model.compactMap { id, place -> (Double, Int)? in
            if case .deferred(let due) = place { return (due, id) } else { return nil }
        }
        deferred.sort { $0 < $1 }
        #expect(index.deferredCount == deferred.count)
        #expect(index.heldCount == model.values.filter { $0 == .held }.count)
        var popped: [(Double, Int)] = []
        while let due = index.earliestDue, let id = index.popDue(at: due) { popped.append((due, id)) }
        #expect(popped.map(\.1) == deferred.map(\.1), "deferred ones come out by due time, ties by id")
    }

    @Test("destination lists are shared and freed with their last message")
    func destinationListsShared() {
        var manager = Manager()
        for id in 1...3 { manager.addFresh(id) }
        _ = manager.nextActions(now: 0)
        for id in 1...3 { manager.opened(id, destinations: id == 3 ? ["b.example"] : ["a.example"]) }
        for id in 1...3 {
            manager.jobFinished(id, destination: id == 3 ? "b.example" : "a.example", .answered, now: 1)
            manager.roundFinished(id, nextAttempt: 600)
        }
        #expect(manager.deferred(inDomain: "a.example").known == [1, 2] || manager.deferred(inDomain: "a.example").known == [2, 1])
        manager.remove(1)
        manager.remove(2)
        #expect(manager.deferred(inDomain: "a.example").known.isEmpty)
        #expect(manager.deferred(inDomain: "b.example").known == [3])
    }
}

/// A small seeded generator, so that a failure repeats.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension Int: QueueManagerID {
    public static var unused: Int { 0 }
}
