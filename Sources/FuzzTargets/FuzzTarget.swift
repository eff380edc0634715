import DeliveryPolicy
import MTASTSCore
import RelayDNS
import RelayConfig
import SMTPCore
import TLSRPTCore

/// The parsers that read untrusted input, each as a fuzz target: one input (bytes) in, the
/// first broken invariant out. A crash or a trap inside a parser is a finding too; the harness
/// (libFuzzer in `tlsrelay-fuzz`, the deterministic mutator in `swift test`) reports it.
/// Seeds for each target are in `fuzz/corpus/<rawValue>/`.
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// SMTP command lines through the inbound server session (RFC 5321 §4.1).
    case smtpCommands = "smtp-commands"
    /// DATA framing: dot-unstuffing and the end-of-data marker (RFC 5321 §4.5.2).
    case smtpData = "smtp-data"
    /// Server replies, as the outbound client reads them (RFC 5321 §4.2).
    case replies
    /// MTA-STS policy files (RFC 8461 §3.2).
    case stsPolicy = "sts-policy"
    /// MTA-STS TXT records (RFC 8461 §3.1).
    case stsRecord = "sts-record"
    /// tlsrelayd configuration files (TOML).
    case config
    /// A TLSA RRset from the wire (each record's rdata after a one-octet length) through the
    /// resolver's rdata parser and the planner's host decision (RFC 6698 §2.1, RFC 7672 §3.1.3).
    case tlsaRdata = "tlsa-rdata"
    /// `_smtp._tls` TXT records (RFC 8460 §3).
    case tlsrptRecord = "tlsrpt-record"
    /// Message header sections, as the inbound server scans them for `TLS-Required` (RFC 8689 §5).
    case messageHeader = "message-header"

    /// Runs one input through the target's parser.
    /// - Returns: a description of the first invariant that does not hold, or nil.
    public func check(_ input: [UInt8]) -> String? {
        switch self {
        case .smtpCommands: return Self.commands(input)
        case .smtpData: return Self.data(input)
        case .replies: return Self.replies(input)
        case .stsPolicy: return Self.stsPolicy(input)
        case .stsRecord: return Self.stsRecord(input)
        case .config: return Self.configuration(input)
        case .tlsaRdata: return Self.tlsa(input)
        case .tlsrptRecord: return Self.tlsrptRecord(input)
        case .messageHeader: return Self.messageHeader(input)
        }
    }

    /// Every reply the server session produces is well-formed on the wire.
    static func commands(_ input: [UInt8]) -> String? {
        var limits = ServerLimits()
        limits.maxErrors = 1_000_000
        var session = ServerSession(hostname: "relay.example.org", limits: limits)
        _ = session.start(clientAllowed: true)
        var framer = LineFramer(maxLineLength: 2048)
        framer.append(input)
        while let event = framer.nextEvent() {
            let actions: [ServerSession.Action]
            switch event {
            case .line(let bytes):
                guard let line = String(validating: bytes, as: UTF8.self) else { continue }
                actions = session.receiveLine(line)
            case .malformed(let problem):
                actions = session.receiveMalformedLine(problem)
            }
            for action in actions {
                if case .reply(let reply) = action {
                    let wire = reply.wireBytes
                    if wire.suffix(2) != [13, 10] { return "reply \(reply.code) does not end in CRLF" }
                    if !(200...599).contains(reply.code) { return "reply code \(reply.code) out of range" }
                    for (index, byte) in wire.enumerated() {
                        if byte == 10 && !(index > 0 && wire[index - 1] == 13) { return "reply \(reply.code) holds a bare LF" }
                        if byte == 13 && !(index + 1 < wire.count && wire[index + 1] == 10) { return "reply \(reply.code) holds a bare CR" }
                    }
                }
                if case .receiveData = action {
                    _ = session.dataEnded(.complete(size: 1))
                    _ = session.messageStored(queueID: "X")
                }
            }
        }
        return nil
    }

    /// Consumed bytes never exceed the input; complete content never holds a bare CR or LF.
    static func data(_ input: [UInt8]) -> String? {
        var receiver = DataReceiver(maxMessageSize: 4096, maxLineLength: 200)
        var output: [UInt8] = []
        let (consumed, outcome) = input.withUnsafeBytes { receiver.consume($0, into: &output) }
        if consumed > input.count { return "consumed \(consumed) of \(input.count) bytes" }
        if case .complete = outcome {
            for (index, byte) in output.enumerated() {
                if byte == 10 && !(index > 0 && output[index - 1] == 13) { return "bare LF at \(index) of the content" }
                if byte == 13 && !(index + 1 < output.count && output[index + 1] == 10) { return "bare CR at \(index) of the content" }
            }
        }
        return nil
    }

    /// Every parsed reply has a code from 200 to 599.
    static func replies(_ input: [UInt8]) -> String? {
        var parser = ReplyParser()
        parser.append(input)
        while let reply = try? parser.next() {
            if !(200...599).contains(reply.code) { return "reply code \(reply.code) out of range" }
        }
        return nil
    }

    /// A parsed policy keeps max_age in range and has MX patterns unless its mode is none.
    static func stsPolicy(_ input: [UInt8]) -> String? {
        guard let text = String(validating: input, as: UTF8.self), let policy = try? STSPolicy.parse(text) else { return nil }
        if policy.maxAge < 0 || policy.maxAge > STSPolicy.maxAllowedAge { return "max_age \(policy.maxAge) out of range" }
        if policy.mode != .none && policy.mx.isEmpty { return "mode \(policy.mode.rawValue) without mx patterns" }
        _ = policy.matches(mxHost: "mail.example.com")
        return nil
    }

    /// A parsed TXT record has an id of 1 to 32 characters.
    static func stsRecord(_ input: [UInt8]) -> String? {
        guard let text = String(validating: input, as: UTF8.self), let record = try? STSRecord.parse(txtRecords: [text]) else { return nil }
        if !(1...32).contains(record.id.count) { return "id of \(record.id.count) characters" }
        return nil
    }

    /// An accepted `_smtp._tls` record has at least one URI, each `mailto:` with an address or
    /// `https://` with a host, and none with white space or control characters.
    static func tlsrptRecord(_ input: [UInt8]) -> String? {
        guard let text = String(validating: input, as: UTF8.self), let record = try? TLSRPTRecord.parse(text) else { return nil }
        if record.rua.isEmpty { return "a record without a URI was accepted" }
        for uri in record.rua {
            switch uri {
            case .mailto(let address):
                if !address.contains("@") || address.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value == 0x7F }) {
                    return "mailto address \(address.debugDescription)"
                }
            case .https(let url):
                if !url.lowercased().hasPrefix("https://") || url.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value == 0x7F }) {
                    return "https URI \(url.debugDescription)"
                }
            }
        }
        return nil
    }

    /// Any chunking of the same content finds the same `TLS-Required: No`, and a scanner that
    /// finished stays finished.
    static func messageHeader(_ input: [UInt8]) -> String? {
        var whole = MessageHeaderScanner()
        whole.consume(input)
        var pieces = MessageHeaderScanner()
        var index = 0
        var size = 1
        while index < input.count {
            let end = min(input.count, index + size)
            pieces.consume(input[index..<end])
            index = end
            size = size % 7 + 1
        }
        if whole.tlsRequiredNo != pieces.tlsRequiredNo { return "chunking changed TLS-Required: \(whole.tlsRequiredNo) vs \(pieces.tlsRequiredNo)" }
        if whole.finished != pieces.finished { return "chunking changed the end of the header" }
        return nil
    }

    /// An accepted configuration renders and reads back the same; a refused one names a line
    /// and a reason.
    static func configuration(_ input: [UInt8]) -> String? {
        guard let text = String(validating: input, as: UTF8.self) else { return nil }
        do {
            let config = try ConfigurationLoader.parse(text: text, file: "fuzz.toml")
            do {
                if try ConfigurationLoader.parse(text: config.renderTOML(), file: "rendered.toml") != config {
                    return "the rendered configuration reads back differently"
                }
            } catch {
                return "the rendered configuration does not read back: \(error)"
            }
        } catch let error as ConfigurationError {
            if error.line < 0 || error.reason.isEmpty { return "error without line or reason: \(error)" }
        } catch {
            return "unexpected error type: \(error)"
        }
        return nil
    }

    /// Every rdata gives one record (malformed only when shorter than 3 octets); usable records
    /// are DANE-TA/DANE-EE with a valid digest length; the host decision requires TLS and
    /// authenticates by DANE exactly when a usable record exists, and well-formed records print
    /// back as their own fields.
    static func tlsa(_ input: [UInt8]) -> String? {
        var rdatas: [[UInt8]] = []
        var position = 0
        while position < input.count {
            let length = Int(input[position])
            position += 1
            rdatas.append(Array(input[position..<min(input.count, position + length)]))
            position += length
        }
        var entries: [TLSAEntry] = []
        for rdata in rdatas {
            let record = TLSARecord(rdata: rdata)
            if record.isWellFormed != (rdata.count >= 3) { return "\(rdata.count) octets read as well formed: \(record.isWellFormed)" }
            if record.isWellFormed && [record.usage, record.selector, record.matchingType] + record.data != rdata { return "fields differ from the rdata" }
            let entry = TLSAEntry(usage: record.usage, selector: record.selector, matchingType: record.matchingType, data: record.data,
                                  wellFormed: record.isWellFormed)
            if entry.isUsable {
                if !(entry.usage == 2 || entry.usage == 3) || entry.selector > 1 { return "usage \(entry.usage) selector \(entry.selector) usable" }
                if (entry.matchingType == 1 && entry.data.count != 32) || (entry.matchingType == 2 && entry.data.count != 64) || entry.matchingType > 2 {
                    return "matching type \(entry.matchingType) with \(entry.data.count) octets usable"
                }
            }
            if entry.wellFormed {
                let fields = entry.description.split(separator: " ", omittingEmptySubsequences: false)
                if fields.count != 4 || fields[0] != "\(entry.usage)" || fields[3].count != 2 * entry.data.count { return "description \(entry.description)" }
            }
            entries.append(entry)
        }
        guard !entries.isEmpty else { return nil }
        let usable = entries.filter(\.isUsable)
        let facts = HostFacts(domain: "example.net", host: "mx.example.net", addresses: ["192.0.2.1"],
                              dane: .records(base: "mx.example.net", hostNames: ["mx.example.net"], all: entries, usable: usable),
                              sts: STSPolicy(mode: .enforce, maxAge: 86400, mx: ["mx.example.net"]), local: nil, memoryFloor: nil,
                              memoryFirstRefused: nil, now: 0, grace: 86400)
        guard case .connect(let plan) = HostPolicy.decide(facts) else { return "host with TLSA records skipped" }
        if plan.demand.requirement != .required { return "TLSA records without required TLS" }
        if (plan.demand.guaranteed == .dane) != !usable.isEmpty { return "DANE authentication \(plan.demand.guaranteed) with \(usable.count) usable" }
        if usable.isEmpty && plan.demand.guaranteed != .mtaSTS { return "only unusable records dropped the MTA-STS floor" }
        return nil
    }
}
