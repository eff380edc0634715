/// Syntax checks for the `Domain` and `address-literal` productions of RFC 5321 §4.1.2 and
/// their internationalised forms (RFC 6531 §3.3).
public enum DomainSyntax {
    /// True when `text` is a syntactically valid domain: dot-separated labels of letters, digits
    /// and hyphens (no leading or trailing hyphen), each 1 to 63 octets, 255 octets in all
    /// (RFC 5321 §4.1.2, §4.5.3.1.2). With `allowUTF8`, labels may contain non-ASCII UTF-8
    /// (U-labels, RFC 6531 §3.3). A single trailing dot is not allowed in SMTP.
    public static func isValidDomain(_ text: Substring, allowUTF8: Bool) -> Bool {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty, bytes.count <= 255 else { return false }
        for label in bytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
            guard !label.isEmpty, label.count <= 63 else { return false }
            guard label.first != UInt8(ascii: "-"), label.last != UInt8(ascii: "-") else { return false }
            for byte in label {
                if byte >= 0x80 {
                    if !allowUTF8 { return false }
                    continue
                }
                let isAlnum = (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                if !(isAlnum || byte == UInt8(ascii: "-")) { return false }
            }
        }
        return true
    }

    /// True when `text` is an `address-literal`: `[IPv4]` or `[IPv6:...]` (RFC 5321 §4.1.3).
    public static func isAddressLiteral(_ text: Substring) -> Bool {
        guard text.first == "[", text.last == "]", text.count > 2 else { return false }
        let inner = text.dropFirst().dropLast()
        if inner.lowercased().hasPrefix("ipv6:") {
            let v6 = inner.dropFirst(5)
            return !v6.isEmpty && v6.allSatisfy { $0.isHexDigit || $0 == ":" || $0 == "." } && v6.contains(":")
        }
        let octets = inner.split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4 else { return false }
        return octets.allSatisfy { part in
            guard (1...3).contains(part.count), part.allSatisfy(\.isASCII), let value = Int(part) else { return false }
            return value <= 255
        }
    }
}
