/// Builds the `Received:` trace field this relay prepends (RFC 5321 §4.4, RFC 5322 §3.6.7).
public enum ReceivedHeader {
    /// - Parameters:
    ///   - heloName: the client's EHLO/HELO argument.
    ///   - clientAddress: the client's IP address as text.
    ///   - hostname: this server's name.
    ///   - protocolName: `ESMTP`, `SMTP` or `UTF8SMTP` (RFC 3848).
    ///   - queueID: the queue id of the message.
    ///   - recipient: named in the `for` clause only when the message has exactly one.
    ///   - date: an RFC 5322 §3.3 date-time.
    /// - Returns: the header field with CRLF line endings, folded before `by` and `for`.
    public static func make(heloName: String, clientAddress: String, hostname: String, protocolName: String,
                            queueID: String, recipient: Mailbox?, date: String) -> [UInt8] {
        var text = "Received: from \(heloName) ([\(clientAddress)])\r\n"
        text += "\tby \(hostname) (tlsrelay) with \(protocolName) id \(queueID)"
        if let recipient {
            text += "\r\n\tfor <\(recipient.address)>"
        }
        text += "; \(date)\r\n"
        return Array(text.utf8)
    }
}
