/// The body type declared with `BODY=` (RFC 6152 §2; BINARYMIME is not offered).
public enum BodyType: String, Sendable, Codable, Hashable {
    case sevenBit = "7BIT"
    case eightBitMIME = "8BITMIME"
}

/// `RET=` of RFC 3461 §4.3: what a DSN returns of the message.
public enum DSNReturn: String, Sendable, Codable, Hashable {
    case full = "FULL"
    case headers = "HDRS"
}

/// `NOTIFY=` of RFC 3461 §4.1: when a DSN is wanted for a recipient.
public struct DSNNotify: Sendable, Codable, Hashable {
    public var never: Bool
    public var success: Bool
    public var failure: Bool
    public var delay: Bool

    public init(never: Bool = false, success: Bool = false, failure: Bool = false, delay: Bool = false) {
        self.never = never
        self.success = success
        self.failure = failure
        self.delay = delay
    }

    /// Parses `NEVER` or a comma-separated list of `SUCCESS`, `FAILURE`, `DELAY` (case-insensitive);
    /// nil when NEVER is combined with others, a keyword repeats, or a keyword is unknown.
    public init?(parsing text: Substring) {
        self.init()
        let words = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.uppercased() }
        guard !words.isEmpty, Set(words).count == words.count else { return nil }
        for word in words {
            switch word {
            case "NEVER": never = true
            case "SUCCESS": success = true
            case "FAILURE": failure = true
            case "DELAY": delay = true
            default: return nil
            }
        }
        if never && words.count > 1 { return nil }
    }

    /// The parameter value as written on the wire.
    public var parameterValue: String {
        if never { return "NEVER" }
        var words: [String] = []
        if success { words.append("SUCCESS") }
        if failure { words.append("FAILURE") }
        if delay { words.append("DELAY") }
        return words.joined(separator: ",")
    }
}

/// `ORCPT=addr-type;xtext` of RFC 3461 §4.2, decoded.
public struct OriginalRecipient: Sendable, Codable, Hashable {
    public let addressType: String
    public let address: String

    public init(addressType: String, address: String) {
        self.addressType = addressType
        self.address = address
    }
}

/// One envelope recipient with its DSN parameters.
public struct Recipient: Sendable, Codable, Hashable {
    public let mailbox: Mailbox
    public var notify: DSNNotify?
    public var originalRecipient: OriginalRecipient?

    public init(mailbox: Mailbox, notify: DSNNotify? = nil, originalRecipient: OriginalRecipient? = nil) {
        self.mailbox = mailbox
        self.notify = notify
        self.originalRecipient = originalRecipient
    }
}

/// Parameters of `MAIL FROM` (RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8, RFC 3461 RET/ENVID,
/// RFC 8689 REQUIRETLS).
public struct MailParameters: Sendable, Codable, Hashable {
    /// Declared message size in bytes (RFC 1870 §3), if given.
    public var declaredSize: Int?
    public var body: BodyType?
    public var smtputf8: Bool = false
    public var ret: DSNReturn?
    public var envelopeID: String?
    /// `REQUIRETLS` (RFC 8689 §4.1): the message may travel only over TLS to MX hosts that are
    /// authenticated (DANE, or MTA-STS enforce) and that take REQUIRETLS in turn, or it bounces.
    /// Absent in envelopes written before this parameter existed, which read as false.
    public var requireTLS: Bool = false

    public init() {}

    enum CodingKeys: String, CodingKey {
        case declaredSize, body, smtputf8, ret, envelopeID, requireTLS
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        declaredSize = try container.decodeIfPresent(Int.self, forKey: .declaredSize)
        body = try container.decodeIfPresent(BodyType.self, forKey: .body)
        smtputf8 = try container.decodeIfPresent(Bool.self, forKey: .smtputf8) ?? false
        ret = try container.decodeIfPresent(DSNReturn.self, forKey: .ret)
        envelopeID = try container.decodeIfPresent(String.self, forKey: .envelopeID)
        requireTLS = try container.decodeIfPresent(Bool.self, forKey: .requireTLS) ?? false
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encodeIfPresent(declaredSize, forKey: .declaredSize)
        try container.encodeIfPresent(body, forKey: .body)
        try container.encode(smtputf8, forKey: .smtputf8)
        try container.encodeIfPresent(ret, forKey: .ret)
        try container.encodeIfPresent(envelopeID, forKey: .envelopeID)
        if requireTLS { try container.encode(true, forKey: .requireTLS) }
    }
}

/// The envelope of one mail transaction as it stands when DATA ends.
public struct MailTransaction: Sendable, Codable, Hashable {
    /// nil = the null reverse-path `<>` (RFC 5321 §4.5.5): no DSN is ever sent to it.
    public var sender: Mailbox?
    public var parameters: MailParameters
    public var recipients: [Recipient]

    public init(sender: Mailbox?, parameters: MailParameters, recipients: [Recipient] = []) {
        self.sender = sender
        self.parameters = parameters
        self.recipients = recipients
    }
}
