import Foundation
import Testing
@testable import RelayQueue
import SMTPCore

private func temporaryDirectory() -> String {
    let path = NSTemporaryDirectory() + "tlsrelay-spool-" + UUID().uuidString
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

private func envelope(_ id: QueueID, size: Int) -> QueuedEnvelope {
    var parameters = MailParameters()
    parameters.smtputf8 = true
    parameters.ret = .headers
    parameters.envelopeID = "env-1"
    let transaction = MailTransaction(
        sender: Mailbox(localPart: "a", domain: "example.org"), parameters: parameters,
        recipients: [Recipient(mailbox: Mailbox(localPart: "b", domain: "example.net"), notify: DSNNotify(failure: true),
                               originalRecipient: OriginalRecipient(addressType: "rfc822", address: "b@example.net"))])
    return QueuedEnvelope(queueID: id, arrivalTime: 1_700_000_000.5, clientAddress: "127.0.0.1", heloName: "client.example.org",
                          transaction: transaction, size: size)
}

@Suite("Spool")
struct SpoolTests {
    @Test("queue ids are unique, ordered and validated")
    func queueIDs() {
        let generator = QueueIDGenerator()
        var previous = generator.next()
        for _ in 0..<10_000 {
            let next = generator.next()
            #expect(next > previous)
            previous = next
        }
        #expect(QueueID(previous.rawValue) == previous)
        #expect(QueueID("../../etc/passwd") == nil)
        #expect(QueueID("0123456789ABCDEI") == nil) // I is not in the alphabet
        #expect(QueueID("0123456789abcdef") == nil)
        let seconds = Double(previous.microsecondsSinceEpoch) / 1e6
        #expect(abs(seconds - Date().timeIntervalSince1970) < 60)
    }

    @Test("commit, read back, list, remove")
    func roundTrip() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let spool = try Spool(stateDirectory: directory)
        let writer = try spool.beginMessage()
        let content = Array("Received: x\r\nSubject: hi\r\n\r\nbody ünïcode\r\n".utf8)
        writer.write(Array(content[..<10]))
        writer.write(Array(content[10...]))
        try writer.commit(envelope: envelope(writer.queueID, size: content.count))
        #expect(try spool.list() == [writer.queueID])
        #expect(try spool.content(of: writer.queueID) == content)
        #expect(try spool.envelope(of: writer.queueID) == envelope(writer.queueID, size: content.count))
        let report = try spool.recover()
        #expect(report.queued == [writer.queueID])
        #expect(report.corrupt.isEmpty)
        try spool.remove(writer.queueID)
        #expect(try spool.list().isEmpty)
        #expect(throws: SpoolError.notFound(writer.queueID)) { try spool.envelope(of: writer.queueID) }
    }

    @Test("an abandoned or unfinished message never counts as queued")
    func partials() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let spool = try Spool(stateDirectory: directory)
        let abandoned = try spool.beginMessage()
        abandoned.write(Array("partial".utf8))
        abandoned.abandon()
        // Simulate a crash mid-DATA: a writer whose file stays in tmp/.
        let crashed = try spool.beginMessage()
        crashed.write(Array("half a message".utf8))
        #expect(try spool.list().isEmpty)
        let report = try spool.recover()
        #expect(report.queued.isEmpty)
        #expect(report.removedPartials == 1)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory + "/spool/tmp").isEmpty)
        _ = crashed
    }

    @Test("corrupt queue files are moved aside at recovery")
    func corrupt() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let spool = try Spool(stateDirectory: directory)
        let writer = try spool.beginMessage()
        writer.write(Array("content\r\n".utf8))
        try writer.commit(envelope: envelope(writer.queueID, size: 9))
        let good = writer.queueID
        // A truncated file, a file with a wrong name, and a file whose envelope names another id.
        let truncatedID = spool.idGenerator.next()
        try Data("only a bit".utf8).write(to: URL(fileURLWithPath: spool.path(of: truncatedID)))
        try Data("x".utf8).write(to: URL(fileURLWithPath: directory + "/spool/queue/A/not-an-id"))
        let otherID = spool.idGenerator.next()
        let copy = try Data(contentsOf: URL(fileURLWithPath: spool.path(of: good)))
        try copy.write(to: URL(fileURLWithPath: spool.path(of: otherID)))
        let report = try spool.recover()
        #expect(report.queued == [good])
        #expect(report.corrupt.count == 3)
        #expect(try spool.list() == [good])
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory + "/spool/corrupt").count == 3)
    }

    @Test("a commit never replaces an existing queue file")
    func noReplace() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let spool = try Spool(stateDirectory: directory)
        let writer = try spool.beginMessage()
        try Data("occupied".utf8).write(to: URL(fileURLWithPath: spool.path(of: writer.queueID)))
        writer.write(Array("content".utf8))
        #expect(throws: SpoolError.self) { try writer.commit(envelope: envelope(writer.queueID, size: 7)) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: spool.path(of: writer.queueID))) == Data("occupied".utf8))
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory + "/spool/tmp").isEmpty)
    }
}
