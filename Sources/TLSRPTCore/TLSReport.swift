import DeliveryPolicy
import Foundation

/// One aggregate TLS report (RFC 8460 §4.4): every session of one policy domain over one UTC
/// day, grouped by the policy that applied, DANE and MTA-STS side by side.
public struct TLSReport: Sendable, Equatable, Codable {
    public struct DateRange: Sendable, Equatable, Codable {
        public var start: String
        public var end: String
        enum CodingKeys: String, CodingKey {
            case start = "start-datetime"
            case end = "end-datetime"
        }
    }

    public struct Policy: Sendable, Equatable, Codable {
        public var type: String
        public var strings: [String]?
        public var domain: String
        public var mxHost: [String]?
        enum CodingKeys: String, CodingKey {
            case type = "policy-type"
            case strings = "policy-string"
            case domain = "policy-domain"
            case mxHost = "mx-host"
        }
    }

    public struct Summary: Sendable, Equatable, Codable {
        public var successful: Int
        public var failed: Int
        enum CodingKeys: String, CodingKey {
            case successful = "total-successful-session-count"
            case failed = "total-failure-session-count"
        }
    }

    public struct FailureDetail: Sendable, Equatable, Codable {
        public var resultType: String
        public var sendingMTAIP: String?
        public var receivingMXHostname: String?
        public var receivingMXHelo: String?
        public var receivingIP: String?
        public var failedSessionCount: Int
        public var additionalInformation: String?
        public var failureReasonCode: String?
        enum CodingKeys: String, CodingKey {
            case resultType = "result-type"
            case sendingMTAIP = "sending-mta-ip"
            case receivingMXHostname = "receiving-mx-hostname"
            case receivingMXHelo = "receiving-mx-helo"
            case receivingIP = "receiving-ip"
            case failedSessionCount = "failed-session-count"
            case additionalInformation = "additional-information"
            case failureReasonCode = "failure-reason-code"
        }
    }

    public struct PolicyResult: Sendable, Equatable, Codable {
        public var policy: Policy
        public var summary: Summary
        public var failureDetails: [FailureDetail]?
        enum CodingKeys: String, CodingKey {
            case policy, summary
            case failureDetails = "failure-details"
        }
    }

    public var organizationName: String
    public var dateRange: DateRange
    public var contactInfo: String
    public var reportID: String
    public var policies: [PolicyResult]
    /// The range as Unix timestamps (first and last second), for the file name (not encoded).
    public var rangeStart = 0
    public var rangeEnd = 0

    /// Sets the range, in `date-range` and for the file name (seconds since the epoch).
    public mutating func setRange(start: Int, end: Int) {
        rangeStart = start
        rangeEnd = end
        dateRange = DateRange(start: RFC3339.dateTime(start), end: RFC3339.dateTime(end))
    }

    enum CodingKeys: String, CodingKey {
        case organizationName = "organization-name"
        case dateRange = "date-range"
        case contactInfo = "contact-info"
        case reportID = "report-id"
        case policies
    }

    /// Who sends the report (`[tlsrpt]` settings).
    public struct Submitter: Sendable, Equatable {
        /// `organization-name`.
        public var organizationName: String
        /// `contact-info`: an e-mail address or URI.
        public var contactInfo: String
        /// The submitter's domain (A-label form): in the file name and the mail headers.
        public var domain: String

        public init(organizationName: String, contactInfo: String, domain: String) {
            self.organizationName = organizationName
            self.contactInfo = contactInfo
            self.domain = domain
        }
    }

    /// Seconds in a report's day.
    public static let day = 86_400

    /// The first second of the UTC day that holds `time` (seconds since the epoch).
    public static func dayStart(_ time: Double) -> Int { Int(floor(time / Double(day))) * day }

    /// `YYYY-MM-DD` of the UTC day starting at `start`.
    public static func dayName(_ start: Int) -> String {
        String(RFC3339.dateTime(start).prefix(10))
    }

    /// Aggregates one domain's results of the day starting at `dayStart` (seconds since the
    /// epoch, a UTC midnight).
    /// - Parameters:
    ///   - results: the sessions counted for `domain` that day, in the order they happened.
    ///   - reportID: unique per report (RFC 8460 §4.4 `report-id`).
    /// - Returns: the report; policies and failure details keep the order of first appearance.
    public static func make(domain: String, dayStart: Int, results: [TLSSessionResult], submitter: Submitter, reportID: String) -> TLSReport {
        make(domain: domain, dayStart: dayStart, weighted: results.map { ($0, 1) }, submitter: submitter, reportID: reportID)
    }

    /// The report of `domain` from results each standing for `count` sessions (the counts of a
    /// shared store, summed over several relays).
    public static func make(domain: String, dayStart: Int, weighted: [(result: TLSSessionResult, count: Int)], submitter: Submitter,
                            reportID: String) -> TLSReport {
        var order: [TLSRPTPolicy] = []
        var groups: [TLSRPTPolicy: (successes: Int, failures: [TLSRPTFailure: Int], failureOrder: [TLSRPTFailure])] = [:]
        for (result, count) in weighted where result.policy.domain == domain && count > 0 {
            if groups[result.policy] == nil {
                order.append(result.policy)
                groups[result.policy] = (0, [:], [])
            }
            if let failure = result.failure {
                if groups[result.policy]!.failures[failure] == nil { groups[result.policy]!.failureOrder.append(failure) }
                groups[result.policy]!.failures[failure, default: 0] += count
            } else {
                groups[result.policy]!.successes += count
            }
        }
        let policies = order.map { policy -> PolicyResult in
            let group = groups[policy]!
            let details = group.failureOrder.map { failure in
                FailureDetail(resultType: failure.resultType.rawValue, sendingMTAIP: failure.sendingMTAIP,
                              receivingMXHostname: failure.receivingMXHostname, receivingMXHelo: failure.receivingMXHelo,
                              receivingIP: failure.receivingIP, failedSessionCount: group.failures[failure]!,
                              additionalInformation: failure.additionalInformation, failureReasonCode: failure.failureReasonCode)
            }
            return PolicyResult(
                policy: Policy(type: policy.type.rawValue, strings: policy.strings.isEmpty ? nil : policy.strings, domain: policy.domain,
                               mxHost: policy.mxHosts.isEmpty ? nil : policy.mxHosts),
                summary: Summary(successful: group.successes, failed: group.failures.values.reduce(0, +)),
                failureDetails: details.isEmpty ? nil : details)
        }
        var report = TLSReport(organizationName: submitter.organizationName, dateRange: DateRange(start: "", end: ""),
                               contactInfo: submitter.contactInfo, reportID: reportID, policies: policies)
        report.setRange(start: dayStart, end: dayStart + day - 1)
        return report
    }

    /// Total failed sessions of the report.
    public var failureCount: Int { policies.reduce(0) { $0 + $1.summary.failed } }

    /// The report as JSON (RFC 8460 §4.4 names, keys sorted, UTF-8).
    public func json() -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding these value types cannot fail.
        return Array((try? encoder.encode(self)) ?? Data())
    }

    /// The file name of RFC 8460 §5.1: `submitter!policy-domain!begin!end!unique-id.json.gz`,
    /// with the Unix timestamps of the report's range; `unique` must be ALPHA/DIGIT only.
    public func fileName(submitter: String, domain: String, unique: String) -> String {
        "\(submitter)!\(domain)!\(rangeStart)!\(rangeEnd)!\(unique).json.gz"
    }
}

/// RFC 3339 date-times in UTC (`2026-12-01T00:00:00Z`).
public enum RFC3339 {
    /// - Parameter seconds: seconds since the epoch.
    public static func dateTime(_ seconds: Int) -> String {
        var days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let rest = seconds - days * 86_400
        // Civil from days (H. Hinnant's algorithm), proleptic Gregorian.
        days += 719_468
        let era = (days >= 0 ? days : days - 146_096) / 146_097
        let dayOfEra = days - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthIndex + 2) / 5 + 1
        let month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return "\(year)-\(two(month))-\(two(day))T\(two(rest / 3600)):\(two(rest % 3600 / 60)):\(two(rest % 60))Z"
    }
}
