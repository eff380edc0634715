import COpenSSL

/// TLSA association data computed from a certificate (RFC 6698 §2.1.2-2.1.3), for tests and
/// tools (`tlsa` record generation, checking a server's certificate against published records).
public enum TLSADigest {
    public enum Failure: Error, Sendable, Equatable {
        case notAPEMCertificate
        case unsupported(selector: UInt8, matchingType: UInt8)
        case openSSL(String)
    }

    /// SHA-256 of the DER SubjectPublicKeyInfo: the data of a `x 1 1` record.
    public static func sha256SPKI(pemCertificate: String) throws -> [UInt8] {
        try data(selector: 1, matchingType: 1, pemCertificate: pemCertificate)
    }

    /// SHA-512 of the DER SubjectPublicKeyInfo: the data of a `x 1 2` record.
    public static func sha512SPKI(pemCertificate: String) throws -> [UInt8] {
        try data(selector: 1, matchingType: 2, pemCertificate: pemCertificate)
    }

    /// SHA-256 of the whole DER certificate: the data of a `x 0 1` record.
    public static func sha256Certificate(pemCertificate: String) throws -> [UInt8] {
        try data(selector: 0, matchingType: 1, pemCertificate: pemCertificate)
    }

    /// A complete record for the first certificate in `pemCertificate`.
    public static func record(usage: UInt8, selector: UInt8, matchingType: UInt8, pemCertificate: String) throws -> TLSARecordData {
        TLSARecordData(usage: usage, selector: selector, matchingType: matchingType,
                       data: try data(selector: selector, matchingType: matchingType, pemCertificate: pemCertificate))
    }

    /// The association data for `selector` (0 full certificate, 1 SubjectPublicKeyInfo) and
    /// `matchingType` (0 exact, 1 SHA-256, 2 SHA-512).
    public static func data(selector: UInt8, matchingType: UInt8, pemCertificate: String) throws -> [UInt8] {
        guard selector <= 1, matchingType <= 2 else { throw Failure.unsupported(selector: selector, matchingType: matchingType) }
        ERR_clear_error()
        let pem = Array(pemCertificate.utf8)
        let cert: OpaquePointer? = pem.withUnsafeBytes { raw -> OpaquePointer? in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_X509(bio, nil, nil, nil)
        }
        guard let cert else {
            ERR_clear_error()
            throw Failure.notAPEMCertificate
        }
        defer { X509_free(cert) }

        var der: UnsafeMutablePointer<UInt8>?
        let length = selector == 0 ? i2d_X509(cert, &der) : i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der)
        guard length > 0, let der else { throw Failure.openSSL(OpenSSLErrors.message(fallback: "DER encoding failed")) }
        defer { tlsrelay_OPENSSL_free(der) }
        let bytes = Array(UnsafeBufferPointer(start: der, count: Int(length)))
        switch matchingType {
        case 0: return bytes
        default: return try digest(bytes, sha512: matchingType == 2)
        }
    }

    static func digest(_ bytes: [UInt8], sha512: Bool) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var outLength: UInt32 = 0
        let ok = bytes.withUnsafeBytes { input in
            out.withUnsafeMutableBufferPointer { output in
                EVP_Digest(input.baseAddress, input.count, output.baseAddress, &outLength, sha512 ? EVP_sha512() : EVP_sha256(), nil)
            }
        }
        guard ok == 1 else { throw Failure.openSSL(OpenSSLErrors.message(fallback: "digest failed")) }
        return Array(out.prefix(Int(outLength)))
    }

    /// Lowercase hexadecimal, as in a TLSA record's presentation format.
    public static func hex(_ bytes: [UInt8]) -> String { HexCoding.encode(bytes) }
}
