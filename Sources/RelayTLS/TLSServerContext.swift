import COpenSSL

/// The TLS server configuration of the inbound listener (STARTTLS, RFC 3207): one immutable
/// `SSL_CTX` with a certificate chain and its private key, shared by every inbound session.
///
/// `TLS_server_method`, TLS 1.2 at least (RFC 8996), no renegotiation, no client certificates
/// requested. A new context is built on every (re)load; sessions that already started keep the
/// one they began with.
public final class TLSServerContext: @unchecked Sendable {
    let ctx: OpaquePointer
    /// The first certificate's subject (RFC 2253 form), for the start-up log line.
    public let certificateSubject: String
    /// True when the first certificate's notAfter is in the past: clients that check it (Postfix
    /// with `secure` or `verify`) will refuse it. The context still loads, so that a relay whose
    /// clients pin a fingerprint keeps working; the daemon warns.
    public let certificateExpired: Bool

    /// - Parameters:
    ///   - certificateChainFile: PEM, the server certificate first, then intermediates.
    ///   - privateKeyFile: PEM, unencrypted.
    /// - Throws: `TLSContextError.cannotLoadCertificateChain`, `.cannotLoadPrivateKey` or
    ///   `.keyDoesNotMatchCertificate`, each naming the file and OpenSSL's reason.
    public init(certificateChainFile: String, privateKeyFile: String) throws(TLSContextError) {
        ERR_clear_error()
        guard let ctx = SSL_CTX_new(TLS_server_method()) else {
            throw TLSContextError.openSSL(function: "SSL_CTX_new", reason: OpenSSLErrors.message(fallback: "unknown error"))
        }
        guard tlsrelay_SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) == 1 else {
            SSL_CTX_free(ctx)
            throw TLSContextError.openSSL(function: "SSL_CTX_set_min_proto_version", reason: OpenSSLErrors.message(fallback: "refused"))
        }
        _ = tlsrelay_SSL_CTX_set_server_options(ctx)
        _ = tlsrelay_SSL_CTX_set_mode(ctx, Int(SSL_MODE_RELEASE_BUFFERS))
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nil)
        ERR_clear_error()
        guard SSL_CTX_use_certificate_chain_file(ctx, certificateChainFile) == 1 else {
            SSL_CTX_free(ctx)
            throw TLSContextError.cannotLoadCertificateChain(path: certificateChainFile, reason: OpenSSLErrors.message(fallback: "unreadable"))
        }
        ERR_clear_error()
        // Read the key on its own first, so that "not a key" and "not this certificate's key"
        // are told apart.
        guard let file = BIO_new_file(privateKeyFile, "r") else {
            SSL_CTX_free(ctx)
            throw TLSContextError.cannotLoadPrivateKey(path: privateKeyFile, reason: OpenSSLErrors.message(fallback: "unreadable"))
        }
        // No password callback that could prompt on a terminal: an encrypted key fails to load.
        let key = PEM_read_bio_PrivateKey(file, nil, { _, _, _, _ in 0 }, nil)
        BIO_free(file)
        guard let key else {
            SSL_CTX_free(ctx)
            throw TLSContextError.cannotLoadPrivateKey(path: privateKeyFile, reason: OpenSSLErrors.message(fallback: "no PEM private key (an encrypted key is not supported)"))
        }
        ERR_clear_error()
        let used = SSL_CTX_use_PrivateKey(ctx, key)
        EVP_PKEY_free(key)
        guard used == 1, SSL_CTX_check_private_key(ctx) == 1 else {
            SSL_CTX_free(ctx)
            throw TLSContextError.keyDoesNotMatchCertificate(keyPath: privateKeyFile, certificatePath: certificateChainFile,
                                                            reason: OpenSSLErrors.message(fallback: "mismatch"))
        }
        let leaf = SSL_CTX_get0_certificate(ctx)
        certificateSubject = leaf.flatMap { OpenSSLText.name(X509_get_subject_name($0)) } ?? "(no subject)"
        certificateExpired = leaf.map { X509_cmp_current_time(X509_get0_notAfter($0)) < 0 } ?? false
        ERR_clear_error()
        self.ctx = ctx
    }

    deinit {
        SSL_CTX_free(ctx)
    }
}
