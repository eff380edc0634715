#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NIOConcurrencyHelpers

/// A queue id: 16 characters of Crockford base32 (`0-9`, `A-Z` without `I L O U`).
///
/// The first 12 characters encode the arrival time in microseconds since the Unix epoch
/// (60 bits), so ids sort by time as plain strings; the last 4 encode 20 random bits. The
/// generator never hands out the same id twice within a process, even if the clock stands
/// still or steps back; across processes the random part separates ids, and the spool's
/// no-replace rename refuses a collision.
///
/// Held as its 80 bits in three words (10 bytes, 12 with alignment, no allocation), not as a
/// string: a queue of a million messages keeps each id in the queue manager's index, and a
/// 64-bit field would make it 16 bytes.
public struct QueueID: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    public static let alphabet: [UInt8] = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ".utf8)
    public static let length = 16

    // The 80-bit value `time << 20 | random`, most significant word first: its order is the
    // order of the 16-character strings.
    private let high: UInt32
    private let middle: UInt32
    private let low: UInt16

    /// The first 12 characters: the arrival time in microseconds since the epoch (60 bits).
    public var microsecondsSinceEpoch: UInt64 { top >> 4 }
    /// The last 4 characters: 20 random bits.
    var random: UInt32 { UInt32(top & 0xf) << 16 | UInt32(low) }
    /// Bits 79…16 of the value.
    private var top: UInt64 { UInt64(high) << 32 | UInt64(middle) }

    /// The value of each byte in `alphabet`, 0xff for a byte outside it.
    private static let values: [UInt8] = {
        var table = [UInt8](repeating: 0xff, count: 256)
        for (index, byte) in alphabet.enumerated() { table[Int(byte)] = UInt8(index) }
        return table
    }()

    /// Validates `text`: exactly 16 characters of the alphabet. Returns nil otherwise, so a
    /// file name or control request that is not an id is never used as a path.
    public init?(_ text: String) {
        var time: UInt64 = 0
        var random: UInt32 = 0
        var count = 0
        for byte in text.utf8 {
            guard count < Self.length else { return nil }
            let value = Self.values[Int(byte)]
            guard value != 0xff else { return nil }
            if count < 12 {
                time = time << 5 | UInt64(value)
            } else {
                random = random << 5 | UInt32(value)
            }
            count += 1
        }
        guard count == Self.length else { return nil }
        self.init(microseconds: time, random: random)
    }

    /// - Parameters: microseconds: the low 60 bits are used; random: the low 20 bits.
    init(microseconds: UInt64, random: UInt32) {
        let random = random & ((1 << 20) - 1)
        let top = (microseconds & ((1 << 60) - 1)) << 4 | UInt64(random >> 16)
        high = UInt32(top >> 32)
        middle = UInt32(truncatingIfNeeded: top)
        low = UInt16(truncatingIfNeeded: random)
    }

    /// The 16 characters.
    public var rawValue: String {
        String(unsafeUninitializedCapacity: Self.length) { buffer in
            var time = microsecondsSinceEpoch
            for index in stride(from: 11, through: 0, by: -1) {
                buffer[index] = Self.alphabet[Int(time & 31)]
                time >>= 5
            }
            var tail = random
            for index in stride(from: 15, through: 12, by: -1) {
                buffer[index] = Self.alphabet[Int(tail & 31)]
                tail >>= 5
            }
            return Self.length
        }
    }

    public var description: String { rawValue }

    /// The order of the 16-character strings (the alphabet is in ASCII order): arrival time,
    /// then the random part.
    public static func < (lhs: QueueID, rhs: QueueID) -> Bool {
        (lhs.high, lhs.middle, lhs.low) < (rhs.high, rhs.middle, rhs.low)
    }

    /// The spool subdirectory for this id: its last character (32 buckets, evenly filled
    /// because that character is random).
    public var bucket: String { String(UnicodeScalar(Self.alphabet[Int(low & 31)])) }

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let id = QueueID(text) else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "not a queue id: \(text)")
        }
        self = id
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// Hands out unique, time-ordered queue ids. Thread-safe.
public final class QueueIDGenerator: Sendable {
    /// The time part of the last id returned (microseconds since the epoch).
    private let lastMicroseconds = NIOLockedValueBox<UInt64>(0)

    public init() {}

    /// A new id; strictly greater than every id this generator returned before.
    public func next() -> QueueID {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let clock = UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec / 1000)
        let micros = lastMicroseconds.withLockedValue { last in
            last = max(clock, last + 1)
            return last
        }
        return QueueID(microseconds: micros, random: UInt32.random(in: 0..<(1 << 20)))
    }
}

extension Array where Element == QueueID {
    /// Whether `id` is in this array, which must be in ascending order (binary search,
    /// O(log n)); as `messagesWithDeliveryRecords()` returns it.
    public func containsSorted(_ id: QueueID) -> Bool {
        var low = startIndex, high = endIndex
        while low < high {
            let middle = low + (high - low) / 2
            if self[middle] < id { low = middle + 1 } else { high = middle }
        }
        return low < endIndex && self[low] == id
    }
}
