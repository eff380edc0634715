import DeliveryPolicy
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL

/// Fetches `https://mta-sts.<domain>/.well-known/mta-sts.txt` (RFC 8461 §3.3): HTTPS only,
/// a WebPKI-valid certificate for that name (system trust store plus an optional extra CA
/// file), no redirects, only 200 counts, media type `text/plain`, at most 64 KiB, bounded time.
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

    public let extraCAFile: String?
    /// Seconds for the whole fetch (connect, TLS, response). Default 20.
    public let timeoutSeconds: Int64

    public init(extraCAFile: String?, timeoutSeconds: Int64 = 20) {
        self.extraCAFile = extraCAFile
        self.timeoutSeconds = timeoutSeconds
    }

    /// Fetches and parses the policy of `domain`, connecting to `address` (from the validating
    /// resolver) while naming and verifying `mta-sts.<domain>`.
    /// - Throws: `FetchError`.
    public func fetch(domain: String, address: String?) async throws -> STSPolicy {
        let host = "mta-sts.\(domain)"
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        if let extraCAFile, !extraCAFile.isEmpty {
            do {
                let extra = try NIOSSLCertificate.fromPEMFile(extraCAFile)
                tls.trustRoots = .default
                tls.additionalTrustRoots = [.certificates(extra)]
            } catch {
                throw FetchError(reason: "cannot read delivery.tls_ca_file \(extraCAFile): \(error)", resultType: .stsPolicyFetchError)
            }
        }
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls, redirectConfiguration: .disallow,
                                                     timeout: .init(connect: .seconds(timeoutSeconds), read: .seconds(timeoutSeconds)))
        if let address { configuration.dnsOverride = [host: address] }
        configuration.decompression = .disabled
        let client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
        do {
            let policy = try await fetch(client: client, host: host)
            try? await client.shutdown()
            return policy
        } catch {
            try? await client.shutdown()
            throw error
        }
    }

    private func fetch(client: HTTPClient, host: String) async throws -> STSPolicy {
        var request = HTTPClientRequest(url: "https://\(host)/.well-known/mta-sts.txt")
        request.headers.add(name: "User-Agent", value: "tlsrelay (MTA-STS, RFC 8461)")
        let response: HTTPClientResponse
        do {
            response = try await client.execute(request, timeout: .seconds(timeoutSeconds))
        } catch {
            let text = "\(error)"
            let certificate = text.contains("certificate") || text.contains("CERTIFICATE") || text.contains("handshakeFailed")
            throw FetchError(reason: "fetching https://\(host)/.well-known/mta-sts.txt failed: \(text)",
                             resultType: certificate ? .stsWebPKIInvalid : .stsPolicyFetchError)
        }
        // §3.3: "Senders MUST NOT follow redirects"; only 200 counts.
        guard response.status == .ok else {
            throw FetchError(reason: "https://\(host)/.well-known/mta-sts.txt answered \(response.status.code) \(response.status.reasonPhrase)",
                             resultType: .stsPolicyFetchError)
        }
        let contentType = response.headers.first(name: "content-type") ?? ""
        let mediaType = contentType.split(separator: ";").first.map { $0.trimmingWhitespace().lowercased() } ?? ""
        guard mediaType == "text/plain" else {
            throw FetchError(reason: "policy has media type \"\(contentType)\", not text/plain", resultType: .stsPolicyInvalid)
        }
        let body: ByteBuffer
        do {
            body = try await response.body.collect(upTo: Self.maxBodySize)
        } catch {
            throw FetchError(reason: "policy body larger than \(Self.maxBodySize) bytes or unreadable: \(error)", resultType: .stsPolicyInvalid)
        }
        guard let text = body.getString(at: body.readerIndex, length: body.readableBytes) else {
            throw FetchError(reason: "policy body is not text", resultType: .stsPolicyInvalid)
        }
        do {
            return try STSPolicy.parse(text)
        } catch let invalid as STSPolicy.Invalid {
            throw FetchError(reason: "invalid policy: \(invalid.reason)", resultType: .stsPolicyInvalid)
        }
    }
}
