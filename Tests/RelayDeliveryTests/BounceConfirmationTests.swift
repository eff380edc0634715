import Foundation
import Logging
import NIOPosix
import Testing
@testable import RelayDelivery
import RelayDNS
import RelayQueue
import RelayTLS
import SMTPCore

/// A DSN is written awaiting confirmation, then the original's record names it, then it is
/// released. These tests put the spool in the state each crash point leaves and check what
/// start-up (`Scheduler.load`) makes of it: one DSN, never two, never none.
@Suite("Bounces at once: a crash at any point bounces nothing twice")
struct BounceConfirmationTests {
    struct Fixture {
        let directory: String
        let spool: Spool
        let scheduler: Scheduler
        let original: QueuedEnvelope
        let group: MultiThreadedEventLoopGroup
        let pool: NIOThreadPool
        let resolver: RelayDNS.Resolver

        func shutdown() async {
            resolver.shutdown()
            try? await pool.shutdownGracefully()
            try? await group.shutdownGracefully()
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    func fixture() async throws -> Fixture {
        let directory = NSTemporaryDirectory() + "tlsrelay-bounce-" + UUID().uuidString
        let spool = try Spool(stateDirectory: directory)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let pool = NIOThreadPool(numberOfThreads: 2)
        pool.start()
        let resolver = try RelayDNS.Resolver(configuration: ResolverConfiguration())
        let agent = DeliveryAgent(resolver: resolver, group: group, tlsContext: try TLSClientContext(extraCAFile: nil),
                                  settings: .init(heloName: "relay.example.org", port: 25), logger: Logger(label: "test"))
        let scheduler = Scheduler(spool: spool, agent: agent, settings: .init(hostname: "relay.example.org"), threadPool: pool,
                                  logger: Logger(label: "test"))
        let writer = try spool.beginMessage()
        writer.write(Array("Subject: partly refused\r\n\r\nbody\r\n".utf8))
        let recipients = [Recipient(mailbox: Mailbox(localPart: "nouser", domain: "example.net")),
                          Recipient(mailbox: Mailbox(localPart: "busy", domain: "example.net"))]
        let envelope = QueuedEnvelope(queueID: writer.queueID, arrivalTime: 0, clientAddress: "127.0.0.1", heloName: "c",
                                      transaction: MailTransaction(sender: Mailbox(localPart: "a", domain: "example.org"),
                                                                   parameters: MailParameters(), recipients: recipients),
                                      size: writer.contentLength)
        try writer.commit(envelope: envelope)
        return Fixture(directory: directory, spool: spool, scheduler: scheduler, original: envelope, group: group, pool: pool, resolver: resolver)
    }

    /// The original's record after its first round: recipient 0 bounced, 1 pending.
    func bouncedRecord(_ f: Fixture, naming dsn: QueueID?) -> DeliveryRecord {
        var record = DeliveryRecord(queueID: f.original.queueID, recipientCount: 2, nextAttempt: 1e12)
        record.attempts = 1
        record.recipients[0].status = .bounced
        record.recipients[0].lastStatusCode = "5.1.1"
        record.recipients[0].diagnostic = "550 5.1.1 no such user"
        record.recipients[0].dsnQueueID = dsn
        return record
    }

    func writeDSN(_ f: Fixture) async throws -> QueueID {
        try await f.scheduler.writeDSN(envelope: f.original, content: MessageContent(try f.spool.content(of: f.original.queueID)),
                                       record: bouncedRecord(f, naming: nil), indexes: [0])
    }

    @Test("crash after the DSN was written, before the original's record: the DSN is removed, the failure stays pending")
    func crashBeforeRecord() async throws {
        let f = try await fixture()
        let dsn = try await writeDSN(f)
        #expect(try f.spool.deliveryRecord(of: dsn)?.awaitingConfirmationBy == f.original.queueID)
        let report = try f.spool.recover()
        await f.scheduler.load(report.queued)
        #expect(throws: SpoolError.self) { _ = try f.spool.envelope(of: dsn) }
        #expect(await !f.scheduler.isHeld(f.original.queueID))
        #expect(try f.spool.deliveryRecord(of: f.original.queueID) == nil, "the original still has its bounce to come")
        await f.shutdown()
    }

    @Test("crash after the original's record named the DSN, before the release: the DSN is released, once")
    func crashBeforeRelease() async throws {
        let f = try await fixture()
        let dsn = try await writeDSN(f)
        try f.spool.saveDeliveryRecord(bouncedRecord(f, naming: dsn))
        let report = try f.spool.recover()
        await f.scheduler.load(report.queued)
        let released = try f.spool.deliveryRecord(of: dsn)
        #expect(released?.held == false && released?.awaitingConfirmationBy == nil)
        #expect(await f.scheduler.counts().total == 2, "the original and its DSN are queued")
        #expect(await !f.scheduler.isHeld(dsn))
        await f.shutdown()
    }

    @Test("crash after the original was removed (its last recipient done), before the release: the DSN is released")
    func crashAfterRemoval() async throws {
        let f = try await fixture()
        let dsn = try await writeDSN(f)
        try f.spool.finish(f.original.queueID)
        let report = try f.spool.recover()
        await f.scheduler.load(report.queued)
        #expect(try f.spool.deliveryRecord(of: dsn)?.awaitingConfirmationBy == nil)
        #expect(await f.scheduler.counts().total == 1)
        await f.shutdown()
    }

    @Test("finish removes the queue file before the record: a crash in between redelivers nobody")
    func finishOrder() async throws {
        let f = try await fixture()
        try f.spool.saveDeliveryRecord(bouncedRecord(f, naming: nil))
        try f.spool.remove(f.original.queueID)        // what finish does first
        let report = try f.spool.recover()            // the crash came before the record went
        #expect(!report.queued.contains(f.original.queueID))
        #expect(try f.spool.deliveryRecord(of: f.original.queueID) == nil)
        await f.shutdown()
    }
}
