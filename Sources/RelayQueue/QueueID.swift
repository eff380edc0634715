#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A queue id: 16 characters of Crockford base32 (`0-9`, `A-Z` without `I L O U`).
///
/// The first 12 characters encode the arrival time in microseconds since the Unix epoch
/// (60 bits), so ids sort by time as plain strings; the last 4 encode 20 random bits. The
/// generator never hands out the same id twice within a process, even if the clock stands
/// still or steps back; across processes the random part separates ids, and the spool's
/// no-replace rename refuses a collision.
public struct QueueID: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    public static let alphabet: [UInt8] = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ".utf8)
    public static let length = 16

    public let rawValue: String

    /// Validates `text`: exactly 16 characters of the alphabet. Returns nil otherwise, so a
    /// file name or control request that is not an id is never used as a path.
    public init?(_ text: String) {
        guard text.utf8.count == Self.length, text.utf8.allSatisfy({ Self.alphabet.contains($0) }) else { return nil }
        rawValue = text
    }

    init(unchecked text: String) { rawValue = text }

    public var description: String { rawValue }

    public static func < (lhs: QueueID, rhs: QueueID) -> Bool { lhs.rawValue < rhs.rawValue }

    /// Arrival time in microseconds since the epoch, decoded from the first 12 characters.
    public var microsecondsSinceEpoch: UInt64 {
        var value: UInt64 = 0
        for byte in rawValue.utf8.prefix(12) {
            value = value << 5 | UInt64(Self.alphabet.firstIndex(of: byte)!)
        }
        return value
    }

    /// The spool subdirectory for this id: its last character (32 buckets, evenly filled
    /// because that character is random).
    public var bucket: String { String(rawValue.suffix(1)) }

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
public final class QueueIDGenerator: @unchecked Sendable {
    private var lastMicroseconds: UInt64 = 0
    private var lock = pthread_mutex_t()

    public init() {
        pthread_mutex_init(&lock, nil)
    }

    deinit { pthread_mutex_destroy(&lock) }

    /// A new id; strictly greater than every id this generator returned before.
    public func next() -> QueueID {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var micros = UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec / 1000)
        pthread_mutex_lock(&lock)
        if micros <= lastMicroseconds { micros = lastMicroseconds + 1 }
        lastMicroseconds = micros
        pthread_mutex_unlock(&lock)
        let random = UInt64.random(in: 0..<(1 << 20))
        var characters = [UInt8](repeating: 0, count: QueueID.length)
        var value = micros & ((1 << 60) - 1)
        for index in stride(from: 11, through: 0, by: -1) {
            characters[index] = QueueID.alphabet[Int(value & 31)]
            value >>= 5
        }
        var tail = random
        for index in stride(from: 15, through: 12, by: -1) {
            characters[index] = QueueID.alphabet[Int(tail & 31)]
            tail >>= 5
        }
        return QueueID(unchecked: String(decoding: characters, as: UTF8.self))
    }
}
