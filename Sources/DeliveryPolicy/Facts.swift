import MTASTSCore
import SMTPCore

/// The facts a driver looks up and feeds to `DeliveryPlanner`. Each is the validated result of
/// one lookup; none carries I/O.

/// The MX answer of the destination domain (RFC 5321 §5.1, RFC 7505, RFC 7672 §2.2.1).
public enum MXFact: Sendable, Equatable {
    /// The lookup did not complete (SERVFAIL, timeout): never read as "no MX".
    case failed(reason: String)
    /// The answer failed DNSSEC validation.
    case bogus(why: String?)
    /// The domain does not exist (NXDOMAIN).
    case nxdomain
    /// `MX 0 .`: the domain accepts no mail.
    case nullMX
    /// The hosts to try, in order (preference ascending, equal preferences shuffled). `implicit`
    /// when the domain had no MX records and is its own host. `secure`: the RRset (or NODATA) was
    /// DNSSEC-secure.
    case hosts([String], secure: Bool, implicit: Bool)
}

/// One address family's lookup for an MX host.
public enum AddressLookup: Sendable, Equatable {
    /// Records (possibly none: NODATA/NXDOMAIN) with the answer's DNSSEC status.
    /// `canonicalName` is the name after CNAME expansion (RFC 7672 §2.2.3).
    case answer(records: [String], status: DNSSECState, canonicalName: String)
    /// The lookup failed (SERVFAIL, timeout).
    case failed(reason: String)
}

/// The A and AAAA lookups of one MX host.
public struct AddressFact: Sendable, Equatable {
    public var ipv4: AddressLookup
    public var ipv6: AddressLookup

    public init(ipv4: AddressLookup, ipv6: AddressLookup) {
        self.ipv4 = ipv4
        self.ipv6 = ipv6
    }
}

/// One TLSA record as served (RFC 6698 §2.1). `wellFormed` is false for rdata shorter than the
/// three fixed octets: such a record is unusable, no more (RFC 7672 §3.1.3).
public struct TLSAEntry: Sendable, Hashable, CustomStringConvertible {
    public var usage: UInt8
    public var selector: UInt8
    public var matchingType: UInt8
    public var data: [UInt8]
    public var wellFormed: Bool

    public init(usage: UInt8, selector: UInt8, matchingType: UInt8, data: [UInt8], wellFormed: Bool = true) {
        self.usage = usage
        self.selector = selector
        self.matchingType = matchingType
        self.data = data
        self.wellFormed = wellFormed
    }

    /// DANE-TA(2) or DANE-EE(3), selector 0 or 1, matching type 0/1/2 with the right digest
    /// length, or for matching type 0 a DER SEQUENCE (a certificate or SubjectPublicKeyInfo) that
    /// spans the whole data (RFC 7672 §3.1.3, RFC 6698 §2.1). Anything else cannot authenticate.
    public var isUsable: Bool {
        guard wellFormed, usage == 2 || usage == 3, selector <= 1 else { return false }
        switch matchingType {
        case 0: return Self.isDERSequence(data)
        case 1: return data.count == 32
        case 2: return data.count == 64
        default: return false
        }
    }

    /// A DER SEQUENCE whose length field matches the data exactly (X.690 §8.1.3).
    static func isDERSequence(_ bytes: [UInt8]) -> Bool {
        guard bytes.count >= 2, bytes[0] == 0x30 else { return false }
        let first = Int(bytes[1])
        if first < 0x80 { return first > 0 && bytes.count == 2 + first }
        let octets = first & 0x7F
        guard (1...4).contains(octets), bytes.count > 2 + octets else { return false }
        var length = 0
        for byte in bytes[2..<(2 + octets)] { length = length << 8 | Int(byte) }
        return length >= 0x80 && bytes.count == 2 + octets + length
    }

    public var description: String {
        let hex = data.map { byte -> String in
            let digits = Array("0123456789abcdef")
            return String([digits[Int(byte >> 4)], digits[Int(byte & 0x0F)]])
        }.joined()
        return wellFormed ? "\(usage) \(selector) \(matchingType) \(hex)" : "malformed record (\(data.count) octets: \(hex))"
    }
}

/// The TLSA lookup at `_25._tcp.<base>`.
public enum TLSAFact: Sendable, Equatable {
    /// Records (none: secure or insecure denial) with the answer's DNSSEC status.
    case answer(records: [TLSAEntry], status: DNSSECState)
    /// The lookup failed (SERVFAIL, timeout): for a secure host this is not a denial (RFC 7672 §2.1.1).
    case failed(reason: String)
}

/// What MTA-STS says about the destination domain now (RFC 8461 §3, §5.1).
public struct STSFact: Sendable, Equatable {
    /// The policy in force (enforce or testing), or nil.
    public var policy: STSPolicy?
    /// The policy came from the cache (a refresh may have failed).
    public var fromCache: Bool
    /// A discovery or fetch problem to report.
    public var problem: STSProblem?
    /// The TXT lookup failed temporarily and nothing usable is cached: defer (never "no policy").
    public var temporaryFailure: String?

    public struct STSProblem: Sendable, Equatable {
        public var resultType: TLSRPTResultType
        public var reason: String
        public init(resultType: TLSRPTResultType, reason: String) {
            self.resultType = resultType
            self.reason = reason
        }
    }

    public init(policy: STSPolicy?, fromCache: Bool = false, problem: STSProblem? = nil, temporaryFailure: String? = nil) {
        self.policy = policy
        self.fromCache = fromCache
        self.problem = problem
        self.temporaryFailure = temporaryFailure
    }

    public static let none = STSFact(policy: nil)
}

/// What the message's sender asked of its transport (RFC 8689), as the spool recorded it.
public struct SenderRequest: Sendable, Hashable {
    /// `MAIL FROM:<...> REQUIRETLS` (RFC 8689 §4).
    public var requireTLS: Bool
    /// The header field `TLS-Required: No` (RFC 8689 §5).
    public var tlsRequiredNo: Bool

    public init(requireTLS: Bool = false, tlsRequiredNo: Bool = false) {
        self.requireTLS = requireTLS
        self.tlsRequiredNo = tlsRequiredNo
    }

    /// No request: the recipient policies decide.
    public static let none = SenderRequest()
}

/// How the planner applies the sender's request to every host decision.
public enum SenderTLSMode: String, Sendable, CaseIterable {
    /// The recipient policies decide (no request, or `TLS-Required: No` not honoured).
    case standard
    /// REQUIRETLS (RFC 8689 §4.2.1): only MX hosts from a DNSSEC-secure MX answer (or listed by
    /// an MTA-STS enforce policy), authenticated by DANE or MTA-STS enforce, that announce
    /// REQUIRETLS; else a bounce with 5.7.30 once every MX was tried.
    case requireTLS = "requiretls"
    /// `TLS-Required: No` honoured (RFC 8689 §5): opportunistic TLS (STARTTLS whenever offered),
    /// no DANE, MTA-STS or downgrade memory enforced, nothing remembered.
    case policiesWaived = "tls-required-no"

    /// The mode for `request` (RFC 8689 §5: `TLS-Required: No` is ignored when REQUIRETLS is set).
    /// - Parameter honorTLSRequiredNo: `policy.honor_tls_required_no`.
    public init(_ request: SenderRequest, honorTLSRequiredNo: Bool) {
        if request.requireTLS { self = .requireTLS }
        else if request.tlsRequiredNo && honorTLSRequiredNo { self = .policiesWaived }
        else { self = .standard }
    }
}

/// A local per-domain level (Postfix's `smtp_tls_policy_maps` levels), weakest first.
public enum LocalLevel: String, Sendable, CaseIterable {
    /// Never STARTTLS.
    case none
    /// Opportunistic TLS; no DANE, no MTA-STS.
    case may
    /// TLS required, certificate not checked.
    case encrypt
    /// DANE when usable TLSA records exist, else opportunistic; MTA-STS ignored.
    case dane
    /// DANE required: without a usable TLSA record the mail is deferred.
    case daneOnly = "dane-only"
    /// TLS required with a WebPKI-valid certificate naming the MX host.
    case verify
}

/// The local level entry for the destination domain.
public struct LocalPolicyFact: Sendable, Equatable {
    public var level: LocalLevel
    public var reason: String?
    /// Seconds since the epoch after which it no longer applies; nil = never.
    public var expires: Double?
    /// The expiry as written in the configuration, for logs.
    public var expiresText: String?

    public init(level: LocalLevel, reason: String? = nil, expires: Double? = nil, expiresText: String? = nil) {
        self.level = level
        self.reason = reason
        self.expires = expires
        self.expiresText = expiresText
    }
}

/// Downgrade memory of the destination domain.
public struct MemoryFact: Sendable, Equatable {
    /// The strongest security achieved before.
    public var strongest: AchievedSecurity
    /// When a weaker delivery was first refused (seconds since the epoch): the grace window's start.
    public var firstRefused: Double?
    /// Set when the memory file exists but cannot be read: `strongest` is then `dane`, the
    /// strongest level it may have held (indeterminate state never lowers protection).
    public var unreadable: String?

    public init(strongest: AchievedSecurity, firstRefused: Double? = nil, unreadable: String? = nil) {
        self.strongest = strongest
        self.firstRefused = firstRefused
        self.unreadable = unreadable
    }
}

/// Whether the policy state the delivery depends on — downgrade memory and the MTA-STS policy
/// cache — could be read. Only a shared store (`[state] backend = "postgresql"`) can be
/// `unavailable`: the database unreachable or a statement failing is a fault like a failed DNS
/// lookup, so the delivery is deferred (4.4.3), never made as if nothing were remembered.
public enum PolicyStateFact: Sendable, Equatable {
    case available
    case unavailable(reason: String)
}

/// What downgrade memory does with a delivery weaker than remembered.
public enum MemoryMode: String, Sendable, CaseIterable {
    /// Alert, deliver anyway.
    case report
    /// Refuse (defer 4.7.5) for the grace window after the first refusal, then accept.
    case enforce
    /// Remember nothing.
    case off
}

/// What one connection attempt came to.
public struct AttemptResult: Sendable, Equatable {
    /// The TLS session, when STARTTLS and the handshake succeeded.
    public struct TLS: Sendable, Equatable {
        /// Authenticated as the attempt demanded (DANE match, or WebPKI chain and name).
        public var verified: Bool
        /// A DANE TLSA record matched.
        public var daneMatched: Bool

        public init(verified: Bool, daneMatched: Bool) {
            self.verified = verified
            self.daneMatched = daneMatched
        }
    }

    /// The TCP connection could not be made (refused, unreachable, timeout); the reason.
    public var connectFailure: String?
    /// The per-recipient results, keyed by recipient index (the attempt's `recipients`).
    public var recipients: [Int: ClientSession.RecipientResult]
    /// The session failure that ended the attempt, if any.
    public var failure: ClientSession.SessionFailure?
    /// OpenSSL's `X509_V_ERR_*` when the handshake failed authentication (65 no TLSA match,
    /// 62 host name mismatch, 10 expired, 2/18-21 untrusted).
    public var verifyResult: Int?
    public var tls: TLS?
    /// STARTTLS was in the EHLO reply.
    public var offeredSTARTTLS: Bool
    /// The session ran on a connection kept from an earlier message (no new TLS handshake).
    public var reusedConnection = false
    /// This relay's address on the connection, for TLS reports (`sending-mta-ip`).
    public var localAddress: String?
    /// The name in the server's 220 greeting (`receiving-mx-helo`), when it was read.
    public var greetingName: String?

    public init(connectFailure: String? = nil, recipients: [Int: ClientSession.RecipientResult] = [:],
                failure: ClientSession.SessionFailure? = nil, verifyResult: Int? = nil, tls: TLS? = nil, offeredSTARTTLS: Bool = false) {
        self.connectFailure = connectFailure
        self.recipients = recipients
        self.failure = failure
        self.verifyResult = verifyResult
        self.tls = tls
        self.offeredSTARTTLS = offeredSTARTTLS
    }
}
