#if canImport(Glibc)
import Glibc
#endif

/// Named moments in the life of a queued message at which the fault suite kills the daemon with
/// SIGKILL — a `kill -9` that arrives exactly there instead of wherever a timer happens to land —
/// to prove that a crash at that moment delivers nobody twice and bounces nothing twice.
///
/// Off unless the environment variable `TLSRELAY_CRASH_AT` names a point when the process
/// starts; then the first time that point is reached the process sends itself SIGKILL (no
/// flush, no clean-up: what a power cut or the OOM killer leaves). For tests only; an
/// administrator never sets it.
public enum CrashPoint: String, Sendable, CaseIterable {
    /// A DSN was written to the spool, awaiting confirmation; the original's record that names
    /// it is not saved yet.
    case dsnWritten = "dsn-written"
    /// The original's final record (or its removal) is durable; the DSN it names is not
    /// released for delivery yet.
    case recordSaved = "record-saved"
    /// A finished message's queue file is removed; its delivery record is not yet.
    case queueFileRemoved = "queue-file-removed"

    /// The point `TLSRELAY_CRASH_AT` names, read once.
    public static let armed: CrashPoint? = getenv("TLSRELAY_CRASH_AT").flatMap { CrashPoint(rawValue: String(cString: $0)) }

    /// Kills the process with SIGKILL when this point is the armed one; returns otherwise.
    @inline(__always)
    public func reached() {
        guard let armed = Self.armed, armed == self else { return }
        kill(getpid(), SIGKILL)
    }
}
