import Foundation
import Logging
import NIOPosix
import RelayQueue
import SMTPCore

/// Runs deliveries over the spool: new messages at once, deferred ones by their retry
/// schedule, at most `concurrency` messages at a time. Per message, recipients are grouped by
/// destination domain and each group is delivered concurrently. After every attempt the
/// message's `DeliveryRecord` is saved; when every recipient is delivered or bounced, the
/// DSN (if any) is queued first and then the message is removed.
public actor Scheduler {
    public struct Settings: Sendable {
        public var retry = RetrySchedule()
        /// Messages delivered at the same time. Default 20.
        public var concurrency = 20
        /// Deliveries at the same time to one destination domain. Default 20.
        public var destinationConcurrency = 20
        /// This relay's host name (Reporting-MTA of DSNs).
        public var hostname: String
        /// Accept and queue, deliver nothing (`delivery.hold`): every message stays held until
        /// released (maintenance, benchmarks of the inbound side).
        public var holdAll = false

        public init(hostname: String) { self.hostname = hostname }
    }

    private let spool: Spool
    private let agent: DeliveryAgent
    private let settings: Settings
    private let threadPool: NIOThreadPool
    private let logger: Logger
    private var due: [QueueID: Double] = [:]
    private var inFlight: Set<QueueID> = []
    private var wakeup: AsyncStream<Void>.Continuation?
    private var running = false

    public init(spool: Spool, agent: DeliveryAgent, settings: Settings, threadPool: NIOThreadPool, logger: Logger) {
        self.spool = spool
        self.agent = agent
        self.settings = settings
        self.threadPool = threadPool
        self.logger = logger
    }

    /// Queue counts: messages being delivered or due now, deferred until later, held.
    public struct Counts: Sendable, Codable, Equatable {
        public var active: Int
        public var deferred: Int
        public var held: Int
        public var total: Int { active + deferred + held }
    }

    private var held: Set<QueueID> = []
    private lazy var limiter = DestinationLimiter(limit: settings.destinationConcurrency)

    public func counts() -> Counts {
        let now = Date().timeIntervalSince1970
        let dueNow = due.values.filter { $0 <= now }.count
        return Counts(active: dueNow + inFlight.count, deferred: due.count - dueNow, held: held.count)
    }

    /// Why an operator request was refused.
    public enum OperationError: Error, Sendable, Equatable, CustomStringConvertible {
        case notQueued(QueueID)
        case inDelivery(QueueID)
        case failed(String)

        public var description: String {
            switch self {
            case .notQueued(let id): return "no queued message \(id)"
            case .inDelivery(let id): return "message \(id) is being delivered right now; try again in a moment"
            case .failed(let reason): return reason
            }
        }
    }

    /// True when the message is being delivered now.
    public func isInFlight(_ id: QueueID) -> Bool { inFlight.contains(id) }

    /// True when the message is on hold.
    public func isHeld(_ id: QueueID) -> Bool { held.contains(id) }

    /// Makes messages due now (like `postqueue -f` / `-i ID`): all deferred ones when `ids` is
    /// nil. Held messages stay held.
    /// - Returns: how many messages were scheduled.
    @discardableResult
    public func flush(_ ids: [QueueID]? = nil) -> Int {
        let targets = ids ?? Array(due.keys)
        var count = 0
        for id in targets where due[id] != nil {
            due[id] = 0
            count += 1
        }
        wakeup?.yield()
        if count > 0 { logger.info("flush by the operator: \(count) message(s) scheduled now\(ids.map { ids in ids.count == 1 ? " (\(ids[0]))" : "" } ?? "")") }
        return count
    }

    /// Flushes the messages with a pending recipient in `domain`.
    public func flush(domain: String) -> Int {
        let name = domain.lowercased()
        let ids = due.keys.filter { id in
            guard let envelope = try? spool.envelope(of: id) else { return false }
            let record = try? spool.deliveryRecord(of: id)
            return envelope.transaction.recipients.indices.contains { index in
                envelope.transaction.recipients[index].mailbox.domain.lowercased() == name
                    && (record?.recipients[index].status ?? .pending) == .pending
            }
        }
        return flush(Array(ids))
    }

    /// Puts a message on hold (`postsuper -h`): not attempted until released; kept across restarts.
    /// - Throws: `OperationError`.
    public func hold(_ id: QueueID) throws {
        if inFlight.contains(id) { throw OperationError.inDelivery(id) }
        guard due[id] != nil || held.contains(id) else { throw OperationError.notQueued(id) }
        try updateRecord(id) { $0.held = true }
        due[id] = nil
        held.insert(id)
        logger.info("\(id): put on hold by the operator")
    }

    /// Releases a held message (`postsuper -H`) and makes it due now.
    /// - Throws: `OperationError`.
    public func release(_ id: QueueID) throws {
        guard held.contains(id) else {
            if due[id] != nil || inFlight.contains(id) { throw OperationError.failed("message \(id) is not on hold") }
            throw OperationError.notQueued(id)
        }
        if settings.holdAll { throw OperationError.failed("delivery.hold is set: nothing is delivered until it is turned off") }
        try updateRecord(id) { $0.held = false; $0.nextAttempt = 0 }
        held.remove(id)
        due[id] = 0
        wakeup?.yield()
        logger.info("\(id): released by the operator")
    }

    /// Deletes a message without a DSN (`postsuper -d`).
    /// - Throws: `OperationError`.
    public func delete(_ id: QueueID) throws {
        if inFlight.contains(id) { throw OperationError.inDelivery(id) }
        guard due[id] != nil || held.contains(id) else { throw OperationError.notQueued(id) }
        do { try spool.finish(id) } catch { throw OperationError.failed("cannot delete \(id): \(error)") }
        due[id] = nil
        held.remove(id)
        logger.info("\(id): removed by the operator (no DSN)")
    }

    private func updateRecord(_ id: QueueID, _ change: (inout DeliveryRecord) -> Void) throws {
        do {
            let envelope = try spool.envelope(of: id)
            var record = try spool.deliveryRecord(of: id)
                ?? DeliveryRecord(queueID: id, recipientCount: envelope.transaction.recipients.count, nextAttempt: 0)
            change(&record)
            try spool.saveDeliveryRecord(record)
        } catch SpoolError.notFound {
            throw OperationError.notQueued(id)
        } catch {
            throw OperationError.failed("cannot update \(id): \(error)")
        }
    }

    /// Schedules a message that was just queued (called by the inbound server after the 250).
    public func enqueue(_ id: QueueID) {
        if settings.holdAll {
            held.insert(id)
            return
        }
        due[id] = 0
        wakeup?.yield()
    }

    /// Loads every queued message with its retry time. Call once before `run`.
    public func load(_ ids: [QueueID]) {
        let withRecords = spool.messagesWithDeliveryRecords()
        for id in ids {
            let record = withRecords.contains(id.rawValue) ? try? spool.deliveryRecord(of: id) : nil
            if record?.held == true || settings.holdAll {
                held.insert(id)
                continue
            }
            // A retry time further away than max_backoff means the clock was set back since it
            // was written: never wait longer than max_backoff from now.
            due[id] = min(record?.nextAttempt ?? 0, Date().timeIntervalSince1970 + settings.retry.maximumBackoff)
        }
    }

    /// Delivers until the task is cancelled; in-flight deliveries are awaited before return.
    public func run() async {
        let (stream, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        wakeup = continuation
        running = true
        await withDiscardingTaskGroup { group in
            var iterator = stream.makeAsyncIterator()
            let ticker = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(500))
                    continuation.yield()
                }
            }
            defer { ticker.cancel() }
            while !Task.isCancelled {
                let now = Date().timeIntervalSince1970
                // The wall clock may jump back: no retry waits more than max_backoff from now.
                for (id, time) in due where time > now + settings.retry.maximumBackoff {
                    due[id] = now + settings.retry.maximumBackoff
                }
                let ready = due.filter { $0.value <= now }.keys.sorted()
                for id in ready where inFlight.count < settings.concurrency {
                    due[id] = nil
                    inFlight.insert(id)
                    group.addTask { [self] in await self.attempt(id) }
                }
                // Wait for a wake-up: new mail, a finished attempt, or the 0.5 s tick.
                _ = await iterator.next()
            }
        }
        running = false
    }

    private func finished(_ id: QueueID, nextAttempt: Double?) {
        inFlight.remove(id)
        if let nextAttempt { due[id] = nextAttempt }
        wakeup?.yield()
    }

    /// One delivery attempt of one message to all its pending recipients.
    func attempt(_ id: QueueID) async {
        let spool = self.spool
        let envelope: QueuedEnvelope
        let content: [UInt8]
        var record: DeliveryRecord
        do {
            (envelope, content, record) = try await threadPool.runIfActive {
                let envelope = try spool.envelope(of: id)
                let content = try spool.content(of: id)
                let record = try spool.deliveryRecord(of: id)
                    ?? DeliveryRecord(queueID: id, recipientCount: envelope.transaction.recipients.count, nextAttempt: 0)
                return (envelope, content, record)
            }
        } catch {
            logger.error("\(id): cannot read queued message: \(error)")
            finished(id, nextAttempt: nil)
            return
        }
        let start = Date().timeIntervalSince1970
        var groups: [String: [Int]] = [:]
        for index in record.pendingIndexes {
            groups[envelope.transaction.recipients[index].mailbox.domain.lowercased(), default: []].append(index)
        }
        let agent = self.agent
        let limiter = self.limiter
        let outcomes = await withTaskGroup(of: [Int: RecipientOutcome].self) { group in
            for (domain, indexes) in groups {
                group.addTask {
                    await limiter.acquire(domain)
                    let result = await agent.deliver(envelope: envelope, content: content, domain: domain, recipientIndexes: indexes)
                    await limiter.release(domain)
                    return result
                }
            }
            var all: [Int: RecipientOutcome] = [:]
            for await part in group { all.merge(part) { $1 } }
            return all
        }
        let now = Date().timeIntervalSince1970
        record.attempts += 1
        let expired = settings.retry.hasExpired(arrival: envelope.arrivalTime, now: now)
        for (index, outcome) in outcomes.sorted(by: { $0.key < $1.key }) {
            var state = record.recipients[index]
            state.lastReason = outcome.reason
            state.lastStatusCode = outcome.status.description
            state.remoteMTA = outcome.remoteMTA
            state.diagnostic = outcome.remoteReply
            var status = outcome.kind.rawValue == "delivered" ? "sent" : outcome.kind.rawValue
            switch outcome.kind {
            case .delivered: state.status = .delivered
            case .bounced: state.status = .bounced
            case .deferred:
                if expired {
                    // RFC 5321 §4.5.4.1: give up after the queue lifetime, with the last error.
                    state.status = .bounced
                    state.lastStatusCode = EnhancedStatusCode.deliveryTimeExpired.description
                    state.lastReason = "message expired after \(Int(settings.retry.queueLifetime)) s in the queue; last error: \(outcome.reason)"
                    status = "bounced"
                }
            }
            record.recipients[index] = state
            let recipient = envelope.transaction.recipients[index].mailbox.address
            logger.info("\(id): to=<\(recipient)>, relay=\(outcome.remoteMTA ?? "none"), delay=\(String(format: "%.1f", now - envelope.arrivalTime)), attempt-time=\(String(format: "%.2f", now - start)), dsn=\(state.lastStatusCode ?? outcome.status.description), status=\(status) (\(state.lastReason ?? outcome.reason))")
        }
        record.nextAttempt = now + settings.retry.delay(afterAttempts: record.attempts)
        let finalRecord = record
        do {
            if finalRecord.isComplete {
                try await completeMessage(envelope: envelope, content: content, record: finalRecord)
                finished(id, nextAttempt: nil)
            } else {
                try await threadPool.runIfActive { try spool.saveDeliveryRecord(finalRecord) }
                finished(id, nextAttempt: finalRecord.nextAttempt)
            }
        } catch {
            logger.error("\(id): cannot save delivery state: \(error); retrying later")
            finished(id, nextAttempt: now + settings.retry.minimumBackoff)
        }
    }

    /// Queues the DSN for bounced recipients that want one, then removes the message.
    func completeMessage(envelope: QueuedEnvelope, content: [UInt8], record: DeliveryRecord) async throws {
        let failed: [DeliveryStatusNotification.FailedRecipient] = record.recipients.indices.compactMap { index in
            let state = record.recipients[index]
            let recipient = envelope.transaction.recipients[index]
            guard state.status == .bounced,
                  DeliveryStatusNotification.wantsFailureReport(sender: envelope.transaction.sender, recipient: recipient)
            else { return nil }
            return .init(recipient: recipient, status: state.lastStatusCode ?? "5.0.0", remoteMTA: state.remoteMTA,
                         diagnostic: state.diagnostic ?? state.lastReason ?? "delivery failed",
                         diagnosticIsSMTP: state.diagnostic != nil)
        }
        let spool = self.spool
        let hostname = settings.hostname
        let id = envelope.queueID
        let dsnID: QueueID? = try await threadPool.runIfActive {
            var dsnID: QueueID?
            if !failed.isEmpty, let sender = envelope.transaction.sender {
                let writer = try spool.beginMessage()
                let now = Date().timeIntervalSince1970
                let report = DeliveryStatusNotification.make(
                    envelope: envelope, original: content, failed: failed, reportingMTA: hostname,
                    date: MessageDate.format(secondsSinceEpoch: Int(now)), messageID: "\(writer.queueID.rawValue).dsn@\(hostname)")
                writer.write(report)
                var parameters = MailParameters()
                parameters.body = .eightBitMIME
                parameters.smtputf8 = envelope.transaction.parameters.smtputf8
                let transaction = MailTransaction(sender: nil, parameters: parameters, recipients: [Recipient(mailbox: sender, notify: DSNNotify(never: true))])
                var dsn = QueuedEnvelope(queueID: writer.queueID, arrivalTime: now, clientAddress: "127.0.0.1",
                                         heloName: hostname, transaction: transaction, size: writer.contentLength)
                dsn.generated = .deliveryStatusNotification
                try writer.commit(envelope: dsn)
                dsnID = writer.queueID
            }
            try spool.finish(id)
            return dsnID
        }
        if let dsnID {
            logger.info("\(id): sender non-delivery notification: \(dsnID)")
            due[dsnID] = 0
        }
        logger.info("\(id): removed")
    }
}
