/// A DNSSEC-validating stub/recursive resolver over libunbound, for the relay's delivery
/// decisions: MX (RFC 5321 §5.1, RFC 7505), A/AAAA, TLSA (RFC 6698, RFC 7672) and TXT
/// (MTA-STS discovery, RFC 8461 §3.1).
///
/// One shared libunbound context runs in threaded asynchronous mode; a dedicated event thread
/// polls it and resumes the waiting tasks, so no lookup ever blocks the Swift cooperative pool.
/// Each lookup has a deadline (`ResolverConfiguration.timeoutSeconds`). Task cancellation
/// cancels the query and throws `CancellationError`.
///
/// How outcomes are reported (RFC 4035 §4.3, RFC 7672 §2.1.1):
/// - data, NODATA and NXDOMAIN come back as a `DNSAnswer` with `status` `.secure` or
///   `.insecure`;
/// - a validation failure comes back as a `DNSAnswer` with `status == .bogus` and `whyBogus`
///   (not thrown, so callers can alert), whatever its RCODE;
/// - any other failure to get an answer is thrown: `DNSLookupError.serverFailure` (SERVFAIL or
///   another error RCODE) or `.timeout` (our deadline). Neither is a denial of existence.
public final class Resolver: Sendable {
    private let engine: UnboundEngine

    /// The configuration the resolver was built with.
    public let configuration: ResolverConfiguration

    /// Creates the libunbound context and applies the whole configuration before any query:
    /// threaded async mode, `do-not-query-localhost: no`, each stub zone as a `transparent`
    /// local zone plus its stub servers, the forwarders, and the trust-anchor file, then
    /// finalizes the context so that every error surfaces here.
    /// - Parameter configuration: see `ResolverConfiguration`.
    /// - Throws: `DNSLookupError.resolverError` with the libunbound `ub_strerror` text or the
    ///   system error when a setting is rejected: unreadable or invalid trust-anchor file, a
    ///   server address that is not an IP literal, an invalid stub-zone name, a non-positive
    ///   timeout.
    public init(configuration: ResolverConfiguration) throws {
        self.configuration = configuration
        engine = try UnboundEngine(configuration: configuration)
    }

    deinit {
        engine.shutdown()
    }

    /// Looks up the MX RRset of a mail domain (RFC 5321 §5.1).
    /// - Parameter domain: the domain (trailing dot optional; letters, digits, `-`, `_`).
    /// - Returns: the validated answer. `records` are in the order received (not sorted by
    ///   preference). An RFC 7505 null MX is one record with `exchange == ""`
    ///   (see `DNSAnswer.isNullMX`). NODATA means "no MX": RFC 5321 §5.1 implicit MX applies
    ///   (only if not bogus).
    /// - Throws: `DNSLookupError.resolverError` for an invalid name, malformed rdata or a
    ///   shut-down resolver; `.serverFailure` for SERVFAIL (not bogus); `.timeout` after
    ///   `timeoutSeconds`; `CancellationError` if the task is cancelled.
    public func mx(_ domain: String) async throws -> DNSAnswer<MXRecord> {
        try await lookup(domain, .mx, parse: DNSWire.mx)
    }

    /// Looks up the A and AAAA RRsets of a host, in parallel.
    /// - Parameter host: the host name (trailing dot optional).
    /// - Returns: both answers; addresses as text (`"192.0.2.1"`, `"2001:db8::1"`) via
    ///   `inet_ntop`. Each answer has its own DNSSEC status (RFC 4035 §4.3); a host may for
    ///   example have a secure A and a NODATA AAAA.
    /// - Throws: as `mx(_:)`; if either lookup throws, the call throws (the other lookup is
    ///   cancelled).
    public func addresses(_ host: String) async throws -> (ipv4: DNSAnswer<String>, ipv6: DNSAnswer<String>) {
        let name = try DNSWire.normalize(host)
        async let v4 = lookup(name, .a) { try DNSWire.address($0, type: .a) }
        async let v6 = lookup(name, .aaaa) { try DNSWire.address($0, type: .aaaa) }
        return try await (v4, v6)
    }

    /// The verified reverse name of a client address, as Postfix's smtpd logs it
    /// (`client=name[address]`): the PTR name (RFC 1035 §3.5, RFC 3596 §2.5) whose own A or AAAA
    /// records contain the address again (forward-confirmed), or nil ("unknown"). Loopback and
    /// private ranges are answered by libunbound's built-in local zones, without a query.
    /// - Parameter address: an IPv4 or IPv6 address in text form.
    /// - Returns: the name without a trailing dot, lowercased; nil when there is none, it does not
    ///   confirm, or a lookup fails, times out or is bogus. Never throws.
    public func verifiedName(of address: String) async -> String? {
        guard let reverse = DNSWire.reverseName(address),
              let answer = try? await lookup(reverse, .ptr, parse: { try DNSWire.ptr($0) }), answer.status != .bogus else { return nil }
        for name in answer.records where !name.isEmpty {
            let results = await addressLookups(name)
            for result in [results.ipv4, results.ipv6] {
                if case .success(let forward) = result, forward.status != .bogus,
                   forward.records.contains(where: { DNSWire.sameAddress($0, address) }) {
                    return name
                }
            }
        }
        return nil
    }

    /// Looks up A and AAAA for `host` concurrently and reports each on its own: one family's
    /// failure (SERVFAIL, timeout) does not hide the other's answer.
    /// - Parameter host: the host name (trailing dot optional).
    /// - Returns: each family's answer, or the error its lookup threw (as `mx(_:)` throws).
    public func addressLookups(_ host: String) async -> (ipv4: Result<DNSAnswer<String>, Error>, ipv6: Result<DNSAnswer<String>, Error>) {
        let name: String
        do { name = try DNSWire.normalize(host) } catch { return (.failure(error), .failure(error)) }
        async let v4 = result { try await self.lookup(name, .a) { try DNSWire.address($0, type: .a) } }
        async let v6 = result { try await self.lookup(name, .aaaa) { try DNSWire.address($0, type: .aaaa) } }
        return await (v4, v6)
    }

    private func result<T>(_ body: () async throws -> T) async -> Result<T, Error> {
        do { return .success(try await body()) } catch { return .failure(error) }
    }

    /// Looks up the TLSA RRset `_PORT._tcp.HOST` (RFC 6698 §3, RFC 7672 §2.2.3).
    /// - Parameters:
    ///   - port: the TCP port, 1...65535 (25 for SMTP).
    ///   - host: the host name — for SMTP the MX host after CNAME expansion when that
    ///     expansion is secure (RFC 7672 §2.2.3), else the MX host name itself.
    /// - Returns: records in RFC 6698 §2.1 wire layout (usage, selector, matching type, data).
    ///   NXDOMAIN/NODATA with `status == .secure` is an authenticated "no TLSA"; with
    ///   `.insecure` DANE does not apply; `.bogus` is a failure, never a denial
    ///   (RFC 7672 §2.1.1).
    /// - Throws: as `mx(_:)`; `.resolverError` also for a port outside 1...65535.
    public func tlsa(port: Int, host: String) async throws -> DNSAnswer<TLSARecord> {
        guard (1...65535).contains(port) else {
            throw DNSLookupError.resolverError("TLSA port \(port) out of range 1...65535")
        }
        let name = try DNSWire.normalize(host)
        return try await lookup("_\(port)._tcp.\(name)", .tlsa, parse: DNSWire.tlsa)
    }

    /// Looks up a TXT RRset, e.g. `_mta-sts.<domain>` (RFC 8461 §3.1) or a TLS-RPT record.
    /// - Parameter name: the owner name (trailing dot optional).
    /// - Returns: one string per TXT record: its character strings concatenated without
    ///   separators (RFC 7208 §3.3, RFC 8461 §3.1), decoded as UTF-8 (invalid sequences become
    ///   U+FFFD).
    /// - Throws: as `mx(_:)`.
    public func txt(_ name: String) async throws -> DNSAnswer<String> {
        try await lookup(name, .txt, parse: DNSWire.txt)
    }

    /// Cancels every in-flight lookup — each resumes with
    /// `DNSLookupError.resolverError("resolver has been shut down")` — stops the event thread
    /// and deletes the libunbound context. Later lookups throw the same error. Idempotent;
    /// blocks the caller briefly (it joins the event thread). Also done on deinit.
    public func shutdown() {
        engine.shutdown()
    }

    // MARK: -

    private func lookup<Record: Sendable>(_ rawName: String, _ type: DNSRecordType,
                                          parse: @Sendable ([UInt8]) throws -> Record) async throws -> DNSAnswer<Record> {
        let name = try DNSWire.normalize(rawName)
        let r = try await engine.resolve(name, type)
        // Decide on secure/bogus first, never on the RCODE (bogus answers may carry rcode 0 and
        // data, or SERVFAIL; RFC 4035 §4.3, RFC 7672 §2.1.1).
        let status: DNSSECStatus = r.bogus ? .bogus : (r.secure ? .secure : .insecure)
        if status != .bogus && r.rcode != 0 && r.rcode != 3 {
            throw DNSLookupError.serverFailure(name: name, type: type, why: Self.rcodeText(r.rcode))
        }
        var records: [Record] = []
        if r.rcode == 0 || status == .bogus {
            records.reserveCapacity(r.rdata.count)
            for item in r.rdata {
                do {
                    records.append(try parse(item))
                } catch {
                    // A bogus answer is reported as bogus whatever its contents.
                    if status == .bogus { continue }
                    throw DNSLookupError.resolverError("malformed \(type) record for \(name): \(error)")
                }
            }
        }
        return DNSAnswer(name: name,
                         canonicalName: r.canonicalName.map(DNSWire.presentation) ?? name,
                         type: type, status: status,
                         whyBogus: status == .bogus ? (r.whyBogus ?? "validation failure") : nil,
                         rcode: r.rcode, records: records, ttl: r.ttl)
    }

    private static func rcodeText(_ rcode: Int) -> String {
        let names = [1: "FORMERR", 2: "SERVFAIL", 4: "NOTIMP", 5: "REFUSED", 6: "YXDOMAIN",
                     7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE"]
        return "rcode \(rcode) (\(names[rcode] ?? "unknown"))"
    }
}
