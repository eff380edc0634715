/// A TLS report as a mail message (RFC 8460 §5.3): `multipart/report; report-type="tlsrpt"`
/// with a human-readable part and the gzip'd report as `application/tlsrpt+gzip`, the
/// `TLS-Report-Domain` and `TLS-Report-Submitter` headers, and `TLS-Required: No` (RFC 8689 §5:
/// a report about broken TLS must still arrive).
public enum TLSReportMail {
    /// - Parameters:
    ///   - report: the report (for the subject, its id and the summary text).
    ///   - gzip: the gzip'd JSON.
    ///   - fileName: RFC 8460 §5.1 name of the attachment.
    ///   - from: the From address (`tlsrpt.from`).
    ///   - to: the `mailto:` address of the rua.
    ///   - domain: the policy domain.
    ///   - submitter: the submitter's domain.
    ///   - date: RFC 5322 date-time.
    ///   - messageID: without angle brackets.
    /// - Returns: the message with CRLF line endings, 7-bit (base64 attachment).
    public static func make(report: TLSReport, gzip: [UInt8], fileName: String, from: String, to: String, domain: String,
                            submitter: String, date: String, messageID: String) -> [UInt8] {
        let boundary = "=_tlsrpt_\(report.reportID.filter { $0.isLetter || $0.isNumber })"
        var text = ""
        text += "From: \(from)\r\n"
        text += "To: \(to)\r\n"
        text += "Date: \(date)\r\n"
        text += "Subject: Report Domain: \(domain) Submitter: \(submitter) Report-ID: <\(report.reportID)>\r\n"
        text += "Message-ID: <\(messageID)>\r\n"
        text += "TLS-Report-Domain: \(domain)\r\n"
        text += "TLS-Report-Submitter: \(submitter)\r\n"
        text += "TLS-Required: No\r\n"
        text += "Auto-Submitted: auto-generated\r\n"
        text += "MIME-Version: 1.0\r\n"
        text += "Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n\tboundary=\"\(boundary)\"\r\n"
        text += "\r\n"
        text += "This is a multi-part message in MIME format.\r\n\r\n"
        text += "--\(boundary)\r\n"
        text += "Content-Type: text/plain; charset=us-ascii\r\n"
        text += "Content-Transfer-Encoding: 7bit\r\n\r\n"
        text += "This is an aggregate TLS report (RFC 8460) from \(submitter) for \(domain),\r\n"
        text += "\(report.dateRange.start) to \(report.dateRange.end): "
        let successes = report.policies.reduce(0) { $0 + $1.summary.successful }
        text += "\(successes) successful and \(report.failureCount) failed session(s).\r\n\r\n"
        text += "--\(boundary)\r\n"
        text += "Content-Type: application/tlsrpt+gzip\r\n"
        text += "Content-Transfer-Encoding: base64\r\n"
        text += "Content-Disposition: attachment;\r\n\tfilename=\"\(fileName)\"\r\n\r\n"
        text += base64Lines(gzip)
        text += "--\(boundary)--\r\n"
        return Array(text.utf8)
    }

    /// Base64 (RFC 2045 §6.8) in lines of 76 characters, each ended by CRLF.
    static func base64Lines(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 4 / 3 + bytes.count / 57 * 2 + 8)
        var column = 0
        var index = 0
        while index < bytes.count {
            let chunk = bytes[index..<min(index + 3, bytes.count)]
            let b0 = chunk[chunk.startIndex]
            let b1 = chunk.count > 1 ? chunk[chunk.startIndex + 1] : 0
            let b2 = chunk.count > 2 ? chunk[chunk.startIndex + 2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 0x03) << 4 | b1 >> 4)])
            out.append(chunk.count > 1 ? alphabet[Int((b1 & 0x0F) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(chunk.count > 2 ? alphabet[Int(b2 & 0x3F)] : UInt8(ascii: "="))
            column += 4
            index += 3
            if column == 76 {
                out += [13, 10]
                column = 0
            }
        }
        if column > 0 { out += [13, 10] }
        return String(decoding: out, as: UTF8.self)
    }
}
