#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Name checks and rdata parsing. libunbound hands back rdata in network order, with domain
/// names uncompressed (its `ub_result.data` items), so every parser here works on one record's
/// bytes alone.
enum DNSWire {
    /// Validates a host or domain name given in text form and returns it lowercased without the
    /// trailing dot.
    ///
    /// Accepted: ASCII letters, digits, `-` and `_` (for `_25._tcp`, `_mta-sts`), labels of 1...63
    /// octets, at most 253 characters without the trailing dot (255 octets in wire form,
    /// RFC 1035 §2.3.4). Rejected: empty names, the root alone, empty labels, escapes, spaces,
    /// non-ASCII (IDNs must be given as A-labels, RFC 5890).
    /// - Throws: `DNSLookupError.resolverError` naming the problem.
    static func normalize(_ input: String) throws -> String {
        var s = input
        if s.hasSuffix(".") { s.removeLast() }
        func bad(_ why: String) -> DNSLookupError {
            .resolverError("invalid DNS name \"\(input)\": \(why)")
        }
        if s.isEmpty { throw bad("empty name") }
        let bytes = Array(s.utf8)
        if bytes.count > 253 { throw bad("longer than 253 characters") }
        var labelLength = 0
        var out = [UInt8]()
        out.reserveCapacity(bytes.count)
        for b in bytes {
            switch b {
            case UInt8(ascii: "."):
                if labelLength == 0 { throw bad("empty label") }
                labelLength = 0
                out.append(b)
                continue
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"):
                out.append(b)
            case UInt8(ascii: "A")...UInt8(ascii: "Z"):
                out.append(b | 0x20)
            default:
                throw bad("character \(b < 0x20 || b >= 0x7F ? "0x" + String(b, radix: 16) : "'\(Character(Unicode.Scalar(b)))'") not allowed")
            }
            labelLength += 1
            if labelLength > 63 { throw bad("label longer than 63 octets") }
        }
        if labelLength == 0 { throw bad("empty label") }
        return String(decoding: out, as: UTF8.self)
    }

    /// Lowercases a name reported by libunbound (e.g. `canonname`) and strips the trailing dot.
    static func presentation(_ text: String) -> String {
        var s = text.lowercased()
        if s.hasSuffix(".") { s.removeLast() }
        return s
    }

    /// Reads one uncompressed wire-format domain name (RFC 1035 §3.1) starting at `offset`.
    /// - Returns: the name (lowercased, no trailing dot, `""` for the root; unusual octets as
    ///   RFC 1035 §5.1 `\DDD` escapes) and the offset just past it.
    /// - Throws: `DNSWireError` on truncation, compression pointers or over-long names.
    static func readName(_ rdata: [UInt8], at offset: Int) throws -> (String, Int) {
        var pos = offset
        var out = [UInt8]()
        var wireLength = 0
        while true {
            guard pos < rdata.count else { throw DNSWireError("truncated domain name") }
            let len = Int(rdata[pos])
            pos += 1
            wireLength += 1 + len
            if wireLength > 255 { throw DNSWireError("domain name longer than 255 octets") }
            if len == 0 { break }
            guard len <= 63 else { throw DNSWireError("compressed or extended label type 0x\(String(len, radix: 16))") }
            guard pos + len <= rdata.count else { throw DNSWireError("truncated label") }
            if !out.isEmpty { out.append(UInt8(ascii: ".")) }
            for b in rdata[pos..<pos + len] {
                switch b {
                case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                     UInt8(ascii: "-"), UInt8(ascii: "_"):
                    out.append(b)
                case UInt8(ascii: "A")...UInt8(ascii: "Z"):
                    out.append(b | 0x20)
                default:
                    out.append(UInt8(ascii: "\\"))
                    let digits = String(b)
                    out.append(contentsOf: Array(repeating: UInt8(ascii: "0"), count: 3 - digits.count))
                    out.append(contentsOf: digits.utf8)
                }
            }
            pos += len
        }
        return (String(decoding: out, as: UTF8.self), pos)
    }

    /// MX rdata: 16-bit preference, then the exchange name (RFC 1035 §3.3.9).
    static func mx(_ rdata: [UInt8]) throws -> MXRecord {
        guard rdata.count >= 3 else { throw DNSWireError("MX rdata shorter than 3 octets") }
        let preference = UInt16(rdata[0]) << 8 | UInt16(rdata[1])
        let (exchange, end) = try readName(rdata, at: 2)
        guard end == rdata.count else { throw DNSWireError("trailing octets after MX exchange") }
        return MXRecord(preference: preference, exchange: exchange)
    }

    /// TLSA rdata: usage, selector, matching type (one octet each), then the association data
    /// (RFC 6698 §2.1). Rdata shorter than the three fixed octets gives a record that is not
    /// well formed: unusable, and no reason to lose the other records of the RRset (RFC 7672
    /// §3.1.3).
    static func tlsa(_ rdata: [UInt8]) -> TLSARecord {
        TLSARecord(rdata: rdata)
    }

    /// PTR rdata: one domain name (RFC 1035 §3.3.12), lowercased, without trailing dot.
    static func ptr(_ rdata: [UInt8]) throws -> String {
        let (name, end) = try readName(rdata, at: 0)
        guard end == rdata.count else { throw DNSWireError("trailing octets after PTR name") }
        return name.lowercased()
    }

    /// The reverse-lookup name of an address: `4.3.2.1.in-addr.arpa` (RFC 1035 §3.5) or the
    /// nibbles under `ip6.arpa` (RFC 3596 §2.5); nil for anything that is not an address.
    static func reverseName(_ address: String) -> String? {
        var v4 = in_addr()
        if inet_pton(AF_INET, address, &v4) == 1 {
            let bytes = withUnsafeBytes(of: v4.s_addr) { Array($0) }
            return bytes.reversed().map { String($0) }.joined(separator: ".") + ".in-addr.arpa"
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, address, &v6) == 1 {
            let bytes = withUnsafeBytes(of: v6) { Array($0) }
            let digits = Array("0123456789abcdef")
            var nibbles: [String] = []
            for byte in bytes.reversed() {
                nibbles.append(String(digits[Int(byte & 0x0F)]))
                nibbles.append(String(digits[Int(byte >> 4)]))
            }
            return nibbles.joined(separator: ".") + ".ip6.arpa"
        }
        return nil
    }

    /// True when two address texts name the same address (IPv6 spellings differ).
    static func sameAddress(_ a: String, _ b: String) -> Bool {
        if a.lowercased() == b.lowercased() { return true }
        var x = in6_addr(), y = in6_addr()
        return inet_pton(AF_INET6, a, &x) == 1 && inet_pton(AF_INET6, b, &y) == 1
            && withUnsafeBytes(of: x, { Array($0) }) == withUnsafeBytes(of: y, { Array($0) })
    }

    /// TXT rdata: one or more length-prefixed character strings (RFC 1035 §3.3.14), concatenated
    /// without separators as RFC 7208 §3.3 and RFC 8461 §3.1 require, decoded as UTF-8 (invalid
    /// sequences become U+FFFD).
    static func txt(_ rdata: [UInt8]) throws -> String {
        var pos = 0
        var out = [UInt8]()
        while pos < rdata.count {
            let len = Int(rdata[pos])
            pos += 1
            guard pos + len <= rdata.count else { throw DNSWireError("truncated TXT string") }
            out.append(contentsOf: rdata[pos..<pos + len])
            pos += len
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// A (4 octets) or AAAA (16 octets) rdata as text via `inet_ntop`.
    static func address(_ rdata: [UInt8], type: DNSRecordType) throws -> String {
        let family: Int32
        switch (type, rdata.count) {
        case (.a, 4): family = AF_INET
        case (.aaaa, 16): family = AF_INET6
        default: throw DNSWireError("\(type) rdata of \(rdata.count) octets")
        }
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        let ok = rdata.withUnsafeBytes { raw in
            buffer.withUnsafeMutableBufferPointer { out in
                inet_ntop(family, raw.baseAddress, out.baseAddress, socklen_t(out.count)) != nil
            }
        }
        guard ok else { throw DNSWireError("inet_ntop failed") }
        return String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) },
                      as: UTF8.self)
    }
}

/// Malformed record data (internal; surfaced as `DNSLookupError.resolverError`).
struct DNSWireError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
