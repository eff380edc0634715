/// A mailbox `local-part@domain` as written on the SMTP envelope (RFC 5321 §4.1.2).
///
/// The local part is kept exactly as the client wrote it (including quotes); only the
/// receiving domain interprets it (RFC 5321 §2.4).
public struct Mailbox: Sendable, Hashable, Codable, CustomStringConvertible {
    public let localPart: String
    /// The domain as the client wrote it (a U-label form with SMTPUTF8).
    public let domain: String
    /// The A-label form of an internationalized `domain` (RFC 5890), set at acceptance; nil
    /// when `domain` is ASCII. Routing, DNS and every policy use it.
    public var asciiDomain: String?

    public init(localPart: String, domain: String, asciiDomain: String? = nil) {
        self.localPart = localPart
        self.domain = domain
        self.asciiDomain = asciiDomain
    }

    /// `local-part@domain`, as written.
    public var address: String { "\(localPart)@\(domain)" }
    public var description: String { address }

    /// The domain for routing: the A-label form, lowercased.
    public var routingDomain: String { (asciiDomain ?? domain).lowercased() }

    /// `local-part@` the A-label domain: what goes on the wire to the next hop.
    public var asciiAddress: String { "\(localPart)@\(asciiDomain ?? domain)" }

    /// True when the mailbox can be written without SMTPUTF8: an ASCII local part and a domain
    /// that is ASCII or has an A-label form (RFC 6531 §3.2; an internationalized domain alone
    /// does not need SMTPUTF8).
    public var isASCIIOnTheWire: Bool {
        localPart.utf8.allSatisfy { $0 < 0x80 } && (asciiDomain != nil || domain.utf8.allSatisfy { $0 < 0x80 })
    }

    /// True when neither part contains non-ASCII characters; a non-ASCII mailbox needs SMTPUTF8
    /// (RFC 6531 §3.2).
    public var isASCII: Bool { localPart.utf8.allSatisfy { $0 < 0x80 } && domain.utf8.allSatisfy { $0 < 0x80 } }

    /// True when the domain is an address literal such as `[192.0.2.1]` (RFC 5321 §4.1.3).
    public var hasAddressLiteral: Bool { domain.hasPrefix("[") }
}

/// Why a path was rejected.
public enum PathSyntaxError: Error, Sendable, Equatable {
    case missingAngleBrackets
    case badLocalPart
    case badDomain
    case tooLong
    case nonASCIIWithoutSMTPUTF8
}

/// Parsers for `Reverse-path` and `Forward-path` (RFC 5321 §4.1.2).
public enum PathParser {
    /// Largest local part in octets (RFC 5321 §4.5.3.1.1).
    public static let maxLocalPartOctets = 64
    /// Largest path in octets including the angle brackets (RFC 5321 §4.5.3.1.3).
    public static let maxPathOctets = 256

    /// Parses `<>` (returns nil: the null reverse-path) or `<[A-d-l:]Mailbox>`.
    /// A source route (`@a,@b:`) is accepted and ignored (RFC 5321 §4.1.1.3, appendix C).
    /// - Parameter allowUTF8: true when the transaction uses SMTPUTF8 (RFC 6531 §3.3).
    /// - Throws: `PathSyntaxError` for anything else.
    public static func parseReversePath(_ text: Substring, allowUTF8: Bool) throws -> Mailbox? {
        if text == "<>" { return nil }
        return try parsePath(text, allowUTF8: allowUTF8)
    }

    /// Parses `<[A-d-l:]Mailbox>` (RFC 5321 §4.1.2). `<Postmaster>` without a domain is not
    /// accepted: this relay has no local mailboxes.
    /// - Throws: `PathSyntaxError`.
    public static func parsePath(_ text: Substring, allowUTF8: Bool) throws -> Mailbox {
        guard text.utf8.count <= maxPathOctets else { throw PathSyntaxError.tooLong }
        guard text.first == "<", text.last == ">", text.count >= 2 else { throw PathSyntaxError.missingAngleBrackets }
        var inner = text.dropFirst().dropLast()
        if inner.first == "@" {
            // A-d-l = At-domain *( "," At-domain ) ":"
            guard let colon = inner.firstIndex(of: ":") else { throw PathSyntaxError.badDomain }
            let route = inner[..<colon]
            for hop in route.split(separator: ",", omittingEmptySubsequences: false) {
                guard hop.first == "@", DomainSyntax.isValidDomain(hop.dropFirst(), allowUTF8: allowUTF8) else {
                    throw PathSyntaxError.badDomain
                }
            }
            inner = inner[inner.index(after: colon)...]
        }
        let mailbox = try parseMailbox(inner, allowUTF8: allowUTF8)
        return mailbox
    }

    /// Parses `Local-part "@" ( Domain / address-literal )`.
    /// - Throws: `PathSyntaxError`.
    public static func parseMailbox(_ text: Substring, allowUTF8: Bool) throws -> Mailbox {
        if !allowUTF8, text.utf8.contains(where: { $0 >= 0x80 }) { throw PathSyntaxError.nonASCIIWithoutSMTPUTF8 }
        // Control and formatting characters (C1 controls, line/paragraph separators, bidi
        // overrides) would end up in logs and trace headers: never part of an address.
        if text.unicodeScalars.contains(where: { scalar in
            switch scalar.properties.generalCategory {
            case .control, .format, .lineSeparator, .paragraphSeparator, .surrogate, .unassigned, .privateUse: return true
            default: return false
            }
        }) { throw PathSyntaxError.badLocalPart }
        let bytes = Array(text.utf8)
        var index = 0
        // Local part: quoted string or dot-string.
        if bytes.first == UInt8(ascii: "\"") {
            index = 1
            var closed = false
            while index < bytes.count {
                let byte = bytes[index]
                if byte == UInt8(ascii: "\\") {
                    guard index + 1 < bytes.count, bytes[index + 1] >= 32, bytes[index + 1] <= 126 || bytes[index + 1] >= 0x80 else {
                        throw PathSyntaxError.badLocalPart
                    }
                    index += 2
                    continue
                }
                if byte == UInt8(ascii: "\"") { closed = true; index += 1; break }
                // qtextSMTP = %d32-33 / %d35-91 / %d93-126 (and UTF-8 with SMTPUTF8)
                guard (byte >= 32 && byte <= 126) || byte >= 0x80 else { throw PathSyntaxError.badLocalPart }
                index += 1
            }
            guard closed else { throw PathSyntaxError.badLocalPart }
        } else {
            var previousWasDot = true
            while index < bytes.count, bytes[index] != UInt8(ascii: "@") {
                let byte = bytes[index]
                if byte == UInt8(ascii: ".") {
                    if previousWasDot { throw PathSyntaxError.badLocalPart }
                    previousWasDot = true
                } else {
                    guard isAtext(byte) else { throw PathSyntaxError.badLocalPart }
                    previousWasDot = false
                }
                index += 1
            }
            if previousWasDot { throw PathSyntaxError.badLocalPart }
        }
        guard index < bytes.count, bytes[index] == UInt8(ascii: "@") else { throw PathSyntaxError.badLocalPart }
        guard index <= maxLocalPartOctets else { throw PathSyntaxError.tooLong }
        let localPart = String(decoding: bytes[0..<index], as: UTF8.self)
        let domain = String(decoding: bytes[(index + 1)...], as: UTF8.self)
        let domainText = Substring(domain)
        guard DomainSyntax.isValidDomain(domainText, allowUTF8: allowUTF8) || DomainSyntax.isAddressLiteral(domainText) else {
            throw PathSyntaxError.badDomain
        }
        // An IP address must be written as an address literal, [192.0.2.1] (RFC 5321 §4.1.3):
        // a domain whose last label is all digits is not a domain name.
        if !domainText.hasPrefix("["), let last = domainText.split(separator: ".").last, last.allSatisfy({ $0.isASCII && $0.isNumber }) {
            throw PathSyntaxError.badDomain
        }
        return Mailbox(localPart: localPart, domain: domain)
    }

    /// `atext` of RFC 5322 §3.2.3 plus UTF-8 octets (RFC 6531 §3.3).
    static func isAtext(_ byte: UInt8) -> Bool {
        if byte >= 0x80 { return true }
        if (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A) { return true }
        return Array("!#$%&'*+-/=?^_`{|}~".utf8).contains(byte)
    }
}

/// Why a domain has no A-label form (from the IDNA converter the server is given).
public struct DomainConversionFailure: Error, Sendable, Equatable {
    public let reason: String
    public init(reason: String) { self.reason = reason }
}
