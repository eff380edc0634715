import MTASTSCore

/// The policy a TLS session ran under, as RFC 8460 §4.4 names it in a report's `policy` object.
public struct TLSRPTPolicy: Sendable, Hashable, Codable {
    /// RFC 8460 §4.4 `policy-type`.
    public enum PolicyType: String, Sendable, Hashable, Codable, CaseIterable {
        /// DANE TLSA records (RFC 7672).
        case tlsa
        /// An MTA-STS policy (RFC 8461), enforce or testing.
        case sts
        /// Neither applied.
        case noPolicyFound = "no-policy-found"
    }

    public var type: PolicyType
    /// `policy-string`: the TLSA records in presentation form, or the MTA-STS policy's lines;
    /// empty for `no-policy-found`.
    public var strings: [String]
    /// `policy-domain`: the recipient domain (A-label form).
    public var domain: String
    /// `mx-host`: for `sts`, the policy's `mx` patterns; for `tlsa`, the MX host whose records
    /// these are; empty otherwise.
    public var mxHosts: [String]

    public init(type: PolicyType, strings: [String], domain: String, mxHosts: [String]) {
        self.type = type
        self.strings = strings
        self.domain = domain
        self.mxHosts = mxHosts
    }

    /// The lines of an MTA-STS policy as it was published (RFC 8461 §3.2 field order).
    public static func stsLines(_ policy: STSPolicy) -> [String] {
        ["version: STSv1", "mode: \(policy.mode.rawValue)"] + policy.mx.map { "mx: \($0)" } + ["max_age: \(policy.maxAge)"]
    }
}

/// RFC 8460 §4.3/§4.4 `failure-details` of one failed session, without its count.
public struct TLSRPTFailure: Sendable, Hashable, Codable {
    public var resultType: TLSRPTResultType
    /// This relay's address on the connection (`sending-mta-ip`); nil when no connection was made.
    public var sendingMTAIP: String?
    public var receivingMXHostname: String?
    /// The MX host's greeting name, when it was read (`receiving-mx-helo`).
    public var receivingMXHelo: String?
    public var receivingIP: String?
    /// A URI with more about the failure (`additional-information`, RFC 8460 §4.4); tlsrelay has none.
    public var additionalInformation: String?
    /// The error, as text (`failure-reason-code`, RFC 8460 §4.4: "a TLS-related error code or
    /// error message"): OpenSSL's `X509_V_ERR_n:` where there is one, then the reason in words.
    public var failureReasonCode: String?

    public init(resultType: TLSRPTResultType, sendingMTAIP: String? = nil, receivingMXHostname: String? = nil, receivingMXHelo: String? = nil,
                receivingIP: String? = nil, additionalInformation: String? = nil, failureReasonCode: String? = nil) {
        self.resultType = resultType
        self.sendingMTAIP = sendingMTAIP
        self.receivingMXHostname = receivingMXHostname
        self.receivingMXHelo = receivingMXHelo
        self.receivingIP = receivingIP
        self.additionalInformation = additionalInformation
        self.failureReasonCode = failureReasonCode
    }
}

/// One TLS negotiation, or one policy lookup that failed, counted for the recipient domain's
/// daily TLS report (RFC 8460 §4): a success or a failure against the policy that applied.
public struct TLSSessionResult: Sendable, Hashable, Codable {
    public var policy: TLSRPTPolicy
    /// nil: a successful session.
    public var failure: TLSRPTFailure?

    public init(policy: TLSRPTPolicy, failure: TLSRPTFailure?) {
        self.policy = policy
        self.failure = failure
    }

    public var isSuccess: Bool { failure == nil }
}
