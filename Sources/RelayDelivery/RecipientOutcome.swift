/// What one delivery attempt decided for one recipient.
public struct RecipientOutcome: Sendable, Equatable {
    public enum Kind: String, Sendable {
        /// Accepted by the next hop.
        case delivered
        /// Temporary failure: keep queued, retry later.
        case deferred
        /// Permanent failure: send a DSN to the sender (never for a policy failure).
        case bounced
    }

    public var kind: Kind
    /// Enhanced status code, e.g. "2.0.0", "4.7.5", "5.1.1" (RFC 3463).
    public var status: String
    /// Human reason for logs and the queue listing.
    public var reason: String
    /// `name[address]:port` of the host involved, if any.
    public var remoteMTA: String?
    /// The remote's own reply text ("550 5.1.1 ..."), for the DSN's Diagnostic-Code.
    public var remoteReply: String?

    public init(kind: Kind, status: String, reason: String, remoteMTA: String? = nil, remoteReply: String? = nil) {
        self.kind = kind
        self.status = status
        self.reason = reason
        self.remoteMTA = remoteMTA
        self.remoteReply = remoteReply
    }

    public static func deferred(_ status: String, _ reason: String, remoteMTA: String? = nil) -> RecipientOutcome {
        RecipientOutcome(kind: .deferred, status: status, reason: reason, remoteMTA: remoteMTA)
    }

    public static func bounced(_ status: String, _ reason: String, remoteMTA: String? = nil, remoteReply: String? = nil) -> RecipientOutcome {
        RecipientOutcome(kind: .bounced, status: status, reason: reason, remoteMTA: remoteMTA, remoteReply: remoteReply)
    }
}
