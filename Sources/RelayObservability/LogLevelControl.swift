import Logging
import NIOConcurrencyHelpers

/// The process-wide log level, changeable at run time (SIGHUP reload). Both log handlers read it
/// on every event, so a reload takes effect at once for every logger.
public final class LogLevelControl: Sendable {
    public static let shared = LogLevelControl()
    private let box = NIOLockedValueBox<Logger.Level>(.info)

    public var level: Logger.Level {
        get { box.withLockedValue { $0 } }
        set { box.withLockedValue { $0 = newValue } }
    }
}

/// Whether standard error is connected to journald: systemd sets `JOURNAL_STREAM` to the
/// device and inode of that stream, and a program should check that its fd 2 is really it
/// (systemd.exec(5), "$JOURNAL_STREAM").
public enum JournalStream {
    public static var isStandardError: Bool {
        guard let value = getenv("JOURNAL_STREAM").map({ String(cString: $0) }) else { return false }
        let parts = value.split(separator: ":")
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]) else { return false }
        var info = stat()
        guard fstat(2, &info) == 0 else { return false }
        return UInt64(info.st_dev) == device && UInt64(info.st_ino) == inode
    }
}

#if canImport(Glibc)
import Glibc
#endif
