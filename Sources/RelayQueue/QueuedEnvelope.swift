import SMTPCore

/// Everything the spool keeps about one message besides its content.
public struct QueuedEnvelope: Sendable, Codable, Hashable {
    /// Format version of this record: 2 since REQUIRETLS and `TLS-Required` (RFC 8689); version 1
    /// records (no such keys) still load, as messages without either.
    public var version: Int = QueuedEnvelope.currentVersion
    /// The version this release writes.
    public static let currentVersion = 2
    public var queueID: QueueID
    /// Arrival time, seconds since the Unix epoch (fractional).
    public var arrivalTime: Double
    /// The client's IP address as text.
    public var clientAddress: String
    /// The client's HELO/EHLO argument.
    public var heloName: String
    /// Sender, recipients with DSN parameters (RFC 3461), SIZE/BODY/SMTPUTF8/RET/ENVID.
    public var transaction: MailTransaction
    /// Size of the stored content in bytes, including the Received header this relay added.
    public var size: Int
    /// Set on messages tlsrelay wrote itself; nil for mail received over SMTP. (Absent in
    /// spools of earlier versions, which read as nil.)
    public var generated: GeneratedMessage?
    /// The message's header had `TLS-Required: No` (RFC 8689 §5): the sender asks that recipient
    /// TLS policies (DANE, MTA-STS) be ignored. Whether it is honoured is the planner's decision.
    public var tlsRequiredNo: Bool = false
    /// For a TLS report tlsrelay wrote (`generated == .tlsReport`): the policy domain it reports
    /// on, so that a bounce of it counts against that domain (RFC 8460 §5.3).
    public var tlsReportDomain: String?

    public init(queueID: QueueID, arrivalTime: Double, clientAddress: String, heloName: String,
                transaction: MailTransaction, size: Int) {
        self.queueID = queueID
        self.arrivalTime = arrivalTime
        self.clientAddress = clientAddress
        self.heloName = heloName
        self.transaction = transaction
        self.size = size
    }

    enum CodingKeys: String, CodingKey {
        case version, queueID, arrivalTime, clientAddress, heloName, transaction, size, generated, tlsRequiredNo, tlsReportDomain
    }

    /// - Throws: `DecodingError` when a key of version 1 is missing or mistyped, or the record
    ///   is of a version newer than this release knows.
    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        version = try container.decode(Int.self, forKey: .version)
        guard (1...Self.currentVersion).contains(version) else {
            throw DecodingError.dataCorruptedError(forKey: .version, in: container,
                                                   debugDescription: "envelope version \(version) is newer than this release (\(Self.currentVersion))")
        }
        queueID = try container.decode(QueueID.self, forKey: .queueID)
        arrivalTime = try container.decode(Double.self, forKey: .arrivalTime)
        clientAddress = try container.decode(String.self, forKey: .clientAddress)
        heloName = try container.decode(String.self, forKey: .heloName)
        transaction = try container.decode(MailTransaction.self, forKey: .transaction)
        size = try container.decode(Int.self, forKey: .size)
        generated = try container.decodeIfPresent(GeneratedMessage.self, forKey: .generated)
        tlsRequiredNo = try container.decodeIfPresent(Bool.self, forKey: .tlsRequiredNo) ?? false
        tlsReportDomain = try container.decodeIfPresent(String.self, forKey: .tlsReportDomain)
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(version, forKey: .version)
        try container.encode(queueID, forKey: .queueID)
        try container.encode(arrivalTime, forKey: .arrivalTime)
        try container.encode(clientAddress, forKey: .clientAddress)
        try container.encode(heloName, forKey: .heloName)
        try container.encode(transaction, forKey: .transaction)
        try container.encode(size, forKey: .size)
        try container.encodeIfPresent(generated, forKey: .generated)
        if tlsRequiredNo { try container.encode(true, forKey: .tlsRequiredNo) }
        try container.encodeIfPresent(tlsReportDomain, forKey: .tlsReportDomain)
    }
}

/// A message tlsrelay wrote itself.
public enum GeneratedMessage: String, Sendable, Codable, Hashable {
    /// A delivery status notification (RFC 3464): a bounce.
    case deliveryStatusNotification = "dsn"
    /// A TLS report (RFC 8460 §5.3), sent with `TLS-Required: No`.
    case tlsReport = "tls-report"
}
