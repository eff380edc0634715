/// Reads DATA content (RFC 5321 §4.1.1.4, §4.5.2): removes dot-stuffing, finds the end
/// `CRLF . CRLF`, and watches for bare CR/LF, over-long lines and the size limit.
///
/// Only `CRLF . CRLF` ends the content; `LF . LF`, `CR . CR` and any other variant do not, and
/// a message containing a bare CR or LF (RFC 5321 §2.3.8) or a NUL (RFC 5321 §4.1.1.4, RFC 6152)
/// is refused as a whole after its real end, so one transaction can never become two — not here,
/// and not at a next hop that drops NULs and would read `CRLF NUL . CRLF` as an end.
public struct DataReceiver: Sendable {
    enum Position: Sendable {
        case lineStart
        case dotAtLineStart
        case dotCR
        case inLine
        case sawCR
    }

    public let maxMessageSize: Int
    public let maxLineLength: Int
    private var position: Position = .lineStart
    private var lineLength = 0
    /// Content bytes produced so far (after unstuffing).
    public private(set) var size = 0
    private var problem: ServerSession.DataOutcome?

    /// - Parameters:
    ///   - maxMessageSize: content bytes allowed (RFC 1870).
    ///   - maxLineLength: octets allowed per line including CRLF.
    public init(maxMessageSize: Int, maxLineLength: Int) {
        self.maxMessageSize = maxMessageSize
        self.maxLineLength = maxLineLength
    }

    /// Consumes `input`, appending content bytes to `output`.
    /// - Returns: how many input bytes were consumed and, once the end was seen, the outcome.
    ///   Bytes after the end are not consumed: they belong to the next command.
    public mutating func consume(_ input: UnsafeRawBufferPointer, into output: inout [UInt8]) -> (consumed: Int, outcome: ServerSession.DataOutcome?) {
        var index = 0
        let count = input.count
        while index < count {
            let byte = input[index]
            index += 1
            switch position {
            case .lineStart:
                if byte == 46 { // "."
                    position = .dotAtLineStart
                } else {
                    inLine(byte, &output)
                }
            case .dotAtLineStart:
                if byte == 13 {
                    position = .dotCR
                } else {
                    // Transparency: the leading dot is removed (RFC 5321 §4.5.2).
                    inLine(byte, &output)
                }
            case .dotCR:
                if byte == 10 {
                    position = .lineStart
                    let outcome = problem ?? .complete(size: size)
                    return (index, outcome)
                }
                mark(.bareLineEnding)
                inLine(byte, &output)
            case .inLine:
                inLine(byte, &output)
            case .sawCR:
                if byte == 10 {
                    emit(13, &output)
                    emit(10, &output)
                    position = .lineStart
                    lineLength = 0
                } else {
                    mark(.bareLineEnding)
                    position = .inLine
                    inLine(byte, &output)
                }
            }
        }
        return (index, nil)
    }

    private mutating func inLine(_ byte: UInt8, _ output: inout [UInt8]) {
        switch byte {
        case 13:
            position = .sawCR
        case 10:
            // LF without CR before it: the message is refused, and what follows is not a line
            // start, so "LF . CRLF" cannot end the content.
            mark(.bareLineEnding)
            position = .inLine
            lineLength = 0
        case 0:
            // NUL: refused after the real end, as a bare CR or LF is (see `DataOutcome.nulCharacter`).
            mark(.nulCharacter)
            position = .inLine
            lineLength += 1
        default:
            position = .inLine
            lineLength += 1
            if lineLength + 2 > maxLineLength { mark(.lineTooLong) }
            emit(byte, &output)
        }
    }

    private mutating func emit(_ byte: UInt8, _ output: inout [UInt8]) {
        guard problem == nil else { return }
        size += 1
        if size > maxMessageSize {
            mark(.tooLarge)
            return
        }
        output.append(byte)
    }

    private mutating func mark(_ outcome: ServerSession.DataOutcome) {
        if problem == nil { problem = outcome }
    }

    /// True once the content is known to be refused; the handler may stop storing it.
    public var isRefused: Bool { problem != nil }
}
