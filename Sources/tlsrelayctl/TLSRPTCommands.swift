import ArgumentParser
import Foundation

/// A `--date` that is no `YYYY-MM-DD` of the calendar is a usage error (exit 64).
func validateReportDate(_ date: String?) throws {
    guard let date else { return }
    let parts = date.split(separator: "-", omittingEmptySubsequences: false)
    guard parts.count == 3, parts[0].count == 4, parts[1].count == 2, parts[2].count == 2,
          let year = Int(parts[0]), let month = Int(parts[1]), let day = Int(parts[2]),
          (1970...9999).contains(year), (1...12).contains(month),
          (1...[31, year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]).contains(day)
    else { throw ValidationError("--date must be a day as YYYY-MM-DD (UTC), got '\(date)'") }
}

/// `tlsrelayctl tlsrpt`: the TLS reports (RFC 8460) the daemon collects and sends.
struct TLSRPT: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tlsrpt", abstract: "TLS reports (RFC 8460): sessions counted, the report a domain would get, sending now.",
        subcommands: [List.self, Show.self, Send.self])

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Policy domains with unreported TLS sessions on a day (default: today, UTC).")
        @OptionGroup var options: Options
        @Option(name: .long, help: "The day, YYYY-MM-DD (UTC).") var date: String?

        func validate() throws { try validateReportDate(date) }

        func run() throws {
            try guarded {
                var request = ["command": "tlsrpt.list"]
                if let date { request["date"] = date }
                let result = try options.call(request)
                if options.json { options.printJSON(result); return }
                guard let entry = result as? [String: Any], let domains = entry["domains"] as? [[String: Any]] else { return }
                if domains.isEmpty { print("no unreported TLS sessions on \(entry["date"] ?? "")"); return }
                print("\("DOMAIN".padding(toLength: 40, withPad: " ", startingAt: 0)) \("SUCCESSFUL".padding(toLength: 11, withPad: " ", startingAt: 0)) FAILED   (\(entry["date"] ?? ""))")
                for domain in domains {
                    let text = "\(domain["domain"] ?? "")"
                let name = text.count >= 40 ? text + " " : text.padding(toLength: 40, withPad: " ", startingAt: 0)
                    let ok = "\(domain["successful"] ?? 0)".padding(toLength: 11, withPad: " ", startingAt: 0)
                    print("\(name) \(ok) \(domain["failed"] ?? 0)")
                }
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The exact JSON report DOMAIN would get now for a day (default: today, UTC).")
        @OptionGroup var options: Options
        @Argument(help: "Policy (recipient) domain.") var domain: String
        @Option(name: .long, help: "The day, YYYY-MM-DD (UTC).") var date: String?

        func validate() throws { try validateReportDate(date) }

        func run() throws {
            try guarded {
                var request = ["command": "tlsrpt.show", "domain": domain]
                if let date { request["date"] = date }
                options.printJSON(try options.call(request))
            }
        }
    }

    struct Send: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Send reports now: of every complete day not yet sent, or of DOMAIN (and --date, default today: the sessions so far; the rest of the day goes in the daily report).")
        @OptionGroup var options: Options
        @Argument(help: "Only this policy domain.") var domain: String?
        @Option(name: .long, help: "The day, YYYY-MM-DD (UTC).") var date: String?

        func validate() throws { try validateReportDate(date) }

        func run() throws {
            try guarded {
                var request = ["command": "tlsrpt.send"]
                if let domain { request["domain"] = domain }
                if let date { request["date"] = date }
                let result = try options.call(request)
                if options.json { options.printJSON(result); return }
                guard let outcomes = result as? [[String: Any]] else { return }
                if outcomes.isEmpty { print("nothing to send") }
                var failed = false
                for outcome in outcomes {
                    if let skipped = outcome["skipped"] as? String {
                        print("\(outcome["domain"] ?? ""): not sent: \(skipped)")
                        failed = failed || outcome["retry_later"] as? Bool == true
                        continue
                    }
                    for delivery in outcome["deliveries"] as? [[String: Any]] ?? [] {
                        let sent = delivery["sent"] as? Bool ?? false
                        failed = failed || !sent
                        print("\(outcome["domain"] ?? ""): \(outcome["report_id"] ?? ""): \(delivery["detail"] ?? "")")
                    }
                }
                if failed { throw Failure("some reports could not be sent", code: 1) }
            }
        }
    }
}
