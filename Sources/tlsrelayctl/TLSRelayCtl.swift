import ArgumentParser
import RelayDaemon
import Foundation
import Logging
import RelayConfig
import RelayControl
import RelayDelivery
import RelayPolicy
import RelayQueue

/// `tlsrelayctl`: operate tlsrelay — the queue (like mailq, postqueue -f, postsuper -h/-H/-d),
/// status, cached policies, and `check DOMAIN` (like posttls-finger).
@main
struct TLSRelayCtl: AsyncParsableCommand {
    /// The entry point: the arguments are read so that a preloaded library cannot make them
    /// vanish (see `ProcessArguments`).
    static func main() async {
        await main(globalOptionsLast(ProcessArguments.afterProgramName()))
    }

    static let configuration = CommandConfiguration(
        commandName: "tlsrelayctl",
        abstract: "Operate tlsrelay: queue, status, reload, policies, and checking a domain.",
        discussion: "Talks to tlsrelayd over the control socket in state_directory (root or the tlsrelay user only); queue list, queue show and policy show read state_directory themselves when the daemon is not running. --config and --json may stand before or after the command (tlsrelayctl --config FILE status). Exit status: 0 done, 1 the request was refused (reload: file refused; check: a delivery would defer or bounce), 2 error, 64 usage error.",
        version: TLSRelayVersion.string,
        subcommands: [Status.self, Queue.self, Reload.self, Policy.self, TLSRPT.self, Check.self])

    /// Moves `--config FILE`, `--config=FILE` and `--json` written before the command's name to
    /// the end, where the subcommands' options are parsed (as `postqueue -c DIR -p` reads).
    static func globalOptionsLast(_ arguments: [String]) -> [String] {
        var front: [String] = []
        var moved: [String] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            if argument == "--config", index + 1 < arguments.count {
                moved += [argument, arguments[index + 1]]
                index += 2
            } else if argument.hasPrefix("--config=") || argument == "--json" {
                moved.append(argument)
                index += 1
            } else if argument.hasPrefix("-") {
                front.append(argument)
                index += 1
            } else {
                // The command's name: everything from here on is the command's own.
                return front + arguments[index...] + moved
            }
        }
        return front + moved
    }
}

struct Options: ParsableArguments {
    @Option(name: .long, help: "Configuration file (TOML); its state_directory holds the control socket and the spool.")
    var config = "/etc/tlsrelay/tlsrelay.toml"

    @Flag(name: .long, help: "Print JSON instead of tables.")
    var json = false

    func settings() throws -> RelayConfiguration {
        guard FileManager.default.fileExists(atPath: config) else {
            throw Failure("configuration file \(config) does not exist; name another with --config FILE")
        }
        do {
            return try ConfigurationLoader.load(path: config)
        } catch let error as ConfigurationError {
            throw Failure("configuration error: \(error)")
        }
    }

    /// - Parameter anyConfiguration: reach the daemon even when the file is invalid (its
    ///   `state_directory` read leniently): `reload` must let the daemon refuse the file.
    func call(_ request: [String: String], anyConfiguration: Bool = false) throws -> Any {
        let directory: String
        if anyConfiguration {
            guard FileManager.default.fileExists(atPath: config) else {
                throw Failure("configuration file \(config) does not exist; name another with --config FILE")
            }
            directory = ConfigurationLoader.stateDirectory(path: config)
        } else {
            directory = try settings().stateDirectory
        }
        let socket = directory + "/control.sock"
        do {
            return try ControlClient.call(socketPath: socket, request: request)
        } catch let failure as ControlClient.Failure {
            throw Failure(failure.description, code: failure.daemonNotRunning || failure.description.hasPrefix("permission") || failure.description.hasPrefix("cannot") ? 2 : 1)
        }
    }

    /// The spool of `state_directory`, read while the daemon is not running.
    /// - Throws: `Failure` when there is no spool there.
    func offlineSpool() throws -> Spool {
        let settings = try settings()
        guard FileManager.default.fileExists(atPath: settings.stateDirectory + "/spool/queue") else {
            throw Failure("no spool at \(settings.stateDirectory)/spool (has tlsrelayd run with this configuration?)")
        }
        return try Spool(stateDirectory: settings.stateDirectory)
    }

    /// Whether the delivery record of `id` says held (what the daemon would say).
    static func isHeld(_ id: QueueID, in spool: Spool) -> Bool {
        ((try? spool.deliveryRecord(of: id)) ?? nil)?.held ?? false
    }

    func printJSON(_ value: Any) {
        if let data = try? JSONSerialization.data(withJSONObject: value, options: [.prettyPrinted, .sortedKeys]) {
            print(String(decoding: data, as: UTF8.self))
        }
    }
}

/// An error printed as `tlsrelayctl: reason` with an exit status.
struct Failure: Error, CustomStringConvertible {
    let description: String
    let code: Int32
    init(_ description: String, code: Int32 = 2) {
        self.description = description
        self.code = code
    }
}

extension ParsableCommand {
    /// Runs `body`, turning `Failure` into a message on standard error and its exit status.
    func guarded(_ body: () throws -> Void) throws {
        do {
            try body()
        } catch let failure as Failure {
            FileHandle.standardError.write(Data("tlsrelayctl: \(failure.description)\n".utf8))
            throw ExitCode(failure.code)
        }
    }
}

/// A size for people: bytes below 1 KiB, else KiB or MiB with one decimal.
func byteCount(_ bytes: Int) -> String {
    if bytes < 1024 { return "\(bytes) byte\(bytes == 1 ? "" : "s")" }
    if bytes < 1024 * 1024 { return String(format: "%.1f KiB", Double(bytes) / 1024) }
    return String(format: "%.1f MiB", Double(bytes) / 1_048_576)
}

struct Reload: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-read the configuration (log_level and [policy]) and wait for the daemon's answer.",
        discussion: "Exit 0 when applied, 1 when the daemon refused the file (it keeps running with the old configuration), 2 on error. The systemd unit's ExecReload runs this, so a refused file makes `systemctl reload` fail.")
    @OptionGroup var options: Options

    func run() throws {
        try guarded {
            let result = try options.call(["command": "reload"], anyConfiguration: true)
            if options.json { options.printJSON(result) }
            guard let outcome = result as? [String: Any] else { throw Failure("unexpected answer from tlsrelayd") }
            guard outcome["applied"] as? Bool == true else { throw Failure("reload refused: \(outcome["message"] ?? "")", code: 1) }
            if !options.json { print("reload: \(outcome["message"] ?? "")") }
        }
    }
}

func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
}

func date(_ value: Any?) -> String {
    guard let seconds = value as? Double else { return "-" }
    let formatter = ISO8601DateFormatter()
    return formatter.string(from: Date(timeIntervalSince1970: seconds))
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Version, uptime, queue counts and recent alerts.")
    @OptionGroup var options: Options

    func run() throws {
        try guarded {
            let result = try options.call(["command": "status"], anyConfiguration: true)
            if options.json { options.printJSON(result); return }
            guard let status = result as? [String: Any] else { return }
            let queue = status["queue"] as? [String: Any] ?? [:]
            print("tlsrelayd \(status["version"] ?? "?") on \(status["hostname"] ?? "?"), up \(status["uptime_seconds"] ?? 0) s")
            print("queue: \(queue["active"] ?? 0) active, \(queue["deferred"] ?? 0) deferred, \(queue["held"] ?? 0) held")
            let suspended = status["suspended_destinations"] as? [[String: Any]] ?? []
            print(suspended.isEmpty ? "suspended destinations: none" : "suspended destinations (delivery temporarily suspended after repeated failures):")
            for destination in suspended {
                let status = (destination["status"] as? String).map { "\($0) " } ?? ""
                print("  \(destination["display"] ?? destination["domain"] ?? "?") until \(date(destination["until"])): \(status)\(destination["reason"] as? String ?? "")")
            }
            if let reload = status["last_reload"] as? [String: Any] {
                print("last reload: \(date(reload["time"])) \(reload["applied"] as? Bool == true ? "applied" : "REFUSED"): \(reload["message"] ?? "")")
            } else {
                print("last reload: none since start")
            }
            let alerts = status["recent_alerts"] as? [[String: Any]] ?? []
            print(alerts.isEmpty ? "recent alerts: none" : "recent alerts:")
            for alert in alerts { print("  \(date(alert["time"]))  \(alert["message"] ?? "")") }
        }
    }
}

struct Queue: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List, show, flush, hold, release and delete queued messages.",
        subcommands: [List.self, Show.self, Flush.self, Hold.self, Release.self, Delete.self])

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Queued messages, oldest first, like mailq.")
        @OptionGroup var options: Options

        func run() throws {
            try guarded {
                var entries: [[String: Any]]
                do {
                    entries = try options.call(["command": "queue.list"]) as? [[String: Any]] ?? []
                } catch let failure as Failure where failure.description.contains("is not running") {
                    // Without the daemon, read the spool directly.
                    entries = try offlineList()
                    FileHandle.standardError.write(Data("tlsrelayctl: tlsrelayd is not running; read from the spool\n".utf8))
                }
                if options.json { options.printJSON(entries); return }
                print(pad("Queue ID", 17) + pad("Size", 10) + pad("Arrival (UTC)", 21) + "Sender / Recipients (status: last reason)")
                var total = 0
                for entry in entries {
                    total += entry["size"] as? Int ?? 0
                    var flags = ""
                    if entry["held"] as? Bool == true { flags = " (held)" }
                    if entry["in_delivery"] as? Bool == true { flags = " (being delivered)" }
                    print(pad("\(entry["queue_id"] ?? "")", 17) + pad("\(entry["size"] ?? 0)", 10) + pad(date(entry["arrival_time"]), 21)
                          + "<\(entry["sender"] ?? "")>\(flags)")
                    for recipient in entry["recipients"] as? [[String: Any]] ?? [] {
                        var line = String(repeating: " ", count: 48) + "<\(recipient["address"] ?? "")> \(recipient["status"] ?? "pending")"
                        if let reason = recipient["last_reason"] as? String { line += ": \(reason)" }
                        print(line)
                    }
                }
                print("-- \(byteCount(total)) in \(entries.count) message(s).")
            }
        }

        func offlineList() throws -> [[String: Any]] {
            let spool = try options.offlineSpool()
            return try spool.list().compactMap { id in
                StateReports.message(id, spool: spool, withContent: false, held: Options.isHeld(id, in: spool), inDelivery: false)
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One message: envelope, delivery state and headers.")
        @OptionGroup var options: Options
        @Argument(help: "Queue id (16 characters).") var id: String

        func run() throws {
            try guarded {
                guard let queueID = QueueID(id) ?? QueueID(id.uppercased()) else { throw Failure("'\(id)' is not a queue id", code: 1) }
                let result: Any
                do {
                    result = try options.call(["command": "queue.show", "id": queueID.rawValue])
                } catch let failure as Failure where failure.description.contains("is not running") {
                    // Without the daemon, read the spool directly.
                    let spool = try options.offlineSpool()
                    guard let entry = StateReports.message(queueID, spool: spool, withContent: true, held: Options.isHeld(queueID, in: spool),
                                                           inDelivery: false) else {
                        throw Failure("no queued message \(id)", code: 1)
                    }
                    FileHandle.standardError.write(Data("tlsrelayctl: tlsrelayd is not running; read from the spool\n".utf8))
                    result = entry
                }
                if options.json { options.printJSON(result); return }
                guard let entry = result as? [String: Any] else { return }
                print("queue id:   \(entry["queue_id"] ?? "")")
                print("arrival:    \(date(entry["arrival_time"])) from [\(entry["client_address"] ?? "")] (helo \(entry["helo"] ?? ""))")
                print("sender:     <\(entry["sender"] ?? "")>")
                print("size:       \(entry["size"] ?? 0) bytes, \(entry["attempts"] ?? 0) attempt(s)\(entry["held"] as? Bool == true ? ", held" : "")")
                if let next = entry["next_attempt"] { print("next try:   \(date(next))") }
                if entry["requiretls"] as? Bool == true || entry["tls_required_no"] as? Bool == true {
                    let wishes = [entry["requiretls"] as? Bool == true ? "REQUIRETLS (RFC 8689: authenticated TLS only, else a bounce)" : nil,
                                  entry["tls_required_no"] as? Bool == true ? "TLS-Required: No" : nil].compactMap { $0 }
                    print("TLS asked:  \(wishes.joined(separator: "; "))")
                }
                if entry["ret"] != nil || entry["envid"] != nil {
                    print("DSN:        RET=\(entry["ret"] ?? "-") ENVID=\(entry["envid"] ?? "-")")
                }
                for recipient in entry["recipients"] as? [[String: Any]] ?? [] {
                    let dsnParameters = [recipient["notify"].map { "NOTIFY=\($0)" }, recipient["orcpt"].map { "ORCPT=\($0)" }].compactMap { $0 }
                    print("recipient:  <\(recipient["address"] ?? "")> \(recipient["status"] ?? "")\(recipient["dsn"].map { " dsn=\($0)" } ?? "")\((recipient["last_reason"] as? String).map { " (\($0))" } ?? "")\(dsnParameters.isEmpty ? "" : " [\(dsnParameters.joined(separator: " "))]")")
                }
                print("")
                print(entry["headers"] as? String ?? "", terminator: "")
            }
        }
    }

    struct Flush: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Attempt delivery now: everything, one message, or one domain.")
        @OptionGroup var options: Options
        @Argument(help: "Queue id (optional).") var id: String?
        @Option(name: .long, help: "Only messages with a pending recipient in this domain.") var domain: String?

        func run() throws {
            try guarded {
                var request = ["command": "queue.flush"]
                if let id { request["id"] = id }
                if let domain { request["domain"] = domain }
                let result = try options.call(request)
                if options.json { options.printJSON(result); return }
                print("\((result as? [String: Any])?["flushed"] ?? 0) message(s) scheduled for delivery now")
            }
        }
    }

    struct Hold: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Put a message on hold (no delivery until released).")
        @OptionGroup var options: Options
        @Argument(help: "Queue id.") var id: String
        func run() throws { try guarded { _ = try options.call(["command": "queue.hold", "id": id]); print("\(id): held") } }
    }

    struct Release: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Release a held message and attempt it now.")
        @OptionGroup var options: Options
        @Argument(help: "Queue id.") var id: String
        func run() throws { try guarded { _ = try options.call(["command": "queue.release", "id": id]); print("\(id): released") } }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a message without notifying the sender.")
        @OptionGroup var options: Options
        @Argument(help: "Queue id.") var id: String
        func run() throws { try guarded { _ = try options.call(["command": "queue.delete", "id": id]); print("\(id): deleted") } }
    }
}

/// Runs async work from a synchronous command and waits for it.
final class BlockingResult<T>: @unchecked Sendable { var result: Result<T, Error>? }

func blocking<T>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    let box = BlockingResult<T>()
    let done = DispatchSemaphore(value: 0)
    Task {
        do { box.result = .success(try await body()) } catch { box.result = .failure(error) }
        done.signal()
    }
    done.wait()
    return try box.result!.get()
}

struct Policy: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Policies the daemon holds for a domain.", subcommands: [Show.self])

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cached MTA-STS policy, downgrade memory and local level of DOMAIN.")
        @OptionGroup var options: Options
        @Argument(help: "Destination domain.") var domain: String

        func run() throws {
            try guarded {
                let result: Any
                do {
                    result = try options.call(["command": "policy.show", "domain": domain])
                } catch let failure as Failure where failure.description.contains("is not running") {
                    // Without the daemon, read state_directory directly (read-only).
                    // Without the daemon, read the policy state directly (read-only): state_directory,
                    // or the shared database of [state] backend = "postgresql".
                    let settings = try options.settings()
                    let name = domain.lowercased()
                    let read = try blocking { () async throws -> ([String: Any], String) in
                        let stores = try await PolicyStateStores.open(settings, logger: Logger(label: "tlsrelayctl"), readOnly: true,
                                                                      applicationName: "tlsrelayctl")
                        let where_ = stores.client?.settings.display ?? settings.stateDirectory
                        let report = await StateReports.policy(domain: name, configuration: settings, stsCache: stores.sts, memory: stores.memory,
                                                               now: Date().timeIntervalSince1970)
                        await stores.client?.shutdown()
                        return (report, where_)
                    }
                    result = read.0
                    FileHandle.standardError.write(Data("tlsrelayctl: tlsrelayd is not running; read from \(read.1)\n".utf8))
                }
                if options.json { options.printJSON(result); return }
                guard let entry = result as? [String: Any] else { return }
                print("domain:            \(entry["domain"] ?? domain)")
                if let level = entry["local_level"] as? [String: Any] {
                    print("local level:       \(level["level"] ?? "")\((level["reason"] as? String).map { " (\($0))" } ?? "")\((level["expires"] as? String).map { ", until \($0)" } ?? "")\(level["expired"] as? Bool == true ? " [EXPIRED, not applied]" : "")")
                } else {
                    print("local level:       (no local level)")
                }
                if let sts = entry["mta_sts"] as? [String: Any] {
                    print("MTA-STS (cached):  mode \(sts["mode"] ?? ""), id \(sts["id"] ?? ""), mx \((sts["mx"] as? [String])?.joined(separator: " ") ?? ""), fetched \(date(sts["fetched_at"])), expires \(date(sts["expires_at"]))")
                } else {
                    print("MTA-STS (cached):  none")
                }
                if let memory = entry["downgrade_memory"] as? [String: Any] {
                    print("downgrade memory:  strongest \(memory["strongest"] ?? "") at \(date(memory["achieved_at"]))\((memory["downgrade_first_seen"]).map { ", downgrade first refused \(date($0))" } ?? "") (mode \(entry["downgrade_memory_mode"] ?? ""))")
                } else {
                    print("downgrade memory:  nothing remembered (mode \(entry["downgrade_memory_mode"] ?? ""))")
                }
            }
        }
    }
}
