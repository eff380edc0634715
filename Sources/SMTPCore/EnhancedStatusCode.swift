/// An enhanced mail system status code, `class.subject.detail` (RFC 3463 §2, registry RFC 5248).
///
/// `klass` is 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
public struct EnhancedStatusCode: Sendable, Hashable, CustomStringConvertible {
    public let klass: Int
    public let subject: Int
    public let detail: Int

    public init(_ klass: Int, _ subject: Int, _ detail: Int) {
        self.klass = klass
        self.subject = subject
        self.detail = detail
    }

    /// Parses `"4.7.5"`; returns nil for anything else (RFC 3463 §2 grammar: class "." 1*3digit "." 1*3digit).
    public init?(parsing text: Substring) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3,
              let k = Int(parts[0]), [2, 4, 5].contains(k), parts[0].count == 1,
              let s = Int(parts[1]), (1...3).contains(parts[1].count),
              let d = Int(parts[2]), (1...3).contains(parts[2].count),
              parts[1].allSatisfy(\.isASCII), parts[2].allSatisfy(\.isASCII)
        else { return nil }
        self.init(k, s, d)
    }

    public var description: String { "\(klass).\(subject).\(detail)" }

    // RFC 3463 §3 and RFC 5248: the codes this relay uses.
    public static let ok = EnhancedStatusCode(2, 0, 0)
    public static let senderOK = EnhancedStatusCode(2, 1, 0)
    public static let destinationOK = EnhancedStatusCode(2, 1, 5)
    public static let otherProtocolStatus = EnhancedStatusCode(2, 5, 0)
    public static let invalidCommand = EnhancedStatusCode(5, 5, 1)
    public static let syntaxError = EnhancedStatusCode(5, 5, 2)
    public static let tooManyRecipientsTemporary = EnhancedStatusCode(4, 5, 3)
    public static let invalidArguments = EnhancedStatusCode(5, 5, 4)
    public static let badDestinationSyntax = EnhancedStatusCode(5, 1, 3)
    public static let badSenderSyntax = EnhancedStatusCode(5, 1, 7)
    public static let messageTooBig = EnhancedStatusCode(5, 3, 4)
    public static let systemNotAccepting = EnhancedStatusCode(4, 3, 2)
    public static let otherMailSystemTemporary = EnhancedStatusCode(4, 3, 0)
    public static let insufficientStorage = EnhancedStatusCode(4, 3, 1)
    public static let deliveryNotAuthorized = EnhancedStatusCode(5, 7, 1)
    public static let securityTemporary = EnhancedStatusCode(4, 7, 0)
    public static let nonASCIINotPermitted = EnhancedStatusCode(5, 6, 7)
    public static let mediaNotSupported = EnhancedStatusCode(5, 6, 1)
    public static let contentRejected = EnhancedStatusCode(5, 6, 0)
    public static let timeout = EnhancedStatusCode(4, 4, 2)
    /// 5.7.0 other security status: "Must issue a STARTTLS command first" (RFC 3207 §4).
    public static let securityPermanent = EnhancedStatusCode(5, 7, 0)
    /// 5.7.10 encryption needed (RFC 5248): REQUIRETLS in a session without TLS (RFC 8689 §4.1).
    public static let encryptionNeeded = EnhancedStatusCode(5, 7, 10)
    /// 5.7.30 REQUIRETLS support required (RFC 8689 §7.4): no MX host could take a REQUIRETLS
    /// message as the extension demands.
    public static let requireTLSSupportRequired = EnhancedStatusCode(5, 7, 30)
}
