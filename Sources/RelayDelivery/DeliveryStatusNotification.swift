import SMTPCore
import RelayQueue

/// Builds non-delivery reports as RFC 3464 delivery status notifications inside an RFC 6522
/// `multipart/report`, sent from the null reverse-path (RFC 5321 §4.5.5) so they never loop.
public enum DeliveryStatusNotification {
    /// One failed recipient in the report.
    public struct FailedRecipient: Sendable {
        public var recipient: Recipient
        /// Enhanced status code, e.g. 5.1.1 (RFC 3464 §2.3.4).
        public var status: String
        /// `name[address]:port` of the host that refused, if any (RFC 3464 §2.3.5).
        public var remoteMTA: String?
        /// The remote reply, e.g. "550 5.1.1 no such user" (RFC 3464 §2.3.6), or the local reason.
        public var diagnostic: String
        public var diagnosticIsSMTP: Bool

        public init(recipient: Recipient, status: String, remoteMTA: String?, diagnostic: String, diagnosticIsSMTP: Bool) {
            self.recipient = recipient
            self.status = status
            self.remoteMTA = remoteMTA
            self.diagnostic = diagnostic
            self.diagnosticIsSMTP = diagnosticIsSMTP
        }
    }

    /// What a report says about its recipients.
    public enum Kind: Sendable, Equatable {
        /// They failed permanently (`Action: failed`).
        case failure
        /// They are still being retried, until `willRetryUntil` (seconds since the epoch):
        /// `Action: delayed` with `Will-Retry-Until` (RFC 3464 §2.3.3, §2.3.8).
        case delay(willRetryUntil: Double)
    }

    /// True when a delay DSN may be sent for `recipient`: the sender is not null and NOTIFY was
    /// absent (default FAILURE,DELAY, RFC 3461 §4.1) or included DELAY.
    public static func wantsDelayReport(sender: Mailbox?, recipient: Recipient) -> Bool {
        guard sender != nil else { return false }
        guard let notify = recipient.notify else { return true }
        return notify.delay
    }

    /// True when a failure DSN must be sent for `recipient`: the sender is not null and NOTIFY
    /// was absent (default FAILURE,DELAY per RFC 3461 §4.1) or included FAILURE.
    public static func wantsFailureReport(sender: Mailbox?, recipient: Recipient) -> Bool {
        guard sender != nil else { return false }
        guard let notify = recipient.notify else { return true }
        return notify.failure
    }

    /// The report's content (headers and body, CRLF line endings).
    /// - Parameters:
    ///   - envelope: the original message's envelope.
    ///   - original: the original content; included whole for RET=FULL or when RET is absent,
    ///     headers only for RET=HDRS (RFC 3461 §4.3).
    ///     A delay report carries the headers only, whatever RET says (the message is not
    ///     returned: it is still being delivered). Of a REQUIRETLS message (RFC 8689 §4.4)
    ///     nothing is returned, not even the headers: the report itself travels without
    ///     REQUIRETLS, so it is redacted to the delivery status. Content holding a NUL (queued
    ///     by an earlier release) is returned as headers only, NULs removed.
    ///   - failed: the recipients being reported.
    ///   - reportingMTA: this relay's host name.
    ///   - date: RFC 5322 date-time of the report.
    ///   - messageID: a unique Message-ID value without angle brackets.
    ///   - kind: failure (default) or delay.
    public static func make(envelope: QueuedEnvelope, original: [UInt8], failed: [FailedRecipient],
                            reportingMTA: String, date: String, messageID: String, kind: Kind = .failure) -> [UInt8] {
        let redacted = envelope.transaction.parameters.requireTLS
        let headersOnly = envelope.transaction.parameters.ret == .headers || kind != .failure || original.contains(0)
        let boundary = "=_\(envelope.queueID.rawValue)/\(reportingMTA)"
        let sender = envelope.transaction.sender?.address ?? ""
        var text = ""
        text += "From: Mail Delivery System <MAILER-DAEMON@\(reportingMTA)>\r\n"
        text += "To: <\(sender)>\r\n"
        if case .delay = kind {
            text += "Subject: Delayed Mail (still being retried)\r\n"
        } else {
            text += "Subject: Undelivered Mail Returned to Sender\r\n"
        }
        text += "Date: \(date)\r\n"
        text += "Message-ID: <\(messageID)>\r\n"
        text += "Auto-Submitted: auto-replied\r\n"
        text += "MIME-Version: 1.0\r\n"
        text += "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"\(boundary)\"\r\n"
        text += "Content-Transfer-Encoding: 8bit\r\n"
        text += "\r\n"
        text += "This is a MIME-encapsulated message.\r\n\r\n"
        text += "--\(boundary)\r\n"
        text += "Content-Description: Notification\r\n"
        text += "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        text += "This is the mail relay at host \(reportingMTA).\r\n\r\n"
        if case .delay(let until) = kind {
            text += "Your message (queue id \(envelope.queueID.rawValue)) could not yet be delivered to one or more\r\n"
            text += "recipients. It will be tried again until \(MessageDate.format(secondsSinceEpoch: Int(until))); you do\r\n"
            text += redacted ? "not need to send it again.\r\n\r\n" : "not need to send it again. Its headers are attached below.\r\n\r\n"
        } else {
            text += "Your message (queue id \(envelope.queueID.rawValue)) could not be delivered to one or more\r\n"
            text += redacted ? "recipients.\r\n\r\n" : headersOnly ? "recipients. Its headers are attached below.\r\n\r\n" : "recipients. It is attached below.\r\n\r\n"
        }
        if redacted {
            text += "It asked for REQUIRETLS (RFC 8689): it may travel only over authenticated TLS to\r\n"
            text += "servers that take REQUIRETLS. This report does not travel that way, so it does not\r\n"
            text += "include the message or its headers.\r\n\r\n"
        }
        for item in failed {
            text += "<\(item.recipient.mailbox.address)>: \(item.diagnostic)\r\n"
        }
        text += "\r\n"
        text += "--\(boundary)\r\n"
        text += "Content-Description: Delivery report\r\n"
        text += "Content-Type: message/delivery-status\r\n\r\n"
        // Per-message fields (RFC 3464 §2.2).
        text += "Reporting-MTA: dns; \(reportingMTA)\r\n"
        if let envelopeID = envelope.transaction.parameters.envelopeID {
            text += "Original-Envelope-Id: \(XText.encode(envelopeID))\r\n"
        }
        text += "Arrival-Date: \(MessageDate.format(secondsSinceEpoch: Int(envelope.arrivalTime)))\r\n"
        for item in failed {
            // Per-recipient fields (RFC 3464 §2.3).
            text += "\r\n"
            if let original = item.recipient.originalRecipient {
                text += "Original-Recipient: \(original.addressType); \(XText.encode(original.address))\r\n"
            }
            text += "Final-Recipient: rfc822; \(item.recipient.mailbox.address)\r\n"
            if case .delay(let until) = kind {
                text += "Action: delayed\r\n"
                text += "Status: \(item.status)\r\n"
                text += "Will-Retry-Until: \(MessageDate.format(secondsSinceEpoch: Int(until)))\r\n"
            } else {
                text += "Action: failed\r\n"
                text += "Status: \(item.status)\r\n"
            }
            if let remote = item.remoteMTA {
                let host = remote.split(separator: "[").first.map(String.init) ?? remote
                text += "Remote-MTA: dns; \(host)\r\n"
            }
            text += "Diagnostic-Code: \(item.diagnosticIsSMTP ? "smtp" : "x-tlsrelay"); \(item.diagnostic)\r\n"
        }
        text += "\r\n"
        if redacted {
            text += "--\(boundary)--\r\n"
            return Array(text.utf8)
        }
        text += "--\(boundary)\r\n"
        var bytes = Array(text.utf8)
        if headersOnly {
            bytes += Array("Content-Description: \(kind == .failure ? "Undelivered" : "Delayed") Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n".utf8)
            bytes += headerSection(of: original).filter { $0 != 0 }
        } else {
            bytes += Array("Content-Description: Undelivered Message\r\nContent-Type: message/rfc822\r\n\r\n".utf8)
            bytes += original
        }
        if bytes.count >= 2 && !(bytes[bytes.count - 2] == 13 && bytes[bytes.count - 1] == 10) { bytes += [13, 10] }
        bytes += Array("\r\n--\(boundary)--\r\n".utf8)
        return bytes
    }

    /// The header section of a message: everything up to and including the first empty line.
    static func headerSection(of content: [UInt8]) -> [UInt8] {
        var index = 0
        while index + 3 < content.count {
            if content[index] == 13 && content[index + 1] == 10 && content[index + 2] == 13 && content[index + 3] == 10 {
                return Array(content[..<(index + 4)])
            }
            index += 1
        }
        return content
    }
}
