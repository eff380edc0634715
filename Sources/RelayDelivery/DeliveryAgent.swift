import Logging
import NIOCore
import NIOPosix
import RelayDNS
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

        public init(heloName: String, port: Int, timeouts: ClientTimeouts = ClientTimeouts()) {
            self.heloName = heloName
            self.port = port
            self.timeouts = timeouts
        }
    }

    let resolver: RelayDNS.Resolver
    let group: EventLoopGroup
    let tlsContext: TLSClientContext
    let settings: Settings
    let logger: Logger

    public init(resolver: RelayDNS.Resolver, group: EventLoopGroup, tlsContext: TLSClientContext, settings: Settings, logger: Logger) {
        self.resolver = resolver
        self.group = group
        self.tlsContext = tlsContext
        self.settings = settings
        self.logger = logger
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
        switch plan {
        case .outcome(let outcome):
            return all(outcome)
        case .hosts(let list, _, _):
            hosts = list
        }
        var remaining = recipientIndexes
        var lastFailure = RecipientOutcome.deferred("4.4.1", "no MX host of \(domain) could be reached")
        hostLoop: for host in hosts {
            let addresses: [String]
            do {
                let answers = try await resolver.addresses(host)
                if answers.ipv4.status == .bogus || answers.ipv6.status == .bogus {
                    let why = answers.ipv4.whyBogus ?? answers.ipv6.whyBogus ?? "no reason given"
                    logger.error("\(envelope.queueID): address lookup for MX host \(host) is DNSSEC-bogus (\(why)): host skipped")
                    lastFailure = .deferred("4.7.5", "address records of \(host) failed DNSSEC validation (bogus: \(why))")
                    continue
                }
                addresses = answers.ipv4.records + answers.ipv6.records
            } catch {
                lastFailure = .deferred("4.4.3", "address lookup for \(host) failed: \(error)")
                continue
            }
            if addresses.isEmpty {
                lastFailure = .deferred("4.4.4", "MX host \(host) has no address records")
                continue
            }
            for address in addresses {
                var requirement = ClientSession.TLSRequirement.opportunistic
                while true {
                    let relay = "\(host)[\(address)]:\(settings.port)"
                    let job = makeJob(envelope: envelope, indexes: remaining, tls: requirement)
                    let report: ConnectionReport
                    do {
                        report = try await connect(address: address, host: host, job: job, content: content)
                    } catch {
                        lastFailure = .deferred("4.4.1", "connect to \(relay): \(describe(error))", remoteMTA: relay)
                        logger.info("\(envelope.queueID): connect to \(relay): \(describe(error))")
                        break
                    }
                    if let tls = report.tls {
                        logger.info("\(envelope.queueID): \(report.tls?.verified == true ? "Verified" : "Anonymous") TLS connection established to \(relay): \(tls.protocolVersion) with cipher \(tls.cipher)")
                    }
                    var decided: [Int] = []
                    for (position, result) in report.result.recipients {
                        let index = remaining[position]
                        outcomes[index] = outcome(for: result, relay: relay)
                        decided.append(index)
                    }
                    remaining.removeAll { decided.contains($0) }
                    if remaining.isEmpty { break hostLoop }
                    guard let failure = report.result.failure else { break }
                    lastFailure = outcome(for: failure, relay: relay)
                    logger.info("\(envelope.queueID): \(relay): \(lastFailure.reason)")
                    // RFC 7435: opportunistic TLS that fails is retried once in clear (as Postfix's "may").
                    if requirement == .opportunistic, case .tlsFailed = failure {
                        requirement = .none
                        continue
                    }
                    break
                }
            }
        }
        for index in remaining { outcomes[index] = lastFailure }
        return outcomes
    }

    func makeJob(envelope: QueuedEnvelope, indexes: [Int], tls: ClientSession.TLSRequirement) -> ClientSession.Job {
        let transaction = envelope.transaction
        let recipients = indexes.map { transaction.recipients[$0] }
        let needsUTF8 = transaction.parameters.smtputf8
            && (!(transaction.sender?.isASCII ?? true) || recipients.contains { !$0.mailbox.isASCII })
        return ClientSession.Job(
            heloName: settings.heloName, sender: transaction.sender, recipients: recipients, size: envelope.size,
            body: transaction.parameters.body, needsSMTPUTF8: needsUTF8, ret: transaction.parameters.ret,
            envelopeID: transaction.parameters.envelopeID, tls: tls)
    }

    func connect(address: String, host: String, job: ClientSession.Job, content: [UInt8]) async throws -> ConnectionReport {
        let socketAddress = try SocketAddress(ipAddress: address, port: settings.port)
        let eventLoop = group.next()
        let promise = eventLoop.makePromise(of: ConnectionReport.self)
        let tlsContext = self.tlsContext
        let timeouts = settings.timeouts
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(.milliseconds(Int64(timeouts.connect * 1000)))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(SMTPClientHandler(
                        job: job, content: content, tlsContext: tlsContext, authentication: .opportunistic,
                        serverName: host, timeouts: timeouts, completion: promise))
                }
            }
        do {
            _ = try await bootstrap.connect(to: socketAddress).get()
        } catch {
            promise.fail(error)
            throw error
        }
        return try await promise.futureResult.get()
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
