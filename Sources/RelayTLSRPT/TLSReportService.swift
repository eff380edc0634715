import CompressNIO
import DeliveryPolicy
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import RelayDNS
import RelayHTTPS
import RelayMetrics
import RelayPolicy
import RelayQueue
import SMTPCore
import TLSRPTCore

/// Daily TLS reports (RFC 8460 §4, §5): after 00:00 UTC plus a random delay, one report per
/// policy domain and day to every `rua` URI of its `_smtp._tls` record — by mail through
/// tlsrelay's own queue (`mailto:`), or as an HTTPS POST (`https:`).
///
/// What was sent is remembered per day and domain as the time the report reached
/// (`<state>/tlsrpt/sent/YYYY-MM-DD.json`, written temp + fsync + rename), so a report is sent
/// once even across a crash, and a report sent early by `tlsrelayctl tlsrpt send` leaves the
/// rest of the day for the daily one. A domain whose reports fail to arrive on
/// `giveUpAfterDays` consecutive days gets no more from the daily run (its sessions are
/// dropped, with a log line each day) until `tlsrelayctl tlsrpt send DOMAIN` gets one through.
public final class TLSReportService: Sendable {
    public struct Settings: Sendable {
        public var submitter: TLSReport.Submitter
        /// Envelope sender and `From:` of report mails.
        public var from: Mailbox
        /// Largest random delay after 00:00 UTC, seconds.
        public var sendDelay: Int
        /// Send a report for a day without any failed session (RFC 8460 §4 asks for every
        /// session to be reported; default true).
        public var sendWithoutFailures: Bool
        /// Consecutive days of failed delivery after which a domain gets no more reports.
        public var giveUpAfterDays: Int
        /// HTTPS POST attempts per report and the first pause between them (doubling), seconds.
        public var httpsAttempts: Int
        public var httpsRetryDelay: Double
        /// This relay's host name (Message-ID, the report mail's envelope).
        public var hostname: String

        public init(submitter: TLSReport.Submitter, from: Mailbox, sendDelay: Int, sendWithoutFailures: Bool, giveUpAfterDays: Int,
                    httpsAttempts: Int = 3, httpsRetryDelay: Double = 60, hostname: String) {
            self.submitter = submitter
            self.from = from
            self.sendDelay = sendDelay
            self.sendWithoutFailures = sendWithoutFailures
            self.giveUpAfterDays = giveUpAfterDays
            self.httpsAttempts = httpsAttempts
            self.httpsRetryDelay = httpsRetryDelay
            self.hostname = hostname
        }
    }

    /// What became of one report at one URI.
    public struct Delivery: Sendable, Equatable, CustomStringConvertible {
        public var uri: String
        public var succeeded: Bool
        public var detail: String
        public var description: String { "\(uri): \(succeeded ? "sent" : "failed"): \(detail)" }
    }

    /// What became of one domain's report.
    public struct Outcome: Sendable, CustomStringConvertible {
        public var domain: String
        public var reportID: String?
        public var deliveries: [Delivery]
        /// Why nothing was sent (no record, nothing to report, given up), if so.
        public var skipped: String?
        /// Nothing was sent for a reason that may pass (a DNS lookup failed, another run was
        /// sending): the sessions stay, to be reported by a later run.
        public var retryLater = false
        public var description: String {
            if let skipped { return "\(domain): not sent: \(skipped)" }
            return "\(domain): report \(reportID ?? "?"): " + deliveries.map(\.description).joined(separator: "; ")
        }
    }

    /// Session results, sent state and failed deliveries: files, or a store several relays share.
    public let state: any TLSRPTStateStore
    private let settings: NIOLockedValueBox<Settings>
    private let resolver: RelayDNS.Resolver
    /// The HTTPS client of the MTA-STS fetch (system OpenSSL; its TLS context holds the trusted
    /// CAs: the system store plus `delivery.tls_ca_file`).
    private let https: HTTPSClient
    private let spool: Spool
    private let logger: Logger
    /// Hands a queued report mail to delivery.
    private let onQueued: @Sendable (QueueID) -> Void
    private let sending = NIOLockedValueBox(false)

    public init(state: any TLSRPTStateStore, settings: Settings, resolver: RelayDNS.Resolver, https: HTTPSClient, spool: Spool,
                logger: Logger, onQueued: @escaping @Sendable (QueueID) -> Void) {
        self.state = state
        self.settings = NIOLockedValueBox(settings)
        self.resolver = resolver
        self.https = https
        self.spool = spool
        self.logger = logger
        self.onQueued = onQueued
    }

    // MARK: - Reports

    /// Per domain, the sessions of the day starting at `dayStart` not yet reported: successes
    /// and failures.
    /// - Throws: when a shared store cannot be read.
    public func counts(dayStart: Int) async throws -> [String: (successes: Int, failures: Int)] {
        try await state.pending(dayStart: dayStart, until: .greatestFiniteMagnitude, domain: nil).mapValues { ($0.successes, $0.failures) }
    }

    /// The report `domain` would get now for the day starting at `dayStart`, covering the
    /// sessions since the last report of that day up to `until` (seconds since the epoch).
    /// - Returns: the report; nil when there is nothing to report.
    /// - Throws: when a shared store cannot be read.
    public func report(domain: String, dayStart: Int, until: Double, reportID: String? = nil) async throws -> TLSReport? {
        guard let pending = try await state.pending(dayStart: dayStart, until: until, domain: domain)[domain] else { return nil }
        return report(domain: domain, dayStart: dayStart, until: until, pending: pending, reportID: reportID)
    }

    /// The report of `domain` from its pending sessions of the day.
    func report(domain: String, dayStart: Int, until: Double, pending: PendingSessions, reportID: String? = nil) -> TLSReport? {
        guard pending.results.contains(where: { $0.count > 0 }) else { return nil }
        let settings = self.settings.withLockedValue { $0 }
        let id = reportID ?? "\(TLSReport.dayName(dayStart)).\(Self.uniqueID())@\(settings.submitter.domain)"
        var report = TLSReport.make(domain: domain, dayStart: dayStart, weighted: pending.results.map { ($0.result, $0.count) },
                                    submitter: settings.submitter, reportID: id)
        let end = until < Double(dayStart + TLSReport.day) ? Int(until) : dayStart + TLSReport.day - 1
        report.setRange(start: max(dayStart, Int(pending.since)), end: end)
        return report
    }

    /// Sends the reports of every complete day not yet sent (the daily run), or of one domain and
    /// day now (`tlsrelayctl tlsrpt send`).
    /// - Parameters:
    ///   - now: seconds since the epoch.
    ///   - only: one domain; nil: every domain with results.
    ///   - dayStart: one day (today's sessions so far when it is today); nil: every day before today.
    public func send(now: Double, only: String? = nil, dayStart: Int? = nil) async -> [Outcome] {
        guard sending.withLockedValue({ busy in defer { busy = true }; return !busy }) else {
            return [Outcome(domain: only ?? "*", reportID: nil, deliveries: [], skipped: "reports are being sent already", retryLater: true)]
        }
        defer { sending.withLockedValue { $0 = false } }
        let today = TLSReport.dayStart(now)
        let days: [Int]
        do {
            if let dayStart { days = [dayStart] } else { days = try await state.days().filter { $0 < today } }
        } catch {
            logger.warning("TLS-RPT: reports postponed: the TLS-RPT state cannot be read: \(error)")
            return [Outcome(domain: only ?? "*", reportID: nil, deliveries: [], skipped: "the TLS-RPT state cannot be read: \(error); kept for a later run", retryLater: true)]
        }
        var outcomes: [Outcome] = []
        for day in days {
            let until = min(now, Double(day + TLSReport.day))
            // The day's sessions are read once here, not once per domain.
            let pending: [String: PendingSessions]
            do {
                pending = try await state.pending(dayStart: day, until: until, domain: only)
            } catch {
                outcomes.append(Outcome(domain: only ?? "*", reportID: nil, deliveries: [], skipped: "the TLS-RPT state cannot be read: \(error); kept for a later run", retryLater: true))
                continue
            }
            var postponed = false
            for domain in pending.keys.sorted() {
                guard !Task.isCancelled else { return outcomes }
                let outcome: Outcome
                do {
                    let shared = state.shared
                    let taken = try await state.whileReporting(domain: domain, dayStart: day) { () async -> Outcome in
                        var current = pending[domain]!
                        if shared {
                            // Another relay may have reported these sessions since they were read.
                            do {
                                guard let fresh = try await self.state.pending(dayStart: day, until: until, domain: domain)[domain] else {
                                    return Outcome(domain: domain, reportID: nil, deliveries: [], skipped: "reported already by another relay")
                                }
                                current = fresh
                            } catch {
                                return Outcome(domain: domain, reportID: nil, deliveries: [], skipped: "the TLS-RPT state cannot be read: \(error); kept for a later run", retryLater: true)
                            }
                        }
                        return await self.send(domain: domain, dayStart: day, until: until, pending: current, forced: only != nil)
                    }
                    outcome = taken ?? Outcome(domain: domain, reportID: nil, deliveries: [],
                                               skipped: "another relay is sending this report; kept in case it does not finish", retryLater: true)
                } catch {
                    outcome = Outcome(domain: domain, reportID: nil, deliveries: [], skipped: "the TLS-RPT state cannot be read: \(error); kept for a later run", retryLater: true)
                }
                postponed = postponed || outcome.retryLater
                outcomes.append(outcome)
            }
            if day < today, only == nil, !postponed, (try? await state.pending(dayStart: day, until: .greatestFiniteMagnitude, domain: nil).isEmpty) == true {
                await state.finish(dayStart: day)
            }
        }
        return outcomes
    }

    /// Records the sessions of `pending` as reported (a failure to record is logged: the report may go out twice).
    private func markSent(domain: String, dayStart: Int, until: Double, pending: PendingSessions) async {
        do {
            try await state.markSent(domain: domain, dayStart: dayStart, until: until, reported: pending)
        } catch {
            logger.error("TLS-RPT: cannot record the report of \(domain) as sent: \(error) (it may be sent again)")
        }
    }

    /// - Parameter forced: sent even to a domain given up on (an operator's `send DOMAIN`).
    func send(domain: String, dayStart: Int, until: Double, pending: PendingSessions, forced: Bool = false) async -> Outcome {
        let settings = self.settings.withLockedValue { $0 }
        guard let report = report(domain: domain, dayStart: dayStart, until: until, pending: pending) else {
            return Outcome(domain: domain, reportID: nil, deliveries: [], skipped: "nothing to report")
        }
        if report.failureCount == 0 && !settings.sendWithoutFailures {
            await markSent(domain: domain, dayStart: dayStart, until: until, pending: pending)
            return Outcome(domain: domain, reportID: report.reportID, deliveries: [], skipped: "no failed session (tlsrpt.send_without_failures = false)")
        }
        let failures = await state.failedDays(domain)
        if failures.days >= settings.giveUpAfterDays, !forced {
            await markSent(domain: domain, dayStart: dayStart, until: until, pending: pending)
            let reason = "reports to \(domain) failed on \(failures.days) day(s) in a row (tlsrpt.give_up_after_days = \(settings.giveUpAfterDays)); none is sent until `tlsrelayctl tlsrpt send \(domain)` gets one through"
            logger.warning("TLS-RPT: \(TLSReport.dayName(dayStart)): \(reason)")
            return Outcome(domain: domain, reportID: report.reportID, deliveries: [], skipped: reason)
        }
        let record: TLSRPTRecord
        do {
            record = try await discover(domain)
        } catch let problem as TLSRPTRecord.Problem {
            // The domain asks for no reports (RFC 8460 §3): its sessions are done with.
            await markSent(domain: domain, dayStart: dayStart, until: until, pending: pending)
            logger.info("TLS-RPT: no report for \(domain) (\(TLSReport.dayName(dayStart))): _smtp._tls.\(domain): \(problem)")
            return Outcome(domain: domain, reportID: report.reportID, deliveries: [], skipped: "_smtp._tls.\(domain): \(problem)")
        } catch {
            // A lookup that failed says nothing: the sessions stay for a later run.
            logger.warning("TLS-RPT: report for \(domain) (\(TLSReport.dayName(dayStart))) postponed: \(error)")
            return Outcome(domain: domain, reportID: report.reportID, deliveries: [], skipped: "\(error); kept for a later run", retryLater: true)
        }
        for ignored in record.ignored {
            logger.warning("TLS-RPT: _smtp._tls.\(domain): ignored \(ignored)")
        }
        let json = report.json()
        var buffer = ByteBufferAllocator().buffer(bytes: json)
        let gzip: [UInt8]
        do {
            var compressed = try buffer.compress(with: .gzip)
            gzip = compressed.readBytes(length: compressed.readableBytes) ?? []
        } catch {
            logger.error("TLS-RPT: cannot gzip the report for \(domain): \(error)")
            return Outcome(domain: domain, reportID: report.reportID, deliveries: [], skipped: "gzip failed: \(error)")
        }
        let unique = Self.uniqueID()
        let fileName = report.fileName(submitter: settings.submitter.domain, domain: domain, unique: unique)
        var deliveries: [Delivery] = []
        for uri in record.rua {
            let delivery: Delivery
            switch uri {
            case .mailto(let address):
                delivery = queueMail(report: report, gzip: gzip, fileName: fileName, to: address, domain: domain, settings: settings)
            case .https(let url):
                delivery = await post(gzip, to: url, settings: settings)
            }
            RelayMetrics.tlsrptReport(https: { if case .https = uri { return true } else { return false } }(), sent: delivery.succeeded)
            if delivery.succeeded {
                logger.notice("TLS-RPT: report \(report.reportID) for \(domain) (\(report.dateRange.start) to \(report.dateRange.end), \(report.failureCount) failed session(s)) \(delivery.detail)")
            } else {
                logger.warning("TLS-RPT: report \(report.reportID) for \(domain) to \(uri): \(delivery.detail)")
            }
            deliveries.append(delivery)
        }
        await markSent(domain: domain, dayStart: dayStart, until: until, pending: pending)
        if deliveries.contains(where: \.succeeded) {
            await state.noteDelivered(domain)
        } else {
            await noteFailed(domain, dayStart: dayStart, limit: settings.giveUpAfterDays)
        }
        return Outcome(domain: domain, reportID: report.reportID, deliveries: deliveries, skipped: nil)
    }

    /// The `_smtp._tls` record of `domain` through the validating resolver (RFC 8460 §3).
    /// - Throws: `TLSRPTRecord.Problem`, or the lookup's error (a bogus answer counts as no record).
    public func discover(_ domain: String) async throws -> TLSRPTRecord {
        let answer = try await resolver.txt("_smtp._tls.\(domain)")
        if answer.status == .bogus {
            throw TLSRPTRecord.Problem.noRecord
        }
        return try TLSRPTRecord.select(answer.records)
    }

    /// Writes a report mail into the spool (`TLS-Required: No`, RFC 8460 §5.3) and hands it to
    /// delivery; its own delivery is never counted in a report.
    func queueMail(report: TLSReport, gzip: [UInt8], fileName: String, to address: String, domain: String, settings: Settings) -> Delivery {
        let uri = "mailto:\(address)"
        let recipient: Mailbox
        do {
            recipient = try PathParser.parsePath(Substring("<\(address)>"), allowUTF8: false)
        } catch {
            return Delivery(uri: uri, succeeded: false, detail: "not a mail address")
        }
        let now = Date().timeIntervalSince1970
        let messageID = "\(report.reportID.filter { $0.isLetter || $0.isNumber || $0 == "." })@\(settings.hostname)"
        let bytes = TLSReportMail.make(report: report, gzip: gzip, fileName: fileName, from: settings.from.address, to: address, domain: domain,
                                       submitter: settings.submitter.domain, date: MessageDate.format(secondsSinceEpoch: Int(now)),
                                       messageID: messageID)
        do {
            let writer = try spool.beginMessage()
            writer.write(bytes)
            var envelope = QueuedEnvelope(queueID: writer.queueID, arrivalTime: now, clientAddress: "127.0.0.1", heloName: settings.hostname,
                                          transaction: MailTransaction(sender: settings.from, parameters: MailParameters(),
                                                                       recipients: [Recipient(mailbox: recipient, notify: DSNNotify(failure: true))]),
                                          size: writer.contentLength)
            envelope.generated = .tlsReport
            envelope.tlsRequiredNo = true
            envelope.tlsReportDomain = domain
            try writer.commit(envelope: envelope)
            onQueued(writer.queueID)
            return Delivery(uri: uri, succeeded: true, detail: "queued as \(writer.queueID) to \(uri)")
        } catch {
            return Delivery(uri: uri, succeeded: false, detail: "cannot queue the report mail: \(error)")
        }
    }

    /// POSTs the gzip'd report (RFC 8460 §5.4): `Content-Type: application/tlsrpt+gzip`, WebPKI
    /// checked, no redirects, a 2xx answer counts; retried `httpsAttempts` times with doubling
    /// pauses.
    func post(_ gzip: [UInt8], to url: String, settings: Settings) async -> Delivery {
        guard let target = HTTPSURL(url) else {
            return Delivery(uri: url, succeeded: false, detail: "\(url) is not an https URL")
        }
        let request = HTTPSRequest(method: .post, url: target, headers: [("Content-Type", "application/tlsrpt+gzip")], body: gzip)
        var failure = "no attempt"
        var pause = settings.httpsRetryDelay
        for attempt in 1...max(1, settings.httpsAttempts) {
            if attempt > 1 {
                try? await Task.sleep(for: .seconds(pause))
                pause *= 2
                if Task.isCancelled { break }
            }
            // The name is resolved by the validating resolver, never by the system's.
            let lookups = await resolver.addressLookups(target.host)
            let address = (try? lookups.ipv4.get())?.records.first ?? (try? lookups.ipv6.get())?.records.first
            guard let address else {
                failure = "no address for \(target.host)"
                continue
            }
            do {
                let response = try await https.send(request, to: address, timeoutSeconds: 30, maxBodyBytes: 65536)
                if (200..<300).contains(Int(response.status.code)) {
                    return Delivery(uri: url, succeeded: true, detail: "POSTed to \(url): \(response.status.code) \(response.status.reasonPhrase)")
                }
                failure = "\(url) answered \(response.status.code) \(response.status.reasonPhrase)"
            } catch .bodyTooLarge {
                // Not read to its end: the status cannot be trusted, so the report counts as not sent.
                failure = "\(url) answered with a body larger than 64 KiB"
            } catch {
                failure = "POST to \(url) failed: \(error)"
            }
        }
        return Delivery(uri: url, succeeded: false, detail: "\(failure) (after \(max(1, settings.httpsAttempts)) attempt(s))")
    }

    static func uniqueID() -> String {
        (0..<16).map { _ in String("0123456789abcdef".randomElement()!) }.joined()
    }

    // MARK: - Daily run

    /// Sends the reports of past days at the first due time — 00:00 UTC plus a random delay of
    /// up to `sendDelay` seconds, chosen anew each day — and at once for days already due at
    /// start (after a delay of up to a minute); runs until cancelled.
    public func runDaily(now: @Sendable () -> Double = { Date().timeIntervalSince1970 }) async {
        var startUp = true
        while !Task.isCancelled {
            let current = now()
            let settings = self.settings.withLockedValue { $0 }
            let pendingPast = ((try? await state.days()) ?? []).contains { $0 < TLSReport.dayStart(current) }
            let wait: Double
            if startUp && pendingPast {
                wait = Double.random(in: 0...min(60, Double(settings.sendDelay)))
            } else {
                let nextMidnight = Double(TLSReport.dayStart(current) + TLSReport.day)
                wait = nextMidnight - current + Double.random(in: 0...Double(max(0, settings.sendDelay)))
            }
            startUp = false
            try? await Task.sleep(for: .seconds(wait))
            guard !Task.isCancelled else { return }
            var retry = false
            for outcome in await send(now: now()) where outcome.skipped != nil {
                logger.info("TLS-RPT: \(outcome)")
                retry = retry || outcome.retryLater
            }
            // What failed for a passing reason is tried again within the hour, not tomorrow.
            while retry && !Task.isCancelled {
                try? await Task.sleep(for: .seconds(Double.random(in: 600...3600)))
                guard !Task.isCancelled else { return }
                retry = await send(now: now()).contains { $0.retryLater }
            }
        }
    }

    // MARK: - State

    /// A day's report to `domain` did not arrive anywhere (every POST failed, or the report mail
    /// bounced).
    public func noteFailed(_ domain: String, dayStart: Int, limit: Int? = nil) async {
        let limit = limit ?? settings.withLockedValue { $0.giveUpAfterDays }
        let days = await state.noteFailed(domain, dayStart: dayStart)
        if days == limit {
            logger.warning("TLS-RPT: reports to \(domain) failed on \(limit) day(s) in a row; the daily run sends it no more reports until `tlsrelayctl tlsrpt send \(domain)` gets one through")
        }
    }

    /// Replaces the settings (SIGHUP).
    public func update(_ settings: Settings) {
        self.settings.withLockedValue { $0 = settings }
    }
}
