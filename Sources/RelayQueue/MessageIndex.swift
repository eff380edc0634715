/// What the queue manager's index needs of a message id besides hashing and order.
public protocol QueueManagerID: Hashable, Comparable, Sendable {
    /// Any value of the type: it fills the index's empty slots and is never looked up.
    static var unused: Self { get }
}

extension QueueID: QueueManagerID {
    public static let unused = QueueID(microseconds: 0, random: 0)
}

/// Where the queue manager has a message.
public enum QueuePlace: Sendable, Equatable {
    /// Never tried; waits for a round in arrival order.
    case fresh
    /// Waits until a due time (seconds since the epoch).
    case deferred(until: Double)
    /// In a round (being read, or jobs waiting or running).
    case active
    /// On hold until released.
    case held
}

/// Every message the queue manager knows, by id: where it is (fresh, in a round, held, or
/// deferred until a due time) and which destination list it was last seen with.
///
/// Built for a million messages in little memory: an open-addressed hash table (linear
/// probing, deletion by backward shift, at most 80 % full, grown by half) of 20-byte entries
/// for a `QueueID`, and a binary min-heap of the deferred ones by due time (seconds since the
/// epoch) as two arrays of 12 bytes a message, ties in id order (for queue ids: arrival order).
/// A table entry holds its heap position and a heap element its table slot, so moving or
/// removing a deferred message costs O(log n) (plus, amortised O(1), the table's occasional
/// shrink) and leaves nothing stale behind. Together about 40–55 bytes per deferred message
/// while the queue grows; after many removals up to about twice that, until the table (below
/// 20 % full) and the heap's arrays (below 25 %) shrink.
struct MessageIndex<ID: QueueManagerID>: Sendable {
    typealias Place = QueuePlace

    private struct Entry: Sendable {
        var id: ID
        /// `empty`, `fresh`, `active`, `held`, or `deferredBase` + its position in the heap.
        var state: UInt32
        /// The destination list it was last opened with (0: not opened since start).
        var destinations: UInt32
    }

    private static var empty: UInt32 { 0 }
    private static var fresh: UInt32 { 1 }
    private static var active: UInt32 { 2 }
    private static var held: UInt32 { 3 }
    private static var deferredBase: UInt32 { 4 }

    private var entries: [Entry] = []
    /// Messages known.
    private(set) var count = 0
    private(set) var freshCount = 0
    private(set) var activeCount = 0
    private(set) var heldCount = 0
    /// The heap of deferred messages: due time and table slot at each position.
    private var heapDue: [Double] = []
    private var heapSlot: [UInt32] = []

    var deferredCount: Int { heapDue.count }

    // MARK: - Lookup and change

    /// Where `id` is, nil when unknown.
    func place(of id: ID) -> Place? {
        slot(of: id).map { place(at: $0) }
    }

    /// The destination list `id` was last opened with; 0 when none or unknown.
    func destinations(of id: ID) -> UInt32 {
        slot(of: id).map { entries[$0].destinations } ?? 0
    }

    /// Adds an unknown message at `place`. Returns false (and changes nothing) when known.
    @discardableResult
    mutating func insert(_ id: ID, _ place: Place) -> Bool {
        guard slot(of: id) == nil else { return false }
        if (count + 1) * 5 > entries.count * 4 { resize(to: max(16, entries.count + entries.count / 2)) }
        var index = home(of: id)
        while entries[index].state != Self.empty { index = next(index) }
        entries[index] = Entry(id: id, state: Self.empty, destinations: 0)
        count += 1
        enter(place, slot: index)
        return true
    }

    /// Moves a known message to `place` (a deferred one to another due time). Returns false
    /// when `id` is unknown.
    @discardableResult
    mutating func move(_ id: ID, to place: Place) -> Bool {
        guard let index = slot(of: id) else { return false }
        if case .deferred(let due) = place, entries[index].state >= Self.deferredBase {
            let position = Int(entries[index].state - Self.deferredBase)
            heapDue[position] = Self.ordered(due)
            if !siftUp(position) { siftDown(position) }
            return true
        }
        leave(slot: index)
        enter(place, slot: index)
        return true
    }

    /// Sets the destination list of a known message; returns the one it replaces (0: none).
    mutating func setDestinations(_ id: ID, _ list: UInt32) -> UInt32 {
        guard let index = slot(of: id) else { return 0 }
        let old = entries[index].destinations
        entries[index].destinations = list
        return old
    }

    /// Forgets `id`; returns where it was and its destination list, nil when unknown.
    @discardableResult
    mutating func remove(_ id: ID) -> (place: Place, destinations: UInt32)? {
        guard let index = slot(of: id) else { return nil }
        let removed = (place(at: index), entries[index].destinations)
        leave(slot: index)
        deleteEntry(at: index)
        if entries.count > 1024 && count * 5 < entries.count {
            resize(to: max(16, count * 2))
        }
        return removed
    }

    /// Calls `body` with every known message, its place and destination list (table order).
    func forEach(_ body: (ID, Place, UInt32) -> Void) {
        for index in entries.indices where entries[index].state != Self.empty {
            body(entries[index].id, place(at: index), entries[index].destinations)
        }
    }

    // MARK: - Deferred messages by due time

    /// The earliest due time of a deferred message, nil when none.
    var earliestDue: Double? { heapDue.first }

    /// Takes the deferred message due first when it is due at `now`: it becomes active.
    mutating func popDue(at now: Double) -> ID? {
        guard let due = heapDue.first, due <= now else { return nil }
        let index = Int(heapSlot[0])
        leave(slot: index)
        enter(.active, slot: index)
        return entries[index].id
    }

    /// How many deferred messages are due at `now` or earlier. O(n): for status lines.
    func countDue(at now: Double) -> Int {
        heapDue.reduce(0) { $0 + ($1 <= now ? 1 : 0) }
    }

    /// Lowers every due time later than `latest` to `latest` (the clock stepped back), keeping
    /// the order among the others. O(n).
    mutating func capDue(at latest: Double) {
        var changed = false
        for position in heapDue.indices where heapDue[position] > latest {
            heapDue[position] = latest
            changed = true
        }
        if changed { heapify() }
    }

    /// Makes every deferred message due at `time` (flush of the whole queue), oldest id first.
    mutating func makeAllDue(at time: Double) {
        for position in heapDue.indices { heapDue[position] = time }
        heapify()
    }

    // MARK: - Table

    private func place(at index: Int) -> Place {
        switch entries[index].state {
        case Self.fresh: return .fresh
        case Self.active: return .active
        case Self.held: return .held
        case let state: return .deferred(until: heapDue[Int(state - Self.deferredBase)])
        }
    }

    private func home(of id: ID) -> Int {
        // The high word of hash × capacity: a uniform slot for any capacity.
        let hash = UInt64(bitPattern: Int64(id.hashValue))
        return Int(hash.multipliedFullWidth(by: UInt64(entries.count)).high)
    }

    private func next(_ index: Int) -> Int { index + 1 == entries.count ? 0 : index + 1 }

    private func slot(of id: ID) -> Int? {
        guard count > 0 else { return nil }
        var index = home(of: id)
        while entries[index].state != Self.empty {
            if entries[index].id == id { return index }
            index = next(index)
        }
        return nil
    }

    /// Puts the (placeless) entry at `slot` into `place`.
    private mutating func enter(_ place: Place, slot index: Int) {
        switch place {
        case .fresh: entries[index].state = Self.fresh; freshCount += 1
        case .active: entries[index].state = Self.active; activeCount += 1
        case .held: entries[index].state = Self.held; heldCount += 1
        case .deferred(let due):
            let position = heapDue.count
            growByHalf(&heapDue)
            growByHalf(&heapSlot)
            heapDue.append(Self.ordered(due))
            heapSlot.append(UInt32(index))
            entries[index].state = Self.deferredBase + UInt32(position)
            siftUp(position)
        }
    }

    /// Takes the entry at `slot` out of its place (its state is left meaningless).
    private mutating func leave(slot index: Int) {
        switch entries[index].state {
        case Self.fresh: freshCount -= 1
        case Self.active: activeCount -= 1
        case Self.held: heldCount -= 1
        case let state:
            let position = Int(state - Self.deferredBase)
            let last = heapDue.count - 1
            if position != last {
                heapDue[position] = heapDue[last]
                heapSlot[position] = heapSlot[last]
                entries[Int(heapSlot[position])].state = Self.deferredBase + UInt32(position)
            }
            heapDue.removeLast()
            heapSlot.removeLast()
            if position < heapDue.count, !siftUp(position) { siftDown(position) }
            shrinkIfSparse(&heapDue)
            shrinkIfSparse(&heapSlot)
        }
        entries[index].state = Self.active  // placeholder until the caller enters or deletes it
    }

    /// Empties `slot`, shifting back the entries after it that may move closer to their home
    /// slot, so that no lookup needs tombstones.
    private mutating func deleteEntry(at start: Int) {
        var hole = start
        var index = next(start)
        while entries[index].state != Self.empty {
            let home = home(of: entries[index].id)
            if distance(home, index) >= distance(hole, index) {
                entries[hole] = entries[index]
                noteMoved(to: hole)
                hole = index
            }
            index = next(index)
        }
        entries[hole] = Entry(id: .unused, state: Self.empty, destinations: 0)
        count -= 1
    }

    private func distance(_ from: Int, _ to: Int) -> Int { to >= from ? to - from : to + entries.count - from }

    /// The entry now at `slot` moved there: its heap element follows.
    private mutating func noteMoved(to index: Int) {
        let state = entries[index].state
        if state >= Self.deferredBase { heapSlot[Int(state - Self.deferredBase)] = UInt32(index) }
    }

    private mutating func resize(to capacity: Int) {
        let old = entries
        entries = Array(repeating: Entry(id: .unused, state: Self.empty, destinations: 0), count: capacity)
        for entry in old where entry.state != Self.empty {
            var index = home(of: entry.id)
            while entries[index].state != Self.empty { index = next(index) }
            entries[index] = entry
            noteMoved(to: index)
        }
    }


    private func shrinkIfSparse<Element>(_ array: inout [Element]) {
        guard array.capacity > 4096, array.count * 4 < array.capacity else { return }
        var smaller: [Element] = []
        smaller.reserveCapacity(array.count * 2)
        smaller.append(contentsOf: array)
        array = smaller
    }

    // MARK: - Heap

    /// A due time that orders: NaN (which no record can hold, JSON has none) would compare
    /// false with everything and could block the heap's top for good; it is due at once.
    private static func ordered(_ due: Double) -> Double { due.isNaN ? -.infinity : due }

    private func precedes(_ a: Int, _ b: Int) -> Bool {
        heapDue[a] < heapDue[b] || (heapDue[a] == heapDue[b] && entries[Int(heapSlot[a])].id < entries[Int(heapSlot[b])].id)
    }

    private mutating func swapHeap(_ a: Int, _ b: Int) {
        heapDue.swapAt(a, b)
        heapSlot.swapAt(a, b)
        entries[Int(heapSlot[a])].state = Self.deferredBase + UInt32(a)
        entries[Int(heapSlot[b])].state = Self.deferredBase + UInt32(b)
    }

    /// Returns true when the element moved.
    @discardableResult
    private mutating func siftUp(_ start: Int) -> Bool {
        var child = start
        while child > 0 {
            let parent = (child - 1) / 2
            guard precedes(child, parent) else { break }
            swapHeap(child, parent)
            child = parent
        }
        return child != start
    }

    private mutating func siftDown(_ start: Int) {
        var parent = start
        while true {
            let left = 2 * parent + 1
            guard left < heapDue.count else { return }
            var smallest = left
            if left + 1 < heapDue.count, precedes(left + 1, left) { smallest = left + 1 }
            guard precedes(smallest, parent) else { return }
            swapHeap(smallest, parent)
            parent = smallest
        }
    }

    private mutating func heapify() {
        guard heapDue.count > 1 else { return }
        for position in stride(from: heapDue.count / 2 - 1, through: 0, by: -1) { siftDown(position) }
    }
}

/// Makes room for one more element, growing a full array by half rather than doubling: at a
/// million elements doubling can leave 12 MB unused.
func growByHalf<Element>(_ array: inout [Element]) {
    if array.count == array.capacity { array.reserveCapacity(array.count + array.count / 2 + 16) }
}
