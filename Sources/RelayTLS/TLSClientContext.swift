import COpenSSL

/// The per-process TLS client configuration: one immutable `SSL_CTX` shared by every connection.
///
/// `TLS_client_method`, TLS 1.2 at least, DANE enabled with `DANE_FLAG_NO_DANE_EE_NAMECHECKS`
/// (RFC 7672 §3.1.1), `SSL_VERIFY_PEER` by default (each connection lowers it to
/// `SSL_VERIFY_NONE` for opportunistic and encrypt-only TLS), no session cache. Trusted CAs (used
/// by `.webPKI` only): OpenSSL's default paths plus an optional extra PEM file.
///
/// The context is configured in `init` and never changed afterwards, so it may be shared between
/// threads (OpenSSL allows concurrent `SSL_new` on a configured `SSL_CTX`).
public final class TLSClientContext: @unchecked Sendable {
    let ctx: OpaquePointer

    /// - Parameter extraCAFile: a PEM file of further trusted CA certificates, or nil.
    /// - Throws: `TLSContextError` when OpenSSL refuses a setting or the CA file cannot be read.
    public init(extraCAFile: String?) throws {
        ERR_clear_error()
        guard let ctx = SSL_CTX_new(TLS_client_method()) else {
            throw TLSContextError.openSSL(function: "SSL_CTX_new", reason: OpenSSLErrors.message(fallback: "unknown error"))
        }
        self.ctx = ctx
        // From here on, deinit frees ctx when init throws.
        guard tlsrelay_SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) == 1 else {
            throw TLSContextError.openSSL(function: "SSL_CTX_set_min_proto_version", reason: OpenSSLErrors.message(fallback: "refused"))
        }
        _ = tlsrelay_SSL_CTX_set_session_cache_mode(ctx, Int(SSL_SESS_CACHE_OFF))
        _ = tlsrelay_SSL_CTX_set_mode(ctx, Int(SSL_MODE_RELEASE_BUFFERS))
        guard SSL_CTX_set_default_verify_paths(ctx) == 1 else {
            throw TLSContextError.openSSL(function: "SSL_CTX_set_default_verify_paths", reason: OpenSSLErrors.message(fallback: "refused"))
        }
        if let extraCAFile {
            guard SSL_CTX_load_verify_locations(ctx, extraCAFile, nil) == 1 else {
                throw TLSContextError.cannotLoadCAFile(path: extraCAFile, reason: OpenSSLErrors.message(fallback: "unreadable"))
            }
        }
        guard SSL_CTX_dane_enable(ctx) > 0 else {
            throw TLSContextError.openSSL(function: "SSL_CTX_dane_enable", reason: OpenSSLErrors.message(fallback: "refused"))
        }
        _ = SSL_CTX_dane_set_flags(ctx, UInt(DANE_FLAG_NO_DANE_EE_NAMECHECKS))
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
        ERR_clear_error()
    }

    deinit {
        SSL_CTX_free(ctx)
    }
}
