import Testing
@testable import SMTPCore

/// Drives a session through lines and returns the replies as "code enhanced" strings.
private func replies(_ actions: [ServerSession.Action]) -> [String] {
    actions.compactMap { action in
        if case .reply(let reply) = action { return reply.enhanced.map { "\(reply.code) \($0)" } ?? "\(reply.code)" }
        return nil
    }
}

private func greetedSession(limits: ServerLimits = ServerLimits()) -> ServerSession {
    var session = ServerSession(hostname: "relay.example.org", limits: limits)
    _ = session.start(clientAllowed: true)
    _ = session.receiveLine("EHLO client.example.org")
    return session
}

@Suite("ServerSession replies")
struct ServerSessionTests {
    @Test("greeting, denied client, connection limit")
    func greeting() {
        var allowed = ServerSession(hostname: "relay.example.org", limits: ServerLimits())
        #expect(replies(allowed.start(clientAllowed: true)) == ["220"])
        var denied = ServerSession(hostname: "relay.example.org", limits: ServerLimits())
        let deniedActions = denied.start(clientAllowed: false)
        #expect(replies(deniedActions) == ["554 5.7.1"])
        // RFC 5321 §3.1: the session waits for QUIT; other commands get 503, within a budget.
        #expect(deniedActions.last != .close && denied.isRefused)
        #expect(replies(denied.receiveLine("EHLO client.example.org")) == ["503 5.5.1"])
        #expect(replies(denied.receiveLine("MAIL FROM:<a@example.org>")) == ["503 5.5.1"])
        #expect(replies(denied.receiveMalformedLine(.bareLineEnding)) == ["503 5.5.1"])
        let quit = denied.receiveLine("QUIT")
        #expect(replies(quit) == ["221 2.0.0"] && quit.last == .close)
        var limits = ServerLimits()
        limits.refusedSessionCommands = 2
        var chatty = ServerSession(hostname: "relay.example.org", limits: limits)
        _ = chatty.start(clientAllowed: false)
        #expect(chatty.receiveLine("NOOP").last != .close)
        #expect(chatty.receiveLine("NOOP").last == .close)
        var full = ServerSession(hostname: "relay.example.org", limits: ServerLimits())
        #expect(replies(full.start(clientAllowed: true, overConnectionLimit: true)) == ["421 4.7.0"])
    }

    @Test("EHLO advertises the extensions")
    func ehlo() throws {
        var session = ServerSession(hostname: "relay.example.org", limits: ServerLimits())
        _ = session.start(clientAllowed: true)
        let actions = session.receiveLine("EHLO client.example.org")
        guard case .reply(let reply) = actions.first else { Issue.record("no reply"); return }
        #expect(reply.code == 250)
        #expect(reply.lines == ["relay.example.org", "PIPELINING", "SIZE 52428800", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "DSN"])
        let wire = String(decoding: reply.wireBytes, as: UTF8.self)
        #expect(wire.hasPrefix("250-relay.example.org\r\n250-PIPELINING\r\n"))
        #expect(wire.hasSuffix("250 DSN\r\n"))
    }

    struct Case: Sendable, CustomStringConvertible {
        let lines: [String]
        let expected: [String]
        var description: String { lines.joined(separator: " | ") }
    }

    static let cases: [Case] = [
        // Command order (RFC 5321 §4.1.4)
        Case(lines: ["MAIL FROM:<a@example.org>"], expected: ["250 2.1.0"]),
        Case(lines: ["RCPT TO:<b@example.net>"], expected: ["503 5.5.1"]),
        Case(lines: ["DATA"], expected: ["503 5.5.1"]),
        Case(lines: ["MAIL FROM:<a@example.org>", "DATA"], expected: ["250 2.1.0", "554 5.5.1"]),
        Case(lines: ["MAIL FROM:<a@example.org>", "MAIL FROM:<a@example.org>"], expected: ["250 2.1.0", "503 5.5.1"]),
        Case(lines: ["MAIL FROM:<a@example.org>", "RSET", "RCPT TO:<b@example.net>"], expected: ["250 2.1.0", "250 2.0.0", "503 5.5.1"]),
        Case(lines: ["MAIL FROM:<a@example.org>", "EHLO again.example.org", "RCPT TO:<b@example.net>"], expected: ["250 2.1.0", "250", "503 5.5.1"]),
        // Paths
        Case(lines: ["MAIL FROM:<>"], expected: ["250 2.1.0"]),
        Case(lines: ["MAIL FROM: <a@example.org>"], expected: ["250 2.1.0"]),
        Case(lines: ["MAIL FROM:a@example.org"], expected: ["501 5.5.2"]),
        Case(lines: ["MAIL FROM:<a@@example.org>"], expected: ["501 5.1.7"]),
        Case(lines: ["MAIL FROM:<a.@example.org>"], expected: ["501 5.1.7"]),
        Case(lines: ["MAIL FROM:<\"odd user\"@example.org>", "RCPT TO:<\"x y\"@example.net>"], expected: ["250 2.1.0", "250 2.1.5"]),
        Case(lines: ["MAIL FROM:<a@example.org>", "RCPT TO:<@hop.example:b@example.net>"], expected: ["250 2.1.0", "250 2.1.5"]),
        Case(lines: ["MAIL FROM:<a@example.org>", "RCPT TO:<postmaster>"], expected: ["250 2.1.0", "501 5.1.3"]),
        Case(lines: ["MAIL FROM:<a@example.org>", "RCPT TO:<b@-bad.example>"], expected: ["250 2.1.0", "501 5.1.3"]),
        Case(lines: ["MAIL FROM:<a@example.org>", "RCPT TO:<b@[192.0.2.1]>"], expected: ["250 2.1.0", "550 5.7.1"]),
        Case(lines: ["MAIL FROM:<a@example.org>", "RCPT TO:<b@192.0.2.1>"], expected: ["250 2.1.0", "501 5.1.3"]),
        Case(lines: ["MAIL FROM:<a@example.org> SMTPUTF8", "RCPT TO:<evil\u{202E}moc@example.net>"], expected: ["250 2.1.0", "501 5.1.3"]),
        Case(lines: ["MAIL FROM:<a@example.org> SMTPUTF8", "RCPT TO:<b\u{2028}x@example.net>"], expected: ["250 2.1.0", "501 5.1.3"]),
        Case(lines: ["MAIL FROM:<a@example.org>", "RCPT TO:b@example.net"], expected: ["250 2.1.0", "501 5.5.2"]),
        // SMTPUTF8 (RFC 6531)
        Case(lines: ["MAIL FROM:<jöran@example.org>"], expected: ["553 5.6.7"]),
        Case(lines: ["MAIL FROM:<jöran@example.org> SMTPUTF8", "RCPT TO:<用户@example.net>"], expected: ["250 2.1.0", "250 2.1.5"]),
        // No IDNA conversion yet: refused at once instead of bouncing days later.
        Case(lines: ["MAIL FROM:<jöran@example.org> SMTPUTF8", "RCPT TO:<用户@例子.广告>"], expected: ["250 2.1.0", "553 5.6.7"]),
        Case(lines: ["MAIL FROM:<a@example.org>", "RCPT TO:<用户@例子.广告>"], expected: ["250 2.1.0", "553 5.6.7"]),
        Case(lines: ["MAIL FROM:<a@example.org> SMTPUTF8=YES"], expected: ["501 5.5.4"]),
        // SIZE (RFC 1870)
        Case(lines: ["MAIL FROM:<a@example.org> SIZE=1000"], expected: ["250 2.1.0"]),
        Case(lines: ["MAIL FROM:<a@example.org> SIZE=52428801"], expected: ["552 5.3.4"]),
        Case(lines: ["MAIL FROM:<a@example.org> SIZE=99999999999999999999"], expected: ["552 5.3.4"]),
        Case(lines: ["MAIL FROM:<a@example.org> SIZE=12x"], expected: ["501 5.5.4"]),
        // BODY (RFC 6152)
        Case(lines: ["MAIL FROM:<a@example.org> BODY=8BITMIME"], expected: ["250 2.1.0"]),
        Case(lines: ["MAIL FROM:<a@example.org> BODY=7bit"], expected: ["250 2.1.0"]),
        Case(lines: ["MAIL FROM:<a@example.org> BODY=BINARYMIME"], expected: ["555 5.5.4"]),
        // DSN (RFC 3461)
        Case(lines: ["MAIL FROM:<a@example.org> RET=HDRS ENVID=abc+2Bdef"], expected: ["250 2.1.0"]),
        Case(lines: ["MAIL FROM:<a@example.org> RET=BODY"], expected: ["501 5.5.4"]),
        Case(lines: ["MAIL FROM:<a@example.org> ENVID=bad+zz"], expected: ["501 5.5.4"]),
        Case(lines: ["MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40example.net"], expected: ["250 2.1.0", "250 2.1.5"]),
        Case(lines: ["MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net> NOTIFY=NEVER,SUCCESS"], expected: ["250 2.1.0", "501 5.5.4"]),
        Case(lines: ["MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net> NOTIFY=SOMETIMES"], expected: ["250 2.1.0", "501 5.5.4"]),
        Case(lines: ["MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net> ORCPT=rfc822"], expected: ["250 2.1.0", "501 5.5.4"]),
        Case(lines: ["MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net> FOO=BAR"], expected: ["250 2.1.0", "555 5.5.4"]),
        Case(lines: ["MAIL FROM:<a@example.org> XYZ"], expected: ["555 5.5.4"]),
        // Other commands
        Case(lines: ["NOOP"], expected: ["250 2.0.0"]),
        Case(lines: ["RSET"], expected: ["250 2.0.0"]),
        Case(lines: ["VRFY someone"], expected: ["252 2.5.0"]),
        Case(lines: ["EXPN list"], expected: ["502 5.5.1"]),
        Case(lines: ["HELP"], expected: ["214 2.0.0"]),
        Case(lines: ["STARTTLS"], expected: ["502 5.5.1"]),
        Case(lines: ["AUTH PLAIN AAAA"], expected: ["502 5.5.1"]),
        Case(lines: ["BDAT 10 LAST"], expected: ["502 5.5.1"]),
        Case(lines: ["FROB"], expected: ["500 5.5.2"]),
        Case(lines: ["QUIT"], expected: ["221 2.0.0"]),
        Case(lines: ["DATA extra"], expected: ["501 5.5.2"]),
        Case(lines: ["EHLO"], expected: ["501 5.5.2"]),
        Case(lines: ["EHLO bad_name!"], expected: ["501 5.5.2"]),
        Case(lines: ["EHLO [127.0.0.1]"], expected: ["250"]),
    ]

    @Test("command replies", arguments: cases)
    func commandReplies(_ testCase: Case) {
        var session = greetedSession()
        var got: [String] = []
        for line in testCase.lines { got += replies(session.receiveLine(line)) }
        #expect(got == testCase.expected)
    }

    @Test("MAIL before EHLO, and parameters after HELO")
    func order() {
        var session = ServerSession(hostname: "relay.example.org", limits: ServerLimits())
        _ = session.start(clientAllowed: true)
        #expect(replies(session.receiveLine("MAIL FROM:<a@example.org>")) == ["503 5.5.1"])
        #expect(replies(session.receiveLine("HELO client.example.org")) == ["250"])
        #expect(replies(session.receiveLine("MAIL FROM:<a@example.org> SIZE=10")) == ["555 5.5.4"])
        #expect(replies(session.receiveLine("MAIL FROM:<a@example.org>")) == ["250 2.1.0"])
    }

    @Test("recipient limit gives 452 4.5.3")
    func recipientLimit() {
        var limits = ServerLimits()
        limits.maxRecipients = 2
        var session = greetedSession(limits: limits)
        _ = session.receiveLine("MAIL FROM:<a@example.org>")
        #expect(replies(session.receiveLine("RCPT TO:<b1@example.net>")) == ["250 2.1.5"])
        #expect(replies(session.receiveLine("RCPT TO:<b2@example.net>")) == ["250 2.1.5"])
        #expect(replies(session.receiveLine("RCPT TO:<b3@example.net>")) == ["452 4.5.3"])
        // Recipients over the limit do not count as errors: the transaction survives 30 of them.
        for _ in 0..<30 { #expect(replies(session.receiveLine("RCPT TO:<bx@example.net>")) == ["452 4.5.3"]) }
        #expect(replies(session.receiveLine("DATA")) == ["354"])
    }

    @Test("DATA, storage, and every end-of-data outcome")
    func dataOutcomes() {
        for (outcome, expected) in [
            (ServerSession.DataOutcome.tooLarge, ["552 5.3.4"]),
            (.bareLineEnding, ["554 5.5.2"]),
            (.lineTooLong, ["554 5.6.0"]),
        ] {
            var session = greetedSession()
            _ = session.receiveLine("MAIL FROM:<a@example.org>")
            _ = session.receiveLine("RCPT TO:<b@example.net>")
            let dataActions = session.receiveLine("DATA")
            #expect(replies(dataActions) == ["354"])
            #expect(session.isBusyWithMessage)
            #expect(replies(session.dataEnded(outcome)) == expected)
            // The transaction is over: a new MAIL is accepted.
            #expect(replies(session.receiveLine("MAIL FROM:<a@example.org>")) == ["250 2.1.0"])
        }
        var session = greetedSession()
        _ = session.receiveLine("MAIL FROM:<a@example.org> SMTPUTF8 BODY=8BITMIME RET=FULL ENVID=xyz")
        _ = session.receiveLine("RCPT TO:<b@example.net> NOTIFY=DELAY")
        let actions = session.receiveLine("DATA")
        guard case .receiveData(let context) = actions.last else { Issue.record("no receiveData"); return }
        #expect(context.protocolName == "UTF8SMTP")
        let stored = session.dataEnded(.complete(size: 10))
        guard case .storeMessage(let transaction) = stored.first else { Issue.record("no store"); return }
        #expect(transaction.parameters.smtputf8)
        #expect(transaction.parameters.body == .eightBitMIME)
        #expect(transaction.parameters.ret == .full)
        #expect(transaction.parameters.envelopeID == "xyz")
        #expect(transaction.recipients[0].notify == DSNNotify(delay: true))
        // Commands are ignored while storing.
        #expect(session.receiveLine("NOOP").isEmpty)
        #expect(replies(session.messageStored(queueID: "X")) == ["250 2.0.0"])
        var full = greetedSession()
        _ = full.receiveLine("MAIL FROM:<a@example.org>")
        _ = full.receiveLine("RCPT TO:<b@example.net>")
        _ = full.receiveLine("DATA")
        _ = full.dataEnded(.complete(size: 1))
        #expect(replies(full.storeFailed(.insufficientStorage)) == ["452 4.3.1"])
        var broken = greetedSession()
        _ = broken.receiveLine("MAIL FROM:<a@example.org>")
        _ = broken.receiveLine("RCPT TO:<b@example.net>")
        _ = broken.receiveLine("DATA")
        _ = broken.dataEnded(.complete(size: 1))
        #expect(replies(broken.storeFailed(.ioError)) == ["451 4.3.0"])
    }

    @Test("too many errors end the session with 421")
    func errorLimit() {
        var limits = ServerLimits()
        limits.maxErrors = 3
        var session = greetedSession(limits: limits)
        #expect(replies(session.receiveLine("FROB")) == ["500 5.5.2"])
        #expect(replies(session.receiveLine("FROB")) == ["500 5.5.2"])
        let last = session.receiveLine("FROB")
        #expect(replies(last) == ["500 5.5.2", "421 4.7.0"])
        #expect(last.last == .close)
        #expect(session.receiveLine("NOOP").isEmpty)
    }

    @Test("malformed lines, timeout, shutdown")
    func malformed() {
        var session = greetedSession()
        #expect(replies(session.receiveMalformedLine(.bareLineEnding)) == ["500 5.5.2"])
        #expect(replies(session.receiveMalformedLine(.tooLong)) == ["500 5.5.2"])
        #expect(replies(session.receiveMalformedLine(.invalidUTF8)) == ["500 5.5.2"])
        #expect(replies(session.idleTimeout()) == ["421 4.4.2"])
        var other = greetedSession()
        #expect(replies(other.shutdown()) == ["421 4.3.2"])
    }
}
