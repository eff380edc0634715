import DeliveryPolicy
import Foundation
import Logging
import Testing
@testable import RelayTLSRPT
@testable import TLSRPTCore

@Suite("TLS-RPT formats (RFC 8460)")
struct TLSRPTCoreTests {
    @Test("the _smtp._tls record: exactly one v=TLSRPTv1, mailto and https URIs, junk skipped")
    func record() throws {
        let record = try TLSRPTRecord.select(["v=spf1 -all", "v=TLSRPTv1; rua=mailto:tlsrpt@example.net,https://reports.example.net/v1/tlsrpt"])
        #expect(record.rua == [.mailto("tlsrpt@example.net"), .https("https://reports.example.net/v1/tlsrpt")])
        #expect(record.ignored.isEmpty)
        // tlsrpt-reporter #54: a rua without a scheme must not stop the good one.
        let mixed = try TLSRPTRecord.parse("v=TLSRPTv1;rua=tlsrpt@example.net, mailto:a%40b@example.net?subject=x ,http://plain.example.net/ ,mailto:ok@example.net;x=1")
        #expect(mixed.rua == [.mailto("a@b@example.net"), .mailto("ok@example.net")])
        #expect(mixed.ignored == ["rua URI \"tlsrpt@example.net\"", "rua URI \"http://plain.example.net/\"", "unknown field x"])
        // Found by libFuzzer: an escape that decodes to white space or a control character.
        for uri in ["mailto:x%20y@example.net", "mailto:a%0d%0aRCPT@example.net", "mailto:a%3cb@example.net"] {
            #expect(throws: TLSRPTRecord.Problem.self) { try TLSRPTRecord.parse("v=TLSRPTv1; rua=\(uri)") }
        }
        #expect(throws: TLSRPTRecord.Problem.noRecord) { try TLSRPTRecord.select(["v=TLSRPTv10; rua=mailto:a@example.net", "hello"]) }
        #expect(throws: TLSRPTRecord.Problem.severalRecords(2)) {
            try TLSRPTRecord.select(["v=TLSRPTv1; rua=mailto:a@example.net", "v=TLSRPTv1;rua=mailto:b@example.net"])
        }
        #expect { try TLSRPTRecord.parse("v=TLSRPTv1; rua=ftp://x.example.net") } throws: { error in
            if case .noUsableURI? = error as? TLSRPTRecord.Problem { return true } else { return false }
        }
    }

    static let dane = TLSRPTPolicy(type: .tlsa, strings: ["3 1 1 abcd"], domain: "example.net", mxHosts: ["mx.example.net"])
    static let sts = TLSRPTPolicy(type: .sts, strings: ["version: STSv1", "mode: enforce", "mx: *.example.net", "max_age: 86400"],
                                  domain: "example.net", mxHosts: ["*.example.net"])
    static let mismatch = TLSRPTFailure(resultType: .tlsaInvalid, sendingMTAIP: "192.0.2.1", receivingMXHostname: "mx.example.net",
                                        receivingMXHelo: "mx.example.net", receivingIP: "192.0.2.25",
                                        failureReasonCode: "X509_V_ERR_65: no TLSA match")

    @Test("a day's report: policies side by side, counts, failure details grouped, RFC 8460 §4.4 names")
    func report() throws {
        let results = [
            TLSSessionResult(policy: Self.dane, failure: nil), TLSSessionResult(policy: Self.sts, failure: nil),
            TLSSessionResult(policy: Self.dane, failure: Self.mismatch), TLSSessionResult(policy: Self.dane, failure: Self.mismatch),
            TLSSessionResult(policy: Self.dane, failure: nil),
            TLSSessionResult(policy: TLSRPTPolicy(type: .noPolicyFound, strings: [], domain: "other.example", mxHosts: []), failure: nil),
        ]
        let day = 1_796_169_600  // 2026-12-02T00:00:00Z
        let report = TLSReport.make(domain: "example.net", dayStart: day, results: results,
                                    submitter: .init(organizationName: "Example Org", contactInfo: "tls@example.org", domain: "relay.example.org"),
                                    reportID: "2026-12-02.1@relay.example.org")
        #expect(report.policies.count == 2 && report.failureCount == 2)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(report.json())) as? [String: Any])
        #expect(Set(json.keys) == ["organization-name", "date-range", "contact-info", "report-id", "policies"])
        let range = try #require(json["date-range"] as? [String: String])
        #expect(range == ["start-datetime": "2026-12-02T00:00:00Z", "end-datetime": "2026-12-02T23:59:59Z"])
        let policies = try #require(json["policies"] as? [[String: Any]])
        let first = try #require(policies.first)
        let policy = try #require(first["policy"] as? [String: Any])
        #expect(policy["policy-type"] as? String == "tlsa" && policy["policy-domain"] as? String == "example.net")
        #expect(policy["policy-string"] as? [String] == ["3 1 1 abcd"] && policy["mx-host"] as? [String] == ["mx.example.net"])
        let summary = try #require(first["summary"] as? [String: Int])
        #expect(summary == ["total-successful-session-count": 2, "total-failure-session-count": 2])
        let details = try #require(first["failure-details"] as? [[String: Any]])
        #expect(details.count == 1 && details[0]["failed-session-count"] as? Int == 2 && details[0]["result-type"] as? String == "tlsa-invalid")
        #expect(Set(details[0].keys) == ["result-type", "sending-mta-ip", "receiving-mx-hostname", "receiving-mx-helo", "receiving-ip",
                                          "failed-session-count", "failure-reason-code"])
        #expect(policies[1]["failure-details"] == nil)
        #expect(report.fileName(submitter: "relay.example.org", domain: "example.net", unique: "ab12")
                == "relay.example.org!example.net!1796169600!1796255999!ab12.json.gz")
        var early = report
        early.setRange(start: day + 3600, end: day + 7200)
        #expect(early.fileName(submitter: "r.example", domain: "example.net", unique: "x1") == "r.example!example.net!1796173200!1796176800!x1.json.gz")
        #expect(early.dateRange.start == "2026-12-02T01:00:00Z" && early.dateRange.end == "2026-12-02T02:00:00Z")
    }

    @Test("RFC 3339 dates and day names")
    func dates() {
        #expect(RFC3339.dateTime(0) == "1970-01-01T00:00:00Z")
        #expect(RFC3339.dateTime(951_782_400) == "2000-02-29T00:00:00Z")
        #expect(RFC3339.dateTime(1_796_255_999) == "2026-12-02T23:59:59Z")
        #expect(SessionResultStore.dayStart(named: "2026-12-02") == 1_796_169_600)
        #expect(SessionResultStore.dayStart(named: "2026-02-30") == nil && SessionResultStore.dayStart(named: "x") == nil)
        #expect(TLSReport.dayStart(1_796_169_600 + 86_399.5) == 1_796_169_600)
    }

    @Test("the report mail: multipart/report tlsrpt, the RFC 8460 §5.3 headers, TLS-Required: No, base64 of the gzip")
    func mail() {
        let report = TLSReport.make(domain: "example.net", dayStart: 0, results: [TLSSessionResult(policy: Self.dane, failure: nil)],
                                    submitter: .init(organizationName: "O", contactInfo: "c", domain: "relay.example.org"), reportID: "r1@relay.example.org")
        let gzip = Array(0..<200).map { UInt8($0 % 256) }
        let text = String(decoding: TLSReportMail.make(report: report, gzip: gzip, fileName: "f.json.gz", from: "tlsrpt@example.org",
                                                       to: "rua@example.net", domain: "example.net", submitter: "relay.example.org",
                                                       date: "Wed, 2 Dec 2026 01:00:00 +0000", messageID: "r1@relay.example.org"), as: UTF8.self)
        for header in ["Subject: Report Domain: example.net Submitter: relay.example.org Report-ID: <r1@relay.example.org>\r\n",
                       "TLS-Report-Domain: example.net\r\n", "TLS-Report-Submitter: relay.example.org\r\n", "TLS-Required: No\r\n",
                       "Content-Type: multipart/report; report-type=\"tlsrpt\";", "Content-Type: application/tlsrpt+gzip\r\n"] {
            #expect(text.contains(header), "\(header)")
        }
        let body = text.components(separatedBy: "filename=\"f.json.gz\"\r\n\r\n")[1].components(separatedBy: "--=_tlsrpt")[0]
        #expect(body.split(separator: "\r\n").allSatisfy { $0.count <= 76 })
        #expect(Data(base64Encoded: body.replacingOccurrences(of: "\r\n", with: "")) == Data(gzip))
        #expect(!text.utf8.contains { $0 > 127 || $0 == 0 })
    }

    @Test("results survive reopening; a torn last line is skipped; past the cap nothing is recorded")
    func store() throws {
        let directory = NSTemporaryDirectory() + "tlsrpt-store-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let logger = Logger(label: "test")
        let day = 1_796_169_600
        do {
            let store = try SessionResultStore(stateDirectory: directory, maxBytes: 1_000_000, logger: logger)
            store.record(TLSSessionResult(policy: Self.dane, failure: nil), at: Double(day) + 10)
            store.record(TLSSessionResult(policy: Self.dane, failure: Self.mismatch), at: Double(day) + 20)
            store.sync()
        }
        let path = directory + "/tlsrpt/results/2026-12-02.jsonl"
        let handle = try #require(FileHandle(forWritingAtPath: path))
        handle.seekToEndOfFile()
        handle.write(Data("{\"t\":1796169630,\"r\":{\"pol".utf8))
        try handle.close()
        let reopened = try SessionResultStore(stateDirectory: directory, maxBytes: 1_000_000, logger: logger)
        let read = reopened.results(dayStart: day)
        #expect(read.results.count == 2 && read.skipped == 1)
        #expect(read.results[1].result.failure == Self.mismatch)
        #expect(reopened.days() == [day])
        let small = try SessionResultStore(stateDirectory: directory + "/small", maxBytes: 300, logger: logger)
        for _ in 0..<10 { small.record(TLSSessionResult(policy: Self.sts, failure: nil), at: Double(day)) }
        let kept = small.results(dayStart: day).results.count
        #expect(kept >= 1 && kept < 10)
    }
}
