/// The destination lists (pending recipients' domains) of the messages seen in a round, each
/// list kept once with a count of the messages that refer to it: a million deferred messages to
/// one destination share one list, and the index keeps a 4-byte number per message.
/// Number 0 stands for "not seen in a round".
struct DestinationLists: Sendable {
    private var lists: [[String]] = [[]]
    private var users: [Int] = [0]
    private var numbers: [[String]: UInt32] = [:]
    private var unused: [UInt32] = []

    /// The number of `list`, counted once more.
    mutating func retain(_ list: [String]) -> UInt32 {
        if let number = numbers[list] {
            users[Int(number)] += 1
            return number
        }
        let number: UInt32
        if let free = unused.popLast() {
            number = free
            lists[Int(free)] = list
            users[Int(free)] = 1
        } else {
            number = UInt32(lists.count)
            lists.append(list)
            users.append(1)
        }
        numbers[list] = number
        return number
    }

    /// One message less refers to list `number` (0: nothing to do).
    mutating func release(_ number: UInt32) {
        guard number != 0 else { return }
        let index = Int(number)
        users[index] -= 1
        guard users[index] == 0 else { return }
        numbers[lists[index]] = nil
        lists[index] = []
        unused.append(number)
    }

    /// The numbers of the lists that contain `domain`.
    func numbers(containing domain: String) -> Set<UInt32> {
        var found: Set<UInt32> = []
        for (index, list) in lists.enumerated() where users[index] > 0 && list.contains(domain) {
            found.insert(UInt32(index))
        }
        return found
    }
}
