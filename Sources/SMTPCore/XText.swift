/// The `xtext` encoding of RFC 3461 §4: printable ASCII except `+` and `=`, and `+XX` hex escapes.
public enum XText {
    /// Decodes `text`; returns nil when it is not valid xtext.
    public static func decode(_ text: Substring) -> String? {
        var out: [UInt8] = []
        var iterator = Array(text.utf8)[...]
        while let byte = iterator.popFirst() {
            if byte == UInt8(ascii: "+") {
                guard let high = iterator.popFirst(), let low = iterator.popFirst(),
                      let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16),
                      [high, low].allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x46) })
                else { return nil }
                out.append(value)
            } else {
                guard byte >= 33, byte <= 126, byte != UInt8(ascii: "=") else { return nil }
                out.append(byte)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Encodes `text` as xtext: `+`, `=`, and octets outside 33...126 become `+XX`.
    public static func encode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            if byte >= 33, byte <= 126, byte != UInt8(ascii: "+"), byte != UInt8(ascii: "=") {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                let hex = String(byte, radix: 16, uppercase: true)
                out += "+" + (hex.count == 1 ? "0" + hex : hex)
            }
        }
        return out
    }
}
