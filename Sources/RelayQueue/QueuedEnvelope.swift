import SMTPCore

/// Everything the spool keeps about one message besides its content.
public struct QueuedEnvelope: Sendable, Codable, Hashable {
    /// Format version of this record.
    public var version: Int = 1
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

    public init(queueID: QueueID, arrivalTime: Double, clientAddress: String, heloName: String,
                transaction: MailTransaction, size: Int) {
        self.queueID = queueID
        self.arrivalTime = arrivalTime
        self.clientAddress = clientAddress
        self.heloName = heloName
        self.transaction = transaction
        self.size = size
    }
}

/// A message tlsrelay wrote itself.
public enum GeneratedMessage: String, Sendable, Codable, Hashable {
    /// A delivery status notification (RFC 3464): a bounce.
    case deliveryStatusNotification = "dsn"
}
