/// The `_smtp._tls.<policy domain>` TXT record of RFC 8460 §3: where TLS reports go.
public struct TLSRPTRecord: Sendable, Equatable {
    /// One `rua` destination (RFC 8460 §3: `mailto:` or `https:` URIs).
    public enum ReportURI: Sendable, Hashable, CustomStringConvertible {
        /// Mail to this address (RFC 6068 `mailto:`, without `?` fields).
        case mailto(String)
        /// An HTTPS POST to this URL (the whole `https://...` text).
        case https(String)

        public var description: String {
            switch self {
            case .mailto(let address): return "mailto:\(address)"
            case .https(let url): return url
            }
        }
    }

    /// The usable destinations, in the record's order.
    public var rua: [ReportURI]
    /// What was left out of the record and why (logged; never fatal).
    public var ignored: [String]

    /// Why no record applies.
    public enum Problem: Error, Sendable, Equatable, CustomStringConvertible {
        /// No TXT record starts with `v=TLSRPTv1`.
        case noRecord
        /// More than one does (RFC 8460 §3: then none applies).
        case severalRecords(Int)
        /// The record has no usable `rua` URI.
        case noUsableURI(ignored: [String])

        public var description: String {
            switch self {
            case .noRecord: return "no TXT record starting with v=TLSRPTv1"
            case .severalRecords(let count): return "\(count) TXT records start with v=TLSRPTv1 (exactly one may)"
            case .noUsableURI(let ignored): return "no usable rua URI (\(ignored.joined(separator: "; ")))"
            }
        }
    }

    /// Picks and parses the record among the TXT strings of `_smtp._tls.<domain>`.
    /// - Parameter texts: each TXT record's strings, joined.
    /// - Throws: `Problem` when none or several records start with `v=TLSRPTv1` (case-insensitive
    ///   version, RFC 8460 §3), or the record has no `mailto:`/`https:` URI. Malformed URIs,
    ///   unknown schemes and unknown fields are skipped and named in `ignored`.
    public static func select(_ texts: [String]) throws(Problem) -> TLSRPTRecord {
        let candidates = texts.filter { text in
            let trimmed = text.drop { $0 == " " || $0 == "\t" }
            return trimmed.lowercased().hasPrefix("v=tlsrptv1") && (trimmed.count == 10 || [";", " ", "\t"].contains(trimmed.dropFirst(10).first))
        }
        guard !candidates.isEmpty else { throw .noRecord }
        guard candidates.count == 1 else { throw .severalRecords(candidates.count) }
        return try parse(candidates[0])
    }

    /// Parses one record: `v=TLSRPTv1; rua=URI[,URI...]` with optional white space (RFC 8460 §3).
    public static func parse(_ text: String) throws(Problem) -> TLSRPTRecord {
        var rua: [ReportURI] = []
        var ignored: [String] = []
        var sawRUA = false
        for field in text.split(separator: ";", omittingEmptySubsequences: true) {
            let trimmed = field.trimmingCharacters(in: " \t")
            guard !trimmed.isEmpty else { continue }
            guard let equals = trimmed.firstIndex(of: "=") else {
                ignored.append("field \"\(trimmed.prefix(40))\" has no '='")
                continue
            }
            let name = trimmed[..<equals].trimmingCharacters(in: " \t").lowercased()
            let value = trimmed[trimmed.index(after: equals)...].trimmingCharacters(in: " \t")
            switch name {
            case "v": continue
            case "rua":
                guard !sawRUA else { ignored.append("a second rua field"); continue }
                sawRUA = true
                for item in value.split(separator: ",", omittingEmptySubsequences: false) {
                    let uri = item.trimmingCharacters(in: " \t")
                    if let parsed = parseURI(uri) { rua.append(parsed) } else { ignored.append("rua URI \"\(uri.prefix(80))\"") }
                }
            default:
                ignored.append("unknown field \(name.prefix(20))")
            }
        }
        guard !rua.isEmpty else { throw .noUsableURI(ignored: ignored.isEmpty ? ["no rua field"] : ignored) }
        return TLSRPTRecord(rua: rua, ignored: ignored)
    }

    /// `mailto:local@domain` (percent-escapes decoded, no `?` header fields) or
    /// `https://host[:port]/path`; anything else (no scheme, `http:`, spaces, control
    /// characters) is nil.
    static func parseURI(_ text: String) -> ReportURI? {
        guard !text.isEmpty, text.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value != 0x7F }) else { return nil }
        let lower = text.lowercased()
        if lower.hasPrefix("mailto:") {
            var address = String(text.dropFirst(7))
            if let query = address.firstIndex(of: "?") { address = String(address[..<query]) }
            // Escapes decoded, the address must still be one an SMTP path takes unquoted: no
            // white space, control characters, brackets or commas (found by libFuzzer: `%20`).
            guard let decoded = address.removingPercentEncodingStrict(), let at = decoded.lastIndex(of: "@"),
                  at != decoded.startIndex, decoded.index(after: at) != decoded.endIndex,
                  decoded.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value != 0x7F && !"<>,\"\\()[];:".unicodeScalars.contains($0) })
            else { return nil }
            let domain = decoded[decoded.index(after: at)...]
            guard domain.contains("."), domain.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." }) else { return nil }
            return .mailto(decoded)
        }
        if lower.hasPrefix("https://") {
            let rest = text.dropFirst(8)
            let host = rest.prefix { $0 != "/" && $0 != ":" && $0 != "?" }
            guard !host.isEmpty, host.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." }) else { return nil }
            return .https(text)
        }
        return nil
    }
}

extension StringProtocol {
    func trimmingCharacters(in set: String) -> String {
        var result = Substring(self)
        while let first = result.first, set.contains(first) { result = result.dropFirst() }
        while let last = result.last, set.contains(last) { result = result.dropLast() }
        return String(result)
    }
}

extension String {
    /// Decodes `%XX` escapes; nil for a malformed escape or bytes that are not UTF-8.
    func removingPercentEncodingStrict() -> String? {
        var bytes: [UInt8] = []
        var iterator = utf8.makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next(), let low = iterator.next(),
                      let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16) else { return nil }
                bytes.append(value)
            } else {
                bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }
}
