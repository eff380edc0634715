import Foundation
import Testing
@testable import SMTPCore

private func reply(_ text: String) -> Reply {
    var parser = ReplyParser()
    parser.append(Array((text.replacingOccurrences(of: "\n", with: "\r\n") + "\r\n").utf8))
    return try! parser.next()!
}

private func sent(_ actions: [ClientSession.Action]) -> [String] {
    actions.compactMap { action in
        if case .send(let bytes) = action { return String(decoding: bytes, as: UTF8.self) }
        return nil
    }
}

private func job(tls: ClientSession.TLSRequirement = .opportunistic, recipients: Int = 2, utf8: Bool = false, size: Int = 100) -> ClientSession.Job {
    ClientSession.Job(
        heloName: "relay.example.org", sender: Mailbox(localPart: "a", domain: "example.org"),
        recipients: (0..<recipients).map { Recipient(mailbox: Mailbox(localPart: "r\($0)", domain: "example.net"), notify: DSNNotify(failure: true), originalRecipient: OriginalRecipient(addressType: "rfc822", address: "r\($0)@example.net")) },
        size: size, body: .eightBitMIME, needsSMTPUTF8: utf8, ret: .headers, envelopeID: "id 1", tls: tls)
}

private let fullEHLO = "250-mx.example.net\n250-PIPELINING\n250-SIZE 10000\n250-STARTTLS\n250-8BITMIME\n250-SMTPUTF8\n250-DSN\n250 ENHANCEDSTATUSCODES"

@Suite("ClientSession")
struct ClientSessionTests {
    @Test("reply parser: multi-line, enhanced codes, errors")
    func parser() throws {
        var parser = ReplyParser()
        parser.append(Array("250-first\r\n250-SIZE 10\r\n250 last\r\n550 5.1.1 no such user\r\n".utf8))
        let first = try parser.next()
        #expect(first?.code == 250)
        #expect(first?.lines == ["first", "SIZE 10", "last"])
        let second = try parser.next()
        #expect(second?.enhanced == EnhancedStatusCode(5, 1, 1))
        #expect(second?.lines == ["no such user"])
        #expect(try parser.next() == nil)
        var bad = ReplyParser()
        bad.append(Array("250-a\r\n251 b\r\n".utf8))
        #expect(throws: ReplyParser.ParseError.self) { try bad.next() }
        var bare = ReplyParser()
        bare.append(Array("250 ok\n".utf8))
        #expect(throws: ReplyParser.ParseError.self) { try bare.next() }
        var junk = ReplyParser()
        junk.append(Array("HTTP/1.1 400\r\n".utf8))
        #expect(throws: ReplyParser.ParseError.self) { try junk.next() }
    }

    @Test("STARTTLS, EHLO again, pipelined transaction with DSN, SIZE, BODY")
    func fullSession() {
        var session = ClientSession(job: job())
        #expect(sent(session.receive(reply("220 mx.example.net ESMTP"))) == ["EHLO relay.example.org\r\n"])
        #expect(sent(session.receive(reply(fullEHLO))) == ["STARTTLS\r\n"])
        #expect(session.receive(reply("220 2.0.0 go ahead")) == [.startTLS])
        #expect(sent(session.tlsEstablished()) == ["EHLO relay.example.org\r\n"])
        let batch = sent(session.receive(reply(fullEHLO)))
        #expect(batch == ["MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=id+201\r\n"
                          + "RCPT TO:<r0@example.net> NOTIFY=FAILURE ORCPT=rfc822;r0@example.net\r\n"
                          + "RCPT TO:<r1@example.net> NOTIFY=FAILURE ORCPT=rfc822;r1@example.net\r\n"
                          + "DATA\r\n"])
        #expect(session.receive(reply("250 2.1.0 ok")).isEmpty)
        #expect(session.receive(reply("250 2.1.5 ok")).isEmpty)
        #expect(session.receive(reply("550 5.1.1 unknown")).isEmpty)
        #expect(session.receive(reply("354 go")) == [.sendContent])
        #expect(sent(session.receive(reply("250 2.0.0 queued as X"))) == ["QUIT\r\n"])
        guard case .finish(let result) = session.receive(reply("221 bye")).first else { Issue.record("no finish"); return }
        #expect(result.failure == nil)
        #expect(result.usedTLS)
        #expect(result.recipients[0] == .delivered(reply("250 2.0.0 queued as X")))
        #expect(result.recipients[1] == .bounced(reply("550 5.1.1 unknown")))
    }

    @Test("TLS required: missing STARTTLS, refused STARTTLS, injected plaintext, failed handshake send nothing")
    func required() {
        var missing = ClientSession(job: job(tls: .required))
        _ = missing.receive(reply("220 mx"))
        let actions = missing.receive(reply("250-mx\n250 PIPELINING"))
        #expect(actions == [.finish(ClientSession.Result(recipients: [:], failure: .starttlsNotOffered))])
        var refused = ClientSession(job: job(tls: .required))
        _ = refused.receive(reply("220 mx"))
        _ = refused.receive(reply(fullEHLO))
        guard case .finish(let r1) = refused.receive(reply("454 4.7.0 TLS not available")).first else { Issue.record(); return }
        #expect(r1.failure == .starttlsRefused(reply("454 4.7.0 TLS not available")))
        var injected = ClientSession(job: job(tls: .required))
        _ = injected.receive(reply("220 mx"))
        _ = injected.receive(reply(fullEHLO))
        guard case .finish(let r2) = injected.receive(reply("220 go"), bytesFollow: true).first else { Issue.record(); return }
        #expect(r2.failure == .plaintextInjection)
        var broken = ClientSession(job: job(tls: .required))
        _ = broken.receive(reply("220 mx"))
        _ = broken.receive(reply(fullEHLO))
        _ = broken.receive(reply("220 go"))
        guard case .finish(let r3) = broken.tlsFailed("no matching TLSA").first else { Issue.record(); return }
        #expect(r3.failure == .tlsFailed("no matching TLSA"))
        #expect(r3.recipients.isEmpty)
    }

    @Test("opportunistic: no STARTTLS means clear text; refused STARTTLS goes on in clear")
    func opportunistic() {
        var session = ClientSession(job: job(recipients: 1))
        _ = session.receive(reply("220 mx"))
        #expect(sent(session.receive(reply("250-mx\n250 8BITMIME"))) == ["MAIL FROM:<a@example.org> BODY=8BITMIME\r\n"])
        #expect(sent(session.receive(reply("250 ok"))) == ["RCPT TO:<r0@example.net>\r\n"])
        #expect(sent(session.receive(reply("250 ok"))) == ["DATA\r\n"])
        #expect(session.receive(reply("354 go")) == [.sendContent])
        var refused = ClientSession(job: job(recipients: 1))
        _ = refused.receive(reply("220 mx"))
        _ = refused.receive(reply("250-mx\n250 STARTTLS"))
        #expect(sent(refused.receive(reply("454 no"))) == ["MAIL FROM:<a@example.org>\r\n"])
    }

    @Test("local bounces: SMTPUTF8 unsupported (5.6.7), SIZE over the peer's limit (5.3.4)")
    func localBounces() {
        var utf8 = ClientSession(job: job(tls: .none, recipients: 1, utf8: true))
        _ = utf8.receive(reply("220 mx"))
        #expect(sent(utf8.receive(reply("250-mx\n250 PIPELINING"))) == ["QUIT\r\n"])
        guard case .finish(let r1) = utf8.receive(reply("221 bye")).first else { Issue.record(); return }
        #expect(r1.recipients[0] == .bouncedLocally(EnhancedStatusCode(5, 6, 7), "SMTPUTF8 is required but not supported by the receiving server (RFC 6531 section 3.4)"))
        var big = ClientSession(job: job(tls: .none, recipients: 1, size: 20000))
        _ = big.receive(reply("220 mx"))
        _ = big.receive(reply("250-mx\n250 SIZE 10000"))
        guard case .finish(let r2) = big.receive(reply("221 bye")).first else { Issue.record(); return }
        if case .bouncedLocally(let code, _) = r2.recipients[0] { #expect(code == EnhancedStatusCode(5, 3, 4)) } else { Issue.record() }
    }

    @Test("failures: 421, MAIL refused, DATA refused, connection lost, timeout, HELO fallback")
    func failures() {
        var closing = ClientSession(job: job(tls: .none))
        _ = closing.receive(reply("220 mx"))
        guard case .finish(let r1) = closing.receive(reply("421 4.3.2 shutting down")).first else { Issue.record(); return }
        #expect(r1.failure == .serviceClosing(reply("421 4.3.2 shutting down")))
        var mail = ClientSession(job: job(tls: .none))
        _ = mail.receive(reply("220 mx"))
        _ = mail.receive(reply("250-mx\n250 PIPELINING"))
        _ = mail.receive(reply("451 4.3.0 try later"))
        _ = mail.receive(reply("503 5.5.1 need MAIL"))
        _ = mail.receive(reply("503 5.5.1 need MAIL"))
        #expect(sent(mail.receive(reply("503 5.5.1 no valid recipients"))) == ["QUIT\r\n"])
        guard case .finish(let r2) = mail.receive(reply("221 bye")).first else { Issue.record(); return }
        #expect(r2.recipients[0] == .deferred(reply("451 4.3.0 try later")))
        #expect(r2.recipients[1] == .deferred(reply("451 4.3.0 try later")))
        var data = ClientSession(job: job(tls: .none, recipients: 1))
        _ = data.receive(reply("220 mx"))
        _ = data.receive(reply("250-mx\n250 PIPELINING"))
        _ = data.receive(reply("250 ok"))
        _ = data.receive(reply("250 ok"))
        _ = data.receive(reply("354 go"))
        _ = data.receive(reply("554 5.7.1 spam"))
        guard case .finish(let r3) = data.receive(reply("221 bye")).first else { Issue.record(); return }
        #expect(r3.recipients[0] == .bounced(reply("554 5.7.1 spam")))
        var lost = ClientSession(job: job(tls: .none))
        _ = lost.receive(reply("220 mx"))
        guard case .finish(let r4) = lost.connectionClosed().first else { Issue.record(); return }
        #expect(r4.failure == .connectionLost(.ehlo))
        var slow = ClientSession(job: job(tls: .none))
        guard case .finish(let r5) = slow.timedOut().first else { Issue.record(); return }
        #expect(r5.failure == .timeout(.greeting))
        var old = ClientSession(job: job(tls: .opportunistic, recipients: 1))
        _ = old.receive(reply("220 mx"))
        #expect(sent(old.receive(reply("502 5.5.1 EHLO not supported"))) == ["HELO relay.example.org\r\n"])
        #expect(sent(old.receive(reply("250 mx"))) == ["MAIL FROM:<a@example.org>\r\n"])
    }

    @Test("dot-stuffing")
    func stuffing() {
        #expect(DotStuffing.encode(Array(".a\r\nb\r\n..c\r\n".utf8)) == Array("..a\r\nb\r\n...c\r\n.\r\n".utf8))
        #expect(DotStuffing.encode([]) == Array(".\r\n".utf8))
        #expect(DotStuffing.encode(Array("no newline".utf8)) == Array("no newline\r\n.\r\n".utf8))
    }
}

@Suite("ClientSession connection reuse")
struct ClientSessionReuseTests {
    private func keepOpen(_ base: ClientSession.Job) -> ClientSession.Job {
        var job = base
        job.keepOpen = true
        return job
    }

    /// Runs greeting, STARTTLS and EHLO; returns the session waiting for the MAIL reply.
    private func startedOverTLS(_ first: ClientSession.Job) -> ClientSession {
        var session = ClientSession(job: first)
        _ = session.receive(reply("220 mx.example.net ESMTP"))
        _ = session.receive(reply(fullEHLO))
        _ = session.receive(reply("220 2.0.0 go ahead"))
        _ = session.tlsEstablished()
        _ = session.receive(reply(fullEHLO))
        return session
    }

    @Test("keepOpen: a completed transaction leaves the connection idle; the next message goes without EHLO or STARTTLS")
    func secondMessage() {
        var session = startedOverTLS(keepOpen(job(recipients: 1)))
        _ = session.receive(reply("250 ok"))
        _ = session.receive(reply("250 ok"))
        #expect(session.receive(reply("354 go")) == [.sendContent])
        guard case .finish(let first) = session.receive(reply("250 2.0.0 queued as A")).first else { Issue.record("no finish"); return }
        #expect(first.reusable)
        #expect(first.contentSent)
        #expect(first.recipients[0] == .delivered(reply("250 2.0.0 queued as A")))
        #expect(session.isIdle)
        #expect(session.stage == .idle)
        // The next job's EHLO name and TLS requirement are ignored: the connection's stay.
        var next = keepOpen(job(tls: .none, recipients: 2))
        next.heloName = "other.example.org"
        let batch = sent(session.begin(next))
        #expect(batch.count == 1)
        #expect(batch[0].hasPrefix("MAIL FROM:<a@example.org> SIZE=100"))
        #expect(!batch[0].contains("EHLO") && !batch[0].contains("STARTTLS"))
        #expect(batch[0].hasSuffix("DATA\r\n"))
        #expect(session.job.tls == .opportunistic)
        #expect(session.job.heloName == "relay.example.org")
        _ = session.receive(reply("250 ok"))
        _ = session.receive(reply("250 ok"))
        _ = session.receive(reply("450 4.2.0 busy"))
        #expect(session.receive(reply("354 go")) == [.sendContent])
        guard case .finish(let second) = session.receive(reply("250 2.0.0 queued as B")).first else { Issue.record("no finish"); return }
        #expect(second.usedTLS, "the TLS of the connection carries over")
        #expect(second.recipients.count == 2)
        #expect(second.recipients[0] == .delivered(reply("250 2.0.0 queued as B")))
        #expect(second.recipients[1] == .deferred(reply("450 4.2.0 busy")))
        // Idle time over: QUIT, then the end.
        #expect(sent(session.timedOut()) == ["QUIT\r\n"])
        guard case .finish(let last) = session.receive(reply("221 bye")).first else { Issue.record("no finish"); return }
        #expect(!last.reusable)
    }

    @Test("a transaction that did not complete ends with QUIT, not idle")
    func incompleteTransactionQuits() {
        var rejected = startedOverTLS(keepOpen(job(recipients: 1)))
        _ = rejected.receive(reply("250 ok"))
        _ = rejected.receive(reply("550 5.1.1 unknown"))
        #expect(sent(rejected.receive(reply("554 5.5.1 no valid recipients"))) == ["QUIT\r\n"])
        #expect(!rejected.isIdle)
        var tooBig = ClientSession(job: keepOpen(job(tls: .none, recipients: 1, size: 20000)))
        _ = tooBig.receive(reply("220 mx"))
        #expect(sent(tooBig.receive(reply(fullEHLO))) == ["QUIT\r\n"])
        #expect(!tooBig.isIdle)
        var probe = keepOpen(job(tls: .none))
        probe.probeOnly = true
        var probing = ClientSession(job: probe)
        _ = probing.receive(reply("220 mx"))
        #expect(sent(probing.receive(reply(fullEHLO))) == ["QUIT\r\n"])
    }

    @Test("an idle connection that the server closes or 421s ends without a result for anyone")
    func idleConnectionLost() {
        var session = startedOverTLS(keepOpen(job(recipients: 1)))
        _ = session.receive(reply("250 ok"))
        _ = session.receive(reply("250 ok"))
        _ = session.receive(reply("354 go"))
        _ = session.receive(reply("250 ok"))
        var closed = session
        guard case .finish(let result) = closed.connectionClosed().first else { Issue.record("no finish"); return }
        #expect(!result.reusable)
        #expect(!closed.isIdle)
        #expect(closed.begin(job()).isEmpty, "nothing is sent on a closed connection")
        guard case .finish(let shut) = session.receive(reply("421 4.4.2 idle too long")).first else { Issue.record("no finish"); return }
        #expect(shut.failure == .serviceClosing(reply("421 4.4.2 idle too long")))
        #expect(!session.isIdle)
    }

    @Test("closeIdle sends QUIT only when idle")
    func closeIdle() {
        var busy = startedOverTLS(keepOpen(job(recipients: 1)))
        #expect(busy.closeIdle().isEmpty)
        _ = busy.receive(reply("250 ok"))
        _ = busy.receive(reply("250 ok"))
        _ = busy.receive(reply("354 go"))
        _ = busy.receive(reply("250 ok"))
        #expect(sent(busy.closeIdle()) == ["QUIT\r\n"])
        #expect(busy.closeIdle().isEmpty)
    }
}
