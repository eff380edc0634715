import ArgumentParser
import Foundation
import RelayConfig
import RelayQueue

/// `tlsrelayctl`: inspect tlsrelay's queue (more commands come with the control socket).
@main
struct TLSRelayCtl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tlsrelayctl",
        abstract: "Inspect and operate tlsrelay.",
        subcommands: [Queue.self])
}

struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "Configuration file (TOML); its state_directory holds the spool.")
    var config = "/etc/tlsrelay/tlsrelay.toml"

    /// Opens the spool named by the configuration, without creating anything.
    func openSpool() throws -> Spool {
        let settings: RelayConfiguration
        do {
            settings = try ConfigurationLoader.load(path: config)
        } catch let error as ConfigurationError {
            throw ValidationError("configuration error: \(error)")
        }
        guard FileManager.default.fileExists(atPath: settings.stateDirectory + "/spool/queue") else {
            throw ValidationError("no spool at \(settings.stateDirectory)/spool (has tlsrelayd run with this configuration?)")
        }
        return try Spool(stateDirectory: settings.stateDirectory)
    }
}

struct Queue: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List and show queued messages (read directly from the spool).",
        subcommands: [List.self, Show.self])

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List queued messages, oldest first, like mailq.")
        @OptionGroup var options: ConfigOption
        @Flag(name: .long, help: "One JSON object per message.") var json = false

        func run() throws {
            let spool = try options.openSpool()
            let ids = try spool.list()
            var total = 0
            if !json { print(pad("Queue ID", 17) + pad("Size", 10) + pad("Arrival (UTC)", 21) + "Sender / Recipients") }
            for id in ids {
                guard let envelope = try? spool.envelope(of: id) else {
                    print("\(id) (unreadable; run tlsrelayd to move it aside)")
                    continue
                }
                total += envelope.size
                if json {
                    let object: [String: Any] = [
                        "queue_id": id.rawValue, "size": envelope.size, "arrival_time": envelope.arrivalTime,
                        "sender": envelope.transaction.sender?.address ?? "",
                        "recipients": envelope.transaction.recipients.map(\.mailbox.address),
                    ]
                    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                    print(String(decoding: data, as: UTF8.self))
                } else {
                    let date = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: envelope.arrivalTime))
                    print(pad(id.rawValue, 17) + pad(String(envelope.size), 10) + pad(date, 21) + "<\(envelope.transaction.sender?.address ?? "")>")
                    for recipient in envelope.transaction.recipients {
                        print(String(repeating: " ", count: 48) + "<\(recipient.mailbox.address)>")
                    }
                }
            }
            if !json { print("-- \(total / 1024) KiB in \(ids.count) message(s).") }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print one message's envelope and content.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "Queue id (16 characters).") var id: String
        @Flag(name: .long, help: "Envelope only.") var envelopeOnly = false

        func run() throws {
            guard let queueID = QueueID(id) else { throw ValidationError("'\(id)' is not a queue id") }
            let spool = try options.openSpool()
            do {
                let envelope = try spool.envelope(of: queueID)
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(envelope), as: UTF8.self))
                if !envelopeOnly {
                    print("")
                    FileHandle.standardOutput.write(Data(try spool.content(of: queueID)))
                }
            } catch SpoolError.notFound {
                throw ValidationError("no queued message \(id)")
            }
        }
    }
}

func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
}

