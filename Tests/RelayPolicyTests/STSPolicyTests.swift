import Foundation
import Testing
@testable import RelayPolicy

@Suite("MTA-STS policy, TXT record, mx matching, cache")
struct STSPolicyTests {
    struct Body: Sendable, CustomStringConvertible {
        let text: String
        let expected: STSPolicy?
        var description: String { text.replacingOccurrences(of: "\r", with: "\\r").replacingOccurrences(of: "\n", with: "\\n") }
    }

    static let bodies: [Body] = [
        Body(text: "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\n",
             expected: STSPolicy(mode: .enforce, maxAge: 86400, mx: ["mail.example.com", "*.example.net"])),
        // LF line endings, no final newline, extra spaces, unknown keys, upper-case mx and a trailing dot.
        Body(text: "version: STSv1\nmode: testing\nmx:  MX.Example.COM. \nfoo_bar: anything at all\nmax_age:604800",
             expected: STSPolicy(mode: .testing, maxAge: 604800, mx: ["mx.example.com"])),
        Body(text: "version: STSv1\nmode: none\nmax_age: 0\n", expected: STSPolicy(mode: .none, maxAge: 0, mx: [])),
        Body(text: "version: STSv1\nmode: enforce\nmax_age: 86400\n", expected: nil),                 // missing mx
        Body(text: "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", expected: nil),       // bad version
        Body(text: "mode: enforce\nmx: a.example\nmax_age: 1\n", expected: nil),                       // no version
        Body(text: "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n", expected: nil),        // bad mode
        Body(text: "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n", expected: nil), // max_age too large
        Body(text: "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -5\n", expected: nil),
        Body(text: "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n", expected: nil),
        Body(text: "version: STSv1\nmode: enforce\nmx: a.example\n", expected: nil),                   // no max_age
        Body(text: "version: STSv1\nmode: enforce\nmx: bad_host!\nmax_age: 1\n", expected: nil),
        Body(text: "version: STSv1\nmode: enforce\nmode: testing\nmx: a.example\nmax_age: 1\n", expected: nil),
        Body(text: "<html>not a policy</html>", expected: nil),
        Body(text: "", expected: nil),
    ]

    @Test("policy parser", arguments: bodies)
    func parse(_ body: Body) throws {
        if let expected = body.expected {
            #expect(try STSPolicy.parse(body.text) == expected)
        } else {
            #expect(throws: STSPolicy.Invalid.self) { try STSPolicy.parse(body.text) }
        }
    }

    @Test("mx pattern matching (RFC 8461 §4.1)")
    func matching() {
        let policy = STSPolicy(mode: .enforce, maxAge: 1, mx: ["mail.example.com", "*.example.net"])
        #expect(policy.matches(mxHost: "mail.example.com"))
        #expect(policy.matches(mxHost: "MAIL.Example.Com."))
        #expect(!policy.matches(mxHost: "other.example.com"))
        #expect(policy.matches(mxHost: "mx1.example.net"))
        #expect(!policy.matches(mxHost: "a.b.example.net"))      // one label only
        #expect(!policy.matches(mxHost: "example.net"))          // the wildcard needs a label
        #expect(!policy.matches(mxHost: "192.0.2.1"))            // IP literals never match
        #expect(!policy.matches(mxHost: "[192.0.2.1]"))
        #expect(!STSPolicy(mode: .enforce, maxAge: 1, mx: ["192.0.2.1"]).matches(mxHost: "192.0.2.1"))
    }

    @Test("TXT record (RFC 8461 §3.1)")
    func record() throws {
        #expect(try STSRecord.parse(txtRecords: ["v=STSv1; id=20160831085700Z;"]).id == "20160831085700Z")
        #expect(try STSRecord.parse(txtRecords: ["v=spf1 -all", "v=STSv1;id=abc123"]).id == "abc123")
        #expect(try STSRecord.parse(txtRecords: ["v=STSv1; id=abc; ext_1=value"]).id == "abc")
        #expect(throws: STSRecord.Problem.none) { try STSRecord.parse(txtRecords: ["v=spf1 -all"]) }
        #expect(throws: STSRecord.Problem.none) { try STSRecord.parse(txtRecords: []) }
        #expect(throws: STSRecord.Problem.several) { try STSRecord.parse(txtRecords: ["v=STSv1; id=a", "v=STSv1; id=b"]) }
        for bad in ["v=STSv1", "v=STSv1; id=", "v=STSv1; id=has-dash", "v=STSv1; id=" + String(repeating: "a", count: 33),
                    "v=STSv1; id=a; id=b", "v=STSv1; junk"] {
            #expect(throws: STSRecord.Problem.self, "\(bad)") { try STSRecord.parse(txtRecords: [bad]) }
        }
        #expect(throws: STSRecord.Problem.none) { try STSRecord.parse(txtRecords: ["v=STSv10; id=a"]) }
    }

    @Test("cache survives a new instance and refuses odd domain names")
    func cache() throws {
        let directory = NSTemporaryDirectory() + "tlsrelay-sts-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cache = try STSPolicyCache(stateDirectory: directory)
        let entry = CachedSTSPolicy(domain: "example.com", id: "abc", policy: STSPolicy(mode: .enforce, maxAge: 100, mx: ["mx.example.com"]), fetchedAt: 1000)
        try cache.store(entry)
        let reopened = try STSPolicyCache(stateDirectory: directory)
        #expect(reopened.policy(for: "example.com") == entry)
        #expect(reopened.policy(for: "EXAMPLE.com") == entry)
        #expect(!entry.isExpired(now: 1099) && entry.isExpired(now: 1100))
        #expect(STSPolicyCache.fileName(for: "../etc") == nil)
        #expect(STSPolicyCache.fileName(for: "a/b") == nil)
        #expect(reopened.all() == [entry])
    }
}
