import Testing
@testable import SMTPCore

private func receive(_ text: String, maxSize: Int = 1000, maxLine: Int = 100) -> (content: String, outcome: ServerSession.DataOutcome?, rest: String) {
    var receiver = DataReceiver(maxMessageSize: maxSize, maxLineLength: maxLine)
    var output: [UInt8] = []
    let bytes = Array(text.utf8)
    let result = bytes.withUnsafeBytes { receiver.consume($0, into: &output) }
    return (String(decoding: output, as: UTF8.self), result.outcome, String(decoding: bytes[result.consumed...], as: UTF8.self))
}

@Suite("DATA framing and command lines")
struct FramingTests {
    @Test("dot-unstuffing and the end of data")
    func unstuffing() {
        let result = receive("Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n")
        #expect(result.content == "Subject: x\r\n\r\n.leading dot\r\n")
        #expect(result.outcome == .complete(size: 28))
        #expect(result.rest == "QUIT\r\n")
    }

    @Test("empty message")
    func empty() {
        #expect(receive(".\r\n").outcome == .complete(size: 0))
    }

    @Test("only CRLF.CRLF ends DATA; smuggling variants are refused, never split",
          arguments: [
            "a\n.\nMAIL FROM:<x@y.z>\r\n.\r\n",
            "a\r\n.\nMAIL FROM:<x@y.z>\r\n.\r\n",
            "a\n.\r\nMAIL FROM:<x@y.z>\r\n.\r\n",
            "a\r.\rMAIL FROM:<x@y.z>\r\n.\r\n",
            "a\rb\r\n.\r\n",
          ])
    func smuggling(_ text: String) {
        let result = receive(text)
        #expect(result.outcome == .bareLineEnding)
        #expect(result.rest == "")
    }

    @Test("a chunk split anywhere gives the same result")
    func splitting() {
        let text = "From: a\r\n\r\n..x\r\nline\r\n.\r\n"
        let whole = receive(text)
        for cut in 1..<text.utf8.count {
            var receiver = DataReceiver(maxMessageSize: 1000, maxLineLength: 100)
            var output: [UInt8] = []
            let bytes = Array(text.utf8)
            let first = bytes[..<cut].withUnsafeBytes { receiver.consume($0, into: &output) }
            #expect(first.outcome == nil)
            let second = bytes[cut...].withUnsafeBytes { receiver.consume($0, into: &output) }
            #expect(second.outcome == whole.outcome)
            #expect(String(decoding: output, as: UTF8.self) == whole.content)
        }
    }

    @Test("size and line limits")
    func limits() {
        #expect(receive("0123456789\r\n.\r\n", maxSize: 5).outcome == .tooLarge)
        #expect(receive(String(repeating: "x", count: 99) + "\r\n.\r\n", maxLine: 100).outcome == .lineTooLong)
        #expect(receive(String(repeating: "x", count: 98) + "\r\n.\r\n", maxLine: 100).outcome == .complete(size: 100))
    }

    @Test("command line framing")
    func lines() {
        var framer = LineFramer(maxLineLength: 20)
        framer.append(Array("NOOP\r\nRSET\nQUIT\r".utf8))
        #expect(framer.nextEvent() == .line(Array("NOOP".utf8)))
        #expect(framer.nextEvent() == .malformed(.bareLineEnding))
        #expect(framer.nextEvent() == nil)
        framer.append(Array("\nNO\rOP\r\n".utf8))
        #expect(framer.nextEvent() == .line(Array("QUIT".utf8)))
        #expect(framer.nextEvent() == .malformed(.bareLineEnding))
        framer.append(Array(String(repeating: "A", count: 50).utf8))
        #expect(framer.nextEvent() == nil)
        framer.append(Array("AAA\r\nNOOP\r\n".utf8))
        #expect(framer.nextEvent() == .malformed(.tooLong))
        #expect(framer.nextEvent() == .line(Array("NOOP".utf8)))
    }

    @Test("enhanced status codes and reply wire format")
    func replies() {
        #expect(EnhancedStatusCode(parsing: "4.7.5") == EnhancedStatusCode(4, 7, 5))
        #expect(EnhancedStatusCode(parsing: "3.1.1") == nil)
        #expect(EnhancedStatusCode(parsing: "4.7") == nil)
        let reply = Reply(250, .ok, ["first", "second"])
        #expect(String(decoding: reply.wireBytes, as: UTF8.self) == "250-2.0.0 first\r\n250 2.0.0 second\r\n")
        #expect(XText.encode("a+b=c d") == "a+2Bb+3Dc+20d")
        #expect(XText.decode("a+2Bb+3Dc+20d") == "a+b=c d")
    }

    @Test("Received header and message date")
    func received() {
        let header = String(decoding: ReceivedHeader.make(heloName: "mx.example.org", clientAddress: "127.0.0.1", hostname: "relay.example.org", protocolName: "ESMTP", queueID: "ID", recipient: Mailbox(localPart: "b", domain: "example.net"), date: MessageDate.format(secondsSinceEpoch: 0)), as: UTF8.self)
        #expect(header == "Received: from mx.example.org ([127.0.0.1])\r\n\tby relay.example.org (tlsrelay) with ESMTP id ID\r\n\tfor <b@example.net>; Thu, 1 Jan 1970 00:00:00 +0000\r\n")
    }
}
