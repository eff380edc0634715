/// Builds the `Received:` trace field this relay prepends (RFC 5321 §4.4, RFC 5322 §3.6.7).
public enum ReceivedHeader {
    /// - Parameters:
    ///   - heloName: the client's EHLO/HELO argument.
    ///   - clientAddress: the client's IP address as text.
    ///   - hostname: this server's name.
    ///   - protocolName: `ESMTP`, `ESMTPS`, `SMTP`, `UTF8SMTP` or `UTF8SMTPS` (RFC 3848, RFC 6531 §3.7.3).
    ///   - tls: the session's TLS, noted as Postfix does: `(using TLSv1.3 with cipher ... (256/256 bits))`.
    ///   - queueID: the queue id of the message.
    ///   - recipient: named in the `for` clause only when the message has exactly one.
    ///   - date: an RFC 5322 §3.3 date-time.
    /// - Returns: the header field with CRLF line endings, folded before `by` and `for`.
    public static func make(heloName: String, clientAddress: String, hostname: String, protocolName: String,
                            queueID: String, recipient: Mailbox?, date: String, tls: InboundTLS? = nil) -> [UInt8] {
        var text = "Received: from \(heloName) ([\(clientAddress)])\r\n"
        if let tls { text += "\t(\(tls.commentText))\r\n" }
        text += "\tby \(hostname) (tlsrelay) with \(protocolName) id \(queueID)"
        if let recipient {
            text += "\r\n\tfor <\(recipient.address)>"
        }
        text += "; \(date)\r\n"
        return Array(text.utf8)
    }
}

/// The TLS of an inbound session after STARTTLS (RFC 3207).
public struct InboundTLS: Sendable, Hashable {
    /// `TLSv1.2`, `TLSv1.3`.
    public var protocolVersion: String
    /// The OpenSSL cipher name, e.g. `TLS_AES_256_GCM_SHA384`.
    public var cipher: String
    /// Secret bits of the cipher and bits of its algorithm (256/256).
    public var cipherBits: Int
    public var algorithmBits: Int

    public init(protocolVersion: String, cipher: String, cipherBits: Int, algorithmBits: Int) {
        self.protocolVersion = protocolVersion
        self.cipher = cipher
        self.cipherBits = cipherBits
        self.algorithmBits = algorithmBits
    }

    /// `using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)`: the Received comment
    /// and the log field, in Postfix's words.
    public var commentText: String {
        "using \(protocolVersion) with cipher \(cipher) (\(cipherBits)/\(algorithmBits) bits)"
    }
}
