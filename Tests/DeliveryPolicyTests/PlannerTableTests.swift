import DeliveryPolicy
import MTASTSCore
import SMTPCore
import Testing

/// The policy table as named rows: each row is one situation, the RFC section it comes from and
/// the outcome a correct relay produces. README's "How a message is delivered" describes the
/// same rules.
struct Row: Sendable, CustomTestStringConvertible {
    enum Expect: Sendable, Equatable {
        case delivered(AchievedSecurity)
        case deferred(EnhancedStatusCode)
        case bounced(EnhancedStatusCode)
    }

    var name: String
    var rfc: String
    var inputs: Inputs
    var expect: Expect
    /// An alert that must be raised: result type, source, enforced.
    var alert: (TLSRPTResultType, PolicySource, Bool)?
    /// The host rule the planner must name.
    var rule: HostRule?

    var testDescription: String { "\(name) (\(rfc))" }
}

private func I(local: Inputs.Local = .absent, mx: Inputs.Status = .secure, a: Inputs.Status = .secure, tlsaStatus: Inputs.Status = .secure,
               tlsa: Inputs.TLSAContent = .none, sts: Inputs.STS = .none, memory: Inputs.Memory = .off, does: Inputs.MX = .verified,
               sender: Inputs.Sender = .standard, announces: Bool = true) -> Inputs {
    Inputs(local: local, mxStatus: mx, addressStatus: a, tlsaStatus: tlsaStatus, tlsa: tlsa, sts: sts, memory: memory, mx: does,
           sender: sender, announcesRequireTLS: announces)
}

let rows: [Row] = [
    Row(name: "policy state store unreadable: deferred, never as if nothing were remembered", rfc: "RFC 7672 §2.1.1 (indeterminate is not insecure)",
        inputs: I(tlsa: .daneEE, memory: .storeUnavailable), expect: .deferred(.directoryServerFailure)),
    Row(name: "policy state store unreadable, no TLSA: deferred, not sent opportunistically", rfc: "RFC 7672 §2.1.1",
        inputs: I(mx: .insecure, a: .insecure, memory: .storeUnavailable, does: .stripped), expect: .deferred(.directoryServerFailure)),
    Row(name: "policy state store unreadable under a local level: the level needs no state", rfc: "RFC 8461 §8.3 (local policy)",
        inputs: I(local: .encrypt, memory: .storeUnavailable, does: .unverified), expect: .delivered(.tls)),
    Row(name: "MX lookup fails: defer, never 'no MX'", rfc: "RFC 5321 §5.1", inputs: I(mx: .failed), expect: .deferred(.directoryServerFailure)),
    Row(name: "MX bogus: defer with dnssec-invalid", rfc: "RFC 7672 §2.2.1", inputs: I(mx: .bogus), expect: .deferred(.cryptographicFailure),
        alert: (.dnssecInvalid, .dane, true)),
    Row(name: "address bogus: host skipped", rfc: "RFC 7672 §2.2.3", inputs: I(a: .bogus, tlsa: .daneEE), expect: .deferred(.cryptographicFailure),
        alert: (.dnssecInvalid, .dane, true), rule: .addressBogus),
    Row(name: "DANE-EE usable: authenticated by TLSA", rfc: "RFC 7672 §3.1.1", inputs: I(tlsa: .daneEE), expect: .delivered(.dane), rule: .daneUsable),
    Row(name: "DANE-EE matches a wrong-name leaf: no name check", rfc: "RFC 7672 §3.1.1", inputs: I(tlsa: .daneEE, does: .wrongName),
        expect: .delivered(.dane)),
    Row(name: "DANE-TA with a wrong-name leaf: deferred", rfc: "RFC 7672 §3.2.2", inputs: I(tlsa: .daneTA, does: .wrongName),
        expect: .deferred(.cryptographicFailure), alert: (.certificateHostMismatch, .dane, true)),
    Row(name: "malformed TLSA record beside a good one: the good one counts", rfc: "RFC 7672 §3.1.3",
        inputs: I(tlsa: .malformedBesideGood), expect: .delivered(.dane), rule: .daneUsable),
    Row(name: "only unusable TLSA records: TLS required, no authentication", rfc: "RFC 7672 §3.1.3",
        inputs: I(tlsa: .onlyUnusable, does: .unverified), expect: .delivered(.tls), rule: .daneUnusableRecords),
    Row(name: "only unusable TLSA records, STARTTLS stripped: deferred", rfc: "RFC 7672 §3.1.3",
        inputs: I(tlsa: .onlyUnusable, does: .stripped), expect: .deferred(.cryptographicFailure), alert: (.starttlsNotSupported, .dane, true)),
    Row(name: "TLSA lookup fails for a secure host: host unusable", rfc: "RFC 7672 §2.1.1", inputs: I(tlsaStatus: .failed),
        expect: .deferred(.cryptographicFailure), alert: (.tlsaInvalid, .dane, true), rule: .tlsaUnusable),
    Row(name: "TLSA bogus: host unusable", rfc: "RFC 7672 §2.2.3", inputs: I(tlsaStatus: .bogus, tlsa: .daneEE),
        expect: .deferred(.cryptographicFailure), alert: (.dnssecInvalid, .dane, true)),
    Row(name: "insecure address: no TLSA lookup, opportunistic", rfc: "RFC 7672 §2.2.3", inputs: I(a: .insecure, tlsa: .daneEE, does: .unverified),
        expect: .delivered(.tls), rule: .opportunistic),
    Row(name: "insecure MX RRset, secure host: DANE still applies", rfc: "RFC 7672 §2.2.1", inputs: I(mx: .insecure, tlsa: .daneEE),
        expect: .delivered(.dane)),
    Row(name: "DANE domain, STARTTLS stripped: deferred", rfc: "RFC 7672 §2.2, RFC 3207 §6", inputs: I(tlsa: .daneEE, does: .stripped),
        expect: .deferred(.cryptographicFailure), alert: (.starttlsNotSupported, .dane, true)),
    Row(name: "DANE domain, plaintext after 220: deferred", rfc: "RFC 3207 §4.2", inputs: I(tlsa: .daneEE, does: .bytesAfter220),
        expect: .deferred(.cryptographicFailure), alert: (.validationFailure, .dane, true)),
    Row(name: "no policy, STARTTLS stripped: clear", rfc: "RFC 7435 §3", inputs: I(does: .stripped), expect: .delivered(.none)),
    Row(name: "no policy, handshake fails: retried in clear", rfc: "RFC 7435, Postfix 'may'", inputs: I(does: .handshakeFailure), expect: .delivered(.none)),
    Row(name: "no policy, only TLS 1.0: retried in clear", rfc: "RFC 7435, RFC 8996", inputs: I(does: .tls10Only), expect: .delivered(.none)),
    Row(name: "MTA-STS enforce, matching host, valid certificate", rfc: "RFC 8461 §4.2", inputs: I(sts: .enforceMatching), expect: .delivered(.mtaSTS),
        rule: .stsEnforce),
    Row(name: "MTA-STS enforce, untrusted certificate: deferred", rfc: "RFC 8461 §4.2", inputs: I(sts: .enforceMatching, does: .unverified),
        expect: .deferred(.cryptographicFailure), alert: (.certificateNotTrusted, .mtaSTS, true)),
    Row(name: "MTA-STS enforce, host not listed: skipped", rfc: "RFC 8461 §4.1", inputs: I(sts: .enforceNotMatching),
        expect: .deferred(.cryptographicFailure), alert: (.validationFailure, .mtaSTS, true), rule: .stsEnforceNotListed),
    Row(name: "MTA-STS enforce not listing a DANE host: DANE governs", rfc: "RFC 8461 §2", inputs: I(tlsa: .daneEE, sts: .enforceNotMatching),
        expect: .delivered(.dane), rule: .daneUsable),
    Row(name: "DANE mismatch under MTA-STS enforce: not rescued by WebPKI", rfc: "RFC 8461 §2", inputs: I(tlsa: .daneEE, sts: .enforceMatching, does: .unverified),
        expect: .deferred(.cryptographicFailure), alert: (.tlsaInvalid, .dane, true)),
    Row(name: "only unusable TLSA and MTA-STS enforce: WebPKI still checked", rfc: "RFC 7672 §3.1.3, RFC 8461 §4.2",
        inputs: I(tlsa: .onlyUnusable, sts: .enforceMatching, does: .unverified), expect: .deferred(.cryptographicFailure),
        alert: (.certificateNotTrusted, .mtaSTS, true), rule: .stsEnforce),
    Row(name: "MTA-STS cached after a failed refresh: still enforced", rfc: "RFC 8461 §5.1", inputs: I(sts: .cachedAfterFailedRefresh, does: .stripped),
        expect: .deferred(.cryptographicFailure), alert: (.starttlsNotSupported, .mtaSTS, true)),
    Row(name: "MTA-STS TXT lookup fails, nothing cached: deferred", rfc: "RFC 8461 §3.1", inputs: I(sts: .temporaryFailure),
        expect: .deferred(.directoryServerFailure)),
    Row(name: "MTA-STS testing, untrusted certificate: reported, delivered", rfc: "RFC 8461 §5", inputs: I(sts: .testingMatching, does: .unverified),
        expect: .delivered(.tls), alert: (.certificateNotTrusted, .mtaSTS, false), rule: .stsTesting),
    Row(name: "MTA-STS testing, STARTTLS stripped, no memory: delivered in clear", rfc: "RFC 8461 §5", inputs: I(sts: .testingMatching, does: .stripped),
        expect: .delivered(.none), alert: (.starttlsNotSupported, .mtaSTS, false)),
    Row(name: "memory enforce at mta-sts, MTA-STS testing, STARTTLS stripped: deferred (was sent in clear)", rfc: "floor rule",
        inputs: I(sts: .testingMatching, memory: .enforceMTASTS, does: .stripped), expect: .deferred(.cryptographicFailure),
        alert: (.starttlsNotSupported, .memory, true), rule: .memoryEnforce),
    Row(name: "memory enforce at tls, STARTTLS stripped: deferred, grace window starts", rfc: "floor rule", inputs: I(memory: .enforceTLS, does: .stripped),
        expect: .deferred(.cryptographicFailure), alert: (.starttlsNotSupported, .memory, true), rule: .memoryEnforce),
    Row(name: "memory enforce at dane, no TLSA any more: refused", rfc: "floor rule", inputs: I(memory: .enforceDANE),
        expect: .deferred(.cryptographicFailure), alert: (.validationFailure, .memory, true), rule: .memoryDANERefused),
    Row(name: "memory enforce at dane, grace over: weaker delivery accepted and reported", rfc: "floor rule", inputs: I(memory: .graceOver, does: .unverified),
        expect: .delivered(.tls), alert: (.validationFailure, .memory, false)),
    Row(name: "memory report at dane: delivered, reported", rfc: "floor rule", inputs: I(memory: .reportDANE, does: .stripped),
        expect: .delivered(.none), alert: (.validationFailure, .memory, false)),
    Row(name: "local none: never STARTTLS", rfc: "Postfix smtp_tls_policy_maps", inputs: I(local: .none, tlsa: .daneEE), expect: .delivered(.none), rule: .local),
    Row(name: "local encrypt over a stale TLSA: TLS, unauthenticated", rfc: "Postfix smtp_tls_policy_maps", inputs: I(local: .encrypt, tlsa: .daneEE, does: .unverified),
        expect: .delivered(.tls)),
    Row(name: "local verify: WebPKI required", rfc: "Postfix smtp_tls_policy_maps", inputs: I(local: .verify, does: .wrongName),
        expect: .deferred(.cryptographicFailure), alert: (.certificateHostMismatch, .local, true)),
    Row(name: "local dane-only, only unusable TLSA records: deferred (was unauthenticated TLS)", rfc: "Postfix dane-only, RFC 7672 §3.1.3",
        inputs: I(local: .daneOnly, tlsa: .onlyUnusable), expect: .deferred(.cryptographicFailure), alert: (.daneRequired, .local, true),
        rule: .localDaneOnlyRefused),
    Row(name: "local dane without TLSA: opportunistic", rfc: "Postfix dane", inputs: I(local: .dane, does: .stripped), expect: .delivered(.none)),
    Row(name: "expired local level: discovered policy governs", rfc: "local levels", inputs: I(local: .expired, tlsa: .daneEE, does: .stripped),
        expect: .deferred(.cryptographicFailure), alert: (.starttlsNotSupported, .dane, true)),
    // The sender's request (RFC 8689).
    Row(name: "REQUIRETLS, DANE behind a secure MX answer: delivered with REQUIRETLS", rfc: "RFC 8689 §4.2.1",
        inputs: I(tlsa: .daneEE, sender: .requireTLS), expect: .delivered(.dane), rule: .requireTLS),
    Row(name: "REQUIRETLS, MTA-STS enforce listing the host, insecure MX answer: delivered", rfc: "RFC 8689 §4.2.1",
        inputs: I(mx: .insecure, sts: .enforceMatching, sender: .requireTLS), expect: .delivered(.mtaSTS), rule: .requireTLS),
    Row(name: "REQUIRETLS, no policy: bounced with 5.7.30, no connection", rfc: "RFC 8689 §4.2.1",
        inputs: I(sender: .requireTLS), expect: .bounced(.requireTLSSupportRequired), rule: .requireTLSUnauthenticated),
    Row(name: "REQUIRETLS, MTA-STS testing only: not enough, bounced", rfc: "RFC 8689 §4.2.1",
        inputs: I(sts: .testingMatching, sender: .requireTLS), expect: .bounced(.requireTLSSupportRequired), rule: .requireTLSUnauthenticated),
    Row(name: "REQUIRETLS, DANE behind an insecure MX answer: the MX host is not authenticated, bounced", rfc: "RFC 8689 §4.2.1",
        inputs: I(mx: .insecure, tlsa: .daneEE, sender: .requireTLS), expect: .bounced(.requireTLSSupportRequired), rule: .requireTLSUnauthenticated),
    Row(name: "REQUIRETLS, local level encrypt: a local level never weakens it, bounced", rfc: "RFC 8689 §4.2.1",
        inputs: I(local: .encrypt, tlsa: .daneEE, sender: .requireTLS), expect: .bounced(.requireTLSSupportRequired), rule: .requireTLSLocalLevel),
    Row(name: "REQUIRETLS, local level dane with usable TLSA: delivered", rfc: "RFC 8689 §4.2.1",
        inputs: I(local: .dane, tlsa: .daneTA, sender: .requireTLS), expect: .delivered(.dane), rule: .requireTLS),
    Row(name: "REQUIRETLS, next hop does not announce REQUIRETLS: bounced after the TLS EHLO", rfc: "RFC 8689 §4.2.1",
        inputs: I(tlsa: .daneEE, sender: .requireTLS, announces: false), expect: .bounced(.requireTLSSupportRequired), rule: .requireTLS),
    Row(name: "REQUIRETLS, DANE and STARTTLS stripped: deferred, never in clear", rfc: "RFC 8689 §4.2.1, RFC 7672 §2.2",
        inputs: I(tlsa: .daneEE, does: .stripped, sender: .requireTLS), expect: .deferred(.cryptographicFailure), alert: (.starttlsNotSupported, .dane, true)),
    Row(name: "REQUIRETLS with TLS-Required: No: the header is ignored", rfc: "RFC 8689 §5",
        inputs: I(sender: .requireTLSWithHeader), expect: .bounced(.requireTLSSupportRequired), rule: .requireTLSUnauthenticated),
    Row(name: "TLS-Required: No, DANE domain, forged certificate: delivered as the sender asked", rfc: "RFC 8689 §5",
        inputs: I(tlsa: .daneEE, memory: .enforceDANE, does: .unverified, sender: .tlsRequiredNo), expect: .delivered(.tls), rule: .tlsRequiredNo),
    Row(name: "TLS-Required: No, STARTTLS stripped: delivered in clear", rfc: "RFC 8689 §5",
        inputs: I(sts: .enforceMatching, does: .stripped, sender: .tlsRequiredNo), expect: .delivered(.none), rule: .tlsRequiredNo),
    Row(name: "TLS-Required: No, MX answer bogus: still deferred", rfc: "RFC 8689 §5, RFC 7672 §2.2.1",
        inputs: I(mx: .bogus, sender: .tlsRequiredNo), expect: .deferred(.cryptographicFailure), alert: (.dnssecInvalid, .dane, true)),
    Row(name: "TLS-Required: No not honoured: DANE still enforced", rfc: "policy.honor_tls_required_no",
        inputs: I(tlsa: .daneEE, does: .unverified, sender: .tlsRequiredNoNotHonoured), expect: .deferred(.cryptographicFailure),
        alert: (.tlsaInvalid, .dane, true), rule: .daneUsable),
]

@Suite("Delivery planner: the policy table")
struct PlannerTableTests {
    @Test("named rows", arguments: rows)
    func row(_ row: Row) {
        let t = run(row.inputs)
        let outcome = try! #require(t.outcome)
        switch row.expect {
        case .delivered(let security):
            #expect(outcome.kind == .delivered, "\(outcome.reason)")
            #expect(t.deliveredWith == security)
        case .deferred(let status):
            #expect(outcome.kind == .deferred && outcome.status == status, "\(outcome.kind) \(outcome.status) \(outcome.reason)")
        case .bounced(let status):
            #expect(outcome.kind == .bounced && outcome.status == status, "\(outcome.kind) \(outcome.status) \(outcome.reason)")
        }
        if let (type, source, enforced) = row.alert {
            #expect(t.alerts.contains { $0.resultType == type && $0.policySource == source && $0.enforced == enforced }, "\(t.alerts)")
        }
        if let rule = row.rule {
            let rules = t.effects.compactMap { effect -> HostRule? in
                guard case .hostDecided(_, let decision) = effect else { return nil }
                switch decision {
                case .skip(let rule, _, _, _): return rule
                case .connect(let plan): return plan.rule
                }
            }
            #expect(rules == [rule])
        }
    }

    @Test("TLS-RPT (RFC 8460): what each named situation counts, under which policy type", arguments: [
        (I(tlsa: .daneEE), ["tlsa success"]),
        (I(tlsa: .daneEE, does: .unverified), ["tlsa tlsa-invalid"]),
        (I(tlsa: .daneTA, does: .wrongName), ["tlsa certificate-host-mismatch"]),
        (I(sts: .enforceMatching, does: .stripped), ["sts starttls-not-supported"]),
        (I(sts: .enforceMatching, does: .unverified), ["sts certificate-not-trusted"]),
        (I(sts: .enforceMatching, does: .wrongName), ["sts certificate-host-mismatch"]),
        (I(sts: .enforceNotMatching), ["sts validation-failure"]),
        (I(sts: .cachedAfterFailedRefresh), ["sts sts-policy-fetch-error", "sts success"]),
        (I(sts: .testingMatching, does: .unverified), ["sts certificate-not-trusted"]),
        (I(does: .stripped), ["no-policy-found starttls-not-supported"]),
        (I(does: .unverified), ["no-policy-found success"]),
        (I(mx: .bogus), ["tlsa dnssec-invalid"]),
        (I(tlsaStatus: .failed), ["tlsa tlsa-invalid"]),
        (I(local: .daneOnly), ["tlsa dane-required"]),
        (I(local: .none), []),
        (I(tlsa: .daneEE, does: .unverified, sender: .tlsRequiredNo), []),
    ] as [(Inputs, [String])])
    func tlsReportSessions(_ inputs: Inputs, _ expected: [String]) {
        let sessions = run(inputs).sessions.map { "\($0.policy.type.rawValue) \($0.failure?.resultType.rawValue ?? "success")" }
        #expect(sessions == expected, "\(inputs)")
    }

    @Test("a reused connection's session is not counted again (tlsrptSkipReusedHandshakes), and is with the setting off")
    func reusedConnection() {
        for skip in [true, false] {
            var planner = DeliveryPlanner(domain: "example.net", recipients: [0], settings: PlannerSettings(mtaSTS: false, tlsrptSkipReusedHandshakes: skip),
                                          local: nil, memory: nil, now: 0)
            _ = planner.start()
            _ = planner.mxResolved(.hosts(["mx.example.net"], secure: false, implicit: false))
            let step = planner.addressesResolved(AddressFact(ipv4: .answer(records: ["192.0.2.1"], status: .insecure, canonicalName: "mx.example.net"),
                                                             ipv6: .answer(records: [], status: .insecure, canonicalName: "mx.example.net")))
            guard case .connect(let attempt) = step.action else { Issue.record("\(step.action)"); return }
            var result = AttemptResult(recipients: [0: .delivered(Reply(250, .ok, ["ok"]))], tls: .init(verified: false, daneMatched: false),
                                       offeredSTARTTLS: true)
            result.reusedConnection = true
            let finished = planner.attemptFinished(attempt, result)
            let counted = finished.effects.contains { if case .tlsSession = $0 { return true } else { return false } }
            #expect(counted == !skip)
        }
    }

    @Test("matching type 0 counts only for a DER certificate or key; a digest published as 3 1 0 is unusable")
    func fullDataRecords() {
        let der = [UInt8]([0x30, 0x82, 0x01, 0x00]) + Array(repeating: 0x01, count: 256)
        #expect(TLSAEntry(usage: 3, selector: 1, matchingType: 0, data: der).isUsable)
        #expect(TLSAEntry(usage: 2, selector: 0, matchingType: 0, data: [0x30, 0x03, 1, 2, 3]).isUsable)
        for junk: [UInt8] in [[0x00], Array(repeating: 0xAB, count: 32), [0x30, 0x00], [0x30, 0x05, 1], der + [0]] {
            #expect(!TLSAEntry(usage: 3, selector: 1, matchingType: 0, data: junk).isUsable, "\(junk.prefix(4))")
        }
        // Such a record under dane-only defers instead of connecting.
        var planner = DeliveryPlanner(domain: "example.net", recipients: [0], settings: PlannerSettings(mtaSTS: false),
                                      local: LocalPolicyFact(level: .daneOnly), memory: nil, now: 0)
        _ = planner.start()
        _ = planner.mxResolved(.hosts(["mx.example.net"], secure: true, implicit: false))
        _ = planner.addressesResolved(AddressFact(ipv4: .answer(records: ["192.0.2.1"], status: .secure, canonicalName: "mx.example.net"),
                                                  ipv6: .answer(records: [], status: .secure, canonicalName: "mx.example.net")))
        let step = planner.tlsaResolved(.answer(records: [TLSAEntry(usage: 3, selector: 1, matchingType: 0, data: [0x00])], status: .secure))
        guard case .finish(let outcomes, _, _) = step.action else { Issue.record("\(step.action)"); return }
        #expect(outcomes[0]?.status == .cryptographicFailure)
    }

    @Test("a failed AAAA lookup leaves the secure A records usable for DANE")
    func aaaaFailure() {
        var planner = DeliveryPlanner(domain: "example.net", recipients: [0], settings: PlannerSettings(), local: nil, memory: nil, now: 0)
        _ = planner.start()
        _ = planner.mxResolved(.hosts(["mx.example.net"], secure: true, implicit: false))
        _ = planner.stsDiscovered(.none)
        let step = planner.addressesResolved(AddressFact(ipv4: .answer(records: ["192.0.2.1"], status: .secure, canonicalName: "mx.example.net"),
                                                         ipv6: .failed(reason: "SERVFAIL")))
        #expect(step.action == .lookupTLSA(host: "mx.example.net", base: "mx.example.net"))
        let connect = planner.tlsaResolved(.answer(records: [Inputs.leafRecord], status: .secure))
        guard case .connect(let attempt) = connect.action else { Issue.record("\(connect.action)"); return }
        #expect(attempt.address == "192.0.2.1" && attempt.demand.guaranteed == .dane)
        // Both families failed: the host is skipped with 4.4.3.
        var other = DeliveryPlanner(domain: "example.net", recipients: [0], settings: PlannerSettings(mtaSTS: false), local: nil, memory: nil, now: 0)
        _ = other.start()
        _ = other.mxResolved(.hosts(["mx.example.net"], secure: true, implicit: false))
        let skipped = other.addressesResolved(AddressFact(ipv4: .failed(reason: "SERVFAIL"), ipv6: .failed(reason: "timeout")))
        guard case .finish(let outcomes, _, _) = skipped.action else { Issue.record(); return }
        #expect(outcomes[0]?.status == .directoryServerFailure)
    }

    @Test("CNAME-expanded TLSA base first, then the original name")
    func cnameBases() {
        var planner = DeliveryPlanner(domain: "example.net", recipients: [0], settings: PlannerSettings(mtaSTS: false), local: nil, memory: nil, now: 0)
        _ = planner.start()
        _ = planner.mxResolved(.hosts(["mx.example.net"], secure: true, implicit: false))
        let first = planner.addressesResolved(AddressFact(ipv4: .answer(records: ["192.0.2.1"], status: .secure, canonicalName: "target.example.net"),
                                                          ipv6: .answer(records: [], status: .secure, canonicalName: "target.example.net")))
        #expect(first.action == .lookupTLSA(host: "mx.example.net", base: "target.example.net"))
        let second = planner.tlsaResolved(.answer(records: [], status: .secure))
        #expect(second.action == .lookupTLSA(host: "mx.example.net", base: "mx.example.net"))
        guard case .connect(let attempt) = planner.tlsaResolved(.answer(records: [Inputs.leafRecord], status: .secure)).action else { Issue.record(); return }
        #expect(attempt.demand.serverName(host: "mx.example.net") == "mx.example.net")
    }

    @Test("recipients decided by one host are not sent to the next; the rest go on")
    func recipientsAcrossHosts() {
        var planner = DeliveryPlanner(domain: "example.net", recipients: [0, 1], settings: PlannerSettings(mtaSTS: false), local: nil, memory: nil, now: 0)
        _ = planner.start()
        _ = planner.mxResolved(.hosts(["a.example.net", "b.example.net"], secure: false, implicit: false))
        let insecure = AddressFact(ipv4: .answer(records: ["192.0.2.1"], status: .insecure, canonicalName: "a.example.net"),
                                   ipv6: .answer(records: [], status: .insecure, canonicalName: "a.example.net"))
        guard case .connect(let first) = planner.addressesResolved(insecure).action else { Issue.record(); return }
        let step = planner.attemptFinished(first, AttemptResult(recipients: [0: .delivered(Reply(250, .ok, ["ok"]))],
                                                                failure: .connectionLost(.rcpt)))
        #expect(step.action == .lookupAddresses(host: "b.example.net"))
        guard case .connect(let second) = planner.addressesResolved(insecure).action else { Issue.record(); return }
        #expect(second.recipients == [1])
        guard case .finish(let outcomes, _, _) = planner.attemptFinished(second, AttemptResult(recipients: [1: .bounced(Reply(550, EnhancedStatusCode(5, 1, 1), ["no"]))])).action
        else { Issue.record(); return }
        #expect(outcomes[0]?.kind == .delivered && outcomes[1]?.kind == .bounced && outcomes[1]?.status == EnhancedStatusCode(5, 1, 1))
    }

    @Test("probe mode tries every address and finishes with a verdict")
    func probe() {
        let good = run(I(tlsa: .daneEE), probe: true)
        #expect(good.outcome == nil && good.attempts.count == 1)
        let bad = run(I(tlsa: .daneEE, does: .stripped), probe: true)
        #expect(bad.outcome?.status == .cryptographicFailure)
        let clear = run(I(does: .handshakeFailure), probe: true)
        #expect(clear.outcome == nil && clear.attempts.map(\.attempt.kind) == [.first, .clearRetry])
        #expect(good.remembered.isEmpty && clear.remembered.isEmpty)
    }

    @Test("stopped by shutdown: replies already given stand, the rest is deferred 4.3.2, no alert, nothing remembered")
    func stoppedByShutdown() {
        var planner = DeliveryPlanner(domain: "example.net", recipients: [0, 1], settings: PlannerSettings(mtaSTS: false), local: nil, memory: nil, now: 0)
        _ = planner.start()
        _ = planner.mxResolved(.hosts(["a.example.net"], secure: true, implicit: false))
        let secure = AddressFact(ipv4: .answer(records: ["192.0.2.1"], status: .secure, canonicalName: "a.example.net"),
                                 ipv6: .answer(records: [], status: .secure, canonicalName: "a.example.net"))
        guard case .lookupTLSA = planner.addressesResolved(secure).action else { Issue.record(); return }
        // The TLSA lookup was cancelled: no "tlsa-invalid" alert for a lookup that never ended.
        let lookup = planner.stopped()
        #expect(lookup.effects.isEmpty)
        guard case .finish(let outcomes, _, _) = lookup.action else { Issue.record(); return }
        #expect(outcomes.values.allSatisfy { $0.kind == .deferred && $0.status == EnhancedStatusCode(4, 3, 2) })
        #expect(outcomes.count == 2)
        // During a session: the delivered recipient stands, a TLS failure caused by the close is no alert.
        var second = DeliveryPlanner(domain: "example.net", recipients: [0, 1], settings: PlannerSettings(mtaSTS: false), local: nil, memory: nil, now: 0)
        _ = second.start()
        _ = second.mxResolved(.hosts(["a.example.net"], secure: false, implicit: false))
        let insecure = AddressFact(ipv4: .answer(records: ["192.0.2.1"], status: .insecure, canonicalName: "a.example.net"),
                                   ipv6: .answer(records: [], status: .insecure, canonicalName: "a.example.net"))
        guard case .connect(let attempt) = second.addressesResolved(insecure).action else { Issue.record(); return }
        let step = second.stopped(attempt, AttemptResult(recipients: [0: .delivered(Reply(250, .ok, ["ok"]))], failure: .tlsFailed("closed")))
        #expect(step.effects.isEmpty)
        guard case .finish(let after, _, _) = step.action else { Issue.record(); return }
        #expect(after[0]?.kind == .delivered)
        #expect(after[1]?.status == EnhancedStatusCode(4, 3, 2))
    }
}
