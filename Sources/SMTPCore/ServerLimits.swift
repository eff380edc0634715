/// Limits the inbound server enforces, with their defaults and sources.
public struct ServerLimits: Sendable, Hashable {
    /// Largest message accepted, in bytes, as advertised with SIZE (RFC 1870 §4). Default 50 MiB.
    public var maxMessageSize: Int = 52_428_800
    /// Longest command line in octets including CRLF. RFC 5321 §4.5.3.1.4 sets 512 as the minimum
    /// a server must accept; SMTP extensions add parameters, so the default is 2048 (as Postfix's
    /// `line_length_limit`).
    public var maxCommandLineLength: Int = 2048
    /// Longest text line in DATA in octets including CRLF. RFC 5321 §4.5.3.1.6 sets 1000 as the
    /// minimum; longer lines occur in real mail, so the default is 10,000 and a longer line gets
    /// 554 5.6.0 rather than being folded (folding would change the message).
    public var maxTextLineLength: Int = 10_000
    /// Recipients per message; beyond it RCPT gets 452 4.5.3 (RFC 5321 §4.5.3.1.8, §4.5.3.1.10).
    /// Default 1000, as Postfix's `smtpd_recipient_limit`.
    public var maxRecipients: Int = 1000
    /// Errors in one session before 421 and disconnect (Postfix `smtpd_hard_error_limit`: 20).
    public var maxErrors: Int = 20
    /// Seconds a session may stay idle between commands or data chunks before 421 4.4.2
    /// (RFC 5321 §4.5.3.2.7 asks servers to wait at least 5 minutes).
    public var idleTimeoutSeconds: Int = 300
    /// A client refused with 554 at connect may send this many commands (each answered 503)
    /// before QUIT, and the session lasts at most `refusedSessionSeconds` (RFC 5321 §3.1: the
    /// server waits for QUIT; the bounds keep refused clients from holding connections).
    public var refusedSessionCommands: Int = 10
    public var refusedSessionSeconds: Int = 10
    /// Concurrent inbound sessions; above it new clients get 421 4.7.0 at connect.
    public var maxConnections: Int = 100

    public init() {}
}
