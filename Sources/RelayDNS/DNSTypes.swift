/// Public value types of the validating resolver: configuration, record types, parsed records,
/// answers and errors.

/// The DNSSEC validation status of one answer, as defined by RFC 4035 §4.3.
///
/// - `secure`: the answer (data, NODATA or NXDOMAIN) was validated along an unbroken chain of
///   trust from a configured trust anchor (RFC 4035 §4.3 "Secure").
/// - `insecure`: the validator proved that no chain of trust exists for the name, e.g. an
///   unsigned delegation whose absence of DS is itself proven (RFC 4035 §4.3 "Insecure",
///   §5.2). Data is usable, but carries no DNSSEC authentication.
/// - `bogus`: a chain of trust should exist but validation failed (bad or missing signatures,
///   expired RRSIGs, unprovable denial; RFC 4035 §4.3 "Bogus", §5.5). The data must not be
///   trusted; per RFC 7672 §2.1.1 a bogus answer is a lookup *failure*, never a proof that
///   the data does not exist.
///
/// The raw values (`"secure"`, `"insecure"`, `"bogus"`) match the test world's vocabulary and
/// are stable for logs and status output.
public enum DNSSECStatus: String, Sendable, Hashable, CaseIterable {
    /// Validated from a trust anchor (RFC 4035 §4.3); includes authenticated denial.
    case secure
    /// Provably unsigned (RFC 4035 §4.3, §5.2): usable, but not authenticated.
    case insecure
    /// Validation failed (RFC 4035 §4.3, §5.5): a failure, never data or denial
    /// (RFC 7672 §2.1.1).
    case bogus
}

/// One DNS server address: an IP literal (IPv4 or IPv6, no brackets, no scope) and a UDP/TCP
/// port.
///
/// Used for forwarders and stub-zone servers. The resolver hands it to libunbound as
/// `"address@port"`; an address that libunbound cannot parse makes `Resolver.init` throw.
public struct DNSServerAddress: Sendable, Hashable, CustomStringConvertible {
    /// The server's IP address in text form, e.g. `"127.0.1.53"` or `"::1"`.
    public var address: String
    /// The server's port, 1...65535. Default 53.
    public var port: Int

    /// Creates a server address.
    /// - Parameters:
    ///   - address: IPv4 or IPv6 literal (no brackets).
    ///   - port: port number, 1...65535; default 53.
    public init(address: String, port: Int = 53) {
        self.address = address
        self.port = port
    }

    /// The libunbound notation `"address@port"` (e.g. `"127.0.1.53@53"`).
    public var unboundNotation: String { "\(address)@\(port)" }

    /// Same as `unboundNotation`.
    public var description: String { unboundNotation }
}

/// A stub zone: queries for `name` and every name below it go directly (non-recursively) to
/// `servers` instead of starting at the root (unbound's `stub-zone:`).
///
/// The resolver also declares the zone `transparent` as a local zone, so that names such as
/// `test.` that libunbound would otherwise answer locally as reserved names (RFC 6761 §6.2)
/// are resolved through the stub servers.
public struct DNSStubZone: Sendable, Hashable {
    /// The zone apex, with or without trailing dot, e.g. `"test."`.
    public var name: String
    /// The authoritative servers for the zone; at least one.
    public var servers: [DNSServerAddress]

    /// Creates a stub zone.
    /// - Parameters:
    ///   - name: zone apex (a valid DNS name; trailing dot optional).
    ///   - servers: authoritative servers, tried by libunbound in its usual server selection.
    public init(name: String, servers: [DNSServerAddress]) {
        self.name = name
        self.servers = servers
    }
}

/// Everything a `Resolver` is configured with. All of it is applied to the libunbound context
/// before the first query (libunbound refuses configuration afterwards with `UB_AFTERFINAL`).
///
/// With no forwarders and no stub zones the resolver is a full recursive resolver starting at
/// the root servers (production use, with `trustAnchorFile` = `/usr/share/dns/root.key`).
public struct ResolverConfiguration: Sendable, Hashable {
    /// A trust-anchor file with DS or DNSKEY records in zone-file format
    /// (`ub_ctx_add_ta_file`). `nil` = no trust anchor: every answer is then `insecure`.
    public var trustAnchorFile: String?
    /// An RFC 5011 automated trust anchor file (`ub_ctx_add_ta_autr`): read at start and
    /// rewritten by libunbound as it follows key rollovers of the anchored zone, so it must be
    /// writable (with its directory). When set, it is used instead of `trustAnchorFile`.
    public var autoTrustAnchorFile: String?
    /// Upstream resolvers for all names not covered by a stub zone (`ub_ctx_set_fwd`).
    /// Answers are still validated locally. Empty = recurse from the root.
    public var forwarders: [DNSServerAddress]
    /// Zones sent straight to their authoritative servers (`ub_ctx_set_stub`).
    public var stubZones: [DNSStubZone]
    /// Our own deadline for one lookup, in seconds (> 0). libunbound itself only gives up on an
    /// unresponsive server after roughly 29 s; when this deadline passes first the query is
    /// cancelled and the lookup throws `DNSLookupError.timeout`. Default 10 s.
    public var timeoutSeconds: Double

    /// Creates a configuration.
    /// - Parameters:
    ///   - trustAnchorFile: DS/DNSKEY file, or `nil` for no DNSSEC validation anchor.
    ///   - forwarders: upstream resolvers (default none: full recursion).
    ///   - stubZones: stub zones (default none).
    ///   - timeoutSeconds: per-lookup deadline in seconds (default 10).
    ///   - autoTrustAnchorFile: RFC 5011 trust anchor file kept up to date by libunbound.
    public init(trustAnchorFile: String? = nil,
                forwarders: [DNSServerAddress] = [],
                stubZones: [DNSStubZone] = [],
                timeoutSeconds: Double = 10,
                autoTrustAnchorFile: String? = nil) {
        self.trustAnchorFile = trustAnchorFile
        self.autoTrustAnchorFile = autoTrustAnchorFile
        self.forwarders = forwarders
        self.stubZones = stubZones
        self.timeoutSeconds = timeoutSeconds
    }
}

/// DNS resource record types (RFC 1035 §3.2.2 and later registrations), by their IANA number.
public enum DNSRecordType: UInt16, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// IPv4 address (RFC 1035).
    case a = 1
    /// Authoritative name server (RFC 1035).
    case ns = 2
    /// Canonical name / alias (RFC 1035).
    case cname = 5
    /// Start of authority (RFC 1035).
    case soa = 6
    /// Domain name pointer (RFC 1035).
    case ptr = 12
    /// Mail exchange (RFC 1035 §3.3.9, RFC 7505 null MX).
    case mx = 15
    /// Text strings (RFC 1035 §3.3.14).
    case txt = 16
    /// IPv6 address (RFC 3596).
    case aaaa = 28
    /// Service location (RFC 2782).
    case srv = 33
    /// Delegation signer (RFC 4034).
    case ds = 43
    /// DNSSEC signature (RFC 4034).
    case rrsig = 46
    /// DNSSEC public key (RFC 4034).
    case dnskey = 48
    /// TLS certificate association (RFC 6698).
    case tlsa = 52

    /// The mnemonic, e.g. `"MX"`, `"TLSA"`.
    public var description: String {
        switch self {
        case .a: return "A"
        case .ns: return "NS"
        case .cname: return "CNAME"
        case .soa: return "SOA"
        case .ptr: return "PTR"
        case .mx: return "MX"
        case .txt: return "TXT"
        case .aaaa: return "AAAA"
        case .srv: return "SRV"
        case .ds: return "DS"
        case .rrsig: return "RRSIG"
        case .dnskey: return "DNSKEY"
        case .tlsa: return "TLSA"
        }
    }
}

/// One MX record (RFC 1035 §3.3.9).
public struct MXRecord: Sendable, Hashable {
    /// The preference; lower values are tried first (RFC 5321 §5.1).
    public let preference: UInt16
    /// The mail exchanger's host name, lowercased, without trailing dot. Labels containing
    /// octets other than letters, digits, `-` and `_` are rendered with RFC 1035 `\DDD` escapes
    /// (and then rejected by the resolver's name check if looked up). The root name — the
    /// RFC 7505 null MX target `.` — is the empty string `""`.
    public let exchange: String

    /// Creates an MX record.
    /// - Parameters:
    ///   - preference: 0...65535.
    ///   - exchange: host name, lowercased, no trailing dot; `""` for the root (null MX).
    public init(preference: UInt16, exchange: String) {
        self.preference = preference
        self.exchange = exchange
    }

    /// `true` when the exchange is the root name: an RFC 7505 §3 null MX ("this domain accepts
    /// no mail").
    public var isNullMX: Bool { exchange.isEmpty || exchange == "." }
}

/// One TLSA record in its RFC 6698 §2.1 wire format: certificate usage (1 octet), selector
/// (1 octet), matching type (1 octet), certificate association data (the rest).
public struct TLSARecord: Sendable, Hashable, CustomStringConvertible {
    /// Certificate usage (RFC 6698 §2.1.1; RFC 7218 names): 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA,
    /// 3 DANE-EE. SMTP uses only 2 and 3 (RFC 7672 §3.1.3).
    public let usage: UInt8
    /// Selector (RFC 6698 §2.1.2): 0 full certificate, 1 SubjectPublicKeyInfo.
    public let selector: UInt8
    /// Matching type (RFC 6698 §2.1.3): 0 exact, 1 SHA-256, 2 SHA-512.
    public let matchingType: UInt8
    /// Certificate association data (RFC 6698 §2.1.4), raw bytes.
    public let data: [UInt8]

    /// Creates a TLSA record.
    /// - Parameters:
    ///   - usage: certificate usage field.
    ///   - selector: selector field.
    ///   - matchingType: matching type field.
    ///   - data: certificate association data (raw bytes, not hex).
    /// False for rdata shorter than the three fixed octets (then `data` holds that rdata and the
    /// three fields are 0): such a record is unusable (RFC 7672 §3.1.3).
    public let isWellFormed: Bool

    public init(usage: UInt8, selector: UInt8, matchingType: UInt8, data: [UInt8]) {
        self.usage = usage
        self.selector = selector
        self.matchingType = matchingType
        self.data = data
        self.isWellFormed = true
    }

    /// A record from its wire rdata (RFC 6698 §2.1); rdata shorter than the three fixed octets
    /// gives a record that is not well formed (`isWellFormed` false).
    public init(rdata: [UInt8]) {
        guard rdata.count >= 3 else {
            self.init(malformed: rdata)
            return
        }
        self.init(usage: rdata[0], selector: rdata[1], matchingType: rdata[2], data: Array(rdata[3...]))
    }

    /// A record whose rdata is shorter than 3 octets.
    public init(malformed rdata: [UInt8]) {
        self.usage = 0
        self.selector = 0
        self.matchingType = 0
        self.data = rdata
        self.isWellFormed = false
    }

    /// The association data as lowercase hex.
    public var dataHex: String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(data.count * 2)
        for b in data {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Presentation format as in a zone file: `"3 1 1 <hex>"` (RFC 6698 §2.2).
    public var description: String {
        isWellFormed ? "\(usage) \(selector) \(matchingType) \(dataHex)" : "malformed TLSA rdata (\(data.count) octets: \(dataHex))"
    }
}

/// The validated outcome of one DNS lookup that produced an answer: data, NODATA, NXDOMAIN, or
/// a bogus answer. Lookup failures that are not bogus (SERVFAIL, our deadline) are thrown as
/// `DNSLookupError` instead.
///
/// **Always check `status` first.** A `.bogus` answer is a validation failure (RFC 4035 §4.3,
/// §5.5): its `rcode` and `records` are whatever the (possibly forged) packet said and must not
/// be used for any security decision. `isNXDomain` and `isNoData` are therefore `false` for a
/// bogus answer: bogus is never a proof of non-existence (RFC 7672 §2.1.1).
public struct DNSAnswer<Record: Sendable>: Sendable {
    /// The queried name, lowercased, without trailing dot.
    public let name: String
    /// The name the answer belongs to after following CNAMEs (libunbound's `canonname`),
    /// lowercased, without trailing dot; equals `name` when there was no CNAME.
    public let canonicalName: String
    /// The record type that was asked for.
    public let type: DNSRecordType
    /// DNSSEC status of the whole answer, including any CNAME chain (RFC 4035 §4.3). Decided
    /// from libunbound's `secure`/`bogus` flags only, never from `rcode`.
    public let status: DNSSECStatus
    /// libunbound's explanation of a validation failure (`why_bogus`) when `status == .bogus`;
    /// `nil` otherwise. Meant for logs and alerts.
    public let whyBogus: String?
    /// The DNS RCODE: 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, ... Meaningless when bogus.
    public let rcode: Int
    /// The records of the answer RRset, in the order libunbound returned them. Empty for NODATA
    /// and NXDOMAIN.
    public let records: [Record]
    /// The answer's TTL in seconds (not trustworthy when bogus).
    public let ttl: Int

    /// Creates an answer (for callers' unit tests; the resolver builds its own).
    /// - Parameters:
    ///   - name: queried name, lowercased, no trailing dot.
    ///   - canonicalName: name after CNAME expansion.
    ///   - type: record type asked for.
    ///   - status: DNSSEC status.
    ///   - whyBogus: failure text for bogus answers.
    ///   - rcode: DNS RCODE.
    ///   - records: parsed records.
    ///   - ttl: TTL in seconds.
    public init(name: String, canonicalName: String, type: DNSRecordType, status: DNSSECStatus,
                whyBogus: String? = nil, rcode: Int, records: [Record], ttl: Int = 0) {
        self.name = name
        self.canonicalName = canonicalName
        self.type = type
        self.status = status
        self.whyBogus = whyBogus
        self.rcode = rcode
        self.records = records
        self.ttl = ttl
    }

    /// `true` when the name does not exist (RCODE 3) and the answer is not bogus. Secure only
    /// if `status == .secure` (authenticated denial, RFC 4035 §5.4).
    public var isNXDomain: Bool { status != .bogus && rcode == 3 }

    /// `true` when the name exists but has no records of the asked type (NOERROR, empty answer)
    /// and the answer is not bogus. Secure only if `status == .secure`.
    public var isNoData: Bool { status != .bogus && rcode == 0 && records.isEmpty }
}

extension DNSAnswer where Record == MXRecord {
    /// `true` when the MX RRset is exactly one RFC 7505 §3 null MX (`0 .`-style record with the
    /// root as exchange): the domain accepts no mail. Check `status != .bogus` first.
    public var isNullMX: Bool { records.count == 1 && records[0].isNullMX }
}

/// Why a lookup produced no answer.
///
/// Per RFC 7672 §2.1.1 none of these is a denial of existence: a relay must treat them as
/// temporary failures, never as "no TLSA" or "no MX".
public enum DNSLookupError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Our per-lookup deadline (`ResolverConfiguration.timeoutSeconds`) passed; the query was
    /// cancelled in libunbound.
    case timeout(name: String, type: DNSRecordType)
    /// The resolver could not get an answer (SERVFAIL, REFUSED or another RCODE other than
    /// NOERROR/NXDOMAIN) and the failure is *not* a DNSSEC validation failure. `why` names the
    /// RCODE.
    case serverFailure(name: String, type: DNSRecordType, why: String?)
    /// A local problem: invalid configuration (with libunbound's `ub_strerror` text), an invalid
    /// query name, malformed record data, or a resolver that has been shut down.
    case resolverError(String)

    /// A one-line description for logs.
    public var description: String {
        switch self {
        case let .timeout(name, type):
            return "DNS lookup \(name) \(type) timed out"
        case let .serverFailure(name, type, why):
            return "DNS lookup \(name) \(type) failed" + (why.map { ": \($0)" } ?? "")
        case let .resolverError(text):
            return "DNS resolver error: \(text)"
        }
    }
}
