import Logging
#if canImport(Glibc)
import Glibc
#endif

/// A swift-log handler sending every event to journald through the native protocol
/// (`sd_journal_sendv`) with structured fields: `MESSAGE`, `PRIORITY` (syslog numbers),
/// `SYSLOG_IDENTIFIER`, `QUEUE_ID` when the message starts with a queue id, `CODE_FILE`,
/// `CODE_LINE`, `CODE_FUNC`, and each metadata key upper-cased (`TLSRELAY_<KEY>`).
/// Used when standard error is the journal stream (running under systemd).
public struct JournalLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    private let identifier: String

    public init(identifier: String) {
        self.identifier = identifier
    }

    public var logLevel: Logger.Level {
        get { LogLevelControl.shared.level }
        set { LogLevelControl.shared.level = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// syslog priority of a swift-log level (RFC 5424 §6.2.1 numbers).
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    public func log(event: LogEvent) {
        let text = event.message.description
        var fields = [
            "MESSAGE=\(text)",
            "PRIORITY=\(Self.priority(event.level))",
            "SYSLOG_IDENTIFIER=\(identifier)",
            "CODE_FILE=\(event.file)",
            "CODE_LINE=\(event.line)",
            "CODE_FUNC=\(event.function)",
        ]
        // "QUEUEID: ..." lines carry the queue id as a field, so journalctl QUEUE_ID=... finds them.
        let prefix = text.prefix(17)
        if prefix.count == 17, prefix.last == ":", prefix.dropLast().allSatisfy({ $0.isASCII && ($0.isNumber || $0.isUppercase) }) {
            fields.append("QUEUE_ID=\(prefix.dropLast())")
        }
        for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) {
            let name = key.uppercased().map { $0.isLetter || $0.isNumber ? $0 : "_" }
            fields.append("TLSRELAY_\(String(name))=\(value)")
        }
        Journal.send(fields)
    }
}
