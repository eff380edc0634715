import Testing
@testable import SMTPCore

private func codes(_ actions: [ServerSession.Action]) -> [String] {
    actions.compactMap { action in
        switch action {
        case .reply(let reply): return reply.enhanced.map { "\(reply.code) \($0)" } ?? "\(reply.code)"
        case .startTLS(let reply): return "starttls \(reply.code)"
        default: return nil
        }
    }
}

private func keywords(_ actions: [ServerSession.Action]) -> [String] {
    guard case .reply(let reply)? = actions.first else { return [] }
    return Array(reply.lines.dropFirst())
}

private let tls13 = InboundTLS(protocolVersion: "TLSv1.3", cipher: "TLS_AES_256_GCM_SHA384", cipherBits: 256, algorithmBits: 256)

private func session(_ policy: ServerSession.STARTTLSPolicy) -> ServerSession {
    var session = ServerSession(hostname: "relay.example.org", limits: ServerLimits(), starttls: policy)
    _ = session.start(clientAllowed: true)
    return session
}

@Suite("Inbound STARTTLS (RFC 3207) and REQUIRETLS (RFC 8689)")
struct InboundTLSTests {
    @Test("STARTTLS is offered only before TLS, REQUIRETLS only inside it; TLS resets the session")
    func keywordsBeforeAndAfter() {
        var s = session(.offered)
        let clear = keywords(s.receiveLine("EHLO client.example.org"))
        #expect(clear.contains("STARTTLS") && !clear.contains("REQUIRETLS"))
        #expect(codes(s.receiveLine("STARTTLS")) == ["starttls 220"])
        s.tlsStarted(tls13)
        // RFC 3207 §4.2: what was learnt before TLS is gone; EHLO again.
        #expect(s.heloName == nil)
        #expect(codes(s.receiveLine("MAIL FROM:<a@example.org>")) == ["503 5.5.1"])
        let inside = keywords(s.receiveLine("EHLO client.example.org"))
        #expect(inside.contains("REQUIRETLS") && !inside.contains("STARTTLS"))
        #expect(codes(s.receiveLine("STARTTLS")) == ["503 5.5.1"])
    }

    @Test("STARTTLS refused where RFC 3207 does not allow it", arguments: [
        (ServerSession.STARTTLSPolicy.off, ["EHLO c.example.org", "STARTTLS"], "502 5.5.1"),
        (.offered, ["STARTTLS"], "503 5.5.1"),
        (.offered, ["EHLO c.example.org", "STARTTLS now"], "501 5.5.4"),
        (.offered, ["EHLO c.example.org", "MAIL FROM:<a@example.org>", "STARTTLS"], "503 5.5.1"),
    ])
    func refusals(_ policy: ServerSession.STARTTLSPolicy, _ lines: [String], _ last: String) {
        var s = session(policy)
        var result: [String] = []
        for line in lines { result = codes(s.receiveLine(line)) }
        #expect(result == [last])
    }

    @Test("a required listener answers 530 5.7.0 until STARTTLS, and lets EHLO, NOOP, RSET, HELP and QUIT through")
    func required() {
        var s = session(.required)
        #expect(codes(s.receiveLine("EHLO client.example.org")).first == "250")
        for line in ["MAIL FROM:<a@example.org>", "RCPT TO:<b@example.net>", "DATA", "VRFY b", "EXPN list"] {
            #expect(codes(s.receiveLine(line)) == ["530 5.7.0"], "\(line)")
        }
        for line in ["NOOP", "RSET", "HELP"] { #expect(codes(s.receiveLine(line)).first?.hasPrefix("2") == true, "\(line)") }
        #expect(codes(s.receiveLine("STARTTLS")) == ["starttls 220"])
        s.tlsStarted(tls13)
        _ = s.receiveLine("EHLO client.example.org")
        #expect(codes(s.receiveLine("MAIL FROM:<a@example.org>")) == ["250 2.1.0"])
    }

    @Test("REQUIRETLS: 530 5.7.10 in clear, stored with the envelope over TLS, no value allowed")
    func requireTLS() {
        var clear = session(.offered)
        _ = clear.receiveLine("EHLO client.example.org")
        #expect(codes(clear.receiveLine("MAIL FROM:<a@example.org> REQUIRETLS")) == ["530 5.7.10"])
        var s = session(.offered)
        _ = s.receiveLine("EHLO client.example.org")
        _ = s.receiveLine("STARTTLS")
        s.tlsStarted(tls13)
        _ = s.receiveLine("EHLO client.example.org")
        #expect(codes(s.receiveLine("MAIL FROM:<a@example.org> REQUIRETLS=YES")) == ["501 5.5.4"])
        #expect(codes(s.receiveLine("MAIL FROM:<a@example.org> REQUIRETLS")) == ["250 2.1.0"])
        _ = s.receiveLine("RCPT TO:<b@example.net>")
        let data = s.receiveLine("DATA")
        guard case .receiveData(let context)? = data.last else { Issue.record("\(data)"); return }
        #expect(context.transaction.parameters.requireTLS)
        #expect(context.protocolName == "ESMTPS")
        #expect(context.tls == tls13)
    }

    @Test("commands behind STARTTLS end the session without TLS (CVE-2011-0411)")
    func pipelined() {
        var s = session(.offered)
        _ = s.receiveLine("EHLO client.example.org")
        _ = s.receiveLine("STARTTLS")
        let actions = s.pipelinedAfterSTARTTLS()
        #expect(codes(actions) == ["554 5.7.0"] && actions.last == .close)
        #expect(s.isClosed)
    }

    @Test("the Received header notes the TLS as Postfix does")
    func receivedHeader() {
        let header = String(decoding: ReceivedHeader.make(heloName: "c.example.org", clientAddress: "192.0.2.1", hostname: "relay.example.org",
                                                          protocolName: "ESMTPS", queueID: "Q1", recipient: nil, date: "Tue, 1 Dec 2026 00:00:00 +0000",
                                                          tls: tls13), as: UTF8.self)
        #expect(header == "Received: from c.example.org ([192.0.2.1])\r\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n\tby relay.example.org (tlsrelay) with ESMTPS id Q1; Tue, 1 Dec 2026 00:00:00 +0000\r\n")
    }
}

@Suite("Message data: NUL and the TLS-Required header")
struct MessageDataTests {
    private func receive(_ text: String) -> ServerSession.DataOutcome? {
        var receiver = DataReceiver(maxMessageSize: 10_000, maxLineLength: 1000)
        var output: [UInt8] = []
        let bytes = Array(text.utf8)
        return bytes.withUnsafeBytes { receiver.consume($0, into: &output) }.outcome
    }

    @Test("NUL anywhere is refused after the real end of data", arguments: [
        "a\r\n\0.\r\nMAIL FROM:<x@y.z>\r\n.\r\n",
        "a\r\n.\0\r\nMAIL FROM:<x@y.z>\r\n.\r\n",
        "Subject: \0\r\n\r\nbody\r\n.\r\n",
        "\0\r\n.\r\n",
    ])
    func nul(_ text: String) {
        #expect(receive(text) == .nulCharacter)
    }

    @Test("the refusal is a 554 5.6.0 and the session goes on")
    func nulReply() {
        var s = ServerSession(hostname: "relay.example.org", limits: ServerLimits())
        _ = s.start(clientAllowed: true)
        _ = s.receiveLine("EHLO client.example.org")
        _ = s.receiveLine("MAIL FROM:<a@example.org>")
        _ = s.receiveLine("RCPT TO:<b@example.net>")
        _ = s.receiveLine("DATA")
        #expect(codes(s.dataEnded(.nulCharacter)) == ["554 5.6.0"])
        #expect(codes(s.receiveLine("MAIL FROM:<a@example.org>")) == ["250 2.1.0"])
    }

    private func scan(_ text: String, chunk: Int = .max) -> MessageHeaderScanner {
        var scanner = MessageHeaderScanner()
        let bytes = Array(text.utf8)
        var index = 0
        while index < bytes.count {
            let end = min(bytes.count, index + max(1, min(chunk, bytes.count)))
            scanner.consume(bytes[index..<end])
            index = end
        }
        return scanner
    }

    @Test("TLS-Required: No is found in the header, folded or not, in any case, in any chunking", arguments: [
        "TLS-Required: No\r\n\r\nbody\r\n",
        "Subject: x\r\ntls-required:   NO  \r\n\r\n",
        "Subject: x\r\nTLS-Required:\r\n no\r\nFrom: a@b\r\n\r\n",
        "TLS-Required : No\r\n\r\n",
    ])
    func found(_ text: String) {
        for chunk in [1, 3, 7, Int.max] { #expect(scan(text, chunk: chunk).tlsRequiredNo, "chunk \(chunk)") }
    }

    @Test("not found in the body, nor in other values, nor with another value", arguments: [
        "Subject: x\r\n\r\nTLS-Required: No\r\n",
        "Subject: TLS-Required: No\r\n\r\n",
        "TLS-Required: Yes\r\n\r\n",
        "TLS-Required: No thanks\r\n\r\n",
        "X-TLS-Required: No\r\n\r\n",
    ])
    func notFound(_ text: String) {
        #expect(!scan(text).tlsRequiredNo)
    }

    @Test("a field cut at the field limit counts for nothing; the last field of a header without a body is read at the end")
    func truncationAndEnd() {
        let padded = "TLS-Required: No" + String(repeating: " ", count: 1100) + "junk\r\n\r\n"
        #expect(!scan(padded).tlsRequiredNo)
        let folded = "TLS-Required: No\r\n" + String(repeating: " ", count: 1100) + "junk\r\n\r\n"
        #expect(!scan(folded).tlsRequiredNo)
        var noBody = scan("Subject: x\r\nTLS-Required: No\r\n")
        #expect(!noBody.tlsRequiredNo && !noBody.finished)
        noBody.finish()
        #expect(noBody.tlsRequiredNo && noBody.finished)
        var noNewline = scan("TLS-Required: No")
        noNewline.finish()
        #expect(noNewline.tlsRequiredNo)
    }

    @Test("a header beyond 256 KiB is not read")
    func limit() {
        let long = "X-Long: " + String(repeating: "a", count: 300_000) + "\r\nTLS-Required: No\r\n\r\n"
        #expect(!scan(long).tlsRequiredNo)
        #expect(scan(long).finished)
    }
}
