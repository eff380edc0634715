import CSystemd

/// Tells systemd about the service's state through `sd_notify` (sd_notify(3)): `READY=1` once
/// the listeners are bound and the spool recovered, `STATUS=...` lines, `STOPPING=1`.
/// Without `NOTIFY_SOCKET` (not started by systemd) every call does nothing.
public enum ServiceNotifier {
    /// Sends `state` (newline-separated `KEY=VALUE` assignments).
    /// - Returns: true when systemd received it, false when not under systemd or on error.
    @discardableResult
    public static func notify(_ state: String) -> Bool {
        sd_notify(0, state) > 0
    }
}
