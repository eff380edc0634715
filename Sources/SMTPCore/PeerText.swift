/// Text that came from a peer (a greeting, a reply, a certificate name), made safe for logs,
/// DSNs and terminals: C0 controls (U+0000–U+001F), DEL, C1 controls (U+0080–U+009F) and every
/// byte that is not part of valid UTF-8 are shown as `\xNN`, one per byte; valid printable
/// UTF-8 is kept as it is. So no peer can write an ANSI or OSC escape sequence, a NUL or a
/// fake line break into the journal, and `grep` never calls the log binary.
public enum PeerText {
    /// - Parameter bytes: the octets as received.
    /// - Returns: printable text; equal to the input when it was printable UTF-8 already.
    public static func escape<Bytes: Collection>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        let octets = Array(bytes)
        if octets.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) { return String(decoding: octets, as: UTF8.self) }
        var out = ""
        out.reserveCapacity(octets.count)
        var index = 0
        while index < octets.count {
            let byte = octets[index]
            if byte >= 0x20 && byte < 0x7F {
                out.unicodeScalars.append(Unicode.Scalar(byte))
                index += 1
                continue
            }
            if byte >= 0x80, let (scalar, length) = decodeScalar(octets, at: index), scalar.value >= 0xA0 {
                out.unicodeScalars.append(scalar)
                index += length
                continue
            }
            if byte >= 0x80, let (_, length) = decodeScalar(octets, at: index) {
                // A C1 control: every byte escaped.
                for offset in 0..<length { out += hex(octets[index + offset]) }
                index += length
                continue
            }
            out += hex(byte)
            index += 1
        }
        return out
    }

    /// Escapes a string that may hold control characters (already decoded text).
    public static func escape(_ text: String) -> String { escape(Array(text.utf8)) }

    private static func hex(_ byte: UInt8) -> String {
        let digits: [Character] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "A", "B", "C", "D", "E", "F"]
        return "\\x" + String(digits[Int(byte >> 4)]) + String(digits[Int(byte & 0x0F)])
    }

    /// One well-formed UTF-8 scalar at `index` (RFC 3629 §4: no overlongs, no surrogates, at
    /// most U+10FFFF), with its length in bytes; nil when the bytes there are not one.
    private static func decodeScalar(_ bytes: [UInt8], at index: Int) -> (Unicode.Scalar, Int)? {
        let first = bytes[index]
        let length: Int
        let minimum: UInt32
        var value: UInt32
        switch first {
        case 0xC2...0xDF: length = 2; minimum = 0x80; value = UInt32(first & 0x1F)
        case 0xE0...0xEF: length = 3; minimum = 0x800; value = UInt32(first & 0x0F)
        case 0xF0...0xF4: length = 4; minimum = 0x10000; value = UInt32(first & 0x07)
        default: return nil
        }
        guard index + length <= bytes.count else { return nil }
        for offset in 1..<length {
            let next = bytes[index + offset]
            guard next & 0xC0 == 0x80 else { return nil }
            value = value << 6 | UInt32(next & 0x3F)
        }
        guard value >= minimum, let scalar = Unicode.Scalar(value) else { return nil }
        return (scalar, length)
    }
}
