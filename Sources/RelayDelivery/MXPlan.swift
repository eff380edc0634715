import RelayDNS

/// The hosts to try for a destination domain, from its MX lookup (RFC 5321 §5.1, RFC 7505,
/// RFC 7672 §2.2.1), or the reason there are none.
public enum MXPlan: Sendable, Equatable {
    /// Try these host names in order. `mxSecure` is true when the MX RRset was DNSSEC-secure
    /// (RFC 7672 §2.2.1); `implicit` when the domain itself is the host (no MX records).
    case hosts([String], mxSecure: Bool, implicit: Bool)
    /// No host can be tried; every recipient gets this outcome.
    case outcome(RecipientOutcome)

    /// Builds the plan from an MX answer.
    /// - NXDOMAIN → bounce 5.1.2 (RFC 5321 §5.1 "the domain does not exist").
    /// - null MX (`MX 0 .`) → bounce 5.1.10 (RFC 7505 §3).
    /// - bogus → defer 4.7.5, never read as "no MX" (RFC 7672 §2.2.1).
    /// - NODATA → implicit MX: the domain itself (RFC 5321 §5.1).
    /// - otherwise the exchanges by ascending preference; equal preferences in random order
    ///   (RFC 5321 §5.1), duplicates removed.
    /// - Parameters:
    ///   - answer: the validated MX answer.
    ///   - domain: the destination domain, lowercased without trailing dot.
    ///   - shuffle: orders hosts of equal preference (a random shuffle in production).
    public static func make(answer: DNSAnswer<MXRecord>, domain: String,
                            shuffle: ([String]) -> [String] = { $0.shuffled() }) -> MXPlan {
        if answer.status == .bogus {
            return .outcome(.deferred("4.7.5", "MX lookup for \(domain) failed DNSSEC validation (bogus: \(answer.whyBogus ?? "no reason given"))"))
        }
        if answer.isNXDomain {
            return .outcome(.bounced("5.1.2", "Host or domain name not found: \(domain) does not exist (NXDOMAIN)"))
        }
        if answer.records.isEmpty {
            return .hosts([domain], mxSecure: answer.status == .secure, implicit: true)
        }
        if answer.records.contains(where: \.isNullMX) {
            // RFC 7505 §3: a null MX is the only record; any null MX means "accepts no mail".
            return .outcome(.bounced("5.1.10", "Recipient domain \(domain) accepts no mail (null MX, RFC 7505)"))
        }
        var ordered: [String] = []
        let preferences = Set(answer.records.map(\.preference)).sorted()
        for preference in preferences {
            let hosts = answer.records.filter { $0.preference == preference }.map(\.exchange)
            for host in shuffle(hosts) where !ordered.contains(host) { ordered.append(host) }
        }
        return .hosts(ordered, mxSecure: answer.status == .secure, implicit: false)
    }
}
