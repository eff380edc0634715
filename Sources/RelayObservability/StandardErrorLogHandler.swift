import Logging
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A swift-log handler writing one line per event to standard error (fd 2), in the shape mail
/// administrators grep: `tlsrelayd[PID]: LEVEL: message key=value ...`. No timestamp is added
/// when running under journald (`JOURNAL_STREAM` set), which stamps lines itself.
public struct StandardErrorLogHandler: LogHandler {
    /// The process-wide level (`LogLevelControl`), so a reload changes every logger at once.
    public var logLevel: Logger.Level {
        get { LogLevelControl.shared.level }
        set { LogLevelControl.shared.level = newValue }
    }
    public var metadata: Logger.Metadata = [:]
    private let label: String
    private let withTimestamp: Bool

    /// - Parameters:
    ///   - label: the program name printed first on every line.
    ///   - level: the lowest level written.
    public init(label: String, level: Logger.Level) {
        self.label = label
        LogLevelControl.shared.level = level
        self.withTimestamp = getenv("JOURNAL_STREAM") == nil
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var line = ""
        if withTimestamp { line += Self.timestamp() + " " }
        line += "\(label)[\(getpid())]: \(event.level): \(event.message)"
        let merged = metadata.merging(event.metadata ?? [:]) { _, new in new }
        if !merged.isEmpty {
            line += " " + merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        }
        line += "\n"
        var bytes = Array(line.utf8)
        bytes.withUnsafeMutableBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = write(2, raw.baseAddress! + offset, raw.count - offset)
                if written <= 0 { if errno == EINTR { continue }; return }
                offset += written
            }
        }
    }

    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var parts = tm()
        var seconds = now.tv_sec
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(parts.tm_year + 1900)-\(pad(Int(parts.tm_mon) + 1, 2))-\(pad(Int(parts.tm_mday), 2))T"
            + "\(pad(Int(parts.tm_hour), 2)):\(pad(Int(parts.tm_min), 2)):\(pad(Int(parts.tm_sec), 2)).\(pad(Int(now.tv_nsec / 1_000_000), 3))Z"
    }
}
