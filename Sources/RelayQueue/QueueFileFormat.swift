import Foundation

/// The on-disk layout of one queue file:
///
///     content bytes | envelope (JSON) | footer (32 bytes)
///
/// footer = `"TLSRQ1 "` + 16 hex digits content length + `" "` + 8 hex digits envelope length.
/// Content is written first, as it streams in; the envelope and footer are appended at the end
/// of DATA. A file whose lengths do not add up or whose envelope does not decode is corrupt.
public enum QueueFileFormat {
    public static let footerLength = 32
    static let magic = Array("TLSRQ1 ".utf8)

    /// The envelope bytes followed by the footer.
    static func trailer(envelope: QueuedEnvelope, contentLength: Int) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let json = Array(try encoder.encode(envelope))
        var out = json
        out += magic
        out += Array(hex(UInt64(contentLength), digits: 16).utf8)
        out.append(UInt8(ascii: " "))
        out += Array(hex(UInt64(json.count), digits: 8).utf8)
        return out
    }

    /// Parses a footer; returns (content length, envelope length) or nil.
    static func parseFooter(_ footer: [UInt8]) -> (Int, Int)? {
        guard footer.count == footerLength, Array(footer[0..<7]) == magic, footer[23] == UInt8(ascii: " "),
              let content = UInt64(String(decoding: footer[7..<23], as: UTF8.self), radix: 16),
              let envelope = UInt64(String(decoding: footer[24..<32], as: UTF8.self), radix: 16)
        else { return nil }
        return (Int(content), Int(envelope))
    }

    static func hex(_ value: UInt64, digits: Int) -> String {
        let text = String(value, radix: 16)
        return String(repeating: "0", count: max(0, digits - text.count)) + text
    }
}
