/// The `_mta-sts.<domain>` TXT record (RFC 8461 §3.1):
///
///     sts-text-record = sts-version 1*(sts-sep sts-field) [sts-sep]
///     sts-version     = %s"v=STSv1"
///     sts-id          = %s"id=" 1*32(ALPHA / DIGIT)
///     sts-sep         = *WSP %x3B *WSP
public struct STSRecord: Sendable, Equatable {
    /// The policy id: 1 to 32 letters and digits; a change means "fetch the policy again".
    public let id: String

    /// Why the TXT records do not announce a policy.
    public enum Problem: Error, Sendable, Equatable {
        /// No TXT record starts with `v=STSv1` (RFC 8461 §3.1: then there is no policy).
        case none
        /// More than one record starts with `v=STSv1` (§3.1: treat as no policy).
        case several
        /// The record starts with `v=STSv1` but breaks the grammar (for example a bad id).
        case invalid(String)
    }

    /// Picks the STS record out of all TXT strings at `_mta-sts.<domain>`.
    /// - Throws: `Problem`.
    public static func parse(txtRecords: [String]) throws -> STSRecord {
        // §3.1: records not starting with "v=STSv1;" (or exactly "v=STSv1") are ignored.
        let candidates = txtRecords.filter { record in
            let trimmed = record.drop { $0 == " " || $0 == "\t" }
            guard trimmed.hasPrefix("v=STSv1") else { return false }
            let rest = trimmed.dropFirst("v=STSv1".count).drop { $0 == " " || $0 == "\t" }
            return rest.isEmpty || rest.first == ";"
        }
        guard !candidates.isEmpty else { throw Problem.none }
        guard candidates.count == 1 else { throw Problem.several }
        return try parse(record: candidates[0])
    }

    /// Parses one record known to start with `v=STSv1`.
    /// - Throws: `Problem.invalid` when the grammar is broken or `id` is missing or bad.
    public static func parse(record: String) throws -> STSRecord {
        let fields = record.split(separator: ";", omittingEmptySubsequences: false)
            .map { $0.trimmingWhitespace() }
        guard fields.first == "v=STSv1" else { throw Problem.invalid("does not start with v=STSv1") }
        var id: String?
        for field in fields.dropFirst() {
            if field.isEmpty { continue }   // a trailing separator
            guard let equals = field.firstIndex(of: "=") else { throw Problem.invalid("field without '=': \(field)") }
            let name = field[..<equals]
            let value = field[field.index(after: equals)...]
            // sts-ext-name = (ALPHA / DIGIT) 0*31(ALPHA / DIGIT / "_" / "-" / ".")
            guard let first = name.first, first.isASCII, first.isLetter || first.isNumber, name.count <= 32,
                  name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_-.".contains($0)) })
            else { throw Problem.invalid("bad field name: \(name)") }
            if name == "id" {
                guard id == nil else { throw Problem.invalid("id given twice") }
                guard (1...32).contains(value.count), value.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }) else {
                    throw Problem.invalid("id must be 1 to 32 letters or digits, got \"\(value)\"")
                }
                id = String(value)
            } else {
                // sts-ext-value = 1*(%x21-3A / %x3C / %x3E-7E)
                guard !value.isEmpty, value.unicodeScalars.allSatisfy({ (0x21...0x7E).contains($0.value) && $0 != ";" && $0 != "=" }) else {
                    throw Problem.invalid("bad value for \(name)")
                }
            }
        }
        guard let id else { throw Problem.invalid("no id field") }
        return STSRecord(id: id)
    }
}

extension Substring {
    /// The text without leading and trailing WSP (spaces and tabs, RFC 5234 appendix B.1).
    public func trimmingWhitespace() -> String {
        var text = self
        while let first = text.first, first == " " || first == "\t" { text = text.dropFirst() }
        while let last = text.last, last == " " || last == "\t" { text = text.dropLast() }
        return String(text)
    }
}
