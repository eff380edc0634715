import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import RelayConfig
import RelayDNS
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

        /// The local level entry for `domain` (expired or not).
        func localLevel(for domain: String) -> PolicySettings.DomainLevel? {
            localLevels.first { $0.domain == domain }
        }
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
                    downgradeGrace: Double = 86400, connectionCacheTime: Double = 2, connectionReuseTimeLimit: Double = 300) {
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
    let onAlert: @Sendable (PolicyAlert, QueueID, _ enforced: Bool) -> Void
    let sts: STSPolicyService?
    let memory: DowngradeMemoryStore?
    let connections = ConnectionCache()

    /// - Parameter onAlert: called for every policy failure (RFC 8460 result type inside), with
    ///   the queue id and whether the policy was enforced (mail deferred) or not.
    /// - Parameter sts: the MTA-STS service; nil disables MTA-STS.
    public init(resolver: RelayDNS.Resolver, group: EventLoopGroup, tlsContext: TLSClientContext, settings: Settings, logger: Logger,
                sts: STSPolicyService? = nil, memory: DowngradeMemoryStore? = nil,
                onAlert: @escaping @Sendable (PolicyAlert, QueueID, Bool) -> Void = { _, _, _ in }) {
        self.sts = sts
        self.memory = memory
        self.resolver = resolver
        self.group = group
        self.tlsContext = tlsContext
        self.liveSettings = NIOLockedValueBox(settings)
        self.logger = logger
        self.onAlert = onAlert
    }

    /// Attempts delivery.
    /// - Parameters:
    ///   - envelope: the queued envelope.
    ///   - content: the message content (with our Received header).
    ///   - domain: the destination domain of `recipientIndexes`, lowercased.
    ///   - recipientIndexes: indexes into the envelope's recipients, all in `domain`.
    /// - Returns: an outcome for every index in `recipientIndexes`.
    public func deliver(envelope: QueuedEnvelope, content: [UInt8], domain: String, recipientIndexes: [Int]) async -> [Int: RecipientOutcome] {
        var outcomes: [Int: RecipientOutcome] = [:]
        func all(_ outcome: RecipientOutcome) -> [Int: RecipientOutcome] {
            Dictionary(uniqueKeysWithValues: recipientIndexes.map { ($0, outcome) })
        }
        guard domain.utf8.allSatisfy({ $0 < 0x80 }) else {
            return all(.deferred("4.4.3", "internationalized domain \(domain) needs IDNA conversion, which this version does not do"))
        }
        let plan: MXPlan
        do {
            plan = MXPlan.make(answer: try await resolver.mx(domain), domain: domain)
        } catch {
            // RFC 5321 §5.1: a temporary lookup failure is never "no MX".
            return all(.deferred("4.4.3", "MX lookup for \(domain) failed temporarily: \(error)"))
        }
        let hosts: [String]
        let mxSecure: Bool
        switch plan {
        case .outcome(let outcome):
            if outcome.status == "4.7.5" {
                onAlert(PolicyAlert(resultType: "dnssec-invalid", domain: domain, mxHost: nil, address: nil, policySource: "dane", reason: outcome.reason),
                        envelope.queueID, true)
            }
            return all(outcome)
        case .hosts(let list, let secure, _):
            hosts = list
            mxSecure = secure
        }
        // A local level wins over everything discovered, and says so on every delivery.
        var localLevel: PolicySettings.DomainLevel.Level?
        if let entry = settings.localLevel(for: domain) {
            if entry.isExpired(at: Date().timeIntervalSince1970) {
                logger.warning("\(envelope.queueID): local policy level \(entry.level.rawValue) for \(domain) expired on \(entry.expiresText ?? "?") and no longer applies\(entry.reason.map { " (it was: \($0))" } ?? "")")
            } else {
                localLevel = entry.level
                logger.notice("\(envelope.queueID): local policy level \(entry.level.rawValue) for \(domain) overrides discovered policy\(entry.reason.map { ": \($0)" } ?? "")\(entry.expiresText.map { " (until \($0))" } ?? "")")
            }
        }
        // MTA-STS (RFC 8461): discovered per policy domain, applied per MX host below.
        var stsPolicy: STSPolicy?
        if let sts, localLevel == nil {
            let decision = await sts.decision(for: domain)
            if let failure = decision.temporaryFailure {
                return all(.deferred("4.4.3", "MTA-STS discovery for \(domain) failed temporarily: \(failure)"))
            }
            if let problem = decision.problem {
                onAlert(PolicyAlert(resultType: problem.resultType, domain: domain, mxHost: nil, address: nil, policySource: "mta-sts",
                                    reason: problem.reason), envelope.queueID, false)
            }
            stsPolicy = decision.policy
            if let policy = stsPolicy {
                logger.info("\(envelope.queueID): MTA-STS policy of \(domain)\(decision.fromCache ? " (cached)" : ""): mode \(policy.mode.rawValue), mx \(policy.mx.joined(separator: " "))")
            }
        }
        // Downgrade memory: the strongest security this domain had before.
        let now = Date().timeIntervalSince1970
        var remembered: AchievedSecurity?
        var floor: AchievedSecurity?
        var graceOver = false
        if localLevel == nil, settings.downgradeMemory != .off, let memory, let entry = memory.memory(of: domain), entry.strongest > .none {
            remembered = entry.strongest
            if settings.downgradeMemory == .enforce {
                if let first = entry.downgradeFirstSeen, now - first >= settings.downgradeGrace {
                    graceOver = true
                } else {
                    floor = entry.strongest
                }
            }
        }
        var remaining = recipientIndexes
        var lastFailure = RecipientOutcome.deferred("4.4.1", "no MX host of \(domain) could be reached")
        hostLoop: for host in hosts {
            let (hostPlan, stsTesting) = await effectivePlan(domain: domain, host: host, mxSecure: mxSecure, localLevel: localLevel,
                                                             stsPolicy: stsPolicy, queueID: envelope.queueID)
            let addresses: [String]
            var policy: HostTLSPolicy
            switch hostPlan {
            case .skip(let outcome, let alert):
                lastFailure = outcome
                logger.info("\(envelope.queueID): MX host \(host) skipped: \(outcome.reason)")
                if let alert { onAlert(alert, envelope.queueID, true) }
                continue
            case .connect(let list, let hostPolicy):
                addresses = list
                policy = hostPolicy
            }
            if let floor {
                // The security this host is sure to give: opportunistic TLS may end in clear.
                let potential: AchievedSecurity = policy.source == .dane && !policy.tlsaRecords.isEmpty ? .dane
                    : (policy.source == .mtaSTS ? .mtaSTS : (policy.requirement == .required ? .tls : .none))
                if potential < floor {
                    if floor == .tls {
                        // TLS was seen before: require it now (a stripped STARTTLS is refused).
                        policy = HostTLSPolicy(source: .memory, requirement: .required, authentication: .encryptOnly)
                    } else {
                        let first = memory?.noteRefusedDowngrade(domain: domain, now: now) ?? now
                        let reason = "\(domain) was delivered with \(floor.rawValue) before; MX host \(host) now offers at best \(potential.rawValue) (downgrade refused until \(Int(settings.downgradeGrace - (now - first))) s from now)"
                        lastFailure = .deferred("4.7.5", reason)
                        onAlert(PolicyAlert(resultType: "validation-failure", domain: domain, mxHost: host, address: nil, policySource: "tofu", reason: reason),
                                envelope.queueID, true)
                        continue
                    }
                }
            }
            if policy.source == .dane {
                logger.info("\(envelope.queueID): DANE policy for \(host): TLSA base \(policy.tlsaBaseDomain ?? host), \(policy.tlsaRecords.isEmpty ? "no usable TLSA records: encryption required, no authentication" : policy.tlsaRecords.map(\.description).joined(separator: "; "))")
            }
            for address in addresses {
                var requirement = policy.requirement
                var authentication = policy.authentication
                while true {
                    let relay = "\(host)[\(address)]:\(settings.port)"
                    let job = makeJob(envelope: envelope, indexes: remaining, tls: requirement)
                    let report: ConnectionReport
                    do {
                        report = try await connect(address: address, host: policy.tlsaBaseDomain ?? host, job: job, content: content,
                                                   authentication: authentication)
                    } catch {
                        lastFailure = .deferred("4.4.1", "connect to \(relay): \(describe(error))", remoteMTA: relay)
                        logger.info("\(envelope.queueID): connect to \(relay): \(describe(error))")
                        break
                    }
                    if report.connectionUse > 1 {
                        logger.info("\(envelope.queueID): reusing the connection to \(relay) (conn_use=\(report.connectionUse)\(report.tls.map { ", \($0.verified ? "Verified" : "Untrusted") TLS \($0.protocolVersion)" } ?? ", no TLS"))")
                    } else if let tls = report.tls {
                        var line = "\(envelope.queueID): \(tls.verified ? "Verified" : "Untrusted") TLS connection established to \(relay): \(tls.protocolVersion) with cipher \(tls.cipher)"
                        if let match = tls.daneMatch {
                            line += "; DANE TLSA \(match.usage) \(match.selector) \(match.matchingType) \(match.dataHex) matched at depth \(match.depth)"
                        }
                        logger.info("\(line)")
                    }
                    var decided: [Int] = []
                    for (position, result) in report.result.recipients {
                        let index = remaining[position]
                        outcomes[index] = outcome(for: result, relay: relay)
                        decided.append(index)
                    }
                    remaining.removeAll { decided.contains($0) }
                    if report.result.recipients.values.contains(where: { if case .delivered = $0 { return true } else { return false } }) {
                        rememberDelivery(domain: domain, host: host, address: address, report: report, policy: policy,
                                         remembered: remembered, graceOver: graceOver, localLevel: localLevel, queueID: envelope.queueID, now: now)
                    }
                    if remaining.isEmpty { break hostLoop }
                    guard let failure = report.result.failure else { break }
                    lastFailure = outcome(for: failure, relay: relay)
                    logger.info("\(envelope.queueID): \(relay): \(lastFailure.reason)")
                    if requirement == .required, stsTesting, let resultType = HostPolicyRules.resultType(for: failure, tlsError: report.tlsError) {
                        // MTA-STS testing mode: report, then deliver as without a policy (RFC 8461 §5).
                        onAlert(PolicyAlert(resultType: policy.source == .mtaSTS ? stsResultType(resultType) : resultType, domain: domain,
                                            mxHost: host, address: address, policySource: "mta-sts", reason: lastFailure.reason),
                                envelope.queueID, false)
                        requirement = .opportunistic
                        authentication = .opportunistic
                        continue
                    }
                    if requirement == .required, let resultType = HostPolicyRules.resultType(for: failure, tlsError: report.tlsError) {
                        // A policy failure: never retried in clear, never a bounce (RFC 7672 §2.2, RFC 8461 §5).
                        lastFailure = .deferred("4.7.5", lastFailure.reason, remoteMTA: relay)
                        onAlert(PolicyAlert(resultType: policy.source == .mtaSTS ? stsResultType(resultType) : resultType, domain: domain,
                                            mxHost: host, address: address, policySource: policy.source.rawValue, reason: lastFailure.reason),
                                envelope.queueID, true)
                        break
                    }
                    // RFC 7435: opportunistic TLS that fails is retried once in clear (as Postfix's "may").
                    if requirement == .opportunistic, case .tlsFailed = failure {
                        requirement = .none
                        authentication = .opportunistic
                        continue
                    }
                    break
                }
            }
        }
        for index in remaining { outcomes[index] = lastFailure }
        return outcomes
    }

    func makeJob(envelope: QueuedEnvelope?, indexes: [Int], tls: ClientSession.TLSRequirement) -> ClientSession.Job {
        guard let envelope else {
            return ClientSession.Job(heloName: settings.heloName, sender: nil, recipients: [], size: 0, body: nil,
                                     needsSMTPUTF8: false, ret: nil, envelopeID: nil, tls: tls)
        }
        let transaction = envelope.transaction
        let recipients = indexes.map { transaction.recipients[$0] }
        let needsUTF8 = transaction.parameters.smtputf8
            && (!(transaction.sender?.isASCII ?? true) || recipients.contains { !$0.mailbox.isASCII })
        var job = ClientSession.Job(
            heloName: settings.heloName, sender: transaction.sender, recipients: recipients, size: envelope.size,
            body: transaction.parameters.body, needsSMTPUTF8: needsUTF8, ret: transaction.parameters.ret,
            envelopeID: transaction.parameters.envelopeID, tls: tls)
        job.keepOpen = settings.connectionCacheTime > 0
        return job
    }

    /// Updates the downgrade memory after a delivery and reports one that was weaker than remembered.
    func rememberDelivery(domain: String, host: String, address: String, report: ConnectionReport, policy: HostTLSPolicy,
                          remembered: AchievedSecurity?, graceOver: Bool, localLevel: PolicySettings.DomainLevel.Level?,
                          queueID: QueueID, now: Double) {
        guard let memory, settings.downgradeMemory != .off, localLevel == nil else { return }
        let achieved: AchievedSecurity
        if report.tls?.daneMatch != nil {
            achieved = .dane
        } else if report.tls?.verified == true && policy.source == .mtaSTS {
            achieved = .mtaSTS
        } else {
            achieved = report.tls != nil ? .tls : .none
        }
        if let remembered, achieved < remembered {
            let reason = "\(domain) was delivered with \(remembered.rawValue) before, now with \(achieved.rawValue) via \(host)"
            onAlert(PolicyAlert(resultType: "validation-failure", domain: domain, mxHost: host, address: address, policySource: "tofu", reason: reason),
                    queueID, false)
        }
        memory.record(domain: domain, security: achieved, now: now, acceptDowngrade: graceOver)
    }

    /// RFC 8460 names certificate failures under MTA-STS `sts-webpki-invalid`.
    func stsResultType(_ resultType: String) -> String {
        switch resultType {
        case "certificate-host-mismatch", "certificate-expired", "certificate-not-trusted", "tlsa-invalid": return "sts-webpki-invalid"
        default: return resultType
        }
    }

    /// The plan for one MX host with every policy applied, in order of precedence: a local level,
    /// then DANE (RFC 7672), then MTA-STS (RFC 8461 §2: a host governed by DANE is never judged
    /// by MTA-STS; §4.1: under enforce, hosts outside the policy's mx patterns are skipped).
    /// - Returns: the plan, and whether MTA-STS applies in testing mode.
    func effectivePlan(domain: String, host: String, mxSecure: Bool, localLevel: PolicySettings.DomainLevel.Level?,
                       stsPolicy: STSPolicy?, queueID: QueueID?) async -> (HostPlan, stsTesting: Bool) {
        if let policy = stsPolicy, !policy.matches(mxHost: host) {
            let reason = "MX host \(host) is not listed in the MTA-STS policy of \(domain) (mx: \(policy.mx.joined(separator: " ")))"
            let alert = PolicyAlert(resultType: "validation-failure", domain: domain, mxHost: host, address: nil, policySource: "mta-sts", reason: reason)
            if policy.mode == .enforce {
                return (.skip(outcome: .deferred("4.7.5", reason), alert: alert), false)
            }
            if let queueID { onAlert(alert, queueID, false) }
        }
        var hostPlan: HostPlan
        if let localLevel {
            hostPlan = await planHost(domain: domain, host: host, mxSecure: mxSecure, level: localLevel)
        } else {
            hostPlan = await planHost(domain: domain, host: host, mxSecure: mxSecure)
        }
        var stsTesting = false
        if case .connect(let list, let hostPolicy) = hostPlan, hostPolicy.source != .dane, let policy = stsPolicy,
           policy.matches(mxHost: host) {
            hostPlan = .connect(addresses: list, policy: .mtaSTS(host: host))
            stsTesting = policy.mode == .testing
        }
        return (hostPlan, stsTesting)
    }

    /// The plan for one MX host under a local level (Postfix's `smtp_tls_policy_maps` levels).
    func planHost(domain: String, host: String, mxSecure: Bool, level: PolicySettings.DomainLevel.Level) async -> HostPlan {
        switch level {
        case .dane, .daneOnly:
            let plan = await planHost(domain: domain, host: host, mxSecure: mxSecure)
            guard case .connect(let addresses, var policy) = plan else { return plan }
            if policy.source == .dane {
                return .connect(addresses: addresses, policy: policy)
            }
            if level == .daneOnly {
                return .skip(outcome: .deferred("4.7.5", "local level dane-only for \(domain), but MX host \(host) has no DNSSEC-validated TLSA records"),
                             alert: PolicyAlert(resultType: "dane-required", domain: domain, mxHost: host, address: nil, policySource: "local",
                                                reason: "dane-only, but \(host) has no DNSSEC-validated TLSA records"))
            }
            policy.source = .local
            return .connect(addresses: addresses, policy: policy)
        case .none, .may, .encrypt, .verify:
            let answers: (ipv4: DNSAnswer<String>, ipv6: DNSAnswer<String>)
            do {
                answers = try await resolver.addresses(host)
            } catch {
                return .skip(outcome: .deferred("4.4.3", "address lookup for \(host) failed: \(error)"), alert: nil)
            }
            let addresses = (answers.ipv4.status == .bogus ? [] : answers.ipv4.records) + (answers.ipv6.status == .bogus ? [] : answers.ipv6.records)
            if addresses.isEmpty {
                return .skip(outcome: .deferred("4.4.4", "MX host \(host) has no usable address records"), alert: nil)
            }
            let policy: HostTLSPolicy
            switch level {
            case .none: policy = HostTLSPolicy(source: .local, requirement: .none, authentication: .opportunistic)
            case .may: policy = HostTLSPolicy(source: .local, requirement: .opportunistic, authentication: .opportunistic)
            case .encrypt: policy = HostTLSPolicy(source: .local, requirement: .required, authentication: .encryptOnly)
            default: policy = HostTLSPolicy(source: .local, requirement: .required, authentication: .webPKI(hostName: host))
            }
            return .connect(addresses: addresses, policy: policy)
        }
    }

    /// Replaces the settings for deliveries that start from now on (SIGHUP reload).
    public func update(_ change: (inout Settings) -> Void) {
        liveSettings.withLockedValue { change(&$0) }
    }

    /// Address and TLSA lookups for one MX host and the resulting plan (RFC 7672 §2.2).
    func planHost(domain: String, host: String, mxSecure: Bool) async -> HostPlan {
        let answers: (ipv4: DNSAnswer<String>, ipv6: DNSAnswer<String>)
        do {
            answers = try await resolver.addresses(host)
        } catch {
            return .skip(outcome: .deferred("4.4.3", "address lookup for \(host) failed: \(error)"), alert: nil)
        }
        let resolver = self.resolver
        let port = settings.port
        return await HostPolicyRules.plan(
            domain: domain, host: host, mxSecure: mxSecure, daneForInsecureMX: settings.daneForInsecureMX, addresses: answers,
            tlsa: {
                // RFC 7672 §2.2.3: the CNAME-expanded name first, then the original name.
                let canonical = answers.ipv4.records.isEmpty ? answers.ipv6.canonicalName : answers.ipv4.canonicalName
                var bases = [String]()
                if !canonical.isEmpty && canonical != host { bases.append(canonical) }
                bases.append(host)
                var results: [(base: String, result: Result<DNSAnswer<TLSARecord>, Error>)] = []
                for base in bases {
                    do {
                        let answer = try await resolver.tlsa(port: port, host: base)
                        results.append((base, .success(answer)))
                        if answer.status == .secure && !answer.records.isEmpty { break }
                    } catch {
                        results.append((base, .failure(error)))
                        break
                    }
                }
                return results
            })
    }

    /// Sends one message to one MX address: on an idle cached connection opened for the same
    /// address and TLS policy when there is one, else on a new connection. A cached connection
    /// that turns out dead before the content was sent (closed, 421) is dropped and the message
    /// goes on a new connection.
    /// - Throws: the connect error (refused, unreachable, timeout) of a new connection.
    func connect(address: String, host: String, job: ClientSession.Job, content: [UInt8],
                 authentication: TLSPeerAuthentication) async throws -> ConnectionReport {
        let key = ConnectionKey(address: address, port: settings.port, serverName: host, tls: job.tls, authentication: authentication)
        if job.keepOpen {
            while let entry = connections.take(key) {
                guard let report = try? await entry.run(job: job, content: content) else { continue }
                if report.result.recipients.isEmpty, report.result.failure != nil, !report.result.contentSent {
                    logger.debug("cached connection to \(address) failed before the message was sent: \(String(describing: report.result.failure)); opening a new one")
                    continue
                }
                if report.result.reusable { connections.put(key, entry) }
                return report
            }
        }
        let socketAddress = try SocketAddress(ipAddress: address, port: settings.port)
        let eventLoop = group.next()
        let promise = eventLoop.makePromise(of: ConnectionReport.self)
        let handlerPromise = eventLoop.makePromise(of: NIOLoopBound<SMTPClientHandler>.self)
        let tlsContext = self.tlsContext
        let settings = self.settings
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(.milliseconds(Int64(settings.timeouts.connect * 1000)))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
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
        let report = try await promise.futureResult.get()
        if report.result.reusable, let handler = try? await handlerPromise.futureResult.get() {
            connections.put(key, ConnectionCache.Entry(channel: channel, handler: handler))
        }
        return report
    }

    /// Closes the idle cached connections with QUIT (at shutdown); returns when they are closed.
    public func closeIdleConnections() async {
        await connections.closeAll()
    }

    func outcome(for result: ClientSession.RecipientResult, relay: String) -> RecipientOutcome {
        switch result {
        case .delivered(let reply):
            return RecipientOutcome(kind: .delivered, status: reply.enhanced?.description ?? "2.0.0",
                                    reason: "\(relay) said: \(reply)", remoteMTA: relay, remoteReply: reply.description)
        case .deferred(let reply):
            return RecipientOutcome(kind: .deferred, status: reply.enhanced?.description ?? "4.0.0",
                                    reason: "host \(relay) said: \(reply)", remoteMTA: relay, remoteReply: reply.description)
        case .bounced(let reply):
            return RecipientOutcome(kind: .bounced, status: reply.enhanced?.description ?? "5.0.0",
                                    reason: "host \(relay) said: \(reply)", remoteMTA: relay, remoteReply: reply.description)
        case .bouncedLocally(let code, let text):
            return RecipientOutcome(kind: .bounced, status: code.description, reason: "\(text) (\(relay))", remoteMTA: relay)
        }
    }

    func outcome(for failure: ClientSession.SessionFailure, relay: String) -> RecipientOutcome {
        switch failure {
        case .greetingRefused(let reply): return .deferred("4.4.0", "host \(relay) refused to talk to me: \(reply)", remoteMTA: relay)
        case .heloRefused(let reply): return .deferred("4.4.0", "host \(relay) refused EHLO/HELO: \(reply)", remoteMTA: relay)
        case .starttlsNotOffered: return .deferred("4.7.5", "TLS is required, but host \(relay) did not offer STARTTLS", remoteMTA: relay)
        case .starttlsRefused(let reply): return .deferred("4.7.5", "TLS is required, but host \(relay) refused STARTTLS: \(reply)", remoteMTA: relay)
        case .plaintextInjection: return .deferred("4.7.5", "host \(relay) sent plaintext after the 220 to STARTTLS (injection attack?)", remoteMTA: relay)
        case .tlsFailed(let reason): return .deferred("4.7.5", "TLS with \(relay) failed: \(reason)", remoteMTA: relay)
        case .serviceClosing(let reply): return .deferred(reply.enhanced?.description ?? "4.3.2", "host \(relay) said: \(reply)", remoteMTA: relay)
        case .protocolError(let reason): return .deferred("4.5.0", "protocol error with \(relay): \(reason)", remoteMTA: relay)
        case .connectionLost(let stage): return .deferred("4.4.2", "lost connection with \(relay) while waiting for \(stage.rawValue)", remoteMTA: relay)
        case .timeout(let stage): return .deferred("4.4.2", "conversation with \(relay) timed out while waiting for \(stage.rawValue)", remoteMTA: relay)
        }
    }

    func describe(_ error: Error) -> String {
        if let io = error as? IOError { return String(cString: strerror(io.errnoCode)) }
        return "\(error)"
    }
}
