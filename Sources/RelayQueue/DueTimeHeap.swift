/// The messages waiting for a time, in a binary min-heap by due time (seconds since the epoch),
/// ties in insertion order. Finding and taking the next due message costs O(log n), so a wake-up
/// does not walk a million deferred messages.
///
/// Changing or removing an entry leaves its old heap slot behind as stale (checked against
/// `live`); the heap is compacted when stale slots outnumber live ones.
struct DueTimeHeap<ID: Hashable & Sendable>: Sendable {
    private struct Slot: Sendable {
        var due: Double
        var sequence: UInt64
        var id: ID
    }

    private var slots: [Slot] = []
    private var live: [ID: (due: Double, sequence: UInt64)] = [:]
    private var nextSequence: UInt64 = 0

    /// Messages waiting.
    var count: Int { live.count }

    /// The due time of `id`, nil when it is not waiting.
    func due(of id: ID) -> Double? { live[id]?.due }

    /// Every waiting id (unordered).
    var ids: Dictionary<ID, (due: Double, sequence: UInt64)>.Keys { live.keys }

    /// How many are due at `now` or earlier (O(n): for status lines, not for scheduling).
    func countDue(at now: Double) -> Int { live.values.reduce(0) { $0 + ($1.due <= now ? 1 : 0) } }

    /// Sets (or moves) the due time of `id`.
    mutating func set(_ id: ID, due: Double) {
        let sequence = nextSequence
        nextSequence += 1
        live[id] = (due, sequence)
        push(Slot(due: due, sequence: sequence, id: id))
        compactIfSparse()
    }

    /// Removes `id`; returns its due time, nil when it was not waiting.
    @discardableResult
    mutating func remove(_ id: ID) -> Double? {
        let due = live.removeValue(forKey: id)?.due
        compactIfSparse()
        return due
    }

    /// The earliest due time, nil when empty.
    mutating func earliest() -> Double? {
        dropStaleTop()
        return slots.first?.due
    }

    /// Takes the earliest message when it is due at `now`.
    mutating func popDue(at now: Double) -> ID? {
        dropStaleTop()
        guard let top = slots.first, top.due <= now else { return nil }
        popTop()
        live[top.id] = nil
        return top.id
    }

    /// Lowers every due time later than `latest` to `latest` (the clock stepped back), keeping
    /// the order among the others. O(n).
    mutating func cap(at latest: Double) {
        var changed = false
        for (id, entry) in live where entry.due > latest {
            live[id] = (latest, entry.sequence)
            changed = true
        }
        if changed { rebuild() }
    }

    /// Makes every waiting message due at `time` (flush of the whole queue), in their current order.
    mutating func makeAllDue(at time: Double) {
        let ordered = live.sorted { ($0.value.due, $0.value.sequence) < ($1.value.due, $1.value.sequence) }
        live = [:]
        slots = []
        for (id, _) in ordered {
            let sequence = nextSequence
            nextSequence += 1
            live[id] = (time, sequence)
            slots.append(Slot(due: time, sequence: sequence, id: id))
        }
    }

    // MARK: - Heap

    private static func precedes(_ a: Slot, _ b: Slot) -> Bool {
        a.due < b.due || (a.due == b.due && a.sequence < b.sequence)
    }

    private func isStale(_ slot: Slot) -> Bool { live[slot.id]?.sequence != slot.sequence }

    private mutating func dropStaleTop() {
        while let top = slots.first, isStale(top) { popTop() }
    }

    private mutating func compactIfSparse() {
        if slots.count > 64 && slots.count > 2 * live.count { rebuild() }
    }

    private mutating func rebuild() {
        slots = live.map { Slot(due: $0.value.due, sequence: $0.value.sequence, id: $0.key) }
        guard slots.count > 1 else { return }
        for index in stride(from: slots.count / 2 - 1, through: 0, by: -1) { siftDown(index) }
    }

    private mutating func push(_ slot: Slot) {
        slots.append(slot)
        var child = slots.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard Self.precedes(slots[child], slots[parent]) else { break }
            slots.swapAt(child, parent)
            child = parent
        }
    }

    private mutating func popTop() {
        let last = slots.removeLast()
        guard !slots.isEmpty else { return }
        slots[0] = last
        siftDown(0)
    }

    private mutating func siftDown(_ start: Int) {
        var parent = start
        while true {
            let left = 2 * parent + 1
            guard left < slots.count else { return }
            var smallest = left
            if left + 1 < slots.count, Self.precedes(slots[left + 1], slots[left]) { smallest = left + 1 }
            guard Self.precedes(slots[smallest], slots[parent]) else { return }
            slots.swapAt(smallest, parent)
            parent = smallest
        }
    }
}
