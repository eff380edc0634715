/// Prepares message content for DATA (RFC 5321 §4.5.2): a line that begins with "." gets one
/// more "."; the content is terminated with CRLF "." CRLF.
public enum DotStuffing {
    /// Returns `content` stuffed and terminated. Content that does not end in CRLF gets one, so
    /// the terminator always begins a line (RFC 5321 §4.1.1.4).
    public static func encode(_ content: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(content.count + content.count / 64 + 5)
        var atLineStart = true
        for byte in content {
            if atLineStart && byte == 46 { out.append(46) }
            out.append(byte)
            atLineStart = byte == 10
        }
        if !content.isEmpty && !(content.count >= 2 && content[content.count - 2] == 13 && content[content.count - 1] == 10) {
            out += [13, 10]
        }
        out += [46, 13, 10]
        return out
    }
}
