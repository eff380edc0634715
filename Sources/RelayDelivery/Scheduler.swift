import Foundation
import Logging
import NIOPosix
import RelayMetrics
import RelayQueue
import SMTPCore

/// Carries out the `QueueManager`'s decisions over the spool: opens a message's round (reads
/// its envelope and delivery record on the thread pool), delivers each destination's recipients
/// as a job when the queue manager starts it, and at the end of the round saves the
/// `DeliveryRecord` with the next retry time — or, when every recipient is delivered or
/// bounced, queues the DSN (if any) first and then removes the message. Sessions are capped
/// overall and per MX address by the delivery agent's `ConnectionSlots`.
public actor Scheduler {
    public struct Settings: Sendable {
        public var retry = RetrySchedule()
        /// Limits of the queue manager: per destination, messages in rounds at once.
        public var queue = QueueManager<QueueID, RecipientOutcome>.Limits()
        /// This relay's host name (Reporting-MTA of DSNs).
        public var hostname: String
        /// Accept and queue, deliver nothing (`delivery.hold`): every message stays held until
        /// released (maintenance, benchmarks of the inbound side).
        public var holdAll = false
        /// Seconds after arrival when recipients still pending get one delay DSN (RFC 3464
        /// `Action: delayed`; NOTIFY absent or with DELAY); 0 = none. Default 14400 (4 h).
        public var delayWarning: Double = 14400
        /// Called when a TLS report tlsrelay wrote (RFC 8460 §5.3) bounced, with the policy
        /// domain it was about (so that reports to a domain that keeps rejecting them stop).
        public var onReportBounced: @Sendable (String) -> Void = { _ in }

        public init(hostname: String) { self.hostname = hostname }
    }

    /// One open round of one message: what was read, and the jobs (destinations) still running.
    private struct Round {
        var envelope: QueuedEnvelope
        var record: DeliveryRecord
        let content: MessageContent
        /// Pending recipient indexes by destination domain.
        let groups: [String: [Int]]
        var jobsLeft: Int
        /// A job was cut short by shutdown: its deferred recipients are not an attempt.
        var interrupted = false
        /// A job recorded an outcome (what an interrupted round must save).
        var progressed = false
    }

    private let spool: Spool
    private let agent: DeliveryAgent
    private let settings: Settings
    private let threadPool: NIOThreadPool
    private let logger: Logger
    private let clock: @Sendable () -> Double
    private var core: QueueManager<QueueID, RecipientOutcome>
    private var rounds: [QueueID: Round] = [:]
    private var wakeup: AsyncStream<Void>.Continuation?
    /// Set by `drain`: no new round or job starts.
    private var draining = false
    /// Jobs running now (started, not ended).
    private var runningJobs = 0
    /// When this scheduler was made (seconds since the epoch).
    private let startedAt: Double

    /// - Parameter clock: seconds since the epoch (the wall clock unless a test passes another).
    public init(spool: Spool, agent: DeliveryAgent, settings: Settings, threadPool: NIOThreadPool, logger: Logger,
                clock: @escaping @Sendable () -> Double = { Date().timeIntervalSince1970 }) {
        self.spool = spool
        self.agent = agent
        self.settings = settings
        self.threadPool = threadPool
        self.logger = logger
        self.clock = clock
        self.startedAt = clock()
        var limits = settings.queue
        limits.maximumWait = settings.retry.maximumBackoff
        // A suspended destination is tried again no later than a deferred message would be.
        limits.suspendTime = min(limits.suspendTime, settings.retry.minimumBackoff)
        self.core = QueueManager(limits: limits)
    }

    /// Queue counts: messages being delivered or due now, deferred until later, held.
    public struct Counts: Sendable, Codable, Equatable {
        public var active: Int
        public var deferred: Int
        public var held: Int
        public var total: Int { active + deferred + held }
    }

    /// Seconds since the arrival of the oldest queued message (queue ids sort by arrival); 0
    /// when the queue is empty. O(n): for a scrape, not for scheduling.
    public func oldestMessageAge() -> Double {
        guard let oldest = core.minimumID() else { return 0 }
        return max(0, clock() - Double(oldest.microsecondsSinceEpoch) / 1e6)
    }

    /// A destination whose deliveries are suspended after repeated failures.
    public struct SuspendedDestination: Sendable {
        /// The destination domain (A-label).
        public var domain: String
        /// Until when, seconds since the epoch.
        public var until: Double
        /// The failure that suspended it: enhanced status code and reason.
        public var status: String?
        public var reason: String?
    }

    /// Destinations suspended now, soonest end first (for `tlsrelayctl status`).
    public func suspendedDestinations() -> [SuspendedDestination] {
        core.suspendedDestinations(now: clock()).map {
            SuspendedDestination(domain: $0.name, until: $0.until, status: $0.failure?.status.description, reason: $0.failure?.reason)
        }
    }

    public func counts() -> Counts {
        let counts = core.counts(now: clock())
        return Counts(active: counts.active, deferred: counts.deferred, held: counts.held)
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
    public func isInFlight(_ id: QueueID) -> Bool { core.place(of: id) == .active }

    /// True when the message is on hold.
    public func isHeld(_ id: QueueID) -> Bool { core.place(of: id) == .held }

    /// Makes messages due now (like `postqueue -f` / `-i ID`): all deferred ones when `ids` is
    /// nil. Held messages stay held.
    /// - Returns: how many messages were scheduled.
    @discardableResult
    public func flush(_ ids: [QueueID]? = nil) -> Int {
        let count = core.flush(ids, now: clock())
        wakeup?.yield()
        if count > 0 { logger.info("flush by the operator: \(count) message(s) scheduled now\(ids.map { ids in ids.count == 1 ? " (\(ids[0]))" : "" } ?? "")") }
        return count
    }

    /// Flushes the deferred messages with a pending recipient in `domain`: those seen in a round
    /// since start from the queue manager's index, the others read from the spool.
    public func flush(domain: String) -> Int {
        let name = domain.lowercased()
        let (known, unknown) = core.deferred(inDomain: name)
        let read = unknown.filter { id in
            guard let envelope = try? spool.envelope(of: id) else { return false }
            let record = try? spool.deliveryRecord(of: id)
            return envelope.transaction.recipients.indices.contains { index in
                envelope.transaction.recipients[index].mailbox.routingDomain == name
                    && (record?.recipients[index].status ?? .pending) == .pending
            }
        }
        return flush(known + read)
    }

    /// Puts a message on hold (`postsuper -h`): not attempted until released; kept across restarts.
    /// - Throws: `OperationError`.
    public func hold(_ id: QueueID) throws {
        if core.place(of: id) == .active { throw OperationError.inDelivery(id) }
        guard core.contains(id) else { throw OperationError.notQueued(id) }
        try updateRecord(id) { $0.held = true }
        _ = core.hold(id)
        logger.info("\(id): put on hold by the operator")
    }

    /// Releases a held message (`postsuper -H`) and makes it due now.
    /// - Throws: `OperationError`.
    public func release(_ id: QueueID) throws {
        guard core.place(of: id) == .held else {
            if core.contains(id) { throw OperationError.failed("message \(id) is not on hold") }
            throw OperationError.notQueued(id)
        }
        if settings.holdAll { throw OperationError.failed("delivery.hold is set: nothing is delivered until it is turned off") }
        try updateRecord(id) { $0.held = false; $0.nextAttempt = 0 }
        _ = core.release(id)
        wakeup?.yield()
        logger.info("\(id): released by the operator")
    }

    /// Deletes a message without a DSN (`postsuper -d`).
    /// - Throws: `OperationError`.
    public func delete(_ id: QueueID) throws {
        if core.place(of: id) == .active { throw OperationError.inDelivery(id) }
        guard core.contains(id) else { throw OperationError.notQueued(id) }
        do { try spool.finish(id) } catch { throw OperationError.failed("cannot delete \(id): \(error)") }
        core.remove(id)
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
            core.addHeld(id)
            return
        }
        core.addFresh(id)
        wakeup?.yield()
    }

    /// Loads queued messages with their retry times. Delivery records are read on the thread
    /// pool in chunks of 5,000, so new mail and deliveries go on meanwhile: start-up loads the
    /// queue in the background, after the listener is ready.
    public func load(_ ids: [QueueID]) async {
        let spool = self.spool
        let withRecords = (try? await durable { spool.messagesWithDeliveryRecords() }) ?? []
        var start = 0
        while start < ids.count {
            let chunk = Array(ids[start..<min(ids.count, start + 5000)])
            start += chunk.count
            let records = (try? await durable {
                chunk.map { withRecords.containsSorted($0) ? try? spool.deliveryRecord(of: $0) : nil }
            }) ?? Array(repeating: nil, count: chunk.count)
            for (id, record) in zip(chunk, records) { add(id, record: record) }
            wakeup?.yield()
        }
    }

    /// Schedules one loaded message by its record (nil: never tried).
    private func add(_ id: QueueID, record loaded: DeliveryRecord?) {
        guard !core.contains(id) else { return }
        // Queued after start-up and already delivered by the time the listing reaches it.
        if Double(id.microsecondsSinceEpoch) / 1e6 >= startedAt - 1, access(spool.path(of: id), F_OK) != 0 { return }
        var record = loaded
        if let original = record?.awaitingConfirmationBy {
            if confirmsDSN(id, original: original) {
                let released = Self.dsnRecord(id, awaitingConfirmationBy: nil)
                do { try spool.saveDeliveryRecord(released) } catch {
                    logger.error("\(id): cannot release the DSN for \(original): \(error)")
                    return
                }
                logger.info("\(original): sender non-delivery notification: \(id) (released after a restart)")
                record = released
            } else {
                try? spool.finish(id)
                logger.notice("\(id): removed an unconfirmed DSN for \(original) (a crash came before \(original)'s record was saved; its failures are still pending there)")
                return
            }
        }
        if record?.held == true || settings.holdAll {
            core.addHeld(id)
        } else if let record, record.attempts > 0 {
            // A retry time further away than max_backoff means the clock was set back since it
            // was written: never wait longer than max_backoff from now.
            core.addDeferred(id, due: min(record.nextAttempt, clock() + settings.retry.maximumBackoff))
        } else {
            core.addFresh(id)
        }
    }

    /// Delivers until the task is cancelled; in-flight deliveries are awaited before return.
    /// Each pass carries out the queue manager's actions, then sleeps until the next event (new
    /// mail, a finished job, an operator request) or the next due time.
    /// - Parameter intake: ids of messages just queued (the inbound server yields each after its
    ///   250), scheduled as they come.
    public func run(intake: AsyncStream<QueueID>? = nil) async {
        let (stream, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        wakeup = continuation
        await withDiscardingTaskGroup { group in
            if let intake {
                group.addTask { [self] in
                    for await id in intake { await self.enqueue(id) }
                }
            }
            var iterator = stream.makeAsyncIterator()
            while !Task.isCancelled {
                let now = clock()
                for action in draining ? [] : core.nextActions(now: now) {
                    switch action {
                    case .open(let id):
                        group.addTask { [self] in await self.open(id) }
                    case .start(let id, let destination):
                        runningJobs += 1
                        group.addTask { [self] in await self.runJob(id, destination: destination) }
                    case .suspend(let id, let destination, let failure):
                        group.addTask { [self] in await self.suspendJob(id, destination: destination, failure: failure) }
                    }
                }
                // Sleep until the next due time, at most 1 s (a clock step is noticed within 1 s).
                let wait = min(1.0, max(0.005, (core.nextWake() ?? now + 1) - now))
                let timer = Task {
                    // A cancelled timer (an event came first) must not wake the loop again.
                    guard (try? await Task.sleep(for: .milliseconds(Int(wait * 1000)))) != nil else { return }
                    continuation.yield()
                }
                _ = await iterator.next()
                timer.cancel()
            }
        }
    }

    /// Graceful stop, first part: no new round or job starts from now on, and the jobs running
    /// are given up to `seconds` to end.
    /// - Returns: true when every running job ended in time (else the caller cancels `run`).
    public func drain(seconds: Double) async -> Bool {
        draining = true
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while runningJobs > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
        return runningJobs == 0
    }

    /// Graceful stop, last part (after `run` returned): rounds left open — jobs that never
    /// started beside ones that ended — save what their ended jobs decided, without counting an
    /// attempt; rounds in which nothing was decided are dropped (their records stay as they were).
    public func saveInterruptedRounds() async {
        for id in Array(rounds.keys) {
            guard var round = rounds[id] else { continue }
            if round.progressed {
                round.interrupted = true
                rounds[id] = round
                await finishRound(id)
            } else {
                rounds[id] = nil
            }
        }
    }

    /// Opens a round: reads the envelope and delivery record (not the content) and hands the
    /// pending recipients' destinations to the queue manager.
    private func open(_ id: QueueID) async {
        let spool = self.spool
        let envelope: QueuedEnvelope
        let record: DeliveryRecord
        do {
            (envelope, record) = try await threadPool.runIfActive {
                let envelope = try spool.envelope(of: id)
                let record = try spool.deliveryRecord(of: id)
                    ?? DeliveryRecord(queueID: id, recipientCount: envelope.transaction.recipients.count, nextAttempt: 0)
                return (envelope, record)
            }
        } catch {
            core.roundFinished(id, nextAttempt: nil)
            // At shutdown the read is cancelled: the message is simply not opened.
            guard !Task.isCancelled else { return }
            logger.error("\(id): cannot read queued message: \(error)")
            wakeup?.yield()
            return
        }
        var groups: [String: [Int]] = [:]
        for index in record.pendingIndexes {
            groups[envelope.transaction.recipients[index].mailbox.routingDomain, default: []].append(index)
        }
        let threadPool = self.threadPool
        let content = MessageContent { try await threadPool.runIfActive { try spool.content(of: id) } }
        rounds[id] = Round(envelope: envelope, record: record, content: content, groups: groups, jobsLeft: groups.count)
        if groups.isEmpty {
            await finishRound(id)
        } else {
            core.opened(id, destinations: groups.keys.sorted())
        }
        wakeup?.yield()
    }

    /// Delivers the round's recipients in `destination`.
    private func runJob(_ id: QueueID, destination: String) async {
        defer { runningJobs -= 1 }
        guard let round = rounds[id], let indexes = round.groups[destination] else { return }
        let start = clock()
        let outcomes = await agent.deliver(envelope: round.envelope, content: round.content, domain: destination, recipientIndexes: indexes)
        await jobEnded(id, destination: destination, outcomes: outcomes, start: start, suspended: false)
    }

    /// Ends a job of a suspended destination without a connection.
    private func suspendJob(_ id: QueueID, destination: String, failure: RecipientOutcome) async {
        guard let round = rounds[id], let indexes = round.groups[destination] else { return }
        var outcome = failure
        outcome.reason = "delivery temporarily suspended: \(failure.reason)"
        outcome.remoteReply = nil
        var outcomes: [Int: RecipientOutcome] = [:]
        for index in indexes { outcomes[index] = outcome }
        await jobEnded(id, destination: destination, outcomes: outcomes, start: clock(), suspended: true)
    }

    /// Records a job's outcomes in the round (and the log), tells the queue manager how the
    /// destination did, and ends the round after its last job.
    private func jobEnded(_ id: QueueID, destination: String, outcomes: [Int: RecipientOutcome], start: Double, suspended: Bool) async {
        guard var round = rounds[id] else { return }
        let now = clock()
        // Shutdown cut the job short: deferrals it caused are not an attempt.
        let cancelled = Task.isCancelled
        let expired = settings.retry.hasExpired(arrival: round.envelope.arrivalTime, now: now)
        for (index, outcome) in outcomes.sorted(by: { $0.key < $1.key }) {
            if cancelled && outcome.kind == .deferred {
                round.interrupted = true
                continue
            }
            var state = round.record.recipients[index]
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
            round.record.recipients[index] = state
            round.progressed = true
            if state.status == .bounced, round.envelope.generated == .tlsReport, let domain = round.envelope.tlsReportDomain {
                settings.onReportBounced(domain)
            }
            RelayMetrics.delivery(state.status == .bounced ? .bounced : outcome.kind, policy: outcome.policy)
            let recipient = round.envelope.transaction.recipients[index].mailbox.address
            logger.info("\(id): to=<\(recipient)>, relay=\(outcome.remoteMTA ?? "none"), delay=\(String(format: "%.1f", now - round.envelope.arrivalTime)), attempt-time=\(String(format: "%.2f", now - start)), dsn=\(state.lastStatusCode ?? outcome.status.description), status=\(status)\(outcome.security.map { ", tls=\($0.rawValue)" } ?? "")\(Self.senderRequestField(outcome.policy)) (\(state.lastReason ?? outcome.reason))")
        }
        round.jobsLeft -= 1
        rounds[id] = round
        let result: QueueManager<QueueID, RecipientOutcome>.JobResult
        if suspended {
            result = .suspended
        } else if cancelled {
            result = .answered
        } else if let silent = outcomes.values.first(where: { $0.kind == .deferred && $0.remoteReply == nil }),
                  outcomes.values.allSatisfy({ $0.kind == .deferred && $0.remoteReply == nil }) {
            result = .failed(silent)
        } else {
            result = .answered
        }
        core.jobFinished(id, destination: destination, result, now: now)
        if round.jobsLeft <= 0 { await finishRound(id) }
        wakeup?.yield()
    }

    /// Runs `work` on the thread pool to its end even when the calling task is cancelled: what a
    /// round owes to disk is written at shutdown too.
    private func durable<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        let pool = threadPool
        return try await Task { try await pool.runIfActive(work) }.value
    }

    /// Ends a round, in the order that makes a crash at any point deliver nobody twice and
    /// bounce nothing twice:
    /// 1. recipients that failed permanently in this round and want a report get their DSN now
    ///    (RFC 3464; Postfix does the same), not when the last recipient is done: the DSN is
    ///    written *awaiting confirmation* (not delivered);
    /// 2. the record — next retry time, the DSN's id for those recipients — is saved, or, when
    ///    every recipient is done, the message is removed (queue file first, then record);
    /// 3. the DSN is released for delivery.
    /// At start-up `load` releases a DSN whose original names it or is gone, and deletes one
    /// whose original does not (a crash before step 2: the failure is still pending there).
    private func finishRound(_ id: QueueID) async {
        guard var round = rounds.removeValue(forKey: id) else { return }
        let now = clock()
        if round.interrupted {
            // Not an attempt: retried at once after the restart.
            round.record.nextAttempt = now
        } else if !round.groups.isEmpty {
            round.record.attempts += 1
            round.record.nextAttempt = now + settings.retry.delay(afterAttempts: round.record.attempts)
        }
        let spool = self.spool
        var dsnID: QueueID?
        var delayID: QueueID?
        do {
            let transaction = round.envelope.transaction
            let owed = round.record.recipients.indices.filter { index in
                let state = round.record.recipients[index]
                return state.status == .bounced && state.dsnQueueID == nil && transaction.sender != nil
                    && DeliveryStatusNotification.wantsFailureReport(sender: transaction.sender, recipient: transaction.recipients[index])
            }
            if !owed.isEmpty {
                let written = try await writeDSN(envelope: round.envelope, content: round.content, record: round.record, indexes: owed)
                dsnID = written
                for index in owed { round.record.recipients[index].dsnQueueID = written }
            }
            // One delay DSN per recipient still pending after delay_warning_time (not for a round
            // cut short by shutdown: it is no attempt).
            let late = settings.delayWarning > 0 && !round.interrupted && now - round.envelope.arrivalTime >= settings.delayWarning
            let delayed = !late ? [] : round.record.recipients.indices.filter { index in
                let state = round.record.recipients[index]
                return state.status == .pending && state.delayDSNQueueID == nil
                    && DeliveryStatusNotification.wantsDelayReport(sender: transaction.sender, recipient: transaction.recipients[index])
            }
            if !delayed.isEmpty {
                let until = round.envelope.arrivalTime + settings.retry.queueLifetime
                let written = try await writeDSN(envelope: round.envelope, content: round.content, record: round.record, indexes: delayed,
                                                 kind: .delay(willRetryUntil: until))
                delayID = written
                for index in delayed { round.record.recipients[index].delayDSNQueueID = written }
            }
            if dsnID != nil || delayID != nil { CrashPoint.dsnWritten.reached() }
            let finalRecord = round.record
            if finalRecord.isComplete {
                try await durable { try spool.finish(id) }
                core.roundFinished(id, nextAttempt: nil)
                logger.info("\(id): removed")
            } else {
                try await durable { try spool.saveDeliveryRecord(finalRecord) }
                core.roundFinished(id, nextAttempt: finalRecord.nextAttempt)
            }
        } catch {
            logger.error("\(id): cannot save delivery state: \(error); retrying later")
            // Not confirmed: the failures stay pending in the original and get a new DSN.
            for written in [dsnID, delayID].compactMap({ $0 }) {
                try? await durable { try spool.finish(written) }
            }
            dsnID = nil
            delayID = nil
            core.roundFinished(id, nextAttempt: now + settings.retry.minimumBackoff)
        }
        if dsnID != nil || delayID != nil { CrashPoint.recordSaved.reached() }
        if let dsnID { await releaseDSN(dsnID, original: id) }
        if let delayID { await releaseDSN(delayID, original: id, delay: true) }
    }

    /// Writes the DSN for the recipients `indexes` of `envelope`, with a delivery record that
    /// holds it until `releaseDSN` (the record is on disk before the queue file).
    /// - Returns: the DSN's queue id.
    func writeDSN(envelope: QueuedEnvelope, content: MessageContent, record: DeliveryRecord, indexes: [Int],
                  kind: DeliveryStatusNotification.Kind = .failure) async throws -> QueueID {
        let failed: [DeliveryStatusNotification.FailedRecipient] = indexes.map { index in
            let state = record.recipients[index]
            return .init(recipient: envelope.transaction.recipients[index], status: state.lastStatusCode ?? (kind == .failure ? "5.0.0" : "4.0.0"),
                         remoteMTA: state.remoteMTA,
                         diagnostic: state.diagnostic ?? state.lastReason ?? "delivery failed",
                         diagnosticIsSMTP: state.diagnostic != nil)
        }
        guard let sender = envelope.transaction.sender else { throw OperationError.failed("no sender to report to") }
        let spool = self.spool
        let hostname = settings.hostname
        let now = clock()
        let original = try await Task { try await content.bytes() }.value
        return try await durable {
            let writer = try spool.beginMessage()
            let report = DeliveryStatusNotification.make(
                envelope: envelope, original: original, failed: failed, reportingMTA: hostname,
                date: MessageDate.format(secondsSinceEpoch: Int(now)), messageID: "\(writer.queueID.rawValue).dsn@\(hostname)", kind: kind)
            writer.write(report)
            var parameters = MailParameters()
            parameters.body = .eightBitMIME
            parameters.smtputf8 = envelope.transaction.parameters.smtputf8
            let transaction = MailTransaction(sender: nil, parameters: parameters, recipients: [Recipient(mailbox: sender, notify: DSNNotify(never: true))])
            var dsn = QueuedEnvelope(queueID: writer.queueID, arrivalTime: now, clientAddress: "127.0.0.1",
                                     heloName: hostname, transaction: transaction, size: writer.contentLength)
            dsn.generated = .deliveryStatusNotification
            try spool.saveDeliveryRecord(Self.dsnRecord(writer.queueID, awaitingConfirmationBy: envelope.queueID))
            try writer.commit(envelope: dsn)
            return writer.queueID
        }
    }

    /// The delivery record of a DSN (one recipient, never tried): held while it awaits
    /// confirmation by `original`, free (not held) once released.
    static func dsnRecord(_ id: QueueID, awaitingConfirmationBy original: QueueID?) -> DeliveryRecord {
        var record = DeliveryRecord(queueID: id, recipientCount: 1, nextAttempt: 0)
        record.held = original != nil
        record.awaitingConfirmationBy = original
        return record
    }

    /// Lets a confirmed DSN go: its record no longer holds it, and it is scheduled.
    private func releaseDSN(_ dsnID: QueueID, original: QueueID, delay: Bool = false) async {
        let spool = self.spool
        do {
            try await durable {
                try spool.saveDeliveryRecord(Self.dsnRecord(dsnID, awaitingConfirmationBy: nil))
            }
            logger.info("\(original): sender \(delay ? "delivery delay" : "non-delivery") notification: \(dsnID)")
            if settings.holdAll { core.addHeld(dsnID) } else { core.addFresh(dsnID) }
            wakeup?.yield()
        } catch {
            logger.error("\(dsnID): cannot release the DSN for \(original): \(error); it goes out after the next restart")
        }
    }

    /// At start-up: what to do with a DSN written awaiting confirmation by `original`.
    /// - Returns: true to release it (the original names it, or is gone: it finished after
    ///   writing it), false to delete it (the original does not name it: a crash came before
    ///   the original's record was saved, and its failures get a new DSN).
    func confirmsDSN(_ dsnID: QueueID, original: QueueID) -> Bool {
        guard (try? spool.envelope(of: original)) != nil else { return true }
        guard let record = try? spool.deliveryRecord(of: original) else { return false }
        return record.recipients.contains { $0.dsnQueueID == dsnID || $0.delayDSNQueueID == dsnID }
    }
}

extension Scheduler {
    /// `, requiretls` or `, tls-required=no` on a recipient's log line when the sender's request
    /// (RFC 8689) decided the delivery.
    static func senderRequestField(_ policy: PolicySource?) -> String {
        switch policy {
        case .requireTLS?: return ", requiretls"
        case .tlsRequiredNo?: return ", tls-required=no"
        default: return ""
        }
    }
}
