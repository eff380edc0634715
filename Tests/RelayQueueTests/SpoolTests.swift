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

    @Test("a queue id keeps all 80 bits in 12 bytes, and sorts as its text")
    func queueIDPacking() {
        #expect(MemoryLayout<QueueID>.stride == 12)
        var generator = SplitMix(seed: 5)
        var ids: [QueueID] = [QueueID(microseconds: (1 << 60) - 1, random: (1 << 20) - 1), QueueID(microseconds: 0, random: 0)]
        for _ in 0..<10_000 {
            let micros = UInt64.random(in: 0..<(1 << 60), using: &generator)
            let random = UInt32.random(in: 0..<(1 << 20), using: &generator)
            let id = QueueID(microseconds: micros, random: random)
            #expect(id.microsecondsSinceEpoch == micros && id.random == random)
            ids.append(id)
        }
        for id in ids { #expect(QueueID(id.rawValue) == id) }
        #expect(ids.sorted().map(\.rawValue) == ids.map(\.rawValue).sorted())
        // The sorted list of ids with records: every member found, nothing else.
        let members = Array(ids[..<5_000]).sorted()
        #expect(ids[..<5_000].allSatisfy { members.containsSorted($0) })
        #expect(ids[5_000...].filter { members.containsSorted($0) }.isEmpty)
        #expect(![QueueID]().containsSorted(ids[0]))
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

@Suite("Spool format versions")
struct SpoolFormatTests {
    /// A queue file written by the release before envelope version 2 (REQUIRETLS, TLS-Required):
    /// committed as it came out of that tlsrelayd, so every later release is held to load it.
    static let sampleV1 = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/spool-v1-01K1KK7RF59QF5Q2").path

    @Test("a version 1 queue file of the previous release loads, as a message without REQUIRETLS or TLS-Required")
    func versionOneLoads() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let spool = try Spool(stateDirectory: directory)
        let id = try #require(QueueID("01K1KK7RF59QF5Q2"))
        let path = spool.path(of: id)
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Self.sampleV1, toPath: path)
        let report = try spool.scanQueue()
        #expect(report.corrupt.isEmpty && report.queued == [id])
        let envelope = try spool.envelope(of: id)
        #expect(envelope.version == 1)
        #expect(envelope.transaction.sender?.address == "sender@sample.test")
        #expect(envelope.transaction.recipients.map(\.mailbox.address) == ["rcpt@example.net", "two@example.org"])
        #expect(envelope.transaction.recipients[0].notify == DSNNotify(failure: true, delay: true))
        #expect(envelope.transaction.parameters.ret == .headers && envelope.transaction.parameters.envelopeID == "sample-1")
        #expect(!envelope.transaction.parameters.requireTLS && !envelope.tlsRequiredNo)
        let content = String(decoding: try spool.content(of: id), as: UTF8.self)
        #expect(content.hasPrefix("Received: from client.sample.test") && content.contains("Subject: spool sample"))
    }

    @Test("version 2 keeps REQUIRETLS and TLS-Required: No; a newer version is not read as this one")
    func versionTwo() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let spool = try Spool(stateDirectory: directory)
        let writer = try spool.beginMessage()
        writer.write(Array("Subject: x\r\nTLS-Required: No\r\n\r\nbody\r\n".utf8))
        var parameters = MailParameters()
        parameters.requireTLS = true
        var envelope = QueuedEnvelope(queueID: writer.queueID, arrivalTime: 1, clientAddress: "127.0.0.1", heloName: "c.example.org",
                                      transaction: MailTransaction(sender: nil, parameters: parameters,
                                                                   recipients: [Recipient(mailbox: Mailbox(localPart: "b", domain: "example.net"))]),
                                      size: writer.contentLength)
        envelope.tlsRequiredNo = true
        try writer.commit(envelope: envelope)
        let read = try spool.envelope(of: envelope.queueID)
        #expect(read.version == QueuedEnvelope.currentVersion && QueuedEnvelope.currentVersion == 2)
        #expect(read.transaction.parameters.requireTLS && read.tlsRequiredNo)

        let json = try JSONEncoder().encode(envelope)
        var text = String(decoding: json, as: UTF8.self)
        text = text.replacingOccurrences(of: "\"version\":2", with: "\"version\":3")
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(QueuedEnvelope.self, from: Data(text.utf8)) }
    }
}
