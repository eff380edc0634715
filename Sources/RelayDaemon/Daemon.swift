import CMalloc
import RelayMetrics
import ServiceLifecycle
import DeliveryPolicy
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import RelayConfig
import RelayControl
import RelayDelivery
import RelayDNS
import RelayHTTPS
import RelayPolicy
import RelayPostgres
import RelayTLS
import RelayObservability
import RelayQueue
import RelayServer
import RelayTLSRPT
import TLSRPTCore
import SMTPCore

/// Wires configuration, spool and the inbound listener into the running `tlsrelayd`.
public final class Daemon: Sendable {
    public let configuration: RelayConfiguration
    public let logger: Logger
    /// Where the configuration was read from; SIGHUP reads it again.
    public let configurationPath: String?
    /// The STARTTLS certificate in use (set in `run`; replaced on SIGHUP).
    private let certificateSlot = NIOLockedValueBox<InboundCertificate?>(nil)
    var inboundCertificate: InboundCertificate? { certificateSlot.withLockedValue { $0 } }

    public init(configuration: RelayConfiguration, logger: Logger, configurationPath: String? = nil) {
        self.configuration = configuration
        self.logger = logger
        self.configurationPath = configurationPath
    }

    /// The inbound limits from the `[server]` section.
    public static func limits(from server: RelayConfiguration.Server) -> ServerLimits {
        var limits = ServerLimits()
        limits.maxMessageSize = server.maxMessageSize
        limits.maxCommandLineLength = server.maxCommandLineLength
        limits.maxTextLineLength = server.maxLineLength
        limits.maxRecipients = server.maxRecipients
        limits.idleTimeoutSeconds = server.idleTimeout
        limits.maxConnections = server.maxConnections
        return limits
    }

    /// SIGHUP: reads the configuration file again and applies what can change without a
    /// restart — `log_level` and the whole `[policy]` section (local levels, downgrade memory,
    /// dane_for_insecure_mx). Listeners, spool, resolver and TLS settings need a restart; a
    /// change to them is logged as ignored. An invalid file changes nothing.
    /// - Returns: what happened, also kept for `tlsrelayctl status` (`commands.lastReload`).
    @discardableResult
    func reload(agent: DeliveryAgent, commands: ControlCommands) -> ReloadOutcome {
        ServiceNotifier.notify("RELOADING=1")
        defer { ServiceNotifier.notify("READY=1") }
        let now = Date().timeIntervalSince1970
        func finish(_ outcome: ReloadOutcome) -> ReloadOutcome {
            commands.lastReload.withLockedValue { $0 = outcome }
            return outcome
        }
        guard let path = configurationPath else {
            return finish(ReloadOutcome(time: now, applied: false, message: "started without a configuration file: nothing to re-read"))
        }
        let fresh: RelayConfiguration
        do {
            fresh = try ConfigurationLoader.load(path: path)
        } catch {
            logger.error("reload: configuration not changed: \(error)")
            return finish(ReloadOutcome(time: now, applied: false, message: "configuration not changed: \(error)"))
        }
        // The STARTTLS certificate is read again first (a renewed certificate needs no restart):
        // one that does not load refuses the whole reload, as a bad file does, and the
        // certificate in use stays.
        var certificateNote = ""
        if let certificate = inboundCertificate, fresh.server.offersSTARTTLS {
            do {
                if let context = try Daemon.loadInboundCertificate(fresh.server) {
                    certificate.replace(with: context)
                    certificateNote = "; STARTTLS certificate re-read (\(context.certificateSubject))"
                    if context.certificateExpired { logger.warning("reload: the STARTTLS certificate \(fresh.server.tlsCertificateChainFile) has expired") }
                }
            } catch {
                logger.error("reload: configuration not changed: STARTTLS certificate: \(error)")
                return finish(ReloadOutcome(time: now, applied: false, message: "configuration not changed: STARTTLS certificate: \(error)"))
            }
        }
        if let level = Logger.Level(rawValue: fresh.logLevel) { LogLevelControl.shared.level = level }
        agent.update { settings in
            settings.localLevels = fresh.policy.domains
            settings.downgradeMemory = fresh.policy.downgradeMemory
            settings.downgradeGrace = Double(fresh.policy.downgradeGrace)
            settings.daneForInsecureMX = fresh.policy.daneForInsecureMX
            settings.honorTLSRequiredNo = fresh.policy.honorTLSRequiredNo
        }
        commands.configuration.withLockedValue { $0.policy = fresh.policy; $0.logLevel = fresh.logLevel }
        var unchanged = fresh
        unchanged.policy = configuration.policy
        unchanged.logLevel = configuration.logLevel
        unchanged.server.tlsCertificateChainFile = configuration.server.tlsCertificateChainFile
        unchanged.server.tlsPrivateKeyFile = configuration.server.tlsPrivateKeyFile
        var message = "configuration re-read from \(path): log_level \(fresh.logLevel), \(fresh.policy.domains.count) local level(s), downgrade_memory \(fresh.policy.downgradeMemory.rawValue)\(certificateNote)"
        if unchanged != configuration {
            var sections: [String] = []
            if unchanged.stateDirectory != configuration.stateDirectory { sections.append("state_directory") }
            if unchanged.server != configuration.server { sections.append("[server]") }
            if unchanged.dns != configuration.dns { sections.append("[dns]") }
            if unchanged.delivery != configuration.delivery { sections.append("[delivery]") }
            if unchanged.metrics != configuration.metrics { sections.append("[metrics]") }
            if unchanged.tlsrpt != configuration.tlsrpt { sections.append("[tlsrpt]") }
            let changed = sections.isEmpty ? "other settings" : sections.joined(separator: ", ")
            logger.warning("reload: only log_level, [policy] and the STARTTLS certificate files are applied on reload; the changes to \(changed) need a restart")
            message += "; the changes to \(changed) need a restart"
        }
        for warning in ConfigurationCheck.warnings(fresh, now: now) { logger.warning("reload: \(warning)") }
        logger.notice("reload: \(message)")
        return finish(ReloadOutcome(time: now, applied: true, message: message))
    }

    /// The report service's settings from `[tlsrpt]` (the submitter defaults to `server.hostname`).
    static func reportSettings(_ configuration: RelayConfiguration) -> TLSReportService.Settings {
        let tlsrpt = configuration.tlsrpt
        let submitter = tlsrpt.submitter.isEmpty ? configuration.server.hostname : tlsrpt.submitter
        let from = (try? PathParser.parsePath(Substring("<\(tlsrpt.from)>"), allowUTF8: false)) ?? Mailbox(localPart: "postmaster", domain: submitter)
        return TLSReportService.Settings(
            submitter: TLSReport.Submitter(organizationName: tlsrpt.organizationName, contactInfo: tlsrpt.contactInfo, domain: submitter),
            from: from, sendDelay: tlsrpt.sendDelay, sendWithoutFailures: tlsrpt.sendWithoutFailures, giveUpAfterDays: tlsrpt.giveUpAfterDays,
            httpsAttempts: tlsrpt.httpsAttempts, httpsRetryDelay: Double(tlsrpt.httpsRetryDelay), hostname: configuration.server.hostname)
    }

    /// The certificate chain and key STARTTLS presents (`server.tls_certificate_chain_file`,
    /// `server.tls_private_key_file`); nil when no listener offers STARTTLS.
    /// - Throws: `TLSContextError` naming the file and OpenSSL's reason (unreadable, not PEM, a
    ///   key that does not belong to the certificate): start-up stops.
    public static func loadInboundCertificate(_ server: RelayConfiguration.Server) throws -> TLSServerContext? {
        guard server.offersSTARTTLS else { return nil }
        return try TLSServerContext(certificateChainFile: server.tlsCertificateChainFile, privateKeyFile: server.tlsPrivateKeyFile)
    }

    /// Start-up self-test of DNSSEC validation: `dns.check_secure_name` must validate as secure
    /// and `dns.check_bogus_name` as bogus. Otherwise a configuration alert says so at once,
    /// instead of every delivery silently deferring (validation broken) or silently losing DANE
    /// (validation off). Names not configured are not checked.
    static func dnssecSelfTest(resolver: RelayDNS.Resolver, dns: RelayConfiguration.DNS, alerts: AlertJournal, logger: Logger) async {
        for (name, expected) in [(dns.checkSecureName, DNSSECStatus.secure), (dns.checkBogusName, DNSSECStatus.bogus)] where !name.isEmpty {
            let observed: String
            do {
                let answer = try await resolver.mx(name)
                if answer.status == expected {
                    logger.info("DNSSEC self-test: \(name) is \(expected.rawValue), as expected")
                    continue
                }
                observed = answer.status.rawValue
            } catch {
                observed = "a failed lookup (\(error))"
            }
            alerts.report(SecurityAlert(
                kind: .configuration, queueID: nil, domain: name, mxHost: nil, address: nil, policySource: "dns",
                resultType: "dnssec-invalid",
                reason: "DNSSEC self-test: \(name) should be \(expected.rawValue) but is \(observed); check dns.trust_anchor_file, dns.forwarders, dns.stub_zones and this host's clock"))
        }
    }

    /// Builds (and drops) a resolver from `dns`, so that `--check-config` refuses what would
    /// stop start-up, such as a trust anchor file libunbound cannot use.
    /// - Throws: the resolver's error.
    public static func checkResolver(_ dns: RelayConfiguration.DNS) throws {
        let resolver = try RelayDNS.Resolver(configuration: resolverConfiguration(dns))
        resolver.shutdown()
    }

    /// The RFC 5011 trust anchor file in `<state_directory>/trust-anchor/`, seeded from
    /// `dns.trust_anchor_file` when it does not exist yet (written temp + fsync + rename); from
    /// then on libunbound keeps it up to date across key rollovers.
    /// - Returns: its path.
    /// - Throws: when the seed cannot be read or the copy not written.
    static func seedAutoTrustAnchor(_ configuration: RelayConfiguration, logger: Logger) throws -> String {
        let directory = configuration.stateDirectory + "/trust-anchor"
        let name = (configuration.dns.trustAnchorFile as NSString).lastPathComponent
        let path = directory + "/" + name
        if access(path, F_OK) == 0 { return path }
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw DNSLookupError.resolverError("cannot create \(directory): \(String(cString: strerror(errno)))")
        }
        guard let seed = FileManager.default.contents(atPath: configuration.dns.trustAnchorFile) else {
            throw DNSLookupError.resolverError("cannot read trust anchor file \(configuration.dns.trustAnchorFile) to seed \(path)")
        }
        try StateFile.replace(path, with: seed)
        logger.notice("RFC 5011 trust anchor \(path) seeded from \(configuration.dns.trustAnchorFile); libunbound keeps it up to date from now on")
        return path
    }

    /// The resolver settings from the `[dns]` section.
    public static func resolverConfiguration(_ dns: RelayConfiguration.DNS) -> ResolverConfiguration {
        ResolverConfiguration(
            trustAnchorFile: dns.trustAnchorFile.isEmpty ? nil : dns.trustAnchorFile,
            forwarders: dns.forwarders.map { DNSServerAddress(address: $0.address.description, port: $0.port) },
            stubZones: dns.stubZones.map { zone in
                DNSStubZone(name: zone.name, servers: zone.addresses.map { DNSServerAddress(address: $0.address.description, port: $0.port) })
            },
            timeoutSeconds: Double(dns.timeout))
    }

    /// Recovers the spool, binds the listeners, tells systemd it is ready, and runs until
    /// SIGTERM or SIGINT; then stops accepting, lets open transactions finish (up to 30 s) and
    /// returns.
    /// - Throws: spool errors (state directory not writable) and bind errors (address in use,
    ///   permission denied); the caller exits non-zero.
    public func run() async throws {
        MallocSettings.apply()
        let lock = try StateDirectoryLock(stateDirectory: configuration.stateDirectory)
        defer { withExtendedLifetime(lock) {} }
        let startTime = Date().timeIntervalSince1970
        // Metrics: the Prometheus backend only when an endpoint is configured (else no-ops).
        let metricsRegistry = configuration.metrics.listen.map { _ in MetricsEndpoint.bootstrap() }
        if metricsRegistry != nil {
            RelayMetrics.registerZeroSeries(alertKinds: SecurityAlert.Kind.allCases.map(\.rawValue))
            RelayMetrics.process(version: TLSRelayVersion.string, startTime: startTime)
        }
        let spool = try Spool(stateDirectory: configuration.stateDirectory)
        // Partial files go before the listener starts; the queue itself is scanned after READY.
        let removedPartials = try spool.removePartials()

        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, System.coreCount))
        // Spool commits block in fsync; many in flight at once let the file system merge them into
        // one journal commit (group commit), so the pool is large and mostly sleeping.
        let threadPool = NIOThreadPool(numberOfThreads: 32)
        threadPool.start()
        let resolver: RelayDNS.Resolver
        let tlsContext: TLSClientContext
        do {
            var resolverSettings = Daemon.resolverConfiguration(configuration.dns)
            if configuration.dns.autoTrustAnchor, !configuration.dns.trustAnchorFile.isEmpty {
                resolverSettings.autoTrustAnchorFile = try Daemon.seedAutoTrustAnchor(configuration, logger: logger)
            }
            resolver = try RelayDNS.Resolver(configuration: resolverSettings)
            tlsContext = try TLSClientContext(extraCAFile: configuration.delivery.tlsCAFile.isEmpty ? nil : configuration.delivery.tlsCAFile)
            if let context = try Daemon.loadInboundCertificate(configuration.server) {
                certificateSlot.withLockedValue { $0 = InboundCertificate(context) }
                logger.info("STARTTLS certificate \(configuration.server.tlsCertificateChainFile): \(context.certificateSubject)")
                if context.certificateExpired {
                    logger.warning("the STARTTLS certificate \(configuration.server.tlsCertificateChainFile) has expired: clients that verify it will refuse the session")
                }
            }
        } catch {
            try? await threadPool.shutdownGracefully()
            try? await group.shutdownGracefully()
            throw error
        }
        var timeouts = ClientTimeouts()
        timeouts.connect = Double(configuration.delivery.connectTimeout)
        timeouts.command = Double(configuration.delivery.commandTimeout)
        timeouts.tlsHandshake = Double(configuration.delivery.tlsHandshakeTimeout)
        let alerts = AlertJournal(logger: logger)
        let policyState: PolicyStateStores
        do {
            let display = configuration.state.backend == .postgresql
                ? "postgresql://\(configuration.state.user)@\(configuration.state.host):\(configuration.state.port)/\(configuration.state.dbname)" : ""
            policyState = try await PolicyStateStores.open(configuration, logger: logger,
                                                           onAvailability: PolicyStateStores.availabilityReporter(alerts: alerts, logger: logger, display: display))
        } catch {
            resolver.shutdown()
            try? await threadPool.shutdownGracefully()
            try? await group.shutdownGracefully()
            throw error
        }
        let memoryStore = policyState.memory
        let stsCache = policyState.sts
        // One HTTPS client, over the system OpenSSL and the delivery's TLS context: the MTA-STS
        // policy fetch and the TLS-RPT report POST.
        let https = HTTPSClient(group: group, tlsContext: tlsContext, userAgent: "tlsrelay/\(TLSRelayVersion.string)")
        let sts = STSPolicyService(resolver: resolver, cache: stsCache, fetcher: STSPolicyFetcher(client: https), logger: logger)
        // Messages reach delivery through one stream, not a task each.
        let queuedIDs = AsyncStream<QueueID>.makeStream()
        // TLS reporting (RFC 8460): durable session results and the daily reports.
        var openedResults: (any TLSRPTStateStore)?
        if configuration.tlsrpt.enabled {
            if let client = policyState.client {
                // Shared counts: one report per domain and day for the whole fleet.
                openedResults = PostgresTLSRPTState(client: client, logger: logger)
            } else {
                openedResults = try FileTLSRPTState(
                    results: try SessionResultStore(stateDirectory: configuration.stateDirectory, maxBytes: configuration.tlsrpt.maxDiskMB * 1_048_576, logger: logger),
                    stateDirectory: configuration.stateDirectory, logger: logger)
            }
        }
        let resultStore = openedResults
        var reports: TLSReportService?
        if let resultStore {
            reports = TLSReportService(state: resultStore, settings: Daemon.reportSettings(self.configuration), resolver: resolver, https: https, spool: spool,
                                       logger: self.logger, onQueued: { queuedIDs.continuation.yield($0) })
        }
        let reportService = reports
        let agent = DeliveryAgent(
            resolver: resolver, group: group, tlsContext: tlsContext,
            settings: .init(heloName: configuration.server.hostname, port: configuration.delivery.port, timeouts: timeouts,
                            daneForInsecureMX: configuration.policy.daneForInsecureMX, localLevels: configuration.policy.domains,
                            downgradeMemory: configuration.policy.downgradeMemory, downgradeGrace: Double(configuration.policy.downgradeGrace),
                            connectionCacheTime: Double(configuration.delivery.connectionCacheTimeLimit),
                            connectionReuseTimeLimit: Double(configuration.delivery.connectionReuseTimeLimit),
                            dsnRelay: configuration.delivery.dsnRelay.map { (address: $0.address.description, port: $0.port) }),
            logger: logger,
            sts: sts, memory: memoryStore,
            slots: ConnectionSlots(total: configuration.delivery.concurrency, perAddress: configuration.delivery.addressConcurrency),
            onAlert: { alert, queueID in
                RelayMetrics.policyFailure(alert)
                let kind: SecurityAlert.Kind
                if alert.policySource == .memory {
                    kind = alert.enforced ? .downgradeRefused : .downgradeReported
                } else {
                    kind = !alert.enforced ? .testingPolicyFailure : (alert.resultType == .dnssecInvalid ? .dnssecFailure : .policyFailure)
                }
                alerts.report(SecurityAlert(kind: kind, queueID: queueID.rawValue, domain: alert.domain, mxHost: alert.mxHost,
                                            address: alert.address, policySource: alert.policySource.rawValue, resultType: alert.resultType.rawValue,
                                            reason: alert.reason))
            },
            onSessionResult: { result, time in resultStore?.record(result, at: time) })
        let honorTLSRequiredNo = self.configuration.policy.honorTLSRequiredNo
        let skipReused = self.configuration.tlsrpt.skipReusedHandshakes
        agent.update { $0.honorTLSRequiredNo = honorTLSRequiredNo; $0.tlsrptSkipReusedHandshakes = skipReused }
        var schedulerSettings = Scheduler.Settings(hostname: configuration.server.hostname)
        schedulerSettings.queue.destinationConcurrency = configuration.delivery.destinationConcurrency
        schedulerSettings.queue.initialDestinationConcurrency = configuration.delivery.initialDestinationConcurrency
        schedulerSettings.holdAll = configuration.delivery.hold
        schedulerSettings.delayWarning = Double(configuration.delivery.delayWarningTime)
        schedulerSettings.onReportBounced = { domain in
            Task { await reportService?.noteFailed(domain, dayStart: TLSReport.dayStart(Date().timeIntervalSince1970)) }
        }
        if configuration.delivery.hold { logger.warning("delivery.hold is set: mail is accepted and queued, nothing is delivered") }
        schedulerSettings.retry = RetrySchedule(
            minimumBackoff: Double(configuration.delivery.minBackoff), maximumBackoff: Double(configuration.delivery.maxBackoff),
            queueLifetime: Double(configuration.delivery.queueLifetime))
        let scheduler = Scheduler(spool: spool, agent: agent, settings: schedulerSettings, threadPool: threadPool, logger: logger)
        var settings = InboundSettings(
            hostname: configuration.server.hostname,
            limits: Daemon.limits(from: configuration.server),
            allowedClients: configuration.server.allowedClients,
            spool: spool, threadPool: threadPool, logger: logger,
            onMessageQueued: { envelope in queuedIDs.continuation.yield(envelope.queueID) })
        settings.clientName = { await resolver.verifiedName(of: $0) }
        settings.tlsCertificate = inboundCertificate
        let server = InboundServer(settings: settings, group: group)
        let commands = ControlCommands(configuration: NIOLockedValueBox(configuration), spool: spool, scheduler: scheduler, stsCache: stsCache,
                                       memory: memoryStore, alerts: alerts, startTime: Date().timeIntervalSince1970, reports: reportService)
        commands.reloader.withLockedValue { $0 = { [self] in self.reload(agent: agent, commands: commands) } }
        let control = ControlServer(path: configuration.stateDirectory + "/control.sock", group: group,
                                    dispatch: { await commands.handle($0) })
        let metricsEndpoint = metricsRegistry.map { registry in
            MetricsEndpoint(registry: registry, refresh: {
                let counts = await scheduler.counts()
                RelayMetrics.queue(active: counts.active, deferred: counts.deferred, held: counts.held,
                                   oldestAgeSeconds: await scheduler.oldestMessageAge())
                // The files are read on the thread pool; a database through its client's own pool.
                var state: (Int, [AchievedSecurity: Int])?
                if let files = memoryStore as? DowngradeMemoryStore, let cache = stsCache as? STSPolicyCache {
                    state = try? await threadPool.runIfActive { () -> (Int, [AchievedSecurity: Int]) in
                        var levels: [AchievedSecurity: Int] = [:]
                        for entry in files.all() { levels[entry.strongest, default: 0] += 1 }
                        return (cache.all().count, levels)
                    }
                } else if let remembered = try? await memoryStore.all(), let policies = try? await stsCache.all() {
                    var levels: [AchievedSecurity: Int] = [:]
                    for entry in remembered { levels[entry.strongest, default: 0] += 1 }
                    state = (policies.count, levels)
                }
                if let state { RelayMetrics.policyState(stsCacheEntries: state.0, memoryByLevel: state.1) }
            })
        }
        let configuration = self.configuration
        let logger = self.logger
        let reloadSignal = SignalWaiter(signals: [SIGHUP])
        let deliveryTask = NIOLockedValueBox<Task<Void, Never>?>(nil)

        // The parts of the daemon, started in this order and shut down in the reverse one:
        // stop reloading, finish the queue scan, stop accepting (open transactions end), stop the
        // metrics and control sockets, let deliveries in flight end (then cancel them), write the
        // alerts' repeat counts, tell systemd.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: DaemonService("notifier", body: {
                // STATUS= with queue counts for systemctl status; WATCHDOG=1 when WatchdogSec= is set.
                let watchdog = ProcessInfo.processInfo.environment["WATCHDOG_USEC"].flatMap { Double($0) }
                let interval = min(10.0, (watchdog ?? 20_000_000) / 2_000_000)
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(Int(interval * 1000)))
                    guard !Task.isCancelled else { break }
                    let counts = await scheduler.counts()
                    var state = "STATUS=accepting mail; queue: \(counts.active) active, \(counts.deferred) deferred, \(counts.held) held"
                    if watchdog != nil { state += "\nWATCHDOG=1" }
                    ServiceNotifier.notify(state)
                }
            })),
            .init(service: DaemonService("alerts", body: {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(30))
                    alerts.flush()
                }
            }, stop: {
                // Repeat counts held in the rate-limit windows are written now, never dropped.
                alerts.flush(all: true)
            })),
            .init(service: DaemonService("delivery", start: {
                deliveryTask.withLockedValue { $0 = Task { await scheduler.run(intake: queuedIDs.stream) } }
            }, stop: {
                // Attempts in flight get up to 10 s to end; then they are cancelled, which is not
                // a failed attempt (no retry counted, due at once after the restart).
                let drained = await scheduler.drain(seconds: 10)
                if !drained { logger.notice("stopping: deliveries still running after 10 s are cancelled; they are retried at once after the restart") }
                let task = deliveryTask.withLockedValue { $0 }
                task?.cancel()
                await task?.value
                await scheduler.saveInterruptedRounds()
                await agent.closeIdleConnections()
            })),
            .init(service: DaemonService("self-test", body: {
                await Daemon.dnssecSelfTest(resolver: resolver, dns: configuration.dns, alerts: alerts, logger: logger)
            }), successTerminationBehavior: .ignore),
            .init(service: DaemonService("control", stop: { await control.stop() })),
            .init(service: DaemonService("metrics", stop: { await metricsEndpoint?.stop() })),
            .init(service: DaemonService("inbound", stop: {
                logger.info("stopping: no new connections; open transactions finish (up to 25 s)")
                ServiceNotifier.notify("STOPPING=1")
                await server.shutdown(timeoutSeconds: 25)
            })),
            // Recovery without waiting: the listener is up; the queue is validated and loaded now,
            // while new mail is accepted and delivered.
            .init(service: DaemonService("recovery", body: {
                let started = Date().timeIntervalSince1970
                do {
                    // The scan's report lives only in this call, so that it is freed before the trim.
                    let (queued, corrupt) = try await { () async throws -> (Int, Int) in
                        let report = try await threadPool.runIfActive { try spool.scanQueue() }
                        for (name, reason) in report.corrupt {
                            logger.error("corrupt queue file \(name) moved to \(spool.root)/corrupt: \(reason)")
                        }
                        await scheduler.load(report.queued)
                        return (report.queued.count, report.corrupt.count)
                    }()
                    // The scan's and the load's transient allocations (file names, the list of
                    // queue ids, decoded records, on many threads' malloc arenas) are freed by
                    // now: give their pages back, so a large queue costs its index, not the
                    // high-water mark of reading it.
                    _ = malloc_trim(0)
                    logger.info("spool recovered: \(queued) queued message(s), \(removedPartials) partial file(s) removed, \(corrupt) corrupt file(s) moved aside (\(String(format: "%.1f", Date().timeIntervalSince1970 - started)) s, in the background)")
                } catch {
                    if !Task.isCancelled { logger.critical("cannot recover the spool: \(error); queued messages are not delivered until a restart") }
                }
            }), successTerminationBehavior: .ignore),
            .init(service: DaemonService("reload", body: {
                while !Task.isCancelled {
                    guard await reloadSignal.next() == SIGHUP, !Task.isCancelled else { break }
                    _ = self.reload(agent: agent, commands: commands)
                }
            })),
        ]
        // The sockets are bound before the group runs, in this order, so that a client that sees
        // the greeting finds the control socket too; a bind error stops start-up.
        do {
            try await control.start()
            if let metricsEndpoint, let listen = configuration.metrics.listen {
                try await metricsEndpoint.start(listen: listen, group: group)
                logger.info("metrics at http://\(listen)/metrics")
            }
            let listeners = configuration.server.listenerPolicies.map { InboundListener(address: $0.address, starttls: $0.starttls) }
            let bound = try await server.start(listeners: listeners)
            let described = zip(bound, listeners).map { address, listener in
                let ip = address.ipAddress ?? "?"
                return "\(ip.contains(":") ? "[\(ip)]" : ip):\(address.port ?? 0)\(listener.starttls == .off ? "" : " (STARTTLS \(listener.starttls.rawValue))")"
            }
            logger.info("listening on \(described.joined(separator: ", ")) as \(configuration.server.hostname)")
        } catch {
            await server.shutdown(timeoutSeconds: 0)
            await metricsEndpoint?.stop()
            await control.stop()
            resolver.shutdown()
            try? await threadPool.shutdownGracefully()
            try? await group.shutdownGracefully()
            throw error
        }
        ServiceNotifier.notify("READY=1\nSTATUS=accepting mail; recovering the queue")
        if let reports = reportService {
            // Results are made durable every second (kill -9 loses none: each is written at
            // once); the day's reports go out after 00:00 UTC plus a random delay.
            services.insert(.init(service: DaemonService("tlsrpt", body: {
                await withTaskGroup(of: Void.self) { group in
                    group.addTask { await reports.runDaily() }
                    group.addTask {
                        while !Task.isCancelled {
                            try? await Task.sleep(for: .seconds(1))
                            await reports.state.sync()
                        }
                    }
                }
            }, stop: { await reports.state.sync() }), successTerminationBehavior: .ignore), at: 2)
            logger.info("TLS reporting (RFC 8460) on: reports for \(TLSReport.dayName(TLSReport.dayStart(Date().timeIntervalSince1970))) go out after 00:00 UTC plus up to \(configuration.tlsrpt.sendDelay) s")
        }
        var groupConfiguration = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        groupConfiguration.logging.keys = .init()
        let serviceGroup = ServiceGroup(configuration: groupConfiguration)
        var failure: Error?
        do {
            try await serviceGroup.run()
        } catch {
            failure = error
        }
        // The one place that tears down what every part shared.
        await policyState.client?.shutdown()
        resolver.shutdown()
        try? await threadPool.shutdownGracefully()
        try? await group.shutdownGracefully()
        if let failure { throw failure }
        logger.info("stopped")
    }
}
