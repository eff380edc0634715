import RelayMetrics
import Foundation
import Logging
import DeliveryPolicy
import MTASTSCore
import RelayDNS

/// Discovers, fetches, caches and refreshes MTA-STS policies.
public final class STSPolicyService: Sendable {
    let resolver: RelayDNS.Resolver
    let cache: any STSPolicyStore
    let fetcher: STSPolicyFetcher
    let logger: Logger
    /// A cached policy is fetched again after this many seconds even when the TXT id did not
    /// change (RFC 8461 §5.1: refresh before expiry). Default 86400.
    let refreshInterval: Double

    public init(resolver: RelayDNS.Resolver, cache: any STSPolicyStore, fetcher: STSPolicyFetcher, logger: Logger, refreshInterval: Double = 86400) {
        self.resolver = resolver
        self.cache = cache
        self.fetcher = fetcher
        self.logger = logger
        self.refreshInterval = refreshInterval
    }

    /// What MTA-STS says about `domain` now (RFC 8461 §3, §5.1), for the delivery planner.
    /// - Parameters:
    ///   - domain: the policy domain, lowercased, no trailing dot.
    ///   - now: seconds since the epoch.
    /// - Returns: the policy in force (from a fetch or the cache), a problem to report, or a
    ///   temporary failure (nothing usable cached): never throws.
    public func decision(for domain: String, now: Double = Date().timeIntervalSince1970) async -> STSFact {
        let lookup = await cache.lookup(domain)
        if case .unavailable(let reason) = lookup {
            // The shared store is down: whether a policy is in force is unknown (as when DNS
            // fails), so the delivery is deferred, and nothing is fetched that could not be kept.
            return STSFact(policy: nil, temporaryFailure: "the MTA-STS policy store cannot be read: \(reason)")
        }
        let cached = lookup.policy
        let usable = cached.flatMap { $0.isExpired(now: now) ? nil : $0 }
        func fromCache(_ problem: (TLSRPTResultType, String)?) -> STSFact {
            if case .unreadable(let reason) = lookup {
                // The policy in force is unknown: defer rather than deliver as if there were none.
                let why = "the cached MTA-STS policy of \(domain) is unreadable (\(reason)) and no fresh policy could be had"
                logger.error("\(why)")
                return STSFact(policy: nil, problem: STSFact.STSProblem(resultType: problem?.0 ?? .stsPolicyFetchError, reason: problem?.1 ?? why),
                               temporaryFailure: why)
            }
            return STSFact(policy: usable.flatMap { $0.policy.mode == .none ? nil : $0.policy }, fromCache: usable != nil,
                           problem: problem.map { STSFact.STSProblem(resultType: $0.0, reason: $0.1) })
        }
        // §3.1: the TXT record announces a policy and its id.
        let record: STSRecord
        do {
            let answer = try await resolver.txt("_mta-sts.\(domain)")
            if answer.status == .bogus {
                let reason = "_mta-sts.\(domain) TXT failed DNSSEC validation (bogus: \(answer.whyBogus ?? "no reason"))"
                if usable != nil { return fromCache((.stsPolicyFetchError, reason)) }
                return STSFact(policy: nil, problem: STSFact.STSProblem(resultType: .dnssecInvalid, reason: reason), temporaryFailure: reason)
            }
            record = try STSRecord.parse(txtRecords: answer.records)
        } catch let problem as STSRecord.Problem {
            // No (single, valid) record: no new policy; a cached unexpired one stays (§5.1).
            if case .invalid(let why) = problem {
                return fromCache((.stsPolicyInvalid, "_mta-sts.\(domain) TXT record is invalid: \(why)"))
            }
            return fromCache(nil)
        } catch {
            // A temporary failure is not "no policy" (policy rules: use the cache, else defer).
            let reason = "_mta-sts.\(domain) TXT lookup failed: \(error)"
            if usable != nil { return fromCache(nil) }
            return STSFact(policy: nil, temporaryFailure: reason)
        }
        if let usable, usable.id == record.id, now - usable.fetchedAt < refreshInterval {
            return fromCache(nil)
        }
        // Fetch: a new id, an expired or missing cache, or time to refresh.
        do {
            let address = try await policyHostAddress(domain)
            let policy = try await fetcher.fetch(domain: domain, address: address)
            RelayMetrics.stsFetch(success: true)
            let entry = CachedSTSPolicy(domain: domain, id: record.id, policy: policy, fetchedAt: now)
            do { try await cache.store(entry) } catch { logger.error("cannot store the MTA-STS policy of \(domain): \(error)") }
            logger.info("MTA-STS policy of \(domain) fetched: id \(record.id), mode \(policy.mode.rawValue), max_age \(policy.maxAge), mx \(policy.mx.joined(separator: " "))")
            return STSFact(policy: policy.mode == .none ? nil : policy)
        } catch let error as STSPolicyFetcher.FetchError {
            RelayMetrics.stsFetch(success: false)
            // §3.3 / §5.1: a failed fetch keeps an unexpired cached policy; else no MTA-STS.
            logger.warning("MTA-STS policy of \(domain) could not be fetched\(usable != nil ? " (the cached policy stays in force)" : ""): \(error.reason)")
            return fromCache((error.resultType, error.reason))
        } catch {
            RelayMetrics.stsFetch(success: false)
            return fromCache((.stsPolicyFetchError, "\(error)"))
        }
    }

    /// The address of `mta-sts.<domain>` from the validating resolver; the fetch never falls back
    /// to the system's (unvalidated) resolver.
    /// - Throws: `STSPolicyFetcher.FetchError` (`sts-policy-fetch-error`) when the lookup fails,
    ///   is bogus, or finds no address.
    func policyHostAddress(_ domain: String) async throws -> String {
        let name = "mta-sts.\(domain)"
        let results = await resolver.addressLookups(name)
        for result in [results.ipv4, results.ipv6] {
            if case .success(let answer) = result, answer.status != .bogus, let first = answer.records.first { return first }
        }
        let why: String
        switch (results.ipv4, results.ipv6) {
        case (.success(let a), _) where a.status == .bogus, (_, .success(let a)) where a.status == .bogus:
            why = "the address of \(name) failed DNSSEC validation"
        case (.failure(let error), _):
            why = "the address lookup of \(name) failed: \(error)"
        default:
            why = "\(name) has no address"
        }
        throw STSPolicyFetcher.FetchError(reason: why, resultType: .stsPolicyFetchError)
    }
}
