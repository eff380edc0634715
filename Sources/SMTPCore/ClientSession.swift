/// The outbound SMTP client for one connection to one MX host, as a state machine without I/O
/// (RFC 5321 §3, §4; STARTTLS RFC 3207; PIPELINING RFC 2920).
///
/// The connection handler feeds it replies and TLS events and carries out its actions. It
/// decides nothing about TLS policy beyond what `TLSRequirement` says; the caller maps
/// DANE/MTA-STS/local policy to it.
public struct ClientSession: Sendable {
    /// Whether STARTTLS must, may or must not be used on this connection.
    public enum TLSRequirement: Sendable, Hashable {
        /// Never send STARTTLS.
        case none
        /// Use STARTTLS when offered (RFC 7435); deliver in clear when not offered.
        case opportunistic
        /// STARTTLS must be offered and succeed, else nothing is sent (RFC 7672 §2.2, RFC 8461 §5).
        case required
    }

    /// The message to send and how.
    public struct Job: Sendable, Equatable {
        public var heloName: String
        public var sender: Mailbox?
        public var recipients: [Recipient]
        /// Content size in bytes (for SIZE=, RFC 1870).
        public var size: Int
        public var body: BodyType?
        /// True when the envelope or the headers need SMTPUTF8 (RFC 6531 §3.4).
        public var needsSMTPUTF8: Bool
        public var ret: DSNReturn?
        public var envelopeID: String?
        public var tls: TLSRequirement
        /// Stop after EHLO (and STARTTLS with its second EHLO) and QUIT: a connection check
        /// that sends no message (`tlsrelayctl check`).
        public var probeOnly = false
        /// After a completed transaction (a final reply to the end of data), leave the
        /// connection open and idle instead of sending QUIT, so that `begin(_:)` can send the
        /// next message on it (RFC 5321 §4.1.4: the end of data ends the transaction and the
        /// client may start another). Off: QUIT after the transaction.
        public var keepOpen = false
        /// REQUIRETLS (RFC 8689 §4.2.1): the server must announce REQUIRETLS in its EHLO reply
        /// after STARTTLS, and MAIL FROM carries the parameter; otherwise nothing is sent
        /// (`SessionFailure.requireTLSNotOffered`). Needs `tls == .required`.
        public var requireTLS = false
        /// The content holds a NUL octet (a message queued before NULs were refused at DATA):
        /// it is never sent (RFC 5321 §4.1.1.4; a next hop that drops NULs could find a second
        /// message in it); every recipient bounces with 5.6.0.
        public var contentHasNUL = false

        public init(heloName: String, sender: Mailbox?, recipients: [Recipient], size: Int, body: BodyType?,
                    needsSMTPUTF8: Bool, ret: DSNReturn?, envelopeID: String?, tls: TLSRequirement) {
            self.heloName = heloName
            self.sender = sender
            self.recipients = recipients
            self.size = size
            self.body = body
            self.needsSMTPUTF8 = needsSMTPUTF8
            self.ret = ret
            self.envelopeID = envelopeID
            self.tls = tls
        }
    }

    /// The protocol stage, for per-stage timeouts and log lines (Postfix's names).
    public enum Stage: String, Sendable {
        case greeting = "initial server greeting"
        case ehlo = "EHLO"
        case helo = "HELO"
        case starttls = "STARTTLS"
        case tlsHandshake = "TLS handshake"
        case mail = "MAIL FROM"
        case rcpt = "RCPT TO"
        case data = "DATA"
        case dataDone = "end of data"
        case quit = "QUIT"
        /// Open and idle between transactions (kept for reuse).
        case idle = "next transaction"
        case done = "done"
    }

    /// What the connection handler must do.
    public enum Action: Sendable, Equatable {
        /// Write these bytes (one or more command lines).
        case send([UInt8])
        /// Put TLS in place now (the 220 to STARTTLS arrived); then call `tlsEstablished` or
        /// `tlsFailed`.
        case startTLS
        /// Write the message content, dot-stuffed and terminated.
        case sendContent
        /// The attempt is over; close the connection (after sending anything queued).
        case finish(Result)
    }

    /// Why the connection as a whole failed (the recipients it left open go to the next MX).
    public enum SessionFailure: Sendable, Equatable {
        case greetingRefused(Reply)
        case heloRefused(Reply)
        /// TLS required but STARTTLS was not in the EHLO reply (RFC 8460 `starttls-not-supported`).
        case starttlsNotOffered
        /// STARTTLS answered with anything but 220.
        case starttlsRefused(Reply)
        /// Bytes arrived after the 220 to STARTTLS and before the handshake (RFC 3207 §4.2 attack).
        case plaintextInjection
        /// The handshake or its verification failed; `reason` says why.
        case tlsFailed(String)
        /// 421 at any stage (RFC 5321 §3.8).
        case serviceClosing(Reply)
        /// The server violated the protocol (bad reply syntax, unexpected code).
        case protocolError(String)
        /// The job has REQUIRETLS, and the server did not announce REQUIRETLS in the EHLO reply
        /// of its TLS session (RFC 8689 §4.2.1): nothing was sent.
        case requireTLSNotOffered
        /// The connection dropped or timed out during `stage`.
        case connectionLost(Stage)
        case timeout(Stage)
    }

    /// What became of one recipient on this connection.
    public enum RecipientResult: Sendable, Equatable {
        case delivered(Reply)
        /// 4xx: try again later (RFC 5321 §4.2.1).
        case deferred(Reply)
        /// 5xx: permanent failure, send a DSN.
        case bounced(Reply)
        /// A local decision before the server was asked (SIZE, SMTPUTF8), permanent.
        case bouncedLocally(EnhancedStatusCode, String)
    }

    /// The attempt's result: per recipient index (into `Job.recipients`) what happened; indexes
    /// missing from `recipients` were not decided (session failure: try the next MX).
    public struct Result: Sendable, Equatable {
        public var recipients: [Int: RecipientResult] = [:]
        public var failure: SessionFailure?
        /// True when the session ran over TLS.
        public var usedTLS = false
        /// True when the peer offered STARTTLS.
        public var offeredSTARTTLS = false
        /// True when the message content was sent (recipients left undecided after that may
        /// have been delivered: at-least-once).
        public var contentSent = false
        /// True when the connection stays open and idle for the next transaction (`begin`).
        public var reusable = false
    }

    /// What the server announced in its EHLO reply (RFC 5321 §4.1.1.1).
    public struct Capabilities: Sendable, Equatable {
        public var extended = false
        public var pipelining = false
        public var starttls = false
        public var eightBitMIME = false
        public var smtputf8 = false
        public var dsn = false
        public var enhancedStatusCodes = false
        /// REQUIRETLS (RFC 8689 §2).
        public var requireTLS = false
        /// What the SIZE keyword said (RFC 1870 §4); nil when SIZE was not announced.
        public var size: SizeAnnouncement?

        /// The SIZE limit in bytes, when the server announced a usable one.
        public var sizeLimit: Int? {
            if case .limit(let bytes)? = size { return bytes }
            return nil
        }

        public init() {}

        /// Reads the keywords of an EHLO reply (lines after the first).
        public init(ehloReply: Reply) {
            extended = true
            for line in ehloReply.lines.dropFirst() {
                let words = line.split(separator: " ")
                guard let keyword = words.first?.uppercased() else { continue }
                switch keyword {
                case "PIPELINING": pipelining = true
                case "STARTTLS": starttls = true
                case "8BITMIME": eightBitMIME = true
                case "SMTPUTF8": smtputf8 = true
                case "DSN": dsn = true
                case "ENHANCEDSTATUSCODES": enhancedStatusCodes = true
                case "REQUIRETLS": requireTLS = true
                case "SIZE": size = SizeAnnouncement(parameter: words.count > 1 ? words[1] : nil)
                default: break
                }
            }
        }
    }

    /// The SIZE keyword of an EHLO reply (RFC 1870 §4: `SIZE [1*DIGIT]`, 0 or no number = no
    /// fixed limit).
    public enum SizeAnnouncement: Sendable, Equatable {
        /// No fixed maximum.
        case noFixedLimit
        /// The maximum message size in bytes.
        case limit(Int)
        /// A parameter that is not a number we can hold (too long, not digits): the limit is
        /// unknown — never read as "no limit". SIZE= is still sent and the server decides.
        case unknown(String)

        /// Reads the keyword's parameter: at most 18 digits (below `Int.max`), else `unknown`.
        public init(parameter: Substring?) {
            guard let parameter else { self = .noFixedLimit; return }
            guard !parameter.isEmpty, parameter.count <= 18, parameter.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                  let value = Int(parameter)
            else { self = .unknown(String(parameter.prefix(40))); return }
            self = value == 0 ? .noFixedLimit : .limit(value)
        }
    }

    enum State: Sendable, Equatable {
        case greeting
        case ehlo(afterTLS: Bool)
        case helo
        case starttls
        case handshake
        /// Commands sent and awaiting replies, in order.
        case transaction
        /// The content is being written; `written` once the write of the terminating dot
        /// completed (only then may the final reply come, RFC 5321 §4.1.1.4).
        case dataContent(written: Bool)
        /// A transaction completed and the connection was kept open (`Job.keepOpen`).
        case idle
        case quit
        case done
    }

    enum Pending: Sendable, Equatable {
        case mail
        case rcpt(Int)
        case data
    }

    /// The message of the current transaction (the first job's `heloName` and `tls` hold for the
    /// whole connection).
    public private(set) var job: Job
    public private(set) var capabilities = Capabilities()
    public private(set) var stage: Stage = .greeting
    /// The first word of the server's 220 greeting (its name, RFC 5321 §4.2), once read.
    public private(set) var greetingName: String?
    private var state: State = .greeting
    private var result = Result()
    private var pending: [Pending] = []
    private var accepted: [Int] = []
    private var mailFailed: Reply?
    private var unsentCommands: [(Pending, String)] = []

    public init(job: Job) {
        self.job = job
    }

    /// A complete reply arrived. `bytesFollow` is true when more bytes were already buffered
    /// after it.
    ///
    /// Replies count only in protocol order (RFC 5321 §4.2, RFC 2920 §3.1): bytes behind a reply
    /// are allowed only while replies to pipelined commands are still owed. Anywhere else — after
    /// a reply without PIPELINING, behind the 354, behind the final reply — they are a surplus
    /// reply and end the connection with a protocol error; behind the 220 to STARTTLS they are
    /// a plaintext injection (RFC 3207 §4.2). A reply while the content is still being written
    /// is a protocol error too: nothing is marked delivered by it.
    public mutating func receive(_ reply: Reply, bytesFollow: Bool = false) -> [Action] {
        if reply.code == 421 && state != .quit && state != .done {
            return fail(.serviceClosing(reply))
        }
        if bytesFollow, state != .quit, state != .done, !(state == .starttls && reply.code == 220),
           !(state == .transaction && pending.count > 1) {
            if case .dataContent(written: true) = state {
                // The reply to the dot decides; the surplus behind it ends the connection.
                _ = finishData(reply)
            }
            return fail(.protocolError("unexpected data after the reply \(reply.code) to \(stage.rawValue)\(capabilities.pipelining ? "" : " (the server did not offer PIPELINING)") (RFC 5321 section 4.2)"))
        }
        switch state {
        case .greeting:
            guard reply.code == 220 else { return fail(.greetingRefused(reply)) }
            greetingName = reply.lines.first?.split(separator: " ").first.map(String.init)
            return sendEHLO()
        case .ehlo(let afterTLS):
            if reply.code == 250 {
                capabilities = Capabilities(ehloReply: reply)
                result.offeredSTARTTLS = result.offeredSTARTTLS || capabilities.starttls
                if !afterTLS && job.tls != .none && capabilities.starttls {
                    state = .starttls
                    stage = .starttls
                    return [.send(line("STARTTLS"))]
                }
                if !afterTLS && job.tls == .required { return fail(.starttlsNotOffered) }
                return beginTransaction()
            }
            // RFC 5321 §4.1.4: a server that rejects EHLO may accept HELO. Not when TLS is
            // required (STARTTLS needs EHLO) or after TLS.
            if reply.isPermanentFailure && !afterTLS && job.tls != .required {
                state = .helo
                stage = .helo
                return [.send(line("HELO \(job.heloName)"))]
            }
            if !afterTLS && job.tls == .required && reply.isPermanentFailure { return fail(.starttlsNotOffered) }
            return fail(.heloRefused(reply))
        case .helo:
            guard reply.code == 250 else { return fail(.heloRefused(reply)) }
            capabilities = Capabilities()
            return beginTransaction()
        case .starttls:
            guard reply.code == 220 else {
                if job.tls == .required { return fail(.starttlsRefused(reply)) }
                // Opportunistic: go on without TLS on this connection (RFC 7435 §3).
                return beginTransaction()
            }
            if bytesFollow { return fail(.plaintextInjection) }
            state = .handshake
            stage = .tlsHandshake
            return [.startTLS]
        case .handshake:
            // Nothing may arrive in clear during the handshake; the TLS layer owns the bytes.
            return fail(.plaintextInjection)
        case .transaction:
            return receiveTransactionReply(reply)
        case .dataContent(let written):
            guard written else {
                return fail(.protocolError("reply \(reply.code) arrived before the end of the message data was sent (RFC 5321 section 4.1.1.4)"))
            }
            return finishData(reply)
        case .idle:
            // Nothing is expected between transactions (a 421 is handled above).
            return fail(.protocolError("unexpected reply \(reply) while idle"))
        case .quit:
            state = .done
            stage = .done
            return [.finish(result)]
        case .done:
            return []
        }
    }

    /// The write of the content and its terminating dot completed (after `.sendContent`); from
    /// now on the final reply may come.
    public mutating func contentWritten() -> [Action] {
        if case .dataContent(written: false) = state { state = .dataContent(written: true) }
        return []
    }

    /// True when a transaction completed and the connection waits, open, for the next one.
    public var isIdle: Bool { state == .idle }

    /// Starts the next transaction on an idle connection (after `.finish` with
    /// `Result.reusable`). The EHLO name and TLS requirement of the first job stay; the
    /// capabilities learned in the (last) EHLO apply. Returns no action unless idle.
    public mutating func begin(_ next: Job) -> [Action] {
        guard state == .idle else { return [] }
        var next = next
        next.heloName = job.heloName
        next.tls = job.tls
        next.probeOnly = false
        job = next
        var fresh = Result()
        fresh.usedTLS = result.usedTLS
        fresh.offeredSTARTTLS = result.offeredSTARTTLS
        result = fresh
        pending = []
        accepted = []
        mailFailed = nil
        unsentCommands = []
        return beginTransaction()
    }

    /// Ends an idle connection politely: QUIT, then `.finish` when the reply (or the close)
    /// comes. Returns no action unless idle.
    public mutating func closeIdle() -> [Action] {
        guard state == .idle else { return [] }
        result.reusable = false
        return quit()
    }

    /// TLS is up (after `.startTLS`): forget everything learned before it and EHLO again
    /// (RFC 3207 §4.2).
    public mutating func tlsEstablished() -> [Action] {
        guard state == .handshake else { return [] }
        result.usedTLS = true
        capabilities = Capabilities()
        state = .ehlo(afterTLS: true)
        stage = .ehlo
        return [.send(line("EHLO \(job.heloName)"))]
    }

    /// The TLS handshake or its verification failed. Nothing was sent.
    public mutating func tlsFailed(_ reason: String) -> [Action] {
        fail(.tlsFailed(reason))
    }

    /// The server sent something that is not a valid reply.
    public mutating func protocolViolation(_ reason: String) -> [Action] {
        fail(.protocolError(reason))
    }

    /// The connection closed (or failed) before the attempt finished.
    public mutating func connectionClosed() -> [Action] {
        switch state {
        case .quit, .done:
            if state != .done { state = .done; return [.finish(result)] }
            return []
        default:
            return fail(.connectionLost(stage))
        }
    }

    /// The current stage's timer expired.
    public mutating func timedOut() -> [Action] {
        switch state {
        case .idle:
            return closeIdle()
        case .quit:
            state = .done
            return [.finish(result)]
        case .done:
            return []
        default:
            return fail(.timeout(stage))
        }
    }

    // MARK: - Transaction

    private mutating func sendEHLO() -> [Action] {
        state = .ehlo(afterTLS: false)
        stage = .ehlo
        return [.send(line("EHLO \(job.heloName)"))]
    }

    private mutating func beginTransaction() -> [Action] {
        if job.probeOnly { return quit() }
        if job.requireTLS && !(result.usedTLS && capabilities.requireTLS) {
            // RFC 8689 §4.2.1: only to a next hop that takes the REQUIRETLS obligation, in TLS.
            // Nothing is sent; the session ends politely and the attempt with this failure.
            result.failure = .requireTLSNotOffered
            result.reusable = false
            return quit()
        }
        // Local decisions that make every recipient fail permanently.
        if job.contentHasNUL {
            return bounceAll(EnhancedStatusCode(5, 6, 0), "message content contains a NUL character, which SMTP may not carry (RFC 5321 section 4.1.1.4); not sent")
        }
        var skipped = Set<Int>()
        if job.needsSMTPUTF8 && !capabilities.smtputf8 {
            // RFC 6531 §3.4: what needs SMTPUTF8 cannot go there. A UTF-8 sender takes the whole
            // transaction with it; otherwise only the recipients with a UTF-8 local part bounce
            // (an internationalized domain goes as its A-label), and the others are sent.
            let reason = "SMTPUTF8 is required but not supported by the receiving server (RFC 6531 section 3.4)"
            guard job.sender?.isASCIIOnTheWire ?? true else { return bounceAll(EnhancedStatusCode(5, 6, 7), reason) }
            for index in job.recipients.indices where !job.recipients[index].mailbox.isASCIIOnTheWire {
                result.recipients[index] = .bouncedLocally(EnhancedStatusCode(5, 6, 7), reason)
                skipped.insert(index)
            }
            if skipped.count == job.recipients.count { return quit() }
        }
        if let limit = capabilities.sizeLimit, job.size > limit {
            return bounceAll(EnhancedStatusCode(5, 3, 4), "message size \(job.size) exceeds the receiving server's limit of \(limit) bytes (RFC 1870)")
        }
        state = .transaction
        stage = .mail
        var commands: [(Pending, String)] = [(.mail, mailCommand())]
        for index in job.recipients.indices where !skipped.contains(index) {
            commands.append((.rcpt(index), rcptCommand(job.recipients[index])))
        }
        commands.append((.data, "DATA"))
        if capabilities.pipelining {
            // RFC 2920 §3.1: MAIL, RCPT... and DATA may go in one group.
            pending = commands.map(\.0)
            return [.send(commands.flatMap { line($0.1) })]
        }
        pending = [commands[0].0]
        unsentCommands = Array(commands.dropFirst())
        return [.send(line(commands[0].1))]
    }

    private mutating func receiveTransactionReply(_ reply: Reply) -> [Action] {
        guard !pending.isEmpty else { return fail(.protocolError("unexpected reply \(reply)")) }
        let expected = pending.removeFirst()
        switch expected {
        case .mail:
            if !reply.isPositive { mailFailed = reply }
            stage = .rcpt
        case .rcpt(let index):
            if let mailFailed {
                result.recipients[index] = mailFailed.isPermanentFailure ? .bounced(mailFailed) : .deferred(mailFailed)
            } else if reply.code == 250 || reply.code == 251 {
                accepted.append(index)
            } else if reply.isPermanentFailure {
                result.recipients[index] = .bounced(reply)
            } else {
                result.recipients[index] = .deferred(reply)
            }
            stage = .data
        case .data:
            if reply.code == 354 {
                if accepted.isEmpty {
                    // The server went on although no recipient was accepted: anything sent now
                    // would be content, so send nothing and drop the connection (RFC 2920 §3.1).
                    return fail(.protocolError("354 to DATA although no recipient was accepted"))
                }
                state = .dataContent(written: false)
                stage = .dataDone
                result.contentSent = true
                return [.sendContent]
            }
            // 503/554 after all RCPTs failed is expected; otherwise the accepted recipients share the DATA failure.
            for index in accepted {
                result.recipients[index] = reply.isPermanentFailure ? .bounced(reply) : .deferred(reply)
            }
            return quit()
        }
        if pending.isEmpty {
            if unsentCommands.isEmpty { return quit() }
            // Without PIPELINING: stop before DATA when no recipient was accepted.
            let next = unsentCommands.removeFirst()
            if next.0 == .data && accepted.isEmpty {
                unsentCommands = []
                return quit()
            }
            pending = [next.0]
            return [.send(line(next.1))]
        }
        return []
    }

    private mutating func finishData(_ reply: Reply) -> [Action] {
        for index in accepted {
            if reply.code == 250 {
                result.recipients[index] = .delivered(reply)
            } else if reply.isPermanentFailure {
                result.recipients[index] = .bounced(reply)
            } else {
                result.recipients[index] = .deferred(reply)
            }
        }
        if job.keepOpen {
            state = .idle
            stage = .idle
            result.reusable = true
            return [.finish(result)]
        }
        return quit()
    }

    private mutating func quit() -> [Action] {
        state = .quit
        stage = .quit
        return [.send(line("QUIT"))]
    }

    private mutating func bounceAll(_ code: EnhancedStatusCode, _ text: String) -> [Action] {
        for index in job.recipients.indices { result.recipients[index] = .bouncedLocally(code, text) }
        return quit()
    }

    private mutating func fail(_ failure: SessionFailure) -> [Action] {
        guard state != .done else { return [] }
        state = .done
        stage = .done
        result.failure = failure
        result.reusable = false
        return [.finish(result)]
    }

    // MARK: - Command text

    func mailCommand() -> String {
        // The A-label form of an internationalized domain always works (RFC 6531 §3.2).
        var text = "MAIL FROM:<\(job.sender?.asciiAddress ?? "")>"
        if capabilities.size != nil { text += " SIZE=\(job.size)" }
        if job.body == .eightBitMIME && capabilities.eightBitMIME { text += " BODY=8BITMIME" }
        if job.needsSMTPUTF8 && capabilities.smtputf8 { text += " SMTPUTF8" }
        if job.requireTLS { text += " REQUIRETLS" }
        if capabilities.dsn {
            if let ret = job.ret { text += " RET=\(ret.rawValue)" }
            if let envelopeID = job.envelopeID { text += " ENVID=\(XText.encode(envelopeID))" }
        }
        return text
    }

    func rcptCommand(_ recipient: Recipient) -> String {
        var text = "RCPT TO:<\(recipient.mailbox.asciiAddress)>"
        if capabilities.dsn {
            if let notify = recipient.notify { text += " NOTIFY=\(notify.parameterValue)" }
            if let original = recipient.originalRecipient {
                text += " ORCPT=\(original.addressType);\(XText.encode(original.address))"
            }
        }
        return text
    }

    func line(_ text: String) -> [UInt8] { Array(text.utf8) + [13, 10] }
}
