import Foundation
import Testing
@testable import RelayDNS

/// The resolver against the loopback test world: every DNS claim in world.json (status and
/// data of the MX, A, TLSA and MTA-STS TXT lookups) is checked with the real resolver, NSD and
/// a freshly signed zone.
@Suite("RelayDNS against the loopback test world", .serialized, .testWorld)
struct WorldResolverTests {
    let world: TestWorld

    init() throws {
        world = try #require(TestWorld.current, "the test world is not up")
    }

    var scenarios: [WorldJSON.Scenario] {
        world.data.scenarios.values.sorted { $0.name < $1.name }
    }

    static func status(_ s: String) -> DNSSECStatus? { DNSSECStatus(rawValue: s) }

    /// `\# LENGTH HEX` (RFC 3597 generic rdata) of a record shorter than 3 octets.
    static func bytes(hex text: Substring) throws -> [UInt8] {
        let hex = Array(text.utf8)
        var data = [UInt8]()
        var i = 0
        while i + 1 < hex.count {
            data.append(try #require(UInt8(String(decoding: hex[i...i + 1], as: UTF8.self), radix: 16)))
            i += 2
        }
        return data
    }

    static func malformedRecord(_ text: String) throws -> TLSARecord {
        TLSARecord(malformed: try bytes(hex: text.split(separator: " ")[2]))
    }

    static func tlsaRecord(_ text: String) throws -> TLSARecord {
        let f = text.split(separator: " ")
        let data = try bytes(hex: f[3])
        return TLSARecord(usage: try #require(UInt8(f[0])), selector: try #require(UInt8(f[1])),
                          matchingType: try #require(UInt8(f[2])), data: data)
    }

    @Test("MX: status and data per scenario (secure, insecure child, bogus, secure NXDOMAIN, null MX, SERVFAIL)")
    func mxLookups() async throws {
        let resolver = try world.resolver(timeoutSeconds: 5)
        defer { resolver.shutdown() }
        var checked = Set<String>()
        for s in scenarios {
            let exp = s.lookups.mx
            #expect(exp.type == "MX")
            let t0 = Date()
            if exp.status == "servfail" {
                do {
                    let a = try await resolver.mx(s.domain)
                    Issue.record("\(s.name): expected a lookup failure, got \(a.status) rcode \(a.rcode) \(a.records)")
                } catch let e as DNSLookupError {
                    switch e {
                    case .serverFailure(let name, let type, _), .timeout(let name, let type):
                        #expect(name == s.domain && type == .mx, "\(s.name): \(e)")
                    default: Issue.record("\(s.name): unexpected \(e)")
                    }
                }
                #expect(Date().timeIntervalSince(t0) < 15, "\(s.name): failure took too long")
                checked.insert(exp.status + "/" + exp.result)
                continue
            }
            let a = try await resolver.mx(s.domain)
            let c = Comment(rawValue: "\(s.name): \(a.status) rcode \(a.rcode) \(a.records) why \(a.whyBogus ?? "-")")
            #expect(a.name == s.domain, c)
            #expect(a.status == Self.status(exp.status), c)
            switch exp.result {
            case "data":
                #expect(a.rcode == 0 && !a.records.isEmpty, c)
                if s.mx_mode == "null" {
                    #expect(a.isNullMX, c)
                    #expect(a.records == [MXRecord(preference: 0, exchange: "")], c)
                } else {
                    let want = Set(s.mx.map { MXRecord(preference: UInt16($0.preference), exchange: $0.name) })
                    #expect(Set(a.records) == want, c)
                    #expect(!a.isNullMX, c)
                }
            case "nodata":
                #expect(a.isNoData && !a.isNXDomain && a.records.isEmpty, c)
            case "nxdomain":
                #expect(a.isNXDomain && !a.isNoData && a.records.isEmpty && a.rcode == 3, c)
            default:
                Issue.record("\(s.name): unknown expected result \(exp.result)")
            }
            if a.status == .bogus {
                // RFC 7672 §2.1.1: bogus is never a denial; the reason is reported.
                #expect(a.whyBogus?.isEmpty == false, c)
                #expect(!a.isNoData && !a.isNXDomain, c)
            } else {
                #expect(a.whyBogus == nil, c)
            }
            checked.insert(exp.status + "/" + exp.result)
        }
        // The world covers every kind of MX outcome.
        for kind in ["secure/data", "insecure/data", "bogus/data", "secure/nxdomain", "secure/nodata", "servfail/none"] {
            #expect(checked.contains(kind), "no scenario with MX outcome \(kind)")
        }
        #expect(scenarios.contains { $0.mx_mode == "null" })
    }

    @Test("A/AAAA: status, addresses and CNAME expansion per MX host")
    func addressLookups() async throws {
        let resolver = try world.resolver(timeoutSeconds: 5)
        defer { resolver.shutdown() }
        var sawCNAME = false, sawBogus = false, sawInsecure = false, sawAAAAFailure = false
        for s in scenarios {
            for h in s.mx {
                let exp = h.lookups.a
                let results = await resolver.addressLookups(h.name)
                let v4 = try results.ipv4.get()
                if h.dns?.aaaa_servfail == true {
                    // AAAA fails on its own; the A answer is not lost with it.
                    #expect(throws: DNSLookupError.self) { try results.ipv6.get() }
                    #expect(v4.status == Self.status(exp.status) && v4.records == [h.address], "\(s.name): A \(v4.status) \(v4.records)")
                    sawAAAAFailure = true
                    continue
                }
                let v6 = try results.ipv6.get()
                let c = Comment(rawValue: "\(s.name) \(h.name): A \(v4.status) \(v4.records) AAAA \(v6.status) rcode \(v6.rcode) \(v6.records) why \(v4.whyBogus ?? "-")")
                #expect(v4.status == Self.status(exp.status), c)
                #expect(v4.name == h.name && v6.name == h.name, c)
                // The served A record is the working address in every scenario (a bogus one
                // keeps its old signature over the bait address).
                #expect(v4.records == [h.address], c)
                let canonical = h.cname_target ?? h.name
                #expect(v4.canonicalName == canonical && v6.canonicalName == canonical, c)
                // No AAAA records in the world: a NODATA, with the status of the zone.
                #expect(v6.isNoData, c)
                #expect(v6.status == (exp.status == "bogus" ? .secure : Self.status(exp.status)), c)
                if exp.status == "bogus" {
                    #expect(v4.whyBogus?.isEmpty == false && !v4.isNoData, c)
                    sawBogus = true
                }
                sawCNAME = sawCNAME || h.cname_target != nil
                sawInsecure = sawInsecure || exp.status == "insecure"
            }
        }
        #expect(sawCNAME && sawBogus && sawInsecure && sawAAAAFailure, "world lacks CNAME / bogus A / insecure A / failing AAAA hosts")
    }

    @Test("TLSA: exact records and status per MX host; SERVFAIL fails within the deadline")
    func tlsaLookups() async throws {
        let timeout = 3.0
        let resolver = try world.resolver(timeoutSeconds: timeout)
        defer { resolver.shutdown() }
        var seen = Set<String>()
        for s in scenarios {
            for h in s.mx {
                let exp = h.lookups.tlsa
                let base = h.cname_target ?? h.name
                #expect(h.tlsa_name == "_25._tcp.\(base)" && exp.name == h.tlsa_name)
                seen.insert(exp.status + "/" + exp.result)
                let t0 = Date()
                if exp.status == "servfail" {
                    do {
                        let a = try await resolver.tlsa(port: 25, host: base)
                        Issue.record("\(s.name): expected a lookup failure, got \(a.status) rcode \(a.rcode) \(a.records)")
                    } catch let e as DNSLookupError {
                        switch e {
                        case .serverFailure(let name, let type, _), .timeout(let name, let type):
                            #expect(name == h.tlsa_name && type == .tlsa, "\(s.name): \(e)")
                        default: Issue.record("\(s.name): unexpected \(e)")
                        }
                    }
                    #expect(Date().timeIntervalSince(t0) < timeout + 10, "\(s.name): TLSA failure took too long")
                    continue
                }
                let a = try await resolver.tlsa(port: 25, host: base)
                let c = Comment(rawValue: "\(s.name) \(h.tlsa_name): \(a.status) rcode \(a.rcode) \(a.records) why \(a.whyBogus ?? "-")")
                #expect(a.name == h.tlsa_name, c)
                #expect(a.status == Self.status(exp.status), c)
                switch exp.result {
                case "data":
                    // Exact values from world.json (for a bogus RRset these are the served
                    // values, whose signature does not match).
                    let want = try h.tlsa.map(Self.tlsaRecord) + (h.tlsa_malformed ?? []).map(Self.malformedRecord)
                    #expect(a.records.map(\.description).sorted() == want.map(\.description).sorted(), c)
                    #expect(Set(a.records) == Set(want), c)
                case "nxdomain":
                    #expect(a.isNXDomain && a.records.isEmpty, c)
                default:
                    Issue.record("\(s.name): unexpected expected result \(exp.result)")
                }
                if a.status == .bogus {
                    #expect(a.whyBogus?.isEmpty == false && !a.isNXDomain && !a.isNoData, c)
                }
            }
        }
        for kind in ["secure/data", "secure/nxdomain", "insecure/data", "bogus/data", "servfail/none"] {
            #expect(seen.contains(kind), "no host with TLSA outcome \(kind)")
        }
    }

    @Test("TXT: _mta-sts.<domain> gives the published policy id record, secure")
    func mtaStsTXT() async throws {
        let resolver = try world.resolver()
        defer { resolver.shutdown() }
        var n = 0
        for s in scenarios {
            guard let sts = s.mta_sts else { continue }
            let a = try await resolver.txt("_mta-sts.\(s.domain)")
            #expect(a.status == .secure, "\(s.name)")
            #expect(a.records == [sts.txt], "\(s.name): \(a.records)")
            let web = try await resolver.addresses(sts.policy_host)
            #expect(web.ipv4.records == [sts.address] && web.ipv4.status == .secure, "\(s.name)")
            n += 1
        }
        #expect(n > 0)
        // A domain without MTA-STS: secure NXDOMAIN for the TXT name.
        let none = try await resolver.txt("_mta-sts.dane-ee.test")
        #expect(none.status == .secure && none.isNXDomain)
    }

    @Test("200 concurrent lookups all complete")
    func concurrentLookups() async throws {
        let resolver = try world.resolver(timeoutSeconds: 5)
        defer { resolver.shutdown() }
        // Hosts whose lookups answer (a scenario's deliberate SERVFAIL, of the TLSA or of the
        // AAAA records, is not what this test is about).
        let hosts = scenarios.flatMap(\.mx).filter { $0.lookups.tlsa.status != "servfail" && $0.dns?.aaaa_servfail != true }
        let domains = scenarios.filter { $0.lookups.mx.status != "servfail" }.map(\.domain)
        #expect(!hosts.isEmpty && !domains.isEmpty)
        let t0 = Date()
        let results = await withTaskGroup(of: Bool.self, returning: [Bool].self) { group in
            for i in 0..<200 {
                group.addTask {
                    do {
                        switch i % 4 {
                        case 0: _ = try await resolver.mx(domains[i % domains.count])
                        case 1: _ = try await resolver.addresses(hosts[i % hosts.count].name)
                        case 2:
                            let h = hosts[i % hosts.count]
                            _ = try await resolver.tlsa(port: 25, host: h.cname_target ?? h.name)
                        default: _ = try await resolver.txt("_smtp._tls.\(domains[i % domains.count])")
                        }
                        return true
                    } catch {
                        print("lookup \(i) failed: \(error)")
                        return false
                    }
                }
            }
            var out = [Bool]()
            for await r in group { out.append(r) }
            return out
        }
        let elapsed = Date().timeIntervalSince(t0)
        print("[RelayDNSTests] 200 concurrent lookups in \(String(format: "%.3f", elapsed)) s")
        #expect(results.count == 200)
        #expect(results.allSatisfy { $0 })
        #expect(elapsed < 30)
    }
    @Test("answers racing deadlines and task cancellation: every lookup completes exactly once")
    func racingDeadlines() async throws {
        // Answers take ~1-5 ms; a 3 ms deadline makes callbacks, timeouts and cancellations
        // race on the same queries.
        let resolver = try world.resolver(timeoutSeconds: 0.003)
        defer { resolver.shutdown() }
        let names = scenarios.flatMap(\.mx).filter { $0.dns?.aaaa_servfail != true }.map(\.name)
        // Warm the cache (a timed-out query still completes inside libunbound), so that some
        // answers arrive before the deadline.
        for name in names { _ = try? await resolver.addresses(name) }
        try await Task.sleep(nanoseconds: 200_000_000)
        let t0 = Date()
        let outcomes = await withTaskGroup(of: String.self, returning: [String: Int].self) { group in
            for i in 0..<1000 {
                let task = Task { () -> String in
                    do {
                        _ = try await resolver.addresses(names[i % names.count])
                        return "answer"
                    } catch is CancellationError {
                        return "cancelled"
                    } catch DNSLookupError.timeout {
                        return "timeout"
                    } catch {
                        return "other: \(error)"
                    }
                }
                if i % 3 == 0 { task.cancel() }
                group.addTask { await task.value }
            }
            var counts: [String: Int] = [:]
            for await o in group { counts[o, default: 0] += 1 }
            return counts
        }
        print("[RelayDNSTests] racing: \(outcomes) in \(String(format: "%.3f", Date().timeIntervalSince(t0))) s")
        #expect(outcomes.values.reduce(0, +) == 1000)
        #expect(outcomes.keys.allSatisfy { ["answer", "cancelled", "timeout"].contains($0) }, "\(outcomes)")
    }
}
