/// The inbound ESMTP session as a state machine without I/O (RFC 5321 §4.1.4 command order).
///
/// The channel handler feeds it events (connection opened, command line received, DATA ended,
/// message stored) and carries out the `Action`s it returns. It never blocks and never touches
/// a socket or a file, so every reply can be tested without a network.
public struct ServerSession: Sendable {
    /// What the handler must do next.
    public enum Action: Sendable, Equatable {
        /// Send this reply.
        case reply(Reply)
        /// Switch the connection to DATA mode: the next bytes are message content (RFC 5321
        /// §4.1.1.4), ended only by CRLF "." CRLF. The session has already queued the 354 reply.
        case receiveData(ReceiveDataContext)
        /// Write the received message to the spool; then call `messageStored` or `storeFailed`.
        case storeMessage(MailTransaction)
        /// Close the connection after sending any replies before this action.
        case close
        /// STARTTLS accepted (RFC 3207 §4): send `reply` (220), then start the TLS handshake as
        /// the server before reading anything more; call `tlsStarted` after it succeeded and close
        /// the connection when it fails. Bytes the client sent behind STARTTLS must not be read
        /// as commands: the handler calls `pipelinedAfterSTARTTLS()` instead of sending `reply`.
        case startTLS(reply: Reply)
    }

    /// Whether a listener offers STARTTLS (RFC 3207) and whether it insists on it.
    public enum STARTTLSPolicy: String, Sendable, Hashable, CaseIterable {
        /// Not offered; STARTTLS is answered 502.
        case off
        /// Offered in the EHLO reply; mail may also be sent without it.
        case offered
        /// Offered, and MAIL, RCPT, DATA, VRFY and EXPN get `530 5.7.0` until TLS is active
        /// (RFC 3207 §4).
        case required
    }

    /// What the handler needs to receive one message.
    public struct ReceiveDataContext: Sendable, Equatable {
        public let transaction: MailTransaction
        /// The client's HELO/EHLO argument.
        public let heloName: String
        /// "ESMTP", "ESMTPS", "SMTP", "UTF8SMTP" or "UTF8SMTPS" for the Received header `with`
        /// clause (RFC 3848, RFC 6531 §3.7.3).
        public let protocolName: String
        /// The session's TLS, nil in clear.
        public let tls: InboundTLS?
    }

    /// How DATA ended, as the handler observed it.
    public enum DataOutcome: Sendable, Equatable {
        /// CRLF.CRLF seen; `size` is the content size in bytes after dot-unstuffing.
        case complete(size: Int)
        /// Content exceeded the size limit (RFC 1870 §6.3).
        case tooLarge
        /// A bare CR or LF appeared in the content (RFC 5321 §2.3.8).
        case bareLineEnding
        /// A line exceeded the text line limit.
        case lineTooLong
        /// A NUL octet appeared in the content: not allowed in 7-bit or 8BITMIME content
        /// (RFC 5321 §4.1.1.4 with RFC 6152 §3), and a next hop that drops NULs could read
        /// `CRLF NUL . CRLF` as the end of the data (SMTP smuggling).
        case nulCharacter
        /// 8-bit octets in a message declared 7BIT is tolerated (Postfix does too) and not an outcome.
    }

    /// How storing failed.
    public enum StoreFailure: Sendable, Equatable {
        /// No space left on the spool's file system (ENOSPC, EDQUOT).
        case insufficientStorage
        /// Any other I/O failure.
        case ioError
    }

    enum State: Sendable, Equatable {
        case awaitingGreeting
        case rejected
        /// 554 at connect: waiting for QUIT, every other command gets 503 (RFC 5321 §3.1).
        case refused(commandsLeft: Int)
        case ready                       // no HELO/EHLO yet
        case greeted                     // HELO/EHLO done, no transaction
        case mail(MailTransaction)       // MAIL accepted; RCPTs may follow
        case data(MailTransaction)       // 354 sent; the handler reads content
        case storing(MailTransaction)    // content complete; spool write in progress
        case closed
    }

    public let hostname: String
    public let limits: ServerLimits
    public let starttls: STARTTLSPolicy
    /// Converts an internationalized domain to its A-label form (RFC 5891): the A-label, or the
    /// reason it has none. nil: internationalized domains are refused (553 5.6.7).
    public typealias DomainToASCII = @Sendable (String) -> Result<String, DomainConversionFailure>
    let toASCII: DomainToASCII?
    /// The session's TLS once STARTTLS succeeded (RFC 3207 §4.2), nil in clear.
    public private(set) var tls: InboundTLS?
    public private(set) var heloName: String?
    public private(set) var extended = false
    private(set) var state: State = .awaitingGreeting
    private var errorCount = 0

    /// - Parameters:
    ///   - hostname: this server's name for the greeting and the Received header.
    ///   - limits: the session limits.
    ///   - starttls: whether this listener offers or requires STARTTLS.
    ///   - toASCII: IDNA conversion of internationalized domains (nil: refused).
    public init(hostname: String, limits: ServerLimits, starttls: STARTTLSPolicy = .off, toASCII: DomainToASCII? = nil) {
        self.hostname = hostname
        self.limits = limits
        self.starttls = starttls
        self.toASCII = toASCII
    }

    /// Sets the A-label form of an internationalized domain.
    /// - Returns: nil when done (or nothing to do), else the reason for the refusal.
    func withASCIIDomain(_ mailbox: inout Mailbox) -> String? {
        guard !mailbox.domain.utf8.allSatisfy({ $0 < 0x80 }) else { return nil }
        guard let toASCII else { return "Internationalized domains are not supported by this relay" }
        switch toASCII(mailbox.domain) {
        case .success(let ascii):
            mailbox.asciiDomain = ascii
            return nil
        case .failure(let failure):
            return "\(mailbox.domain) is not a valid internationalized domain name (RFC 5891): \(failure.reason)"
        }
    }

    /// True while the handler must not feed command lines (content is being read or stored).
    public var isBusyWithMessage: Bool {
        switch state {
        case .data, .storing: return true
        default: return false
        }
    }

    public var isClosed: Bool { state == .closed || state == .rejected }

    /// True after a 554 at connect, while the session waits for QUIT.
    public var isRefused: Bool {
        if case .refused = state { return true }
        return false
    }

    /// A command (or malformed line) from a refused client: QUIT ends the session, anything
    /// else is 503 until the command budget is spent (RFC 5321 §3.1).
    mutating func refusedCommand(isQuit: Bool, commandsLeft: Int) -> [Action] {
        if isQuit {
            state = .closed
            return [.reply(Reply(221, .ok, "Bye")), .close]
        }
        if commandsLeft <= 1 {
            state = .closed
            return [.reply(Reply(503, .invalidCommand, "Error: access denied; closing")), .close]
        }
        state = .refused(commandsLeft: commandsLeft - 1)
        return [.reply(Reply(503, .invalidCommand, "Error: access denied; only QUIT is accepted"))]
    }

    /// The connection opened.
    /// - Parameters:
    ///   - clientAllowed: false when the client address is outside `allowed_clients`: the reply
    ///     is 554 5.7.1 instead of 220, and the session then waits for QUIT, answering every
    ///     other command with 503 5.5.1 (RFC 5321 §3.1), for at most
    ///     `limits.refusedSessionCommands` commands (`isRefused` tells the handler to bound its
    ///     time by `limits.refusedSessionSeconds`).
    ///   - overConnectionLimit: true when the concurrent session limit is reached: 421 4.7.0.
    public mutating func start(clientAllowed: Bool, overConnectionLimit: Bool = false) -> [Action] {
        guard state == .awaitingGreeting else { return [] }
        if !clientAllowed {
            state = .refused(commandsLeft: limits.refusedSessionCommands)
            return [.reply(Reply(554, .deliveryNotAuthorized, "\(hostname) Access denied: relaying not permitted for your address"))]
        }
        if overConnectionLimit {
            state = .rejected
            return [.reply(Reply(421, .securityTemporary, "\(hostname) Too many connections, try again later")), .close]
        }
        state = .ready
        return [.reply(Reply(220, nil, "\(hostname) ESMTP tlsrelay"))]
    }

    /// A command line that broke the framing rules arrived (bare CR or LF, or too long).
    public mutating func receiveMalformedLine(_ problem: LineProblem) -> [Action] {
        if case .refused(let left) = state { return refusedCommand(isQuit: false, commandsLeft: left) }
        switch problem {
        case .bareLineEnding:
            return fail(Reply(500, .syntaxError, "Bare CR or LF in command is not allowed (RFC 5321 section 2.3.8)"))
        case .tooLong:
            return fail(Reply(500, .syntaxError, "Line too long (limit \(limits.maxCommandLineLength) octets)"))
        case .invalidUTF8:
            return fail(Reply(500, .syntaxError, "Command contains bytes that are not UTF-8"))
        }
    }

    /// The idle timer fired (RFC 5321 §4.5.3.2.7).
    public mutating func idleTimeout() -> [Action] {
        guard !isClosed else { return [] }
        state = .closed
        return [.reply(Reply(421, .timeout, "\(hostname) Error: timeout exceeded")), .close]
    }

    /// The server is shutting down: tell the client and close (RFC 5321 §3.8).
    public mutating func shutdown() -> [Action] {
        guard !isClosed else { return [] }
        state = .closed
        return [.reply(Reply(421, .systemNotAccepting, "\(hostname) Service shutting down, try again later")), .close]
    }

    /// One command line (without CRLF), framing already checked.
    public mutating func receiveLine(_ line: String) -> [Action] {
        switch state {
        case .ready, .greeted, .mail: break
        case .refused(let left):
            let isQuit = (try? CommandParser.parse(line)).map { if case .quit = $0 { return true } else { return false } } ?? false
            return refusedCommand(isQuit: isQuit, commandsLeft: left)
        default: return []
        }
        let command: Command
        do {
            command = try CommandParser.parse(line)
        } catch let error as CommandSyntaxError {
            return fail(error.reply)
        } catch {
            return fail(Reply(500, .syntaxError, "Syntax error"))
        }
        return handle(command)
    }

    mutating func handle(_ command: Command) -> [Action] {
        if starttls == .required, tls == nil, command.needsTLSWhenRequired {
            // RFC 3207 §4: a server that requires TLS answers 530 until STARTTLS.
            return fail(Reply(530, .securityPermanent, "Must issue a STARTTLS command first"))
        }
        switch command {
        case .ehlo(let name), .helo(let name):
            guard DomainSyntax.isValidDomain(Substring(name), allowUTF8: false) || DomainSyntax.isAddressLiteral(Substring(name)) else {
                return fail(Reply(501, .syntaxError, "Invalid hostname in \(command.isEHLO ? "EHLO" : "HELO")"))
            }
            heloName = name
            extended = command.isEHLO
            state = .greeted   // RFC 5321 §4.1.4: EHLO resets any transaction
            if !extended { return [.reply(Reply(250, nil, hostname))] }
            var keywords = [
                hostname,
                "PIPELINING",
                "SIZE \(limits.maxMessageSize)",
                "8BITMIME",
                "SMTPUTF8",
                "ENHANCEDSTATUSCODES",
                "DSN",
            ]
            // RFC 3207 §4.2: STARTTLS is not offered again once TLS is active. RFC 8689 §4.1:
            // REQUIRETLS only in a TLS-protected session.
            if starttls != .off && tls == nil { keywords.append("STARTTLS") }
            if tls != nil { keywords.append("REQUIRETLS") }
            return [.reply(Reply(250, nil, keywords))]
        case .starttls:
            guard starttls != .off else {
                return fail(Reply(502, .invalidCommand, "Error: command STARTTLS not implemented"))
            }
            if tls != nil { return fail(Reply(503, .invalidCommand, "Error: TLS is already active")) }
            switch state {
            case .ready: return fail(Reply(503, .invalidCommand, "Error: send EHLO first"))
            case .mail: return fail(Reply(503, .invalidCommand, "Error: MAIL transaction in progress"))
            default: break
            }
            return [.startTLS(reply: Reply(220, .ok, "Ready to start TLS"))]
        case .mail(let pathText, let parameters):
            switch state {
            case .ready: return fail(Reply(503, .invalidCommand, "Error: send HELO/EHLO first"))
            case .mail: return fail(Reply(503, .invalidCommand, "Error: nested MAIL command"))
            default: break
            }
            var mailParameters = MailParameters()
            if !parameters.isEmpty && !extended {
                return fail(Reply(555, .invalidArguments, "MAIL parameters need EHLO"))
            }
            for parameter in parameters {
                if let reply = apply(parameter, to: &mailParameters) { return fail(reply) }
            }
            var sender: Mailbox?
            do {
                sender = try PathParser.parseReversePath(pathText, allowUTF8: mailParameters.smtputf8)
            } catch PathSyntaxError.nonASCIIWithoutSMTPUTF8 {
                return fail(Reply(553, .nonASCIINotPermitted, "Non-ASCII sender address needs SMTPUTF8 (RFC 6531)"))
            } catch {
                return fail(Reply(501, .badSenderSyntax, "Bad sender address syntax"))
            }
            if var mailbox = sender {
                if let reason = withASCIIDomain(&mailbox) {
                    return fail(Reply(553, .badSenderSyntax, reason))
                }
                sender = mailbox
            }
            if let size = mailParameters.declaredSize, size > limits.maxMessageSize {
                return fail(Reply(552, .messageTooBig, "Message size exceeds fixed limit of \(limits.maxMessageSize) bytes"))
            }
            state = .mail(MailTransaction(sender: sender, parameters: mailParameters))
            return [.reply(Reply(250, .senderOK, "Ok"))]
        case .rcpt(let pathText, let parameters):
            guard case .mail(var transaction) = state else {
                return fail(Reply(503, .invalidCommand, "Error: need MAIL command"))
            }
            if !parameters.isEmpty && !extended {
                return fail(Reply(555, .invalidArguments, "RCPT parameters need EHLO"))
            }
            var mailbox: Mailbox
            do {
                mailbox = try PathParser.parsePath(pathText, allowUTF8: transaction.parameters.smtputf8)
            } catch PathSyntaxError.nonASCIIWithoutSMTPUTF8 {
                return fail(Reply(553, .nonASCIINotPermitted, "Non-ASCII recipient address needs SMTPUTF8 (RFC 6531)"))
            } catch {
                return fail(Reply(501, .badDestinationSyntax, "Bad recipient address syntax"))
            }
            if let reason = withASCIIDomain(&mailbox) {
                // Delivery needs the A-label form (RFC 5890): refuse now rather than queue mail
                // that can only bounce days later.
                return fail(Reply(553, toASCII == nil ? .nonASCIINotPermitted : .badDestinationSyntax, reason))
            }
            if mailbox.hasAddressLiteral {
                // An address literal bypasses MX, DANE and MTA-STS: this relay refuses it.
                return fail(Reply(550, .deliveryNotAuthorized, "Recipient address literals are not relayed (no DNS-based TLS policy can apply)"))
            }
            var recipient = Recipient(mailbox: mailbox)
            for parameter in parameters {
                switch parameter.keyword {
                case "NOTIFY":
                    guard let value = parameter.value, let notify = DSNNotify(parsing: value), recipient.notify == nil else {
                        return fail(Reply(501, .invalidArguments, "Bad NOTIFY parameter (RFC 3461 section 4.1)"))
                    }
                    recipient.notify = notify
                case "ORCPT":
                    guard let value = parameter.value, recipient.originalRecipient == nil,
                          let semicolon = value.firstIndex(of: ";"),
                          let address = XText.decode(value[value.index(after: semicolon)...]),
                          !value[..<semicolon].isEmpty
                    else {
                        return fail(Reply(501, .invalidArguments, "Bad ORCPT parameter (RFC 3461 section 4.2)"))
                    }
                    recipient.originalRecipient = OriginalRecipient(addressType: String(value[..<semicolon]), address: address)
                default:
                    return fail(Reply(555, .invalidArguments, "Unsupported RCPT parameter \(parameter.keyword)"))
                }
            }
            if transaction.recipients.count >= limits.maxRecipients {
                // Not an error of the client's (RFC 5321 §4.5.3.1.10: it sends the rest later),
                // so it does not count toward the error limit.
                return [.reply(Reply(452, .tooManyRecipientsTemporary, "Error: too many recipients"))]
            }
            transaction.recipients.append(recipient)
            state = .mail(transaction)
            return [.reply(Reply(250, .destinationOK, "Ok"))]
        case .data:
            switch state {
            case .ready, .greeted: return fail(Reply(503, .invalidCommand, "Error: need MAIL command"))
            case .mail(let transaction):
                guard !transaction.recipients.isEmpty else {
                    return fail(Reply(554, .invalidCommand, "Error: no valid recipients"))
                }
                state = .data(transaction)
                var protocolName = transaction.parameters.smtputf8 ? "UTF8SMTP" : (extended ? "ESMTP" : "SMTP")
                if tls != nil && extended { protocolName += "S" }
                return [
                    .reply(Reply(354, nil, "End data with <CR><LF>.<CR><LF>")),
                    .receiveData(ReceiveDataContext(transaction: transaction, heloName: heloName ?? "", protocolName: protocolName, tls: tls)),
                ]
            default: return []
            }
        case .rset:
            if state != .ready { state = .greeted }
            return [.reply(Reply(250, .ok, "Ok"))]
        case .noop:
            return [.reply(Reply(250, .ok, "Ok"))]
        case .quit:
            state = .closed
            return [.reply(Reply(221, .ok, "Bye")), .close]
        case .vrfy:
            // RFC 5321 §3.5.3: 252 when the server will accept but cannot verify.
            return [.reply(Reply(252, .otherProtocolStatus, "Cannot VRFY user, but will accept message and attempt delivery"))]
        case .expn:
            return fail(Reply(502, .invalidCommand, "EXPN is not supported"))
        case .help:
            let commands = "EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP" + (starttls != .off && tls == nil ? " STARTTLS" : "")
            return [.reply(Reply(214, .ok, ["tlsrelay: commands \(commands)", "See RFC 5321"]))]
        case .notImplemented(let verb):
            return fail(Reply(502, .invalidCommand, "Error: command \(verb) not implemented"))
        case .unknown:
            return fail(Reply(500, .syntaxError, "Error: command not recognized"))
        }
    }

    /// Applies one MAIL parameter; returns a failure reply when it is not acceptable.
    func apply(_ parameter: ESMTPParameter, to parameters: inout MailParameters) -> Reply? {
        switch parameter.keyword {
        case "SIZE":
            // RFC 1870 §4: size-value = 1*20DIGIT
            guard let value = parameter.value, value.count <= 20, value.allSatisfy(\.isASCII), value.allSatisfy(\.isNumber),
                  parameters.declaredSize == nil
            else { return Reply(501, .invalidArguments, "Bad SIZE parameter (RFC 1870)") }
            parameters.declaredSize = Int(value) ?? Int.max
        case "BODY":
            guard let value = parameter.value, parameters.body == nil else {
                return Reply(501, .invalidArguments, "Bad BODY parameter (RFC 6152)")
            }
            switch value.uppercased() {
            case "7BIT": parameters.body = .sevenBit
            case "8BITMIME": parameters.body = .eightBitMIME
            default: return Reply(555, .invalidArguments, "Unsupported BODY type \(value.uppercased())")
            }
        case "SMTPUTF8":
            guard parameter.value == nil else { return Reply(501, .invalidArguments, "SMTPUTF8 takes no value (RFC 6531)") }
            parameters.smtputf8 = true
        case "RET":
            guard let value = parameter.value, let ret = DSNReturn(rawValue: value.uppercased()), parameters.ret == nil else {
                return Reply(501, .invalidArguments, "Bad RET parameter (RFC 3461 section 4.3)")
            }
            parameters.ret = ret
        case "REQUIRETLS":
            guard !parameters.requireTLS else { return Reply(501, .invalidArguments, "REQUIRETLS given twice") }
            guard parameter.value == nil else {
                return Reply(501, .invalidArguments, "Bad REQUIRETLS parameter: it takes no value (RFC 8689 section 4)")
            }
            // RFC 8689 §4.1: REQUIRETLS is only offered, and only taken, over TLS.
            guard tls != nil else {
                return Reply(530, .encryptionNeeded, starttls == .off
                             ? "REQUIRETLS needs a TLS-protected session, and this listener does not offer STARTTLS (RFC 8689 section 4.1)"
                             : "REQUIRETLS needs a TLS-protected session: issue STARTTLS first (RFC 8689 section 4.1)")
            }
            parameters.requireTLS = true
        case "ENVID":
            // RFC 3461 §4.4: xtext, at most 100 characters.
            guard let value = parameter.value, value.count <= 100, let decoded = XText.decode(value), parameters.envelopeID == nil else {
                return Reply(501, .invalidArguments, "Bad ENVID parameter (RFC 3461 section 4.4)")
            }
            parameters.envelopeID = decoded
        default:
            return Reply(555, .invalidArguments, "Unsupported MAIL parameter \(parameter.keyword)")
        }
        return nil
    }

    /// The handler finished reading DATA content.
    public mutating func dataEnded(_ outcome: DataOutcome) -> [Action] {
        guard case .data(let transaction) = state else { return [] }
        switch outcome {
        case .complete:
            state = .storing(transaction)
            return [.storeMessage(transaction)]
        case .tooLarge:
            state = .greeted
            return fail(Reply(552, .messageTooBig, "Message size exceeds fixed limit of \(limits.maxMessageSize) bytes"))
        case .bareLineEnding:
            state = .greeted
            return fail(Reply(554, .syntaxError, "Message contains bare CR or LF; only CRLF is allowed (RFC 5321 section 2.3.8)"))
        case .lineTooLong:
            state = .greeted
            return fail(Reply(554, .contentRejected, "Message has a line longer than \(limits.maxTextLineLength) octets"))
        case .nulCharacter:
            state = .greeted
            return fail(Reply(554, .contentRejected, "Message contains a NUL character, which SMTP content may not carry (RFC 5321 section 4.1.1.4, RFC 6152)"))
        }
    }

    /// The TLS handshake after `startTLS` succeeded: everything learnt before is discarded and the
    /// client must send EHLO again (RFC 3207 §4.2).
    public mutating func tlsStarted(_ info: InboundTLS) {
        guard !isClosed else { return }
        tls = info
        heloName = nil
        extended = false
        state = .ready
    }

    /// The client sent more bytes behind STARTTLS, before the 220 (RFC 3207 §4.2, RFC 2920
    /// §3.1: STARTTLS ends a pipelined group). Those bytes would otherwise be read as commands
    /// from the TLS session — the command injection of CVE-2011-0411 — so the session ends
    /// without TLS and nothing of them is executed.
    public mutating func pipelinedAfterSTARTTLS() -> [Action] {
        state = .closed
        return [.reply(Reply(554, .securityPermanent, "Error: commands sent behind STARTTLS are not allowed (RFC 3207 section 4.2); closing")), .close]
    }

    /// The message is on disk and fsync'ed: only now 250 (RFC 5321 §6.1).
    public mutating func messageStored(queueID: String) -> [Action] {
        guard case .storing = state else { return [] }
        state = .greeted
        return [.reply(Reply(250, .ok, "Ok: queued as \(queueID)"))]
    }

    /// Writing the message failed; nothing of it was kept (RFC 5321 §4.2.2, RFC 3463 X.3.1).
    public mutating func storeFailed(_ failure: StoreFailure) -> [Action] {
        guard case .storing = state else { return [] }
        state = .greeted
        switch failure {
        case .insufficientStorage:
            return [.reply(Reply(452, .insufficientStorage, "Error: insufficient system storage, try again later"))]
        case .ioError:
            return [.reply(Reply(451, .otherMailSystemTemporary, "Error: local error in processing, try again later"))]
        }
    }

    /// Counts an error reply; past `maxErrors` the session ends with 421 (RFC 5321 §4.2.2).
    mutating func fail(_ reply: Reply) -> [Action] {
        errorCount += 1
        if errorCount >= limits.maxErrors {
            state = .closed
            return [.reply(reply), .reply(Reply(421, .securityTemporary, "\(hostname) Error: too many errors")), .close]
        }
        return [.reply(reply)]
    }
}

extension Command {
    var isEHLO: Bool { if case .ehlo = self { return true } else { return false } }

    /// The commands a `required` listener refuses before STARTTLS (RFC 3207 §4: all but EHLO,
    /// HELO, STARTTLS, NOOP, RSET, QUIT and HELP).
    var needsTLSWhenRequired: Bool {
        switch self {
        case .mail, .rcpt, .data, .vrfy, .expn: return true
        default: return false
        }
    }
}
