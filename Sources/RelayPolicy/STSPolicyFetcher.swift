import DeliveryPolicy
import Foundation
import NIOHTTP1
import RelayHTTPS

/// Fetches `https://mta-sts.<domain>/.well-known/mta-sts.txt` (RFC 8461 §3.3): HTTPS only,
/// over the system OpenSSL (`HTTPSClient`), a WebPKI-valid certificate for that name (system
/// trust store plus `delivery.tls_ca_file`), no redirects, only 200 counts, media type
/// `text/plain`, at most 64 KiB, bounded time.
public struct STSPolicyFetcher: Sendable {
    /// Why a fetch failed (RFC 8460 `sts-policy-fetch-error` unless noted).
    public struct FetchError: Error, Sendable, Equatable, CustomStringConvertible {
        public let reason: String
        /// RFC 8460 result type: `sts-policy-fetch-error`, or `sts-webpki-invalid` for a
        /// certificate failure, or `sts-policy-invalid` for an invalid body.
        public let resultType: TLSRPTResultType
        public var description: String { reason }
    }

    /// Largest policy body, bytes (RFC 8461 §3.3 suggests 64 KiB).
    public static let maxBodySize = 65536

    public let client: HTTPSClient
    /// Seconds for the whole fetch (connect, TLS, response). Default 20.
    public let timeoutSeconds: Int64

    /// - Parameters:
    ///   - client: the HTTPS client over the system OpenSSL (its TLS context holds the trusted
    ///     CAs: the system store plus `delivery.tls_ca_file`).
    ///   - timeoutSeconds: bound on one whole fetch.
    public init(client: HTTPSClient, timeoutSeconds: Int64 = 20) {
        self.client = client
        self.timeoutSeconds = timeoutSeconds
    }

    /// Fetches and parses the policy of `domain`, connecting to `address` (from the validating
    /// resolver) while naming and verifying `mta-sts.<domain>`.
    /// - Throws: `FetchError`: `sts-webpki-invalid` when the policy host's certificate fails the
    ///   WebPKI check or the TLS handshake fails, `sts-policy-invalid` for a body that is not a
    ///   policy (media type, size, syntax), `sts-policy-fetch-error` otherwise (connection,
    ///   timeout, any status but 200 — redirects are not followed, §3.3).
    public func fetch(domain: String, address: String) async throws -> STSPolicy {
        let host = "mta-sts.\(domain)"
        let url = HTTPSURL(host: host, target: "/.well-known/mta-sts.txt")
        let request = HTTPSRequest(method: .get, url: url, headers: [("Accept", "text/plain")])
        let response: HTTPSResponse
        do {
            response = try await client.send(request, to: address, timeoutSeconds: Double(timeoutSeconds), maxBodyBytes: Self.maxBodySize)
        } catch {
            switch error {
            case .bodyTooLarge:
                throw FetchError(reason: "policy body larger than \(Self.maxBodySize) bytes", resultType: .stsPolicyInvalid)
            case .tls(.authenticationFailed), .tls(.handshakeFailed):
                throw FetchError(reason: "fetching \(url) failed: \(error)", resultType: .stsWebPKIInvalid)
            default:
                throw FetchError(reason: "fetching \(url) failed: \(error)", resultType: .stsPolicyFetchError)
            }
        }
        // §3.3: "Senders MUST NOT follow redirects"; only 200 counts.
        guard response.status == .ok else {
            throw FetchError(reason: "\(url) answered \(response.status.code) \(response.status.reasonPhrase)",
                             resultType: .stsPolicyFetchError)
        }
        let contentType = response.headers.first(name: "content-type") ?? ""
        let mediaType = contentType.split(separator: ";").first.map { $0.trimmingWhitespace().lowercased() } ?? ""
        guard mediaType == "text/plain" else {
            throw FetchError(reason: "policy has media type \"\(contentType)\", not text/plain", resultType: .stsPolicyInvalid)
        }
        guard let text = String(validating: response.body, as: UTF8.self) else {
            throw FetchError(reason: "policy body is not UTF-8 text", resultType: .stsPolicyInvalid)
        }
        do {
            return try STSPolicy.parse(text)
        } catch let invalid as STSPolicy.Invalid {
            throw FetchError(reason: "invalid policy: \(invalid.reason)", resultType: .stsPolicyInvalid)
        }
    }
}
