/// What was wrong with a command line's framing.
public enum LineProblem: Sendable, Equatable {
    /// A CR not followed by LF, or an LF not preceded by CR (RFC 5321 §2.3.8).
    case bareLineEnding
    /// Longer than the command line limit.
    case tooLong
    /// Not valid UTF-8 (commands are ASCII, or UTF-8 with SMTPUTF8, RFC 6531 §3.3).
    case invalidUTF8
}

/// Splits the command-mode byte stream into lines ended by CRLF (RFC 5321 §2.3.8).
///
/// Only CRLF ends a line. A line containing a bare CR or ended by a bare LF is reported as
/// `.bareLineEnding` and discarded whole, so no input can be read as two commands by us and
/// one by another implementation (the "SMTP smuggling" family).
public struct LineFramer: Sendable {
    public enum Event: Sendable, Equatable {
        case line([UInt8])
        case malformed(LineProblem)
    }

    /// Longest line accepted, in octets including CRLF.
    public let maxLineLength: Int
    private var buffer: [UInt8] = []
    private var discardingLongLine = false

    public init(maxLineLength: Int) {
        self.maxLineLength = maxLineLength
    }

    /// Bytes held that do not yet form a complete line.
    public var bufferedByteCount: Int { buffer.count }

    /// Takes the unconsumed bytes (for handing over to DATA mode).
    public mutating func takeBuffered() -> [UInt8] {
        defer { buffer = [] }
        return buffer
    }

    /// Adds bytes and returns the next complete line event, or nil when more input is needed.
    /// Call repeatedly with an empty array to drain further lines.
    public mutating func append(_ bytes: [UInt8]) {
        buffer.append(contentsOf: bytes)
    }

    /// The next complete line or problem, or nil when no full line is buffered.
    public mutating func nextEvent() -> Event? {
        while true {
            guard let lf = buffer.firstIndex(of: 10) else {
                if buffer.count > maxLineLength {
                    // Drop what we have; report once when the line finally ends.
                    buffer.removeAll(keepingCapacity: true)
                    discardingLongLine = true
                }
                return nil
            }
            let lineEnd = lf
            let line = Array(buffer[..<lineEnd])
            buffer.removeSubrange(...lf)
            if discardingLongLine {
                discardingLongLine = false
                return .malformed(.tooLong)
            }
            if line.count + 1 > maxLineLength {
                return .malformed(.tooLong)
            }
            guard line.last == 13 else { return .malformed(.bareLineEnding) }
            let content = line.dropLast()
            if content.contains(13) { return .malformed(.bareLineEnding) }
            return .line(Array(content))
        }
    }
}
