/// Reads the header section of message content as it streams in (RFC 5322 §2.2, §3.6) for the
/// header fields a delivery decision needs: `TLS-Required` (RFC 8689 §5). No I/O; the content
/// itself is not changed.
///
/// Folded fields are unfolded (RFC 5322 §2.2.3); field names compare case-insensitively. Only
/// the first `headerLimit` octets are read: a header section longer than that (256 KiB) is not
/// a real message's, and what lies beyond counts for nothing.
public struct MessageHeaderScanner: Sendable {
    /// The header section had `TLS-Required: No` (value compared case-insensitively, surrounding
    /// white space ignored; RFC 8689 §5 defines no other value).
    public private(set) var tlsRequiredNo = false
    /// The empty line that ends the header section was seen (or the limit was reached).
    public private(set) var finished = false

    /// Octets of the header section read at most.
    public static let headerLimit = 262_144
    /// Octets of one unfolded field kept (the name and the start of the value are all that count).
    static let fieldLimit = 1024

    private var line: [UInt8] = []
    private var field: [UInt8] = []
    /// The current field is longer than `fieldLimit`: it counts for nothing (a value cut short
    /// could read as something it is not).
    private var fieldTruncated = false
    private var lineTruncated = false
    private var scanned = 0

    public init() {}

    /// Reads the next content octets (CRLF line endings, dot-stuffing removed).
    public mutating func consume<Octets: Sequence>(_ octets: Octets) where Octets.Element == UInt8 {
        guard !finished else { return }
        for octet in octets {
            scanned += 1
            if scanned > Self.headerLimit {
                finished = true
                return
            }
            if octet == 10 {
                endLine()
                if finished { return }
            } else if octet != 13 {
                if line.count < Self.fieldLimit { line.append(octet) } else { lineTruncated = true }
            }
        }
    }

    private mutating func endLine() {
        if line.isEmpty {
            endField()
            finished = true
            return
        }
        if line[0] == 32 || line[0] == 9 {
            // A continuation line (RFC 5322 §2.2.3).
            if field.count + line.count > Self.fieldLimit { fieldTruncated = true }
            field += line.prefix(Self.fieldLimit - min(field.count, Self.fieldLimit))
            fieldTruncated = fieldTruncated || lineTruncated
        } else {
            endField()
            field = line
            fieldTruncated = lineTruncated
        }
        line.removeAll(keepingCapacity: true)
        lineTruncated = false
    }

    /// The content ended: a header without the empty line after it (a message without a body)
    /// still has its last field read.
    public mutating func finish() {
        guard !finished else { return }
        if !line.isEmpty { endLine() }
        endField()
        finished = true
    }

    private mutating func endField() {
        defer {
            field.removeAll(keepingCapacity: true)
            fieldTruncated = false
        }
        guard !fieldTruncated, let colon = field.firstIndex(of: 58) else { return }
        let name = Self.trimmed(field[..<colon])
        let value = Self.trimmed(field[(colon + 1)...])
        if Self.equalsIgnoringCase(name, "tls-required"), Self.equalsIgnoringCase(value, "no") {
            tlsRequiredNo = true
        }
    }

    static func trimmed(_ octets: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        var result = octets
        while let first = result.first, first == 32 || first == 9 { result = result.dropFirst() }
        while let last = result.last, last == 32 || last == 9 { result = result.dropLast() }
        return result
    }

    static func equalsIgnoringCase(_ octets: ArraySlice<UInt8>, _ lowercase: String) -> Bool {
        let wanted = Array(lowercase.utf8)
        guard octets.count == wanted.count else { return false }
        return zip(octets, wanted).allSatisfy { (($0 >= 65 && $0 <= 90) ? $0 + 32 : $0) == $1 }
    }
}
