/// An SMTP reply: a three-digit code (RFC 5321 §4.2), an optional enhanced status code
/// (RFC 2034 §4) and one or more text lines.
public struct Reply: Sendable, Hashable, CustomStringConvertible {
    public let code: Int
    public let enhanced: EnhancedStatusCode?
    public let lines: [String]

    public init(_ code: Int, _ enhanced: EnhancedStatusCode?, _ lines: [String]) {
        precondition((200...599).contains(code), "reply code out of range")
        self.code = code
        self.enhanced = enhanced
        self.lines = lines.isEmpty ? [""] : lines
    }

    public init(_ code: Int, _ enhanced: EnhancedStatusCode?, _ text: String) {
        self.init(code, enhanced, [text])
    }

    /// True for 2xx and 3xx replies.
    public var isPositive: Bool { code < 400 }
    /// True for 4xx replies (transient failure, RFC 5321 §4.2.1).
    public var isTransientFailure: Bool { (400..<500).contains(code) }
    /// True for 5xx replies (permanent failure).
    public var isPermanentFailure: Bool { code >= 500 }

    /// The reply as wire bytes: `code-text CRLF` for all but the last line, `code SP text CRLF`
    /// for the last (RFC 5321 §4.2.1). The enhanced code, when present, begins every line's text
    /// (RFC 2034 §4).
    public var wireBytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(lines.count * 40)
        for (index, line) in lines.enumerated() {
            let separator = index == lines.count - 1 ? " " : "-"
            var text = String(code) + separator
            if let enhanced { text += enhanced.description + (line.isEmpty ? "" : " ") }
            text += line
            out.append(contentsOf: Array(text.utf8))
            out.append(contentsOf: [13, 10])
        }
        return out
    }

    public var description: String {
        let first = lines.first ?? ""
        if let enhanced { return "\(code) \(enhanced) \(first)" }
        return "\(code) \(first)"
    }
}
