/// An MTA-STS policy (RFC 8461 §3.2).
public struct STSPolicy: Sendable, Equatable, Codable {
    /// RFC 8461 §5.
    public enum Mode: String, Sendable, Codable {
        /// Deliver only to matching MX hosts over TLS with a valid WebPKI certificate.
        case enforce
        /// Deliver as usual; report failures.
        case testing
        /// No policy (used to withdraw one).
        case none
    }

    public var mode: Mode
    /// Lifetime in seconds, at most 31557600 (§3.2).
    public var maxAge: Int
    /// MX patterns: host names, or `*.` followed by a domain (§3.2, §4.1).
    public var mx: [String]

    /// Largest `max_age` allowed, seconds (about one year, RFC 8461 §3.2).
    public static let maxAllowedAge = 31_557_600

    public init(mode: Mode, maxAge: Int, mx: [String]) {
        self.mode = mode
        self.maxAge = maxAge
        self.mx = mx
    }

    /// Why a policy body was refused (RFC 8461 §3.2; the fetch then counts as failed).
    public struct Invalid: Error, Sendable, Equatable, CustomStringConvertible {
        public let reason: String
        public var description: String { reason }
    }

    /// Parses a policy body: `key: value` lines ending in CRLF or LF (the last line may lack
    /// one), `version: STSv1` first... in any order; `version`, `mode` and `max_age` required,
    /// `mx` required (once or more) unless the mode is none; unknown keys ignored (§3.2).
    /// - Throws: `Invalid` with the reason.
    public static func parse(_ text: String) throws -> STSPolicy {
        var version: String?
        var mode: Mode?
        var maxAge: Int?
        var mx: [String] = []
        // "\r\n" is one Character in Swift: split on either ending.
        var lines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
        if lines.last == "" { lines.removeLast() }
        for line in lines {
            if line.isEmpty { continue }
            guard let colon = line.firstIndex(of: ":") else { throw Invalid(reason: "line without ':': \(line.prefix(60))") }
            let key = line[..<colon].trimmingWhitespace()
            let value = line[line.index(after: colon)...].trimmingWhitespace()
            // sts-policy-field-name: (ALPHA / DIGIT) 0*31(ALPHA / DIGIT / "_" / "-" / ".")
            guard let first = key.first, first.isASCII, first.isLetter || first.isNumber, key.count <= 32,
                  key.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_-.".contains($0)) })
            else { throw Invalid(reason: "bad key: \(key.prefix(40))") }
            switch key {
            case "version":
                guard version == nil else { throw Invalid(reason: "version given twice") }
                version = value
            case "mode":
                guard mode == nil else { throw Invalid(reason: "mode given twice") }
                guard let parsed = Mode(rawValue: value) else { throw Invalid(reason: "mode must be enforce, testing or none, got \"\(value)\"") }
                mode = parsed
            case "max_age":
                guard maxAge == nil else { throw Invalid(reason: "max_age given twice") }
                // sts-policy-max-age-value = 1*10(DIGIT)
                guard (1...10).contains(value.count), value.allSatisfy({ $0.isASCII && $0.isNumber }), let seconds = Int(value),
                      seconds <= maxAllowedAge
                else { throw Invalid(reason: "max_age must be 0 to \(maxAllowedAge) seconds, got \"\(value)\"") }
                maxAge = seconds
            case "mx":
                let pattern = value.lowercased()
                guard isValidPattern(pattern) else { throw Invalid(reason: "bad mx pattern \"\(value)\"") }
                mx.append(pattern.hasSuffix(".") ? String(pattern.dropLast()) : pattern)
            default:
                continue   // §3.2: unknown fields are ignored
            }
        }
        guard version == "STSv1" else { throw Invalid(reason: version == nil ? "no version field" : "version must be STSv1") }
        guard let mode else { throw Invalid(reason: "no mode field") }
        guard let maxAge else { throw Invalid(reason: "no max_age field") }
        if mode != .none && mx.isEmpty { throw Invalid(reason: "mode \(mode.rawValue) needs at least one mx field") }
        return STSPolicy(mode: mode, maxAge: maxAge, mx: mx)
    }

    /// A host name, optionally prefixed by `*.` (RFC 8461 §3.2 `sts-policy-mx-value`).
    static func isValidPattern(_ pattern: String) -> Bool {
        var name = Substring(pattern)
        if name.hasPrefix("*.") { name = name.dropFirst(2) }
        if name.hasSuffix(".") { name = name.dropLast() }
        guard !name.isEmpty, name.count <= 253 else { return false }
        return name.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            !label.isEmpty && label.count <= 63 && label.first != "-" && label.last != "-"
                && label.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }
        }
    }

    /// True when the MX host `host` matches one of the patterns (RFC 8461 §4.1): case-insensitive,
    /// trailing dot ignored, `*.example.com` matches exactly one extra leftmost label; IP
    /// literals never match.
    public func matches(mxHost host: String) -> Bool {
        var name = host.lowercased()
        if name.hasSuffix(".") { name.removeLast() }
        if name.hasPrefix("[") || IPLiteral.isIP(name) { return false }
        for raw in mx {
            var pattern = raw.lowercased()
            if pattern.hasSuffix(".") { pattern.removeLast() }
            if pattern.hasPrefix("*.") {
                let suffix = pattern.dropFirst(1)   // ".example.com"
                guard name.hasSuffix(suffix) else { continue }
                let label = name.dropLast(suffix.count)
                if !label.isEmpty && !label.contains(".") { return true }
            } else if name == pattern {
                return true
            }
        }
        return false
    }
}

enum IPLiteral {
    static func isIP(_ text: String) -> Bool {
        if text.contains(":") { return true }
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { !$0.isEmpty && $0.allSatisfy(\.isNumber) }
    }
}
