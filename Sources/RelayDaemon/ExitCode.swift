/// Process exit statuses of `tlsrelayd` (sysexits.h).
public enum DaemonExitCode {
    /// Clean stop.
    public static let ok: Int32 = 0
    /// Operating system error: cannot bind, cannot create the state directory.
    public static let osError: Int32 = 71
    /// Configuration error (EX_CONFIG): the message names file, line and reason.
    public static let config: Int32 = 78
}
