import Testing
import RelayIDNA
import SMTPCore

@Suite("IDNA 2008 through libidn2")
struct IDNATests {
    @Test("U-labels become A-labels (UTS #46 non-transitional), ASCII and A-labels stay", arguments: [
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.Example", "xn--bcher-kva.example"),
        ("faß.de", "xn--fa-hia.de"),
        ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("Example.NET", "example.net"),
    ])
    func toASCII(_ written: String, _ ascii: String) throws {
        #expect(try IDNA.toASCII(written) == ascii)
    }

    @Test("names IDNA 2008 refuses are refused with libidn2's reason", arguments: ["\u{0301}a.example", "☃.example", String(repeating: "ü", count: 70) + ".example"])
    func refused(_ name: String) {
        #expect(throws: IDNA.ConversionError.self) { try IDNA.toASCII(name) }
    }

    @Test("both forms for logs")
    func display() {
        #expect(IDNA.toUnicode("xn--bcher-kva.example") == "bücher.example")
        #expect(IDNA.toUnicode("example.net") == nil)
        #expect(IDNA.display("bücher.example", ascii: "xn--bcher-kva.example") == "bücher.example (xn--bcher-kva.example)")
        #expect(IDNA.display("example.net", ascii: "example.net") == "example.net")
    }

    @Test("the server converts recipient and sender domains at RCPT and MAIL; a bad one is refused 553")
    func server() {
        let convert: ServerSession.DomainToASCII = { domain in
            do throws(IDNA.ConversionError) { return .success(try IDNA.toASCII(domain)) } catch { return .failure(DomainConversionFailure(reason: error.reason)) }
        }
        var session = ServerSession(hostname: "relay.example.org", limits: ServerLimits(), toASCII: convert)
        _ = session.start(clientAllowed: true)
        _ = session.receiveLine("EHLO client.example.org")
        #expect(replyCode(session.receiveLine("MAIL FROM:<a@bücher.example> SMTPUTF8")) == "250 2.1.0")
        #expect(replyCode(session.receiveLine("RCPT TO:<b@☃.example>")) == "553 5.1.3")
        #expect(replyCode(session.receiveLine("RCPT TO:<b@faß.de>")) == "250 2.1.5")
        let data = session.receiveLine("DATA")
        guard case .receiveData(let context)? = data.last else { Issue.record("\(data)"); return }
        let recipient = context.transaction.recipients[0].mailbox
        #expect(recipient.domain == "faß.de" && recipient.asciiDomain == "xn--fa-hia.de" && recipient.routingDomain == "xn--fa-hia.de")
        #expect(recipient.asciiAddress == "b@xn--fa-hia.de" && recipient.isASCIIOnTheWire)
        #expect(context.transaction.sender?.asciiDomain == "xn--bcher-kva.example")
        // Without a converter the old refusal stands.
        var plain = ServerSession(hostname: "relay.example.org", limits: ServerLimits())
        _ = plain.start(clientAllowed: true)
        _ = plain.receiveLine("EHLO client.example.org")
        _ = plain.receiveLine("MAIL FROM:<a@example.org> SMTPUTF8")
        #expect(replyCode(plain.receiveLine("RCPT TO:<b@faß.de>")) == "553 5.6.7")
    }

    func replyCode(_ actions: [ServerSession.Action]) -> String {
        guard case .reply(let reply)? = actions.first else { return "none" }
        return reply.enhanced.map { "\(reply.code) \($0)" } ?? "\(reply.code)"
    }
}
