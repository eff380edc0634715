import Foundation
import NIOCore
import NIOPosix
import Testing
@testable import RelayTLS

/// The handler against real `openssl s_server` processes and TLS-less NIO servers, all on
/// 127.0.0.1, with a throwaway PKI.
@Suite(.throwawayPKI, .timeLimit(.minutes(2)))
struct OpenSSLClientHandlerTests {
    static let mxName = "mx.example.test"
    static let httpGet = "GET / HTTP/1.0\r\n\r\n"

    let pki: ThrowawayPKI
    let context: TLSClientContext

    init() throws {
        pki = try #require(ThrowawayPKI.current)
        context = try TLSClientContext(extraCAFile: pki.caFile)
    }

    func server(_ leaf: ThrowawayPKI.Leaf, mode: OpenSSLServer.Mode = .www, extraArguments: [String] = []) throws -> OpenSSLServer {
        try OpenSSLServer.start(certificate: pki.certificateFile(leaf), key: pki.keyFile(leaf), chain: pki.chainFile(leaf),
                                mode: mode, extraArguments: extraArguments)
    }

    /// Connects to an `-www` server for `leaf`, sends a GET before the handshake completes and
    /// returns the session and the server's (decrypted) answer.
    func exchange(_ leaf: ThrowawayPKI.Leaf, _ authentication: TLSPeerAuthentication,
                  serverName: String? = nil, extraArguments: [String] = []) async throws -> (TLSSessionInfo, String) {
        let server = try server(leaf, extraArguments: extraArguments)
        defer { server.stop() }
        let connection = try await TestConnection.open(port: server.port, context: context, authentication: authentication,
                                                       serverName: serverName, earlyWrite: Self.httpGet)
        let info = try await connection.handshake.get()
        try await connection.earlyWrite.get()
        // -www answers and closes with close_notify; the handler then closes the channel.
        let answer = try await connection.received.get()
        return (info, answer)
    }

    /// Expects the handshake to fail; checks the early write was failed too.
    func failure(_ leaf: ThrowawayPKI.Leaf, _ authentication: TLSPeerAuthentication) async throws -> TLSHandshakeError? {
        let server = try server(leaf)
        defer { server.stop() }
        let connection = try await TestConnection.open(port: server.port, context: context, authentication: authentication,
                                                       earlyWrite: Self.httpGet)
        let error = await connection.handshakeError()
        await #expect(throws: (any Error).self) { try await connection.earlyWrite.get() }
        await connection.closed()
        return error
    }

    // MARK: Opportunistic

    @Test("opportunistic TLS succeeds whatever the certificate", arguments: ThrowawayPKI.Leaf.allCases)
    func opportunistic(leaf: ThrowawayPKI.Leaf) async throws {
        let (info, answer) = try await exchange(leaf, .opportunistic, serverName: Self.mxName)
        #expect(info.verified == false)
        #expect(info.authenticationApplied == .opportunistic)
        #expect(info.daneMatch == nil)
        #expect(answer.hasPrefix("HTTP/1.0 200 ok"), "\(answer.prefix(200))")
        #expect(answer.contains("Ciphers supported"))
    }

    @Test("encryptOnly succeeds without checking the certificate")
    func encryptOnly() async throws {
        let (info, answer) = try await exchange(.selfSigned, .encryptOnly)
        #expect(info.verified == false)
        #expect(info.authenticationApplied == .encryptOnly)
        #expect(answer.hasPrefix("HTTP/1.0 200 ok"))
    }

    // MARK: DANE

    @Test("DANE-EE 3 1 1 matches at depth 0")
    func daneEE() async throws {
        let record = pki.tlsa311(.good)
        let (info, answer) = try await exchange(.good, .dane(tlsaBaseDomain: Self.mxName, hostNames: [Self.mxName], records: [record]))
        #expect(info.verified)
        #expect(info.authenticationApplied == .dane)
        #expect(info.verifyResult == 0)
        #expect(info.daneMatch == DANEMatch(usage: 3, selector: 1, matchingType: 1, dataHex: record.dataHex, depth: 0))
        #expect(answer.hasPrefix("HTTP/1.0 200 ok"))
    }

    @Test("DANE-EE checks neither the name nor the dates (RFC 7672 §3.1.1)", arguments: [ThrowawayPKI.Leaf.wrongName, .expired, .selfSigned])
    func daneEEIgnoresNameAndDates(leaf: ThrowawayPKI.Leaf) async throws {
        let record = pki.tlsa311(leaf)
        let (info, answer) = try await exchange(leaf, .dane(tlsaBaseDomain: Self.mxName, hostNames: [Self.mxName], records: [record]))
        #expect(info.verified)
        #expect(info.daneMatch?.depth == 0)
        #expect(info.daneMatch?.usage == 3)
        #expect(answer.hasPrefix("HTTP/1.0 200 ok"))
    }

    @Test("DANE-TA 2 1 1 of the issuing CA matches at depth 1 with the right name",
          arguments: [
            (base: "mx.example.test", hosts: ["mx.example.test"]),
            (base: "mx.example.test.", hosts: ["mx.example.test."]),   // trailing dots are stripped
            (base: "example.test", hosts: ["mx.example.test"]),        // name found among hostNames
          ])
    func daneTA(base: String, hosts: [String]) async throws {
        let (info, answer) = try await exchange(.good, .dane(tlsaBaseDomain: base, hostNames: hosts, records: [pki.tlsa211]))
        #expect(info.verified)
        #expect(info.daneMatch == DANEMatch(usage: 2, selector: 1, matchingType: 1, dataHex: pki.tlsa211.dataHex, depth: 1))
        #expect(answer.hasPrefix("HTTP/1.0 200 ok"))
    }

    @Test("DANE-TA with a wrong-name leaf fails with 62 (host name mismatch)")
    func daneTAWrongName() async throws {
        let error = try await failure(.wrongName, .dane(tlsaBaseDomain: Self.mxName, hostNames: [Self.mxName], records: [pki.tlsa211]))
        #expect(error == .authenticationFailed(verifyResult: 62, reason: "hostname mismatch"))
    }

    @Test("DANE-TA of a CA that did not issue the leaf fails with 65")
    func daneTAOtherCA() async throws {
        let error = try await failure(.otherCA, .dane(tlsaBaseDomain: Self.mxName, hostNames: [Self.mxName], records: [pki.tlsa211]))
        #expect(error == .authenticationFailed(verifyResult: 65, reason: "no matching DANE TLSA records"))
    }

    @Test("a DANE mismatch fails with 65 and not one application byte reaches the server")
    func daneMismatchSendsNothing() async throws {
        let marker = "MARKER-\(UUID().uuidString)"
        let server = try server(.good, mode: .printReceived)
        defer { server.stop() }
        let wrong = pki.tlsa311(.otherCA)
        let connection = try await TestConnection.open(
            port: server.port, context: context,
            authentication: .dane(tlsaBaseDomain: Self.mxName, hostNames: [Self.mxName], records: [wrong]),
            earlyWrite: marker + "\n")
        let error = await connection.handshakeError()
        #expect(error == .authenticationFailed(verifyResult: 65, reason: "no matching DANE TLSA records"))
        // The held-back write is failed with the handshake's error, never sent.
        await #expect(throws: TLSHandshakeError.authenticationFailed(verifyResult: 65, reason: "no matching DANE TLSA records")) {
            try await connection.earlyWrite.get()
        }
        await connection.closed()
        // s_server saw our alert and the end of the connection, and no data.
        #expect(await server.waitForOutput(containing: "CONNECTION CLOSED"), "\(server.outputText)")
        #expect(server.outputText.contains("fatal bad_certificate"), "\(server.outputText)")
        #expect(!server.outputText.contains("MARKER"), "\(server.outputText)")
        #expect(!server.outputText.contains("application_data"), "\(server.outputText)")
    }

    @Test("the same probe with a matching record does reach the server (the check above can fail)")
    func daneMatchSendsData() async throws {
        let marker = "MARKER-\(UUID().uuidString)"
        let server = try server(.good, mode: .printReceived)
        defer { server.stop() }
        let connection = try await TestConnection.open(
            port: server.port, context: context,
            authentication: .dane(tlsaBaseDomain: Self.mxName, hostNames: [Self.mxName], records: [pki.tlsa311(.good)]),
            earlyWrite: marker + "\n")
        #expect(try await connection.handshake.get().verified)
        try await connection.earlyWrite.get()
        #expect(await server.waitForOutput(containing: marker), "\(server.outputText)")
        // A local close sends close_notify first.
        try await connection.channel.close()
        #expect(await server.waitForOutput(containing: "CONNECTION CLOSED"), "\(server.outputText)")
        #expect(server.outputText.contains("warning close_notify"), "\(server.outputText)")
    }

    @Test("one matching record among mismatching and unusable ones is enough")
    func daneOneGoodAmongBad() async throws {
        let records = [
            pki.tlsa311(.otherCA),
            TLSARecordData(usage: 1, selector: 1, matchingType: 1, data: pki.leafSPKISHA256[.good]!),  // PKIX-EE: dropped
            TLSARecordData(usage: 3, selector: 1, matchingType: 1, data: [1, 2, 3]),                  // malformed digest
            pki.tlsa311(.good),
        ]
        let (info, _) = try await exchange(.good, .dane(tlsaBaseDomain: Self.mxName, hostNames: [], records: records))
        #expect(info.verified)
        #expect(info.unusableTLSARecords == 2)
        #expect(info.daneMatch?.dataHex == pki.tlsa311(.good).dataHex)
    }

    @Test("a DANE request whose records OpenSSL cannot use fails, never degrades to unauthenticated TLS",
          arguments: [
            // PKIX-TA / PKIX-EE only, and a digest of the wrong length.
            [TLSARecordData(usage: 0, selector: 1, matchingType: 1, data: Array(repeating: 1, count: 32)),
             TLSARecordData(usage: 1, selector: 1, matchingType: 1, data: Array(repeating: 2, count: 32)),
             TLSARecordData(usage: 3, selector: 1, matchingType: 1, data: [0xab])],
            // Matching type 0 ("full") with bytes that are no certificate or key (a digest published as 3 1 0).
            [TLSARecordData(usage: 3, selector: 1, matchingType: 0, data: [0x00])],
            [TLSARecordData(usage: 2, selector: 0, matchingType: 0, data: [0x30, 0x00])],
          ])
    func daneWithoutUsableRecords(records: [TLSARecordData]) async throws {
        let marker = "MARKER-\(UUID().uuidString)"
        let server = try server(.otherCA, mode: .printReceived)
        defer { server.stop() }
        let connection = try await TestConnection.open(
            port: server.port, context: context,
            authentication: .dane(tlsaBaseDomain: Self.mxName + ".", hostNames: [Self.mxName], records: records),
            earlyWrite: marker + "\n")
        guard case .authenticationFailed(65, _)? = await connection.handshakeError() else {
            Issue.record("a DANE request without a usable record did not fail with 65")
            return
        }
        await #expect(throws: (any Error).self) { try await connection.earlyWrite.get() }
        await connection.closed()
        #expect(!server.outputText.contains(marker))
    }

    // MARK: WebPKI (MTA-STS)

    @Test("webPKI succeeds with the CA from the extra CA file and the right name")
    func webPKI() async throws {
        let (info, answer) = try await exchange(.good, .webPKI(hostName: Self.mxName + "."))
        #expect(info.verified)
        #expect(info.authenticationApplied == .webPKI)
        #expect(info.verifyResult == 0)
        #expect(info.verifyResultText == "ok")
        #expect(info.daneMatch == nil)
        #expect(answer.hasPrefix("HTTP/1.0 200 ok"))
    }

    @Test("webPKI failures carry the verify result",
          arguments: [
            (ThrowawayPKI.Leaf.wrongName, 62, "hostname mismatch"),
            (.otherCA, 19, "self-signed certificate in certificate chain"),  // the server sends its root
            (.expired, 10, "certificate has expired"),
            (.selfSigned, 18, "self-signed certificate"),
          ])
    func webPKIFailures(leaf: ThrowawayPKI.Leaf, code: Int, reason: String) async throws {
        let error = try await failure(leaf, .webPKI(hostName: Self.mxName))
        #expect(error == .authenticationFailed(verifyResult: code, reason: reason))
    }

    @Test("webPKI without the extra CA does not trust the test CA")
    func webPKIWithoutExtraCA() async throws {
        let server = try server(.good)
        defer { server.stop() }
        let bare = try TLSClientContext(extraCAFile: nil)
        let connection = try await TestConnection.open(port: server.port, context: bare, authentication: .webPKI(hostName: Self.mxName),
                                                       earlyWrite: Self.httpGet)
        #expect(await connection.handshakeError() == .authenticationFailed(verifyResult: 19, reason: "self-signed certificate in certificate chain"))
        await connection.closed()
    }

    // MARK: Session information

    @Test("session information: TLS 1.3 and TLS 1.2",
          arguments: [(arguments: [String](), version: "TLSv1.3"), (arguments: ["-tls1_2"], version: "TLSv1.2")])
    func sessionInfo(arguments: [String], version: String) async throws {
        let (info, _) = try await exchange(.good, .webPKI(hostName: Self.mxName), extraArguments: arguments)
        #expect(info.protocolVersion == version)
        #expect(!info.cipher.isEmpty)
        if version == "TLSv1.3" { #expect(info.cipher.hasPrefix("TLS_")) } else { #expect(info.cipher.hasPrefix("ECDHE-ECDSA-")) }
        #expect(info.peerCertificateSubject == "CN=mx.example.test")
        #expect(info.peerCertificateIssuer == "CN=Test CA ca,O=tlsrelay tests")
        #expect(info.verifyResult == 0)
    }

    // MARK: Data and pipeline placement

    @Test("120 kB each way through a DANE-verified connection, written before the handshake completed")
    func bulkData() async throws {
        let server = try server(.good, mode: .reverse)
        defer { server.stop() }
        let lines = (0..<2000).map { i in "line \(i) " + String(repeating: "abcdefghij", count: 5) }
        let connection = try await TestConnection.open(
            port: server.port, context: context,
            authentication: .dane(tlsaBaseDomain: Self.mxName, hostNames: [Self.mxName], records: [pki.tlsa311(.good)]),
            earlyWrite: lines.map { $0 + "\n" }.joined() + "CLOSE\n")
        #expect(try await connection.handshake.get().verified)
        try await connection.earlyWrite.get()
        // s_server answers each line reversed, then closes with close_notify on "CLOSE".
        let received = try await connection.received.get()
        #expect(received == lines.map { String($0.reversed()) + "\n" }.joined())
    }

    @Test("added to an already active channel (as after the STARTTLS 220), the handshake starts at once")
    func addedToActiveChannel() async throws {
        let server = try server(.good)
        defer { server.stop() }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let early = loop.makePromise(of: Void.self)
        let received = loop.makePromise(of: String.self)
        let channel = try await ClientBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ProbeHandler(earlyWrite: nil, earlyWritePromise: early, receivedPromise: received))
                }
            }
            .connect(host: "127.0.0.1", port: server.port).get()
        let handshake = loop.makePromise(of: TLSSessionInfo.self)
        let written = loop.makePromise(of: Void.self)
        let context = self.context
        let authentication = TLSPeerAuthentication.dane(tlsaBaseDomain: Self.mxName, hostNames: [Self.mxName], records: [pki.tlsa211])
        try await loop.submit {
            try channel.pipeline.syncOperations.addHandler(
                OpenSSLHandler(context: context, authentication: authentication, serverName: nil, handshakeCompleted: handshake),
                position: .first)
            // Written right away: held back until the handshake has succeeded.
            channel.writeAndFlush(ByteBuffer(string: Self.httpGet), promise: written)
        }.get()
        let info = try await handshake.futureResult.get()
        #expect(info.daneMatch?.depth == 1)
        try await written.futureResult.get()
        #expect(try await received.futureResult.get().hasPrefix("HTTP/1.0 200 ok"))
    }

    // MARK: SNI

    @Test("SNI: the TLSA base domain for DANE, the host name for webPKI, serverName otherwise; never a trailing dot",
          arguments: [
            (TLSPeerAuthentication.dane(tlsaBaseDomain: "mx.example.test.", hostNames: ["other.example.test"],
                                        records: [TLSARecordData(usage: 3, selector: 1, matchingType: 1, data: Array(repeating: 1, count: 32))]),
             String?.none, String?.some("mx.example.test")),
            (.dane(tlsaBaseDomain: "mx.example.test.", hostNames: [],
                   records: [TLSARecordData(usage: 2, selector: 1, matchingType: 1, data: Array(repeating: 1, count: 32))]),
             "ignored.example.test", "mx.example.test"),
            (.webPKI(hostName: "mx.example.test."), nil, "mx.example.test"),
            (.opportunistic, "mx.example.test.", "mx.example.test"),
            (.encryptOnly, "mx.example.test", "mx.example.test"),
            (.opportunistic, nil, nil),
            (.opportunistic, "127.0.0.1", nil),
          ])
    func serverNameIndication(authentication: TLSPeerAuthentication, serverName: String?, expected: String?) async throws {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let hello = loop.makePromise(of: [UInt8].self)
        let server = try await PlainServer { CaptureClientHelloHandler(promise: hello) }
        let connection: TestConnection
        do {
            connection = try await TestConnection.open(port: server.port, context: context, authentication: authentication, serverName: serverName)
        } catch {
            hello.fail(TLSHandshakeError.connectionClosed)
            await server.stop()
            throw error
        }
        let bytes = try await hello.futureResult.get()
        #expect(await connection.handshakeError() == .connectionClosed)
        await server.stop()
        #expect(ClientHello.serverName(in: bytes) == expected)
    }

    // MARK: Broken peers

    @Test("the peer closing mid-handshake gives .connectionClosed")
    func peerClosesMidHandshake() async throws {
        let server = try await PlainServer { CloseOnFirstReadHandler() }
        let connection: TestConnection
        do {
            connection = try await TestConnection.open(port: server.port, context: context, authentication: .opportunistic, earlyWrite: "EHLO\r\n")
        } catch {
            await server.stop()
            throw error
        }
        let error = await connection.handshakeError()
        await #expect(throws: TLSHandshakeError.connectionClosed) { try await connection.earlyWrite.get() }
        await connection.closed()
        await server.stop()
        #expect(error == .connectionClosed)
    }

    @Test("a plaintext server gives .handshakeFailed", arguments: [
        TLSPeerAuthentication.opportunistic,
        .dane(tlsaBaseDomain: "mx.example.test", hostNames: [], records: [TLSARecordData(usage: 3, selector: 1, matchingType: 1, data: Array(repeating: 7, count: 32))]),
    ])
    func plaintextServer(authentication: TLSPeerAuthentication) async throws {
        let server = try await PlainServer { PlaintextAnswerHandler() }
        let connection: TestConnection
        do {
            connection = try await TestConnection.open(port: server.port, context: context, authentication: authentication, earlyWrite: "EHLO\r\n")
        } catch {
            await server.stop()
            throw error
        }
        let error = await connection.handshakeError()
        await connection.closed()
        await server.stop()
        guard case .handshakeFailed(let reason)? = error else {
            Issue.record("expected .handshakeFailed, got \(String(describing: error))")
            return
        }
        #expect(reason.contains("wrong version number") || reason.contains("packet length too long"), "\(reason)")
    }

    @Test("closing the channel during the handshake gives .connectionClosed")
    func localCloseDuringHandshake() async throws {
        // A server that accepts and never answers: the handshake waits for ServerHello.
        final class SilentHandler: ChannelInboundHandler, Sendable {
            typealias InboundIn = ByteBuffer
        }
        let server = try await PlainServer { SilentHandler() }
        let connection: TestConnection
        do {
            connection = try await TestConnection.open(port: server.port, context: context, authentication: .opportunistic, earlyWrite: "EHLO\r\n")
        } catch {
            await server.stop()
            throw error
        }
        try await connection.channel.close()
        #expect(await connection.handshakeError() == .connectionClosed)
        await #expect(throws: TLSHandshakeError.connectionClosed) { try await connection.earlyWrite.get() }
        await server.stop()
    }
}

/// Context construction and digests.
@Suite(.throwawayPKI)
struct TLSSupportTests {
    let pki: ThrowawayPKI

    init() throws {
        pki = try #require(ThrowawayPKI.current)
    }

    @Test("TLSADigest agrees with the openssl command line")
    func digests() throws {
        for leaf in ThrowawayPKI.Leaf.allCases {
            let pem = try String(contentsOfFile: pki.certificateFile(leaf), encoding: .utf8)
            #expect(try TLSADigest.sha256SPKI(pemCertificate: pem) == pki.leafSPKISHA256[leaf])
        }
        let caPEM = try String(contentsOfFile: pki.caFile, encoding: .utf8)
        #expect(try TLSADigest.record(usage: 2, selector: 1, matchingType: 1, pemCertificate: caPEM) == pki.tlsa211)
        let full = try Shell.run("openssl x509 -in ca.pem -outform DER | openssl dgst -sha512 -r", in: pki.directory)
        #expect(try TLSADigest.hex(TLSADigest.data(selector: 0, matchingType: 2, pemCertificate: caPEM)) == String(full.prefix(128)))
        #expect(throws: TLSADigest.Failure.notAPEMCertificate) { try TLSADigest.sha256SPKI(pemCertificate: "nonsense") }
    }

    @Test("a missing extra CA file is an error")
    func missingCAFile() {
        #expect(throws: TLSContextError.self) { try TLSClientContext(extraCAFile: pki.directory + "/absent.pem") }
    }

    @Test("hex coding of TLSA data")
    func hex() {
        #expect(TLSARecordData(usage: 3, selector: 1, matchingType: 1, hex: "0A ff")?.data == [0x0a, 0xff])
        #expect(TLSARecordData(usage: 3, selector: 1, matchingType: 1, hex: "abc") == nil)
        #expect(TLSARecordData(usage: 3, selector: 1, matchingType: 1, data: [0, 255]).dataHex == "00ff")
    }
}
