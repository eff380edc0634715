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
        _ = session.contentWritten()
        #expect(sent(session.receive(reply("250 2.0.0 queued as X"))) == ["QUIT\r\n"])
        guard case .finish(let result) = session.receive(reply("221 bye")).first else { Issue.record("no finish"); return }
        #expect(result.failure == nil)
        #expect(result.usedTLS)
        #expect(result.recipients[0] == .delivered(reply("250 2.0.0 queued as X")))
        #expect(result.recipients[1] == .bounced(reply("550 5.1.1 unknown")))
    }

    @Test("REQUIRETLS: on MAIL FROM when the TLS EHLO announces it; else nothing is sent (RFC 8689 §4.2.1)")
    func requireTLS() {
        var wanted = job(tls: .required, recipients: 1)
        wanted.requireTLS = true
        var session = ClientSession(job: wanted)
        _ = session.receive(reply("220 mx.example.net ESMTP"))
        _ = session.receive(reply(fullEHLO))
        _ = session.receive(reply("220 go ahead"))
        _ = session.tlsEstablished()
        let announcing = "250-mx.example.net\n250-PIPELINING\n250-REQUIRETLS\n250 DSN"
        let batch = sent(session.receive(reply(announcing)))
        #expect(batch.first?.hasPrefix("MAIL FROM:<a@example.org> REQUIRETLS RET=HDRS") == true, "\(batch)")

        // REQUIRETLS in the clear EHLO only (a stripping attacker could add it) does not count.
        var other = ClientSession(job: wanted)
        _ = other.receive(reply("220 mx.example.net ESMTP"))
        _ = other.receive(reply("250-mx.example.net\n250-STARTTLS\n250 REQUIRETLS"))
        _ = other.receive(reply("220 go ahead"))
        _ = other.tlsEstablished()
        // Nothing is sent but QUIT; the attempt ends with the failure.
        #expect(sent(other.receive(reply("250-mx.example.net\n250 PIPELINING"))) == ["QUIT\r\n"])
        let actions = other.receive(reply("221 bye"))
        guard case .finish(let result)? = actions.first else { Issue.record("\(actions)"); return }
        #expect(result.failure == .requireTLSNotOffered && result.recipients.isEmpty && !result.contentSent && !result.reusable)
    }

    @Test("content with a NUL is never sent: every recipient bounces with 5.6.0")
    func nulContent() {
        var withNUL = job(tls: .opportunistic, recipients: 2)
        withNUL.contentHasNUL = true
        var session = ClientSession(job: withNUL)
        _ = session.receive(reply("220 mx.example.net ESMTP"))
        let actions = session.receive(reply("250-mx.example.net\n250 PIPELINING"))
        #expect(sent(actions) == ["QUIT\r\n"])
        guard case .finish(let result)? = session.receive(reply("221 bye")).first else { Issue.record("no finish"); return }
        #expect(result.recipients[0] == .bouncedLocally(EnhancedStatusCode(5, 6, 0), "message content contains a NUL character, which SMTP may not carry (RFC 5321 section 4.1.1.4); not sent"))
        #expect(!result.contentSent)
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
        _ = session.contentWritten()
        var refused = ClientSession(job: job(recipients: 1))
        _ = refused.receive(reply("220 mx"))
        _ = refused.receive(reply("250-mx\n250 STARTTLS"))
        #expect(sent(refused.receive(reply("454 no"))) == ["MAIL FROM:<a@example.org>\r\n"])
    }

    @Test("local bounces: SMTPUTF8 unsupported (5.6.7), SIZE over the peer's limit (5.3.4)")
    func localBounces() {
        var utf8Job = job(tls: .none, recipients: 1, utf8: true)
        utf8Job.recipients[0] = Recipient(mailbox: Mailbox(localPart: "jürgen", domain: "example.net"))
        var utf8 = ClientSession(job: utf8Job)
        _ = utf8.receive(reply("220 mx"))
        #expect(sent(utf8.receive(reply("250-mx\n250 PIPELINING"))) == ["QUIT\r\n"])
        guard case .finish(let r1) = utf8.receive(reply("221 bye")).first else { Issue.record(); return }
        #expect(r1.recipients[0] == .bouncedLocally(EnhancedStatusCode(5, 6, 7), "SMTPUTF8 is required but not supported by the receiving server (RFC 6531 section 3.4)"))
        // Mixed: the UTF-8 local part bounces, the A-label recipient goes without SMTPUTF8.
        var mixedJob = job(tls: .none, recipients: 2, utf8: true)
        mixedJob.recipients[0] = Recipient(mailbox: Mailbox(localPart: "jürgen", domain: "müller.example", asciiDomain: "xn--mller-kva.example"))
        mixedJob.recipients[1] = Recipient(mailbox: Mailbox(localPart: "user", domain: "müller.example", asciiDomain: "xn--mller-kva.example"))
        var mixed = ClientSession(job: mixedJob)
        _ = mixed.receive(reply("220 mx"))
        #expect(sent(mixed.receive(reply("250-mx\n250 PIPELINING"))) == ["MAIL FROM:<a@example.org>\r\nRCPT TO:<user@xn--mller-kva.example>\r\nDATA\r\n"])
        _ = mixed.receive(reply("250 2.1.0 ok"))
        _ = mixed.receive(reply("250 2.1.5 ok"))
        #expect(mixed.receive(reply("354 go")) == [.sendContent])
        _ = mixed.contentWritten()
        _ = mixed.receive(reply("250 2.0.0 queued"))
        guard case .finish(let r3) = mixed.receive(reply("221 bye")).first else { Issue.record(); return }
        guard case .bouncedLocally(let code, _)? = r3.recipients[0] else { Issue.record("\(r3.recipients)"); return }
        #expect(code == EnhancedStatusCode(5, 6, 7))
        #expect(r3.recipients[1] == .delivered(reply("250 2.0.0 queued")))
        // A UTF-8 sender takes the whole transaction with it.
        var senderJob = job(tls: .none, recipients: 1, utf8: true)
        senderJob.sender = Mailbox(localPart: "jöran", domain: "example.org")
        var utf8Sender = ClientSession(job: senderJob)
        _ = utf8Sender.receive(reply("220 mx"))
        #expect(sent(utf8Sender.receive(reply("250-mx\n250 PIPELINING"))) == ["QUIT\r\n"])
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
        _ = data.contentWritten()
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
        _ = session.contentWritten()
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
        _ = session.contentWritten()
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
        _ = session.contentWritten()
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
        _ = busy.contentWritten()
        _ = busy.receive(reply("250 ok"))
        #expect(sent(busy.closeIdle()) == ["QUIT\r\n"])
        #expect(busy.closeIdle().isEmpty)
    }
}

@Suite("ClientSession reply order (RFC 5321 §4.1.1.4, §4.2; RFC 2920 §3.1)")
struct ClientSessionReplyOrderTests {
    /// A session without PIPELINING, waiting for the reply to MAIL.
    private func plainSession(recipients: Int = 1) -> ClientSession {
        var session = ClientSession(job: job(tls: .none, recipients: recipients))
        _ = session.receive(reply("220 mx"))
        _ = session.receive(reply("250-mx\n250 8BITMIME"))
        return session
    }

    private func failure(_ actions: [ClientSession.Action]) -> ClientSession.Result? {
        if case .finish(let result)? = actions.first { return result }
        return nil
    }

    @Test("a 250 behind the 354 in one segment: protocol error, nothing delivered, no content written")
    func earlyReplyBehind354() {
        var session = plainSession()
        _ = session.receive(reply("250 ok"))
        _ = session.receive(reply("250 ok"))
        let actions = session.receive(reply("354 go"), bytesFollow: true)
        #expect(!actions.contains(.sendContent))
        guard let result = failure(actions) else { Issue.record("no finish"); return }
        guard case .protocolError? = result.failure else { Issue.record("\(String(describing: result.failure))"); return }
        #expect(result.recipients.isEmpty)
        #expect(!result.contentSent)
    }

    @Test("a 250 while the content is still being written: protocol error, nothing delivered")
    func replyBeforeDotWritten() {
        var session = plainSession()
        _ = session.receive(reply("250 ok"))
        _ = session.receive(reply("250 ok"))
        #expect(session.receive(reply("354 go")) == [.sendContent])
        guard let result = failure(session.receive(reply("250 2.0.0 ok"))) else { Issue.record("no finish"); return }
        guard case .protocolError(let reason)? = result.failure else { Issue.record(); return }
        #expect(reason.contains("before the end of the message data"))
        #expect(result.recipients.isEmpty, "an early 250 delivers nobody")
        #expect(result.contentSent)
        // After the dot was written, the same reply decides.
        var good = plainSession()
        _ = good.receive(reply("250 ok"))
        _ = good.receive(reply("250 ok"))
        _ = good.receive(reply("354 go"))
        _ = good.contentWritten()
        #expect(sent(good.receive(reply("250 2.0.0 ok"))) == ["QUIT\r\n"])
    }

    @Test("without PIPELINING, an unsolicited reply behind MAIL's is a protocol error; nothing is pipelined")
    func unsolicitedWithoutPipelining() {
        var session = plainSession(recipients: 1)
        let actions = session.receive(reply("250 ok"), bytesFollow: true)
        #expect(sent(actions).isEmpty, "no RCPT is sent on a desynchronised connection")
        guard let result = failure(actions), case .protocolError(let reason)? = result.failure else { Issue.record(); return }
        #expect(reason.contains("did not offer PIPELINING"))
        #expect(result.recipients.isEmpty)
    }

    @Test("with PIPELINING, replies owed to the batch may be buffered; a surplus one is an error")
    func surplusWithPipelining() {
        var session = ClientSession(job: job(tls: .none, recipients: 1))
        _ = session.receive(reply("220 mx"))
        _ = session.receive(reply("250-mx\n250 PIPELINING"))
        #expect(session.receive(reply("250 ok"), bytesFollow: true).isEmpty)
        #expect(session.receive(reply("250 ok"), bytesFollow: true).isEmpty)
        // The 354 is the last reply owed: anything behind it is surplus.
        guard let result = failure(session.receive(reply("354 go"), bytesFollow: true)),
              case .protocolError? = result.failure else { Issue.record(); return }
        // A reply with nothing owed at all.
        var extra = ClientSession(job: job(tls: .none, recipients: 1))
        _ = extra.receive(reply("220 mx"))
        _ = extra.receive(reply("250-mx\n250 PIPELINING"))
        _ = extra.receive(reply("250 ok"))
        _ = extra.receive(reply("250 ok"))
        _ = extra.receive(reply("354 go"))
        _ = extra.contentWritten()
        #expect(sent(extra.receive(reply("250 ok"))) == ["QUIT\r\n"])
    }

    @Test("two 250s after the dot: the first decides, the surplus ends the connection (not reused)")
    func twoRepliesAfterDot() {
        var base = job(tls: .none, recipients: 1)
        base.keepOpen = true
        var session = ClientSession(job: base)
        _ = session.receive(reply("220 mx"))
        _ = session.receive(reply("250-mx\n250 PIPELINING"))
        _ = session.receive(reply("250 ok"))
        _ = session.receive(reply("250 ok"))
        _ = session.receive(reply("354 go"))
        _ = session.contentWritten()
        guard let result = failure(session.receive(reply("250 2.0.0 queued"), bytesFollow: true)) else { Issue.record(); return }
        #expect(result.recipients[0] == .delivered(reply("250 2.0.0 queued")))
        guard case .protocolError? = result.failure else { Issue.record(); return }
        #expect(!result.reusable)
        #expect(!session.isIdle)
    }

    @Test("bytes behind the greeting or the EHLO reply are a protocol error")
    func earlyTalker() {
        var greeting = ClientSession(job: job(tls: .none))
        guard case .protocolError? = failure(greeting.receive(reply("220 mx"), bytesFollow: true))?.failure else { Issue.record(); return }
        var ehlo = ClientSession(job: job(tls: .none))
        _ = ehlo.receive(reply("220 mx"))
        guard case .protocolError? = failure(ehlo.receive(reply("250-mx\n250 PIPELINING"), bytesFollow: true))?.failure else { Issue.record(); return }
    }

    @Test("SIZE: an absurd or malformed number is unknown, never unlimited; 0 or none is no fixed limit")
    func sizeKeyword() {
        #expect(ClientSession.SizeAnnouncement(parameter: "99999999999999999999999999") == .unknown("99999999999999999999999999"))
        #expect(ClientSession.SizeAnnouncement(parameter: "-5") == .unknown("-5"))
        #expect(ClientSession.SizeAnnouncement(parameter: "10x") == .unknown("10x"))
        #expect(ClientSession.SizeAnnouncement(parameter: "0") == .noFixedLimit)
        #expect(ClientSession.SizeAnnouncement(parameter: nil) == .noFixedLimit)
        #expect(ClientSession.SizeAnnouncement(parameter: "10000") == .limit(10000))
        let caps = ClientSession.Capabilities(ehloReply: reply("250-mx\n250 SIZE 99999999999999999999999999"))
        #expect(caps.sizeLimit == nil)
        // SIZE= still goes on MAIL FROM so the server decides.
        var session = ClientSession(job: job(tls: .none, recipients: 1))
        _ = session.receive(reply("220 mx"))
        #expect(sent(session.receive(reply("250-mx\n250 SIZE 99999999999999999999999999"))) == ["MAIL FROM:<a@example.org> SIZE=100\r\n"])
    }
}

@Suite("PeerText")
struct PeerTextTests {
    @Test("controls, DEL, C1 and invalid UTF-8 become \\xNN; printable UTF-8 stays")
    func escaping() {
        #expect(PeerText.escape(Array("plain text 1.2".utf8)) == "plain text 1.2")
        #expect(PeerText.escape([0x61, 0x00, 0x1B, 0x5B, 0x33, 0x31, 0x6D, 0x7F]) == "a\\x00\\x1B[31m\\x7F")
        #expect(PeerText.escape(Array("Grüße".utf8)) == "Grüße")
        #expect(PeerText.escape([0xC3]) == "\\xC3")
        #expect(PeerText.escape([0xC0, 0xAF]) == "\\xC0\\xAF", "overlong")
        #expect(PeerText.escape([0xED, 0xA0, 0x80]) == "\\xED\\xA0\\x80", "surrogate")
        #expect(PeerText.escape([0xC2, 0x9B, 0x41]) == "\\xC2\\x9BA", "C1 CSI")
        #expect(PeerText.escape("\u{1B}]0;title\u{07}") == "\\x1B]0;title\\x07")
    }

    @Test("the reply parser escapes peer text")
    func parserEscapes() throws {
        var parser = ReplyParser()
        parser.append([0x32, 0x35, 0x30, 0x20, 0x6F, 0x6B, 0x1B, 0x5B, 0x32, 0x4A, 0x00, 0xFF, 0x0D, 0x0A])
        let parsed = try parser.next()
        #expect(parsed?.lines == ["ok\\x1B[2J\\x00\\xFF"])
    }
}
