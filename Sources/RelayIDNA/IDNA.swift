import CIDN2
#if canImport(Glibc)
import Glibc
#endif

/// Internationalized domain names (IDNA 2008, RFC 5890/5891) through libidn2, with the UTS #46
/// mapping libidn2 applies (non-transitional: `ß` stays `ß`).
public enum IDNA {
    /// Why a domain has no A-label form.
    public struct ConversionError: Error, Sendable, Equatable, CustomStringConvertible {
        public let domain: String
        /// libidn2's reason (`idn2_strerror`).
        public let reason: String
        public var description: String { "\(domain) is not a valid internationalized domain name: \(reason)" }
    }

    /// The A-label (ASCII) form of `domain`, lowercased (RFC 5891 §4; UTS #46 non-transitional
    /// mapping, NFC first). An all-ASCII domain is returned lowercased, as it is (A-labels stay).
    /// - Throws: `ConversionError` for a name IDNA 2008 does not allow (disallowed code points,
    ///   bad bidi, a label over 63 octets, ...).
    public static func toASCII(_ domain: String) throws(ConversionError) -> String {
        if domain.utf8.allSatisfy({ $0 < 0x80 }) { return domain.lowercased() }
        var output: UnsafeMutablePointer<CChar>?
        let flags = Int32(IDN2_NFC_INPUT.rawValue | IDN2_NONTRANSITIONAL.rawValue)
        let status = idn2_to_ascii_8z(domain, &output, flags)
        guard status == Int32(IDN2_OK.rawValue), let output else {
            let reason = String(cString: idn2_strerror(status))
            throw ConversionError(domain: domain, reason: reason)
        }
        defer { free(output) }
        return String(cString: output).lowercased()
    }

    /// The U-label form of `domain` for people (logs), or nil when it has no `xn--` label or
    /// does not convert.
    public static func toUnicode(_ domain: String) -> String? {
        guard domain.lowercased().split(separator: ".").contains(where: { $0.hasPrefix("xn--") }) else { return nil }
        var output: UnsafeMutablePointer<CChar>?
        let status = idn2_to_unicode_8z8z(domain, &output, 0)
        guard status == Int32(IDN2_OK.rawValue), let output else { return nil }
        defer { free(output) }
        return String(cString: output)
    }

    /// `bücher.example (xn--bcher-kva.example)` when the two forms differ, else the name.
    /// - Parameters:
    ///   - written: the domain as the sender wrote it.
    ///   - ascii: its A-label form.
    public static func display(_ written: String, ascii: String) -> String {
        written.lowercased() == ascii ? ascii : "\(written) (\(ascii))"
    }
}
