import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import RelayConfig
import RelayDNS
import RelayMetrics
import RelayPolicy
import RelayQueue
import RelayTLS
import SMTPCore
#if canImport(Glibc)
import Glibc
#endif

/// Delivers one message to the recipients of one destination domain: resolves the MX hosts
/// through the validating resolver, connects to their addresses in order and runs the SMTP
/// client with STARTTLS. Recipients a host does not decide go on to the next host (RFC 5321
/// §5.1); what is left at the end is deferred with the last reason.
public final class DeliveryAgent: Sendable {
    /// Settings of the outbound side.
    public struct Settings: Sendable {
        /// Name sent in EHLO. Default: `server.hostname`.
        public var heloName: String
        /// MX port (RFC 5321 §4.5.4.2: 25).
        public var port: Int
        public var timeouts: ClientTimeouts
        /// Hold a DNSSEC-secure MX host to its TLSA records even when the domain's MX RRset is
        /// insecure (RFC 7672 §2.2.1 leaves this to the client; Postfix ≥ 3.6 does). Default true.
        public var daneForInsecureMX: Bool
        /// Local per-domain levels (`[[policy.domain]]`); they win over DANE and MTA-STS.
        public var localLevels: [PolicySettings.DomainLevel]
        /// Downgrade memory mode and grace window (seconds).
        public var downgradeMemory: PolicySettings.DowngradeMemory = .report
        /// Honour `TLS-Required: No` (RFC 8689 §5; `policy.honor_tls_required_no`). Default true.
        public var honorTLSRequiredNo = true
        /// Count a reused connection's session once for TLS reports (`tlsrpt.skip_reused_handshakes`).
        public var tlsrptSkipReusedHandshakes = true

        /// The local level entry for `domain` (expired or not).
        func localLevel(for domain: String) -> PolicySettings.DomainLevel? {
            localLevels.first { $0.domain == domain }
        }

        /// The planner's settings.
        func planner(mtaSTS: Bool) -> PlannerSettings {
            PlannerSettings(port: port, daneForInsecureMX: daneForInsecureMX, mtaSTS: mtaSTS, memoryMode: downgradeMemory,
                            downgradeGrace: downgradeGrace, dsnRelay: dsnRelay.map { (address: $0.address, port: $0.port) },
                            honorTLSRequiredNo: honorTLSRequiredNo, tlsrptSkipReusedHandshakes: tlsrptSkipReusedHandshakes)
        }
        /// Where DSNs that tlsrelay writes go (`delivery.dsn_relay`); nil: the sender domain's MX.
        public var dsnRelay: (address: String, port: Int)?
        public var downgradeGrace: Double = 86400
        /// Seconds an SMTP connection stays open and idle after a message, for the next message
        /// to the same MX address under the same TLS policy (Postfix's
        /// `smtp_connection_cache_time_limit`); 0 closes every connection after its message.
        public var connectionCacheTime: Double = 2
        /// Seconds after which a connection is given no further message (Postfix's
        /// `smtp_connection_reuse_time_limit`).
        public var connectionReuseTimeLimit: Double = 300

        public init(heloName: String, port: Int, timeouts: ClientTimeouts = ClientTimeouts(), daneForInsecureMX: Bool = true,
                    localLevels: [PolicySettings.DomainLevel] = [], downgradeMemory: PolicySettings.DowngradeMemory = .report,
                    downgradeGrace: Double = 86400, connectionCacheTime: Double = 2, connectionReuseTimeLimit: Double = 300,
                    dsnRelay: (address: String, port: Int)? = nil) {
            self.dsnRelay = dsnRelay
            self.connectionCacheTime = connectionCacheTime
            self.connectionReuseTimeLimit = connectionReuseTimeLimit
            self.downgradeMemory = downgradeMemory
            self.downgradeGrace = downgradeGrace
            self.heloName = heloName
            self.port = port
            self.timeouts = timeouts
            self.daneForInsecureMX = daneForInsecureMX
            self.localLevels = localLevels
        }
    }

    let resolver: RelayDNS.Resolver
    let group: EventLoopGroup
    let tlsContext: TLSClientContext
    private let liveSettings: NIOLockedValueBox<Settings>
    /// The settings in force (replaced by `update` on reload).
    var settings: Settings { liveSettings.withLockedValue { $0 } }
    let logger: Logger
    let onAlert: @Sendable (PolicyAlert, QueueID) -> Void
    /// Each TLS session result the planner counts (RFC 8460), with the time it happened.
    public let onSessionResult: @Sendable (TLSSessionResult, Double) -> Void
    let sts: STSPolicyService?
    let memory: (any DowngradeMemoryBackend)?
    let connections = ConnectionCache()
    /// Session limits overall and per MX address; nil: none (`tlsrelayctl check`).
    let slots: ConnectionSlots?

    /// - Parameter onAlert: called for every policy failure (RFC 8460 result type and whether the
    ///   policy was enforced inside), with the queue id.
    /// - Parameter sts: the MTA-STS service; nil disables MTA-STS.
    /// - Parameter slots: caps sessions overall and per MX address; nil: no cap.
    public init(resolver: RelayDNS.Resolver, group: EventLoopGroup, tlsContext: TLSClientContext, settings: Settings, logger: Logger,
                sts: STSPolicyService? = nil, memory: (any DowngradeMemoryBackend)? = nil, slots: ConnectionSlots? = nil,
                onAlert: @escaping @Sendable (PolicyAlert, QueueID) -> Void = { _, _ in },
                onSessionResult: @escaping @Sendable (TLSSessionResult, Double) -> Void = { _, _ in }) {
        self.onSessionResult = onSessionResult
        self.slots = slots
        self.sts = sts
        self.memory = memory
        self.resolver = resolver
        self.group = group
        self.tlsContext = tlsContext
        self.liveSettings = NIOLockedValueBox(settings)
        self.logger = logger
        self.onAlert = onAlert
    }

    /// Attempts delivery: drives `DeliveryPlanner` (every TLS decision is its own) and carries
    /// out its actions — lookups, connections, alerts, downgrade-memory writes.
    /// - Parameters:
    ///   - envelope: the queued envelope.
    ///   - content: the message content (with our Received header), read when the first
    ///     session needs it.
    ///   - domain: the destination domain of `recipientIndexes`, lowercased.
    ///   - recipientIndexes: indexes into the envelope's recipients, all in `domain`.
    /// - Returns: an outcome for every index in `recipientIndexes`.
    public func deliver(envelope: QueuedEnvelope, content: MessageContent, domain: String, recipientIndexes: [Int]) async -> [Int: RecipientOutcome] {
        let queueID = envelope.queueID
        let now = Date().timeIntervalSince1970
        let settings = self.settings
        let first = envelope.transaction.recipients[recipientIndexes[0]].mailbox
        if first.asciiDomain != nil {
            logger.info("\(queueID): delivering to \(first.domain) (\(domain)): DNS, DANE and MTA-STS use the A-label form (RFC 5891)")
        }
        let lookup = settings.downgradeMemory == .off ? MemoryLookup.nothing : await memory?.lookup(domain) ?? .nothing
        var planner = DeliveryPlanner(domain: domain, recipients: recipientIndexes, settings: settings.planner(mtaSTS: sts != nil),
                                      local: settings.localLevel(for: domain).map(LocalPolicyFact.init),
                                      memory: lookup.fact, now: now,
                                      message: Self.messageKind(envelope.generated),
                                      sender: SenderRequest(requireTLS: envelope.transaction.parameters.requireTLS, tlsRequiredNo: envelope.tlsRequiredNo),
                                      state: lookup.unavailable.map { .unavailable(reason: $0) } ?? .available)
        let finished = await drive(&planner, effect: { effect in
            switch effect {
            case .log(let level, let text):
                switch level {
                case .info: logger.info("\(queueID): \(text)")
                case .notice: logger.notice("\(queueID): \(text)")
                case .warning: logger.warning("\(queueID): \(text)")
                }
            case .alert(let alert):
                onAlert(alert, queueID)
            case .hostDecided(let host, .connect(let plan)):
                if case .records(let base, _, let all, let usable) = plan.dane {
                    logger.info("\(queueID): DANE policy for \(host): TLSA base \(base), \(usable.isEmpty ? "no usable TLSA records: encryption required, no authentication" : usable.map(\.description).joined(separator: "; "))\(all.count > usable.count ? " (\(all.count - usable.count) unusable record(s) ignored)" : "")")
                }
                if plan.memoryBinding {
                    logger.info("\(queueID): downgrade memory holds \(host) to \(plan.floor.rawValue) (\(plan.demand))")
                }
            case .hostDecided, .mtaSTS:
                break
            case .remember(let security, let acceptDowngrade):
                do { try await memory?.record(domain: domain, security: security, now: now, acceptDowngrade: acceptDowngrade) } catch {
                    logger.error("\(queueID): cannot update the downgrade memory of \(domain): \(error)")
                }
            case .noteRefusedDowngrade:
                do { try await memory?.noteRefusedDowngrade(domain: domain, now: now) } catch {
                    logger.error("\(queueID): cannot update the downgrade memory of \(domain): \(error)")
                }
            case .tlsSession(let result):
                onSessionResult(result, Date().timeIntervalSince1970)
            }
        }, attempt: { attempt in
            await self.run(attempt, envelope: envelope, content: content, queueID: queueID).result
        })
        return finished.outcomes
    }

    /// Runs the planner to its end: answers each lookup action with the resolver (or the
    /// MTA-STS service), hands each effect to `effect` and each connection to `attempt`.
    /// - Returns: the planner's final outcomes.
    func drive(_ planner: inout DeliveryPlanner, effect: (PlannerEffect) async -> Void,
               attempt: (PlannedAttempt) async -> AttemptResult) async -> (outcomes: [Int: RecipientOutcome], deliverable: Bool, lastFailure: RecipientOutcome?) {
        var step = planner.start()
        while true {
            for item in step.effects { await effect(item) }
            switch step.action {
            case .lookupMX(let domain):
                let started = ContinuousClock.now
                let fact: MXFact
                do { fact = MXFact.make(answer: try await resolver.mx(domain), domain: domain) } catch { fact = .failed(reason: "\(error)") }
                RelayMetrics.dnsLookup(.mx, seconds: Self.seconds(since: started))
                step = Task.isCancelled ? planner.stopped() : planner.mxResolved(fact)
            case .discoverSTS(let domain):
                let started = ContinuousClock.now
                let fact = await sts?.decision(for: domain) ?? .none
                if sts != nil { RelayMetrics.dnsLookup(.mtaSTS, seconds: Self.seconds(since: started)) }
                step = Task.isCancelled ? planner.stopped() : planner.stsDiscovered(fact)
            case .lookupAddresses(let host):
                let started = ContinuousClock.now
                let results = await resolver.addressLookups(host)
                RelayMetrics.dnsLookup(.address, seconds: Self.seconds(since: started))
                step = Task.isCancelled ? planner.stopped()
                    : planner.addressesResolved(AddressFact(ipv4: AddressLookup(results.ipv4), ipv6: AddressLookup(results.ipv6)))
            case .lookupTLSA(_, let base):
                let started = ContinuousClock.now
                let result: Result<DNSAnswer<TLSARecord>, Error>
                do { result = .success(try await resolver.tlsa(port: settings.port, host: base)) } catch { result = .failure(error) }
                RelayMetrics.dnsLookup(.tlsa, seconds: Self.seconds(since: started))
                step = Task.isCancelled ? planner.stopped() : planner.tlsaResolved(TLSAFact(result))
            case .connect(let planned):
                let result = await attempt(planned)
                // Shutdown cut the session short: only its replies to recipients count.
                step = Task.isCancelled ? planner.stopped(planned, result) : planner.attemptFinished(planned, result)
            case .finish(let outcomes, let deliverable, let lastFailure):
                return (outcomes, deliverable, lastFailure)
            }
        }
    }

    /// Carries out one planned attempt: the SMTP session with exactly the attempt's TLS demand.
    /// - Returns: the planner's view of the result, and the connection's own report (nil when
    ///   no connection was made).
    ///
    /// The session waits for a slot to its address first (`slots`); the content is read once it
    /// has one.
    func run(_ attempt: PlannedAttempt, envelope: QueuedEnvelope?, content: MessageContent, queueID: QueueID?,
             probe: Bool = false) async -> (result: AttemptResult, report: ConnectionReport?) {
        var job = makeJob(envelope: envelope, indexes: attempt.recipients, tls: attempt.demand.requirement)
        job.probeOnly = probe
        job.requireTLS = attempt.requireTLS
        let authentication = TLSPeerAuthentication(attempt.demand.authentication, requirement: attempt.demand.requirement)
        if let slots {
            guard await slots.acquire(attempt.address) else {
                return (AttemptResult(connectFailure: "delivery stopped (shutdown) before the connection"), nil)
            }
        }
        defer { slots?.release(attempt.address) }
        let started = ContinuousClock.now
        defer { if !probe { RelayMetrics.attempt(seconds: Self.seconds(since: started)) } }
        let report: ConnectionReport
        do {
            let bytes = try await content.bytes()
            job.contentHasNUL = bytes.contains(0)
            report = try await connect(address: attempt.address, port: attempt.port, host: attempt.demand.serverName(host: attempt.host), job: job, content: bytes,
                                       authentication: authentication)
        } catch {
            return (AttemptResult(connectFailure: describe(error)), nil)
        }
        let prefix = queueID.map { "\($0): " } ?? ""
        if !probe { Self.count(report) }
        if report.connectionUse > 1 {
            logger.info("\(prefix)reusing the connection to \(attempt.relay) (conn_use=\(report.connectionUse)\(report.tls.map { ", \($0.verified ? "Verified" : "Untrusted") TLS \($0.protocolVersion)" } ?? ", no TLS"))")
        } else if let tls = report.tls {
            var line = "\(prefix)\(tls.verified ? "Verified" : "Untrusted") TLS connection established to \(attempt.relay): \(tls.protocolVersion) with cipher \(tls.cipher)"
            if let match = tls.daneMatch {
                line += "; DANE TLSA \(match.usage) \(match.selector) \(match.matchingType) \(match.dataHex) matched at depth \(match.depth)"
            }
            logger.info("\(line)")
        }
        var recipients: [Int: ClientSession.RecipientResult] = [:]
        for (position, result) in report.result.recipients where position < attempt.recipients.count {
            recipients[attempt.recipients[position]] = result
        }
        var verifyResult: Int?
        if case .authenticationFailed(let code, _)? = report.tlsError { verifyResult = code }
        var result = AttemptResult(recipients: recipients, failure: report.result.failure, verifyResult: verifyResult,
                                   tls: report.tls.map { AttemptResult.TLS(verified: $0.verified, daneMatched: $0.daneMatch != nil) },
                                   offeredSTARTTLS: report.result.offeredSTARTTLS)
        result.reusedConnection = report.connectionUse > 1
        result.localAddress = report.localAddress
        result.greetingName = report.greetingName
        return (result, report)
    }

    func makeJob(envelope: QueuedEnvelope?, indexes: [Int], tls: ClientSession.TLSRequirement) -> ClientSession.Job {
        guard let envelope else {
            return ClientSession.Job(heloName: settings.heloName, sender: nil, recipients: [], size: 0, body: nil,
                                     needsSMTPUTF8: false, ret: nil, envelopeID: nil, tls: tls)
        }
        let transaction = envelope.transaction
        let recipients = indexes.map { transaction.recipients[$0] }
        // RFC 6531 §3.2: only a non-ASCII local part needs SMTPUTF8; an internationalized domain
        // goes in its A-label form.
        let needsUTF8 = transaction.parameters.smtputf8
            && (!(transaction.sender?.isASCIIOnTheWire ?? true) || recipients.contains { !$0.mailbox.isASCIIOnTheWire })
        var job = ClientSession.Job(
            heloName: settings.heloName, sender: transaction.sender, recipients: recipients, size: envelope.size,
            body: transaction.parameters.body, needsSMTPUTF8: needsUTF8, ret: transaction.parameters.ret,
            envelopeID: transaction.parameters.envelopeID, tls: tls)
        job.keepOpen = settings.connectionCacheTime > 0
        return job
    }

    /// The planner's kind of a queued message.
    static func messageKind(_ generated: GeneratedMessage?) -> MessageKind {
        switch generated {
        case .deliveryStatusNotification?: return .deliveryStatusNotification
        case .tlsReport?: return .tlsReport
        case nil: return .relayed
        }
    }

    /// Replaces the settings for deliveries that start from now on (SIGHUP reload).
    public func update(_ change: (inout Settings) -> Void) {
        liveSettings.withLockedValue { change(&$0) }
    }

    /// Sends one message to one MX address: on an idle cached connection opened for the same
    /// address and TLS policy when there is one, else on a new connection. A cached connection
    /// that turns out dead before the content was sent (closed, 421) is dropped and the message
    /// goes on a new connection.
    /// - Throws: the connect error (refused, unreachable, timeout) of a new connection.
    func connect(address: String, port: Int, host: String, job: ClientSession.Job, content: [UInt8],
                 authentication: TLSPeerAuthentication) async throws -> ConnectionReport {
        let key = ConnectionKey(address: address, port: port, serverName: host, tls: job.tls, authentication: authentication)
        if job.keepOpen {
            while let entry = connections.take(key), !Task.isCancelled {
                let channel = entry.channel
                let outcome = try? await withTaskCancellationHandler {
                    try await entry.run(job: job, content: content)
                } onCancel: {
                    channel.close(promise: nil)
                }
                guard let report = outcome else { continue }
                if report.result.recipients.isEmpty, report.result.failure != nil, !report.result.contentSent {
                    logger.debug("cached connection to \(address) failed before the message was sent: \(String(describing: report.result.failure)); opening a new one")
                    continue
                }
                if report.result.reusable { connections.put(key, entry) }
                return report
            }
        }
        let socketAddress = try SocketAddress(ipAddress: address, port: port)
        let eventLoop = group.next()
        let promise = eventLoop.makePromise(of: ConnectionReport.self)
        let handlerPromise = eventLoop.makePromise(of: NIOLoopBound<SMTPClientHandler>.self)
        let tlsContext = self.tlsContext
        let settings = self.settings
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(.milliseconds(Int64(settings.timeouts.connect * 1000)))
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = SMTPClientHandler(
                        job: job, content: content, tlsContext: tlsContext, authentication: authentication,
                        serverName: host, timeouts: settings.timeouts, idleLimit: settings.connectionCacheTime,
                        reuseLimit: settings.connectionReuseTimeLimit, completion: promise)
                    try channel.pipeline.syncOperations.addHandler(handler)
                    handlerPromise.succeed(NIOLoopBound(handler, eventLoop: channel.eventLoop))
                }
            }
        let channel: Channel
        do {
            channel = try await bootstrap.connect(to: socketAddress).get()
        } catch {
            promise.fail(error)
            handlerPromise.fail(error)
            throw error
        }
        let connections = self.connections
        channel.closeFuture.whenComplete { _ in connections.remove(key, channel: channel) }
        // Shutdown: a session waiting on a silent peer ends now, not at its timeout.
        let report = try await withTaskCancellationHandler {
            try await promise.futureResult.get()
        } onCancel: {
            channel.close(promise: nil)
        }
        if report.result.reusable, let handler = try? await handlerPromise.futureResult.get() {
            connections.put(key, ConnectionCache.Entry(channel: channel, handler: handler))
        }
        return report
    }

    /// Closes the idle cached connections with QUIT (at shutdown); returns when they are closed.
    public func closeIdleConnections() async {
        await connections.closeAll()
    }

    /// The connection metrics of one transaction's report: a reuse, or for a new connection
    /// its handshake and whether its EHLO reply lacked STARTTLS.
    static func count(_ report: ConnectionReport) {
        guard report.connectionUse == 1 else {
            RelayMetrics.connectionReused()
            return
        }
        // The EHLO reply was read (a recipient was decided, or TLS was required) and had no STARTTLS.
        let pastEHLO = !report.result.recipients.isEmpty || report.result.failure == .starttlsNotOffered
        if pastEHLO && !report.result.offeredSTARTTLS { RelayMetrics.starttlsNotOffered() }
        if report.tls != nil || report.tlsError != nil {
            RelayMetrics.handshake(success: report.tls != nil, version: report.tls?.protocolVersion, seconds: report.tlsHandshakeSeconds)
        }
    }

    static func seconds(since start: ContinuousClock.Instant) -> Double {
        let elapsed = ContinuousClock.now - start
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }

    func describe(_ error: Error) -> String {
        if let io = error as? IOError { return String(cString: strerror(io.errnoCode)) }
        return "\(error)"
    }
}
