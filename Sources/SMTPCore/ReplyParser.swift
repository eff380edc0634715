/// Assembles server replies from the byte stream (RFC 5321 §4.2): lines `code-text` continue a
/// reply, `code SP text` (or a bare `code`) ends it. Every line must carry the same code. The
/// text is peer text: control bytes and invalid UTF-8 come out escaped (`PeerText`).
public struct ReplyParser: Sendable {
    public enum ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        /// A line that is not `3DIGIT [("-" / SP) text]`, a code that changes within one reply,
        /// or a bare CR/LF.
        case malformed(String)
        /// More than `maxLines` lines or `maxLineLength` octets in a line.
        case tooLong

        public var description: String {
            switch self {
            case .malformed(let text): return "malformed reply (RFC 5321 section 4.2): \(text)"
            case .tooLong: return "reply too long (too many lines, or a line too long; RFC 5321 section 4.5.3.1.5)"
            }
        }
    }

    public let maxLines: Int
    public let maxLineLength: Int
    private var buffer: [UInt8] = []
    private var lines: [String] = []
    private var code: Int?

    /// - Parameters:
    ///   - maxLines: lines accepted in one reply (default 100).
    ///   - maxLineLength: octets per line including CRLF (RFC 5321 §4.5.3.1.5 says 512; default 2048).
    public init(maxLines: Int = 100, maxLineLength: Int = 2048) {
        self.maxLines = maxLines
        self.maxLineLength = maxLineLength
    }

    /// Bytes received but not yet part of a complete reply.
    public var bufferedByteCount: Int { buffer.count + lines.reduce(0) { $0 + $1.utf8.count } }

    /// True when bytes beyond the last complete reply are buffered.
    public var hasBufferedBytes: Bool { !buffer.isEmpty || !lines.isEmpty }

    public mutating func append(_ bytes: [UInt8]) { buffer += bytes }

    /// The next complete reply, or nil when more bytes are needed.
    /// - Throws: `ParseError`.
    public mutating func next() throws -> Reply? {
        while let lf = buffer.firstIndex(of: 10) {
            guard lf > 0, buffer[lf - 1] == 13 else { throw ParseError.malformed("bare LF in reply") }
            guard lf + 1 <= maxLineLength else { throw ParseError.tooLong }
            let line = Array(buffer[..<(lf - 1)])
            buffer.removeSubrange(...lf)
            guard line.count >= 3, line[0...2].allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), line[0] >= 0x32, line[0] <= 0x35,
                  !line.contains(13)
            else { throw ParseError.malformed(PeerText.escape(line.prefix(80))) }
            let lineCode = Int(String(decoding: line[0...2], as: UTF8.self))!
            if let code, code != lineCode { throw ParseError.malformed("reply code changed from \(code) to \(lineCode)") }
            code = lineCode
            let separator: UInt8 = line.count > 3 ? line[3] : 32
            guard separator == 32 || separator == 45 else { throw ParseError.malformed(PeerText.escape(line.prefix(80))) }
            let text = line.count > 4 ? PeerText.escape(line[4...]) : ""
            lines.append(text)
            guard lines.count <= maxLines else { throw ParseError.tooLong }
            if separator == 32 {
                defer { lines = []; code = nil }
                return Reply(parsingCode: lineCode, lines: lines)
            }
        }
        if buffer.count > maxLineLength { throw ParseError.tooLong }
        return nil
    }
}

extension Reply {
    /// A reply as received: the enhanced status code, when the first line's text starts with
    /// one of the reply's class, is split off every line (RFC 2034 §4).
    init(parsingCode code: Int, lines: [String]) {
        var enhanced: EnhancedStatusCode?
        if let first = lines.first, let space = first.firstIndex(of: " ") ?? (first.isEmpty ? nil : first.endIndex),
           let parsed = EnhancedStatusCode(parsing: first[..<space]), parsed.klass == code / 100 {
            enhanced = parsed
        }
        let texts: [String] = lines.map { line in
            guard let enhanced else { return line }
            let prefix = enhanced.description
            if line.hasPrefix(prefix + " ") { return String(line.dropFirst(prefix.count + 1)) }
            if line == prefix { return "" }
            return line
        }
        self.init(code, enhanced, texts)
    }
}
