import SMTPCore

/// Where the rule that shaped a delivery attempt comes from, for logs, alerts and metrics.
public enum PolicySource: String, Sendable, Hashable, CaseIterable {
    /// No policy: opportunistic STARTTLS (RFC 7435).
    case none
    /// DANE TLSA records (RFC 7672).
    case dane
    /// An MTA-STS policy (RFC 8461), enforce or testing.
    case mtaSTS = "mta-sts"
    /// A local `[[policy.domain]]` level.
    case local
    /// Downgrade memory ("trust on first use"): the security achieved before.
    case memory = "tofu"
    /// The sender's REQUIRETLS (RFC 8689 §4.2.1): authenticated TLS to a next hop that takes
    /// REQUIRETLS, or a bounce.
    case requireTLS = "requiretls"
    /// The sender's `TLS-Required: No` (RFC 8689 §5), honoured: no recipient policy applied.
    case tlsRequiredNo = "tls-required-no"
}

/// RFC 8460 §4.3 result types: why a TLS negotiation or a policy lookup failed.
public enum TLSRPTResultType: String, Sendable, Hashable, Codable, CaseIterable {
    // §4.3.1 negotiation failures
    case starttlsNotSupported = "starttls-not-supported"
    case certificateHostMismatch = "certificate-host-mismatch"
    case certificateExpired = "certificate-expired"
    case certificateNotTrusted = "certificate-not-trusted"
    case validationFailure = "validation-failure"
    // §4.3.2 policy failures
    case tlsaInvalid = "tlsa-invalid"
    case dnssecInvalid = "dnssec-invalid"
    case daneRequired = "dane-required"
    case stsPolicyFetchError = "sts-policy-fetch-error"
    case stsPolicyInvalid = "sts-policy-invalid"
    case stsWebPKIInvalid = "sts-webpki-invalid"
}

/// The security a delivery achieved (or that an attempt is sure to achieve), weakest first.
/// Also the unit of a policy floor.
public enum AchievedSecurity: String, Sendable, Codable, Comparable, CaseIterable {
    /// In clear.
    case none
    /// TLS, certificate not authenticated.
    case tls
    /// TLS authenticated by WebPKI for the MX host name (as MTA-STS requires, RFC 8461 §4.2).
    case mtaSTS = "mta-sts"
    /// TLS authenticated by a DANE TLSA record (RFC 7672).
    case dane

    var rank: Int {
        switch self {
        case .none: return 0
        case .tls: return 1
        case .mtaSTS: return 2
        case .dane: return 3
        }
    }

    public static func < (lhs: AchievedSecurity, rhs: AchievedSecurity) -> Bool { lhs.rank < rhs.rank }
}

/// DNSSEC status of one answer as the validating resolver reported it (RFC 4035 §4.3).
public enum DNSSECState: Sendable, Equatable {
    case secure
    case insecure
    /// Validation failed; `why` is the resolver's explanation.
    case bogus(why: String?)
}

/// A security event to report loudly (journald now; TLS-RPT and metrics later).
public struct PolicyAlert: Sendable, Equatable {
    /// RFC 8460 §4.3 result type.
    public var resultType: TLSRPTResultType
    /// The recipient (policy) domain.
    public var domain: String
    public var mxHost: String?
    public var address: String?
    /// The source of the policy that failed.
    public var policySource: PolicySource
    /// Human reason.
    public var reason: String
    /// True when the policy was enforced (mail deferred); false when only reported (MTA-STS
    /// testing, downgrade memory in report mode): the mail went ahead.
    public var enforced: Bool

    public init(resultType: TLSRPTResultType, domain: String, mxHost: String?, address: String?, policySource: PolicySource,
                reason: String, enforced: Bool) {
        self.resultType = resultType
        self.domain = domain
        self.mxHost = mxHost
        self.address = address
        self.policySource = policySource
        self.reason = reason
        self.enforced = enforced
    }
}

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
    /// Enhanced status code (RFC 3463), e.g. 4.7.5.
    public var status: EnhancedStatusCode
    /// Human reason for logs and the queue listing.
    public var reason: String
    /// `name[address]:port` of the host involved, if any.
    public var remoteMTA: String?
    /// The remote's own reply text ("550 5.1.1 ..."), for the DSN's Diagnostic-Code.
    public var remoteReply: String?
    /// For a delivered recipient: the protection the session had (`none` = in clear).
    public var security: AchievedSecurity?
    /// The policy that decided the outcome: the source of the floor the attempt met (`.none`:
    /// a host plan without a floor, opportunistic) or that refused it; nil when no host was
    /// planned (DNS failure, null MX, a suspended destination).
    public var policy: PolicySource?

    public init(kind: Kind, status: EnhancedStatusCode, reason: String, remoteMTA: String? = nil, remoteReply: String? = nil) {
        self.kind = kind
        self.status = status
        self.reason = reason
        self.remoteMTA = remoteMTA
        self.remoteReply = remoteReply
    }

    public static func deferred(_ status: EnhancedStatusCode, _ reason: String, remoteMTA: String? = nil) -> RecipientOutcome {
        RecipientOutcome(kind: .deferred, status: status, reason: reason, remoteMTA: remoteMTA)
    }

    public static func bounced(_ status: EnhancedStatusCode, _ reason: String, remoteMTA: String? = nil, remoteReply: String? = nil) -> RecipientOutcome {
        RecipientOutcome(kind: .bounced, status: status, reason: reason, remoteMTA: remoteMTA, remoteReply: remoteReply)
    }
}

extension EnhancedStatusCode {
    // RFC 3463 §3 codes of delivery decisions.
    /// 4.4.1 no answer from host.
    public static let noAnswerFromHost = EnhancedStatusCode(4, 4, 1)
    /// 4.4.3 directory server failure (a DNS lookup failed temporarily).
    public static let directoryServerFailure = EnhancedStatusCode(4, 4, 3)
    /// 4.4.4 unable to route (no usable address records).
    public static let unableToRoute = EnhancedStatusCode(4, 4, 4)
    /// 4.4.0 other or undefined network or routing status.
    public static let networkTemporary = EnhancedStatusCode(4, 4, 0)
    /// 4.5.0 other or undefined protocol status.
    public static let protocolTemporary = EnhancedStatusCode(4, 5, 0)
    /// 4.7.5 cryptographic failure: a TLS policy could not be met.
    public static let cryptographicFailure = EnhancedStatusCode(4, 7, 5)
    /// 5.1.2 bad destination system address (the domain does not exist).
    public static let badDestinationSystem = EnhancedStatusCode(5, 1, 2)
    /// 5.1.10 recipient address has a null MX (RFC 7505 §3).
    public static let nullMX = EnhancedStatusCode(5, 1, 10)
    /// 5.4.7 delivery time expired.
    public static let deliveryTimeExpired = EnhancedStatusCode(5, 4, 7)
}
