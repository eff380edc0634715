/// Per-message delivery progress, kept beside the queue file in `spool/state/<C>/<ID>`.
///
/// The queue file itself is never rewritten; this small record says which recipients are
/// done and when the next attempt is due. It is replaced atomically (write, fsync, rename,
/// fsync directory). A delivery is at-least-once: a recipient delivered just before a crash,
/// whose record was not yet written, is delivered again after restart.
public struct DeliveryRecord: Sendable, Codable, Equatable {
    public enum Status: String, Sendable, Codable {
        /// Not yet delivered; retried when due.
        case pending
        /// Accepted by the next hop (2xx after DATA).
        case delivered
        /// Failed permanently; a DSN was or will be sent (RFC 3464).
        case bounced
    }

    /// One recipient's progress; same order as the envelope's recipients.
    public struct RecipientState: Sendable, Codable, Equatable {
        public var status: Status = .pending
        /// The last reply or local reason, e.g. "host mx.example.net[192.0.2.1] said: 450 4.2.0 ...".
        public var lastReason: String?
        /// Enhanced status code of the last outcome, e.g. "4.7.5".
        public var lastStatusCode: String?
        /// The host that gave the last outcome, `name[address]:port`.
        public var remoteMTA: String?
        /// The remote's reply for the DSN's Diagnostic-Code, e.g. "550 5.1.1 no such user".
        public var diagnostic: String?
        /// The DSN queued for this recipient's failure; nil while none was (or none is wanted).
        public var dsnQueueID: QueueID?
        /// The delay DSN queued for this recipient (sent once, after `delay_warning_time`).
        public var delayDSNQueueID: QueueID?

        public init() {}
    }

    public var queueID: QueueID
    public var recipients: [RecipientState]
    /// Delivery attempts made so far.
    public var attempts: Int = 0
    /// When the next attempt is due, seconds since the epoch.
    public var nextAttempt: Double
    /// Administrator hold (`tlsrelayctl queue hold`): not attempted until released.
    public var held: Bool = false
    /// For a DSN just written: the message it reports on. Until that message's record names
    /// this DSN (or that message is gone), the DSN is not delivered; at start-up an unconfirmed
    /// one is deleted (its failures are still pending in the original and get a new DSN).
    public var awaitingConfirmationBy: QueueID?

    public init(queueID: QueueID, recipientCount: Int, nextAttempt: Double) {
        self.queueID = queueID
        self.recipients = Array(repeating: RecipientState(), count: recipientCount)
        self.nextAttempt = nextAttempt
    }

    /// Indexes of recipients still pending.
    public var pendingIndexes: [Int] { recipients.indices.filter { recipients[$0].status == .pending } }
    /// True when every recipient is delivered or bounced.
    public var isComplete: Bool { recipients.allSatisfy { $0.status != .pending } }
}
