import SMTPCore

/// Per-stage timeouts of the outbound client, in seconds (Postfix's defaults; RFC 5321
/// §4.5.3.2 gives the longer minimums a client should tolerate).
public struct ClientTimeouts: Sendable, Equatable {
    /// TCP connect. Default 30.
    public var connect: Double = 30
    /// Greeting, EHLO/HELO, STARTTLS, MAIL, RCPT, QUIT. Default 300 (RFC 5321 §4.5.3.2.1-3).
    public var command: Double = 300
    /// TLS handshake. Default 60.
    public var tlsHandshake: Double = 60
    /// Reply to DATA. Default 120 (RFC 5321 §4.5.3.2.4).
    public var dataInitiation: Double = 120
    /// Final reply after the content. Default 600 (RFC 5321 §4.5.3.2.6).
    public var dataTermination: Double = 600

    public init() {}

    /// The timeout that applies while waiting in `stage`.
    public func seconds(for stage: ClientSession.Stage) -> Double {
        switch stage {
        case .tlsHandshake: return tlsHandshake
        case .data: return dataInitiation
        case .dataDone: return dataTermination
        default: return command
        }
    }
}
