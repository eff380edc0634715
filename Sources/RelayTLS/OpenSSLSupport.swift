import COpenSSL

/// Helpers around OpenSSL's per-thread error queue and a few formatting calls.
enum OpenSSLErrors {
    /// Empties the calling thread's error queue and returns its entries' reason strings, oldest
    /// first (for example "wrong version number", "sslv3 alert handshake failure").
    static func drain() -> [String] {
        var reasons: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            if let reason = ERR_reason_error_string(code) {
                reasons.append(String(cString: reason))
            } else {
                var buffer = [CChar](repeating: 0, count: 256)
                buffer.withUnsafeMutableBufferPointer { ERR_error_string_n(code, $0.baseAddress, $0.count) }
                reasons.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
            }
        }
        return reasons
    }

    /// The drained queue as one message, or `fallback` when it was empty.
    static func message(fallback: String) -> String {
        let reasons = drain()
        return reasons.isEmpty ? fallback : reasons.joined(separator: "; ")
    }
}

enum OpenSSLText {
    /// SHA-256 of a certificate's DER SubjectPublicKeyInfo, lowercase hex (a `3 1 1` TLSA record's data).
    static func spkiSHA256(_ certificate: OpaquePointer) -> String? {
        var der: UnsafeMutablePointer<UInt8>?
        let length = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(certificate), &der)
        guard length > 0, let der else { return nil }
        defer { tlsrelay_OPENSSL_free(der) }
        guard let digest = try? TLSADigest.digest(Array(UnsafeBufferPointer(start: der, count: Int(length))), sha512: false) else { return nil }
        return HexCoding.encode(digest)
    }

    /// "server certificate subject ..., SPKI SHA-256 ..." for the leaf the server presented
    /// (also when verification failed: then it is the first certificate of the chain), or nil.
    static func presentedCertificate(_ ssl: OpaquePointer) -> String? {
        var leaf = SSL_get1_peer_certificate(ssl)
        if leaf == nil, let chain = SSL_get_peer_cert_chain(ssl), OPENSSL_sk_num(chain) > 0,
           let first = OPENSSL_sk_value(chain, 0) {
            let certificate = OpaquePointer(first)
            X509_up_ref(certificate)
            leaf = certificate
        }
        guard let leaf else { return nil }
        defer { X509_free(leaf) }
        var text = "server certificate"
        if let subject = name(X509_get_subject_name(leaf)) { text += " subject \(subject)" }
        if let spki = spkiSHA256(leaf) { text += ", SPKI SHA-256 \(spki) (the data of a 3 1 1 TLSA record that would match it)" }
        return text
    }

    /// `X509_verify_cert_error_string`.
    static func verifyResultText(_ code: Int) -> String {
        guard let text = X509_verify_cert_error_string(code) else { return "unknown verify result \(code)" }
        return String(cString: text)
    }

    /// An X.509 name in RFC 2253 form ("CN=mx.example.test,O=Example"), UTF-8 kept as is.
    static func name(_ name: OpaquePointer?) -> String? {
        guard let name, let bio = BIO_new(BIO_s_mem()) else { return nil }
        defer { BIO_free(bio) }
        guard X509_NAME_print_ex(bio, name, 0, tlsrelay_XN_FLAG_RFC2253_UTF8()) >= 0 else {
            ERR_clear_error()
            return nil
        }
        return readAll(bio)
    }

    /// Everything pending in a memory BIO, as UTF-8 text.
    static func readAll(_ bio: OpaquePointer) -> String {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 512)
        while true {
            let n = chunk.withUnsafeMutableBytes { BIO_read(bio, $0.baseAddress, Int32($0.count)) }
            if n <= 0 { break }
            bytes.append(contentsOf: chunk[0..<Int(n)])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

enum DomainName {
    /// A host or domain name as OpenSSL wants it: no trailing dot (it would go out in SNI and make
    /// every name check fail).
    static func withoutTrailingDot(_ name: String) -> String {
        var name = Substring(name)
        while name.hasSuffix(".") { name = name.dropLast() }
        return String(name)
    }

    /// True for an IPv4 or IPv6 address literal (not sent as SNI, RFC 6066 §3).
    static func isAddressLiteral(_ name: String) -> Bool {
        if name.contains(":") { return true }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        return labels.count == 4 && labels.allSatisfy { !$0.isEmpty && $0.allSatisfy(\.isASCIIDigit) }
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}
