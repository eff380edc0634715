import Foundation
import Testing
@testable import RelayDNS
#if canImport(Glibc)
import Glibc
#endif

/// A UDP socket on 127.0.0.1 that receives DNS queries and never answers: a server that has
/// gone silent (libunbound itself would wait ~29 s before SERVFAIL).
final class BlackholeDNS: Sendable {
    let fd: Int32
    let port: Int

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw WorldError("socket: \(errno)") }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bind(fd, sa, len) == 0 && getsockname(fd, sa, &len) == 0
            }
        }
        guard ok else {
            close(fd)
            throw WorldError("bind/getsockname: \(errno)")
        }
        self.fd = fd
        self.port = Int(UInt16(bigEndian: addr.sin_port))
    }

    var server: DNSServerAddress { DNSServerAddress(address: "127.0.0.1", port: port) }

    deinit { close(fd) }
}

/// Resolver behaviour that needs no test world: configuration errors, deadlines, shutdown,
/// cancellation, name checks and rdata parsing.
@Suite("RelayDNS without the world")
struct ResolverLocalTests {
    @Test("an unreadable or invalid trust anchor file makes init throw")
    func badTrustAnchor() throws {
        let missing = "/nonexistent-\(UUID().uuidString)/trust-anchor.ds"
        do {
            _ = try Resolver(configuration: .init(trustAnchorFile: missing))
            Issue.record("init succeeded with a missing trust anchor file")
        } catch let DNSLookupError.resolverError(text) {
            #expect(text.contains(missing), "\(text)")
        }

        let garbage = NSTemporaryDirectory() + "relaydns-garbage-\(UUID().uuidString).ds"
        try "this is not a DS record\n".write(toFile: garbage, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: garbage) }
        #expect(throws: DNSLookupError.self) {
            _ = try Resolver(configuration: .init(trustAnchorFile: garbage))
        }
    }

    @Test("invalid configuration values are rejected")
    func badConfiguration() {
        #expect(throws: DNSLookupError.self) {
            _ = try Resolver(configuration: .init(stubZones: [.init(name: "test.", servers: [.init(address: "not-an-ip")])]))
        }
        #expect(throws: DNSLookupError.self) {
            _ = try Resolver(configuration: .init(stubZones: [.init(name: "bad zone.", servers: [.init(address: "127.0.0.1")])]))
        }
        #expect(throws: DNSLookupError.self) {
            _ = try Resolver(configuration: .init(forwarders: [.init(address: "127.0.0.1", port: 0)]))
        }
        #expect(throws: DNSLookupError.self) {
            _ = try Resolver(configuration: .init(timeoutSeconds: 0))
        }
    }

    @Test("a stub at an address where nothing listens fails fast: timeout or SERVFAIL")
    func unreachableStub() async throws {
        let resolver = try Resolver(configuration: .init(
            stubZones: [.init(name: "test.", servers: [.init(address: "127.0.9.9", port: 53)])],
            timeoutSeconds: 1))
        defer { resolver.shutdown() }
        let t0 = Date()
        do {
            let a = try await resolver.mx("nothing-listens.test")
            Issue.record("got an answer: \(a.status) rcode \(a.rcode)")
        } catch let e as DNSLookupError {
            switch e {
            case .timeout(let name, let type), .serverFailure(let name, let type, _):
                #expect(name == "nothing-listens.test" && type == .mx)
            default: Issue.record("unexpected \(e)")
            }
        }
        let elapsed = Date().timeIntervalSince(t0)
        print("[RelayDNSTests] unreachable stub failed after \(String(format: "%.3f", elapsed)) s")
        #expect(elapsed < 20)   // our deadline, not libunbound's ~29 s; generous: other suites load both cores
    }

    @Test("a silent server gives .timeout after timeoutSeconds, not libunbound's ~29 s")
    func deadline() async throws {
        let hole = try BlackholeDNS()
        let resolver = try Resolver(configuration: .init(
            stubZones: [.init(name: "test.", servers: [hole.server])], timeoutSeconds: 1))
        defer { resolver.shutdown() }
        let t0 = Date()
        await #expect(throws: DNSLookupError.timeout(name: "_25._tcp.silent.test", type: .tlsa)) {
            _ = try await resolver.tlsa(port: 25, host: "Silent.Test.")
        }
        let elapsed = Date().timeIntervalSince(t0)
        print("[RelayDNSTests] timeout after \(String(format: "%.3f", elapsed)) s")
        #expect(elapsed >= 0.95 && elapsed < 20)   // not ~29 s; other suites load both cores
        // Both halves of addresses() time out together, not one after the other.
        let t1 = Date()
        await #expect(throws: DNSLookupError.self) { _ = try await resolver.addresses("silent2.test") }
        #expect(Date().timeIntervalSince(t1) < 20)
    }

    @Test("shutdown with queries in flight resumes them all with an error")
    func shutdownInFlight() async throws {
        let hole = try BlackholeDNS()
        let resolver = try Resolver(configuration: .init(
            stubZones: [.init(name: "test.", servers: [hole.server])], timeoutSeconds: 30))
        let n = 100
        let t0 = Date()
        let lookups = (0..<n).map { i in
            Task { () -> (any Error)? in
                do {
                    _ = try await resolver.mx("host\(i).test")
                    return nil
                } catch {
                    return error
                }
            }
        }
        try await Task.sleep(nanoseconds: 300_000_000)
        resolver.shutdown()
        var errors: [any Error] = []
        for t in lookups {
            if let e = await t.value { errors.append(e) }
        }
        let elapsed = Date().timeIntervalSince(t0)
        #expect(errors.count == n)
        #expect(errors.allSatisfy { ($0 as? DNSLookupError) == .resolverError("resolver has been shut down") })
        #expect(elapsed < 20, "shutdown took \(elapsed) s")
        // Later lookups fail at once; a second shutdown is harmless.
        await #expect(throws: DNSLookupError.resolverError("resolver has been shut down")) {
            _ = try await resolver.txt("late.test")
        }
        resolver.shutdown()
    }

    @Test("shutdown racing task cancellations and new lookups: everything completes")
    func shutdownRacingCancellation() async throws {
        let hole = try BlackholeDNS()
        let resolver = try Resolver(configuration: .init(
            stubZones: [.init(name: "test.", servers: [hole.server])], timeoutSeconds: 30))
        let tasks = (0..<500).map { i in
            Task { () -> String in
                do {
                    _ = try await resolver.txt("race\(i).test")
                    return "answer"
                } catch is CancellationError {
                    return "cancelled"
                } catch DNSLookupError.resolverError {
                    return "shut down"
                } catch {
                    return "other: \(error)"
                }
            }
        }
        try await Task.sleep(nanoseconds: 100_000_000)
        async let cancelling: Void = { for (i, t) in tasks.enumerated() where i % 2 == 0 { t.cancel() } }()
        resolver.shutdown()
        await cancelling
        var counts: [String: Int] = [:]
        for t in tasks { counts[await t.value, default: 0] += 1 }
        #expect(counts.values.reduce(0, +) == 500)
        #expect(counts.keys.allSatisfy { ["cancelled", "shut down"].contains($0) }, "\(counts)")
    }

    @Test("cancelling the task cancels the lookup")
    func taskCancellation() async throws {
        let hole = try BlackholeDNS()
        let resolver = try Resolver(configuration: .init(
            stubZones: [.init(name: "test.", servers: [hole.server])], timeoutSeconds: 30))
        defer { resolver.shutdown() }
        let t0 = Date()
        let task = Task { try await resolver.mx("cancelled.test") }
        try await Task.sleep(nanoseconds: 200_000_000)
        task.cancel()
        await #expect(throws: CancellationError.self) { _ = try await task.value }
        #expect(Date().timeIntervalSince(t0) < 20)   // not the 30 s timeout
        // Cancelled before it starts.
        let early = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await resolver.mx("early.test")
        }
        await #expect(throws: CancellationError.self) { _ = try await early.value }
    }

    @Test("names that are not valid DNS names are rejected before any query")
    func invalidNames() async throws {
        let hole = try BlackholeDNS()   // would time out if anything were sent
        let resolver = try Resolver(configuration: .init(
            stubZones: [.init(name: "test.", servers: [hole.server])], timeoutSeconds: 5))
        defer { resolver.shutdown() }
        let bad = ["", ".", "a..test", "bad name.test", "semi;colon.test", "x\u{0}.test",
                   "ünicode.test", String(repeating: "a", count: 64) + ".test",
                   (0..<130).map { _ in "a" }.joined(separator: "."), "back\\slash.test",
                   "*.test", "a.test..", "-\n.test"]
        for name in bad {
            let t0 = Date()
            do {
                _ = try await resolver.mx(name)
                Issue.record("accepted \(name.debugDescription)")
            } catch let DNSLookupError.resolverError(text) {
                #expect(text.contains("invalid DNS name"), "\(text)")
            }
            #expect(Date().timeIntervalSince(t0) < 5)
        }
        await #expect(throws: DNSLookupError.self) { _ = try await resolver.tlsa(port: 0, host: "ok.test") }
        await #expect(throws: DNSLookupError.self) { _ = try await resolver.tlsa(port: 65536, host: "ok.test") }
        #expect(try DNSWire.normalize("MX1.Example.TEST.") == "mx1.example.test")
        #expect(try DNSWire.normalize("_25._tcp.mx-1.example") == "_25._tcp.mx-1.example")
        #expect(try DNSWire.normalize(String(repeating: "a", count: 63) + ".test").count == 68)
    }

    @Test("rdata parsing: MX, TLSA, TXT, A, AAAA")
    func rdata() throws {
        // MX 10 Mx.Example.TEST. -> lowercased, no trailing dot
        let mx = try DNSWire.mx([0, 10, 2, 0x4D, 0x78, 7] + Array("Example".utf8) + [4] + Array("TEST".utf8) + [0])
        #expect(mx == MXRecord(preference: 10, exchange: "mx.example.test"))
        // RFC 7505 null MX: 0 .
        let null = try DNSWire.mx([0, 0, 0])
        #expect(null.isNullMX && null.exchange == "" && null.preference == 0)
        // Odd octets are escaped, never passed through.
        let odd = try DNSWire.mx([0xFF, 0xFF, 3, 0x61, 0x20, 0x2E, 0])
        #expect(odd == MXRecord(preference: 65535, exchange: "a\\032\\046"))
        #expect(throws: (any Error).self) { _ = try DNSWire.mx([0, 10, 0xC0, 0x0C]) }   // compression pointer
        #expect(throws: (any Error).self) { _ = try DNSWire.mx([0, 10, 5, 0x61]) }      // truncated
        #expect(throws: (any Error).self) { _ = try DNSWire.mx([0, 10, 0, 1]) }         // trailing octets
        // TLSA 3 1 1 <32 octets>
        let data = (0..<32).map { UInt8($0) }
        let tlsa = DNSWire.tlsa([3, 1, 1] + data)
        #expect(tlsa == TLSARecord(usage: 3, selector: 1, matchingType: 1, data: data))
        #expect(tlsa.description == "3 1 1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
        // RFC 7672 §3.1.3: rdata shorter than 3 octets is one unusable record, not a failed lookup.
        let short = DNSWire.tlsa([3, 1])
        #expect(!short.isWellFormed && short.data == [3, 1] && tlsa.isWellFormed)
        #expect(short.description == "malformed TLSA rdata (2 octets: 0301)")
        // Reverse names (RFC 1035 §3.5, RFC 3596 §2.5) and PTR rdata.
        #expect(DNSWire.reverseName("192.0.2.1") == "1.2.0.192.in-addr.arpa")
        #expect(DNSWire.reverseName("2001:db8::1") == "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa")
        #expect(DNSWire.reverseName("mx.example") == nil)
        #expect(try DNSWire.ptr([9] + Array("localhost".utf8) + [0]) == "localhost")
        #expect(DNSWire.sameAddress("2001:DB8::1", "2001:db8:0::1") && !DNSWire.sameAddress("::1", "::2"))
        // TXT: strings concatenated without separator (RFC 7208 §3.3)
        let txt = try DNSWire.txt([8] + Array("v=STSv1;".utf8) + [7] + Array(" id=42;".utf8) + [0])
        #expect(txt == "v=STSv1; id=42;")
        #expect(throws: (any Error).self) { _ = try DNSWire.txt([5, 0x61]) }
        #expect(try DNSWire.address([192, 0, 2, 1], type: .a) == "192.0.2.1")
        #expect(try DNSWire.address([0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 11) + [1], type: .aaaa) == "2001:db8::1")
        #expect(throws: (any Error).self) { _ = try DNSWire.address([1, 2, 3], type: .a) }
    }

    @Test("answer helpers: bogus is never a denial; null MX")
    func answerHelpers() {
        let bogusNX = DNSAnswer<MXRecord>(name: "x.test", canonicalName: "x.test", type: .mx,
                                          status: .bogus, whyBogus: "sig", rcode: 3, records: [])
        #expect(!bogusNX.isNXDomain && !bogusNX.isNoData)
        let nodata = DNSAnswer<MXRecord>(name: "x.test", canonicalName: "x.test", type: .mx,
                                         status: .secure, rcode: 0, records: [])
        #expect(nodata.isNoData && !nodata.isNXDomain && !nodata.isNullMX)
        let null = DNSAnswer(name: "x.test", canonicalName: "x.test", type: .mx, status: .secure,
                             rcode: 0, records: [MXRecord(preference: 0, exchange: "")])
        #expect(null.isNullMX)
        #expect(DNSRecordType.tlsa.rawValue == 52 && DNSRecordType.mx.description == "MX")
        #expect(DNSServerAddress(address: "127.0.1.53").unboundNotation == "127.0.1.53@53")
    }
}
