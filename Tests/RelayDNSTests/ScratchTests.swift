import Testing
import Foundation
@testable import RelayDNS

@Test func scratch() async throws {
    let dir = "/tmp/w3"
    let r = try Resolver(configuration: .init(trustAnchorFile: dir + "/dns/trust-anchor.ds",
        stubZones: [.init(name: "test.", servers: [.init(address: "127.0.1.53")])], timeoutSeconds: 5))
    for n in ["dane-ee.test", "insecure.test", "dane-bogus-mx.test", "nxdomain.test", "null-mx.test", "servfail-mx.test", "implicit-mx.test"] {
        let t0 = Date()
        do { let a = try await r.mx(n); print(n, a.status, a.rcode, a.records, a.whyBogus ?? "-", a.canonicalName, Date().timeIntervalSince(t0)) }
        catch { print(n, "ERR", error, Date().timeIntervalSince(t0)) }
    }
    for n in ["mx.dane-ee.test", "mx.dane-bogus-a.test", "mx.cname-mx.test"] {
        let a = try await r.addresses(n); print(n, a.ipv4.status, a.ipv4.records, a.ipv4.canonicalName, a.ipv6.status, a.ipv6.rcode, a.ipv4.whyBogus ?? "-")
    }
    for n in ["mx.dane-ee.test", "mx.dane-bogus-tlsa.test", "mx.dane-tlsa-servfail.test", "mx-target.cname-mx.test"] {
        let t0 = Date()
        do { let a = try await r.tlsa(port: 25, host: n); print(n, a.status, a.rcode, a.records, a.whyBogus ?? "-", Date().timeIntervalSince(t0)) }
        catch { print(n, "ERR", error, Date().timeIntervalSince(t0)) }
    }
    let t = try await r.txt("_mta-sts.sts-enforce.test"); print(t.status, t.records)
    r.shutdown()
}
