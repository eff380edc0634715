import Foundation
import Testing
@testable import RelayDelivery
import RelayDNS
import RelayQueue
import SMTPCore

private func mx(_ records: [(UInt16, String)], status: DNSSECStatus = .secure, rcode: Int = 0) -> DNSAnswer<MXRecord> {
    DNSAnswer(name: "example.net", canonicalName: "example.net", type: .mx, status: status,
              whyBogus: status == .bogus ? "signature expired" : nil, rcode: rcode,
              records: records.map { MXRecord(preference: $0.0, exchange: $0.1) })
}

@Suite("Delivery planning, retries and DSNs")
struct DeliveryPlanningTests {
    @Test("MX fact: preference order, implicit MX, null MX, NXDOMAIN, bogus")
    func plans() {
        let ordered = MXFact.make(answer: mx([(20, "b.example.net"), (10, "a.example.net"), (20, "c.example.net"), (10, "a.example.net")]),
                                  domain: "example.net", shuffle: { $0.sorted() })
        #expect(ordered == .hosts(["a.example.net", "b.example.net", "c.example.net"], secure: true, implicit: false))
        #expect(MXFact.make(answer: mx([], status: .insecure), domain: "example.net") == .hosts(["example.net"], secure: false, implicit: true))
        #expect(MXFact.make(answer: mx([(0, "")]), domain: "example.net") == .nullMX)
        #expect(MXFact.make(answer: mx([], rcode: 3), domain: "example.net") == .nxdomain)
        #expect(MXFact.make(answer: mx([(10, "a.example.net")], status: .bogus, rcode: 2), domain: "example.net") == .bogus(why: "signature expired"))
    }

    @Test("retry schedule doubles up to the maximum; lifetime")
    func retry() {
        let schedule = RetrySchedule(minimumBackoff: 300, maximumBackoff: 4000, queueLifetime: 432_000)
        #expect(schedule.delay(afterAttempts: 1) == 300)
        #expect(schedule.delay(afterAttempts: 2) == 600)
        #expect(schedule.delay(afterAttempts: 4) == 2400)
        #expect(schedule.delay(afterAttempts: 5) == 4000)
        #expect(schedule.delay(afterAttempts: 500) == 4000)
        #expect(!schedule.hasExpired(arrival: 0, now: 431_999))
        #expect(schedule.hasExpired(arrival: 0, now: 432_000))
    }

    @Test("DSN: RFC 3464 fields, RET=HDRS, NOTIFY rules")
    func dsn() throws {
        let id = QueueIDGenerator().next()
        var parameters = MailParameters()
        parameters.ret = .headers
        parameters.envelopeID = "env 7"
        let recipient = Recipient(mailbox: Mailbox(localPart: "b", domain: "example.net"), notify: nil,
                                  originalRecipient: OriginalRecipient(addressType: "rfc822", address: "b@example.net"))
        let envelope = QueuedEnvelope(queueID: id, arrivalTime: 0, clientAddress: "127.0.0.1", heloName: "c",
                                      transaction: MailTransaction(sender: Mailbox(localPart: "a", domain: "example.org"), parameters: parameters, recipients: [recipient]),
                                      size: 10)
        let original = Array("Subject: hello\r\nFrom: a@example.org\r\n\r\nsecret body\r\n".utf8)
        let report = String(decoding: DeliveryStatusNotification.make(
            envelope: envelope, original: original,
            failed: [.init(recipient: recipient, status: "5.1.1", remoteMTA: "mx.example.net[192.0.2.1]:25", diagnostic: "550 5.1.1 no such user", diagnosticIsSMTP: true)],
            reportingMTA: "relay.example.org", date: "Thu, 1 Jan 1970 00:00:00 +0000", messageID: "x@relay.example.org"), as: UTF8.self)
        #expect(report.contains("Content-Type: multipart/report; report-type=delivery-status;"))
        #expect(report.contains("To: <a@example.org>\r\n"))
        #expect(report.contains("Reporting-MTA: dns; relay.example.org\r\n"))
        #expect(report.contains("Original-Envelope-Id: env+207\r\n"))
        #expect(report.contains("Original-Recipient: rfc822; b@example.net\r\n"))
        #expect(report.contains("Final-Recipient: rfc822; b@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.example.net\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n"))
        #expect(report.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hello\r\n"))
        #expect(report.contains("Its headers are attached below.") && !report.contains("It is attached below."))
        #expect(!report.contains("secret body"))
        #expect(report.hasSuffix("--\r\n"))
        #expect(DeliveryStatusNotification.wantsFailureReport(sender: Mailbox(localPart: "a", domain: "b"), recipient: recipient))
        #expect(!DeliveryStatusNotification.wantsFailureReport(sender: nil, recipient: recipient))
        #expect(!DeliveryStatusNotification.wantsFailureReport(sender: Mailbox(localPart: "a", domain: "b"),
                                                              recipient: Recipient(mailbox: recipient.mailbox, notify: DSNNotify(never: true))))
        #expect(!DeliveryStatusNotification.wantsFailureReport(sender: Mailbox(localPart: "a", domain: "b"),
                                                              recipient: Recipient(mailbox: recipient.mailbox, notify: DSNNotify(success: true))))
    }

    @Test("delay DSN: Action delayed, Will-Retry-Until, headers only, NOTIFY=DELAY or absent")
    func delayDSN() {
        let id = QueueIDGenerator().next()
        let recipient = Recipient(mailbox: Mailbox(localPart: "b", domain: "example.net"), notify: nil)
        let envelope = QueuedEnvelope(queueID: id, arrivalTime: 0, clientAddress: "127.0.0.1", heloName: "c",
                                      transaction: MailTransaction(sender: Mailbox(localPart: "a", domain: "example.org"), parameters: MailParameters(), recipients: [recipient]),
                                      size: 10)
        let original = Array("Subject: hello\r\n\r\nsecret body\r\n".utf8)
        let report = String(decoding: DeliveryStatusNotification.make(
            envelope: envelope, original: original,
            failed: [.init(recipient: recipient, status: "4.2.0", remoteMTA: "mx.example.net[192.0.2.1]:25", diagnostic: "450 4.2.0 busy", diagnosticIsSMTP: true)],
            reportingMTA: "relay.example.org", date: "Thu, 1 Jan 1970 04:00:00 +0000", messageID: "d@relay.example.org",
            kind: .delay(willRetryUntil: 432_000)), as: UTF8.self)
        #expect(report.contains("Subject: Delayed Mail (still being retried)\r\n"))
        #expect(report.contains("Final-Recipient: rfc822; b@example.net\r\nAction: delayed\r\nStatus: 4.2.0\r\nWill-Retry-Until: Tue, 6 Jan 1970 00:00:00 +0000\r\n"))
        #expect(report.contains("you do\r\nnot need to send it again"))
        #expect(report.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hello\r\n"))
        #expect(!report.contains("secret body"), "a delay report never returns the message")
        let sender = Mailbox(localPart: "a", domain: "b")
        #expect(DeliveryStatusNotification.wantsDelayReport(sender: sender, recipient: recipient))
        #expect(DeliveryStatusNotification.wantsDelayReport(sender: sender, recipient: Recipient(mailbox: recipient.mailbox, notify: DSNNotify(failure: true, delay: true))))
        #expect(!DeliveryStatusNotification.wantsDelayReport(sender: sender, recipient: Recipient(mailbox: recipient.mailbox, notify: DSNNotify(failure: true))))
        #expect(!DeliveryStatusNotification.wantsDelayReport(sender: nil, recipient: recipient))
    }

    @Test("delivery records round-trip durably and recovery drops orphans")
    func records() throws {
        let directory = NSTemporaryDirectory() + "tlsrelay-records-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let spool = try Spool(stateDirectory: directory)
        let writer = try spool.beginMessage()
        writer.write(Array("x\r\n".utf8))
        let envelope = QueuedEnvelope(queueID: writer.queueID, arrivalTime: 0, clientAddress: "127.0.0.1", heloName: "c",
                                      transaction: MailTransaction(sender: nil, parameters: MailParameters(),
                                                                   recipients: [Recipient(mailbox: Mailbox(localPart: "b", domain: "example.net"))]),
                                      size: 3)
        try writer.commit(envelope: envelope)
        #expect(try spool.deliveryRecord(of: writer.queueID) == nil)
        var record = DeliveryRecord(queueID: writer.queueID, recipientCount: 1, nextAttempt: 42)
        record.recipients[0].status = .delivered
        try spool.saveDeliveryRecord(record)
        #expect(try spool.deliveryRecord(of: writer.queueID) == record)
        #expect(record.isComplete)
        try spool.remove(writer.queueID)
        _ = try spool.recover()
        #expect(try spool.deliveryRecord(of: writer.queueID) == nil)
    }
}

@Suite("Connection slots")
struct ConnectionSlotsTests {
    @Test("at most `perAddress` sessions to one address; a waiter for a full address never blocks another address")
    func perAddress() async {
        let slots = ConnectionSlots(total: 3, perAddress: 2)
        #expect(await slots.acquire("192.0.2.1"))
        #expect(await slots.acquire("192.0.2.1"))
        #expect(slots.running("192.0.2.1") == 2)
        // A third session to the tarpit address waits ...
        let third = Task { await slots.acquire("192.0.2.1") }
        try? await Task.sleep(for: .milliseconds(50))
        #expect(slots.running("192.0.2.1") == 2)
        // ... and another address goes ahead of it at once.
        #expect(await slots.acquire("192.0.2.2"))
        #expect(slots.running() == 3)
        // Total full: a fourth address waits until a slot frees.
        let fourth = Task { await slots.acquire("192.0.2.3") }
        try? await Task.sleep(for: .milliseconds(50))
        #expect(slots.running("192.0.2.3") == 0)
        slots.release("192.0.2.2")
        // The freed slot goes to the first waiter whose address has room: 192.0.2.3, not the tarpit.
        #expect(await fourth.value)
        #expect(slots.running("192.0.2.1") == 2)
        slots.release("192.0.2.1")
        #expect(await third.value)
        #expect(slots.running("192.0.2.1") == 2)
        slots.release("192.0.2.1")
        slots.release("192.0.2.1")
        slots.release("192.0.2.3")
        #expect(slots.running() == 0)
    }

    @Test("a cancelled waiter leaves the line without a slot")
    func cancellation() async {
        let slots = ConnectionSlots(total: 1, perAddress: 1)
        #expect(await slots.acquire("192.0.2.1"))
        let waiter = Task { await slots.acquire("192.0.2.1") }
        try? await Task.sleep(for: .milliseconds(50))
        waiter.cancel()
        #expect(await waiter.value == false)
        slots.release("192.0.2.1")
        #expect(slots.running() == 0)
        #expect(await slots.acquire("192.0.2.9"))
    }
}
