/// The messages waiting for a time, in a binary min-heap by due time (seconds since the epoch),
/// ties in id order (for queue ids: arrival order). Finding and taking the next due message costs O(log n), so a wake-up
/// does not walk a million deferred messages.
///
/// Changing or removing an entry leaves its old heap slot behind as stale (checked against
/// `live`: a slot whose due time is no longer its id's); the heap is compacted when stale slots
/// outnumber live ones. Two slots of one id with the same due time are both taken for live, which
/// is harmless: the first one taken clears the id, making the other stale.
///
/// Per waiting message: one slot (due time and id) and one dictionary entry (id and due time),
/// nothing else — about 60 bytes with a 16-byte id, which is what a million deferred messages cost.
struct DueTimeHeap<ID: Hashable & Comparable & Sendable>: Sendable {
    private struct Slot: Sendable {
        var due: Double
        var id: ID
    }

    private var slots: [Slot] = []
    private var live: [ID: Double] = [:]

    /// Messages waiting.
    var count: Int { live.count }

    /// The due time of `id`, nil when it is not waiting.
    func due(of id: ID) -> Double? { live[id] }

    /// Every waiting id (unordered).
    var ids: Dictionary<ID, Double>.Keys { live.keys }

    /// How many are due at `now` or earlier (O(n): for status lines, not for scheduling).
    func countDue(at now: Double) -> Int { live.values.reduce(0) { $0 + ($1 <= now ? 1 : 0) } }

    /// Sets (or moves) the due time of `id`.
    mutating func set(_ id: ID, due: Double) {
        if live.updateValue(due, forKey: id) == due { return }  // already there, same time
        push(Slot(due: due, id: id))
        compactIfSparse()
    }

    /// Removes `id`; returns its due time, nil when it was not waiting.
    @discardableResult
    mutating func remove(_ id: ID) -> Double? {
        let due = live.removeValue(forKey: id)
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
        for (id, due) in live where due > latest {
            live[id] = latest
            changed = true
        }
        if changed { rebuild() }
    }

    /// Makes every waiting message due at `time` (flush of the whole queue), oldest id first.
    mutating func makeAllDue(at time: Double) {
        live = live.mapValues { _ in time }
        rebuild()
    }

    // MARK: - Heap

    private static func precedes(_ a: Slot, _ b: Slot) -> Bool {
        a.due < b.due || (a.due == b.due && a.id < b.id)
    }

    private func isStale(_ slot: Slot) -> Bool { live[slot.id] != slot.due }

    private mutating func dropStaleTop() {
        while let top = slots.first, isStale(top) { popTop() }
    }

    private mutating func compactIfSparse() {
        if slots.count > 64 && slots.count > 2 * live.count { rebuild() }
    }

    private mutating func rebuild() {
        slots = live.map { Slot(due: $0.value, id: $0.key) }
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
