import SMTPCore

/// How SMTP results of one attempt become recipient outcomes and RFC 8460 result types.
public enum AttemptOutcomes {
    /// The outcome of one recipient's reply (RFC 5321 §4.2: 2xx delivered, 4xx deferred, 5xx bounced).
    public static func outcome(for result: ClientSession.RecipientResult, relay: String) -> RecipientOutcome {
        switch result {
        case .delivered(let reply):
            return RecipientOutcome(kind: .delivered, status: reply.enhanced ?? .ok,
                                    reason: "\(relay) said: \(reply)", remoteMTA: relay, remoteReply: reply.description)
        case .deferred(let reply):
            return RecipientOutcome(kind: .deferred, status: reply.enhanced ?? EnhancedStatusCode(4, 0, 0),
                                    reason: "host \(relay) said: \(reply)", remoteMTA: relay, remoteReply: reply.description)
        case .bounced(let reply):
            return RecipientOutcome(kind: .bounced, status: reply.enhanced ?? EnhancedStatusCode(5, 0, 0),
                                    reason: "host \(relay) said: \(reply)", remoteMTA: relay, remoteReply: reply.description)
        case .bouncedLocally(let code, let text):
            return RecipientOutcome(kind: .bounced, status: code, reason: "\(text) (\(relay))", remoteMTA: relay)
        }
    }

    /// The deferral a session failure leaves for the recipients it did not decide.
    public static func outcome(for failure: ClientSession.SessionFailure, relay: String) -> RecipientOutcome {
        switch failure {
        case .greetingRefused(let reply): return .deferred(.networkTemporary, "host \(relay) refused to talk to me: \(reply)", remoteMTA: relay)
        case .heloRefused(let reply): return .deferred(.networkTemporary, "host \(relay) refused EHLO/HELO: \(reply)", remoteMTA: relay)
        case .starttlsNotOffered: return .deferred(.cryptographicFailure, "TLS is required, but host \(relay) did not offer STARTTLS", remoteMTA: relay)
        case .starttlsRefused(let reply): return .deferred(.cryptographicFailure, "TLS is required, but host \(relay) refused STARTTLS: \(reply)", remoteMTA: relay)
        case .plaintextInjection: return .deferred(.cryptographicFailure, "host \(relay) sent plaintext after the 220 to STARTTLS (injection attack?)", remoteMTA: relay)
        case .tlsFailed(let reason): return .deferred(.cryptographicFailure, "TLS with \(relay) failed: \(reason)", remoteMTA: relay)
        case .serviceClosing(let reply): return .deferred(reply.enhanced ?? .systemNotAccepting, "host \(relay) said: \(reply)", remoteMTA: relay)
        case .protocolError(let reason): return .deferred(.protocolTemporary, "protocol error with \(relay): \(reason)", remoteMTA: relay)
        case .requireTLSNotOffered:
            return .bounced(.requireTLSSupportRequired, "REQUIRETLS: host \(relay) does not announce REQUIRETLS in its TLS session, so the message may not be sent there (RFC 8689 section 4.2.1)", remoteMTA: relay)
        case .connectionLost(let stage):
            return .deferred(.timeout, "lost connection with \(relay) while waiting for \(stage.rawValue)\(mayBeDuplicate(stage))", remoteMTA: relay)
        case .timeout(let stage):
            return .deferred(.timeout, "conversation with \(relay) timed out while waiting for \(stage.rawValue)\(mayBeDuplicate(stage))", remoteMTA: relay)
        }
    }

    /// The warning for a connection that ended after the content was sent and before its reply:
    /// the next hop may have taken the message, so a retry may deliver it twice (RFC 1047).
    static func mayBeDuplicate(_ stage: ClientSession.Stage) -> String {
        stage == .dataDone ? "; the message may have been delivered already and may arrive twice (RFC 1047)" : ""
    }

    /// The RFC 8460 §4.3 result type of a failure that a required TLS policy cannot accept, or nil
    /// when the failure is not about TLS (421, a lost connection, a timeout).
    /// - Parameters:
    ///   - verifyResult: OpenSSL's `X509_V_ERR_*` when authentication failed.
    ///   - authentication: what the attempt demanded (the result type is the same under DANE,
    ///     WebPKI and none: the certificate's failure, RFC 8460 §4.3.1).
    public static func resultType(for failure: ClientSession.SessionFailure, verifyResult: Int?,
                                  authentication: PeerAuthentication) -> TLSRPTResultType? {
        switch failure {
        case .starttlsNotOffered, .starttlsRefused: return .starttlsNotSupported
        case .plaintextInjection: return .validationFailure
        case .tlsFailed:
            guard let code = verifyResult else { return .validationFailure }
            let certificate: TLSRPTResultType
            switch code {
            case 62: certificate = .certificateHostMismatch
            case 65: certificate = .tlsaInvalid
            case 10: certificate = .certificateExpired
            case 2, 18, 19, 20, 21: certificate = .certificateNotTrusted
            default: certificate = .validationFailure
            }
            // The MX certificate's failures are negotiation failures (RFC 8460 §4.3.1) under every
            // policy; `sts-webpki-invalid` (§4.3.2.2) is the policy host's certificate, found by
            // the MTA-STS fetch.
            return certificate
        default: return nil
        }
    }
}
