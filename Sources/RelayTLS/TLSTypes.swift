/// One TLSA record's RDATA (RFC 6698 §2.1): certificate usage, selector, matching type and the
/// certificate association data.
public struct TLSARecordData: Sendable, Hashable {
    public var usage: UInt8
    public var selector: UInt8
    public var matchingType: UInt8
    public var data: [UInt8]

    public init(usage: UInt8, selector: UInt8, matchingType: UInt8, data: [UInt8]) {
        self.usage = usage
        self.selector = selector
        self.matchingType = matchingType
        self.data = data
    }

    /// A record from its association data in hexadecimal (presentation format, case-insensitive,
    /// white space allowed). Nil when `hex` is not an even number of hex digits.
    public init?(usage: UInt8, selector: UInt8, matchingType: UInt8, hex: String) {
        guard let bytes = HexCoding.decode(hex) else { return nil }
        self.init(usage: usage, selector: selector, matchingType: matchingType, data: bytes)
    }

    /// DANE-TA(2) and DANE-EE(3): the only certificate usages SMTP may use (RFC 7672 §3.1.3).
    /// PKIX-TA(0) and PKIX-EE(1) records are "unusable" for SMTP and must be ignored.
    public var isUsableForSMTP: Bool { usage == 2 || usage == 3 }

    /// The association data in lowercase hexadecimal.
    public var dataHex: String { HexCoding.encode(data) }
}

/// How the server's certificate is to be checked on one connection.
public enum TLSPeerAuthentication: Sendable, Hashable {
    /// RFC 7435 opportunistic TLS: encrypt, no certificate check (`SSL_VERIFY_NONE`).
    case opportunistic
    /// TLS is required but the peer is not authenticated (for example: only unusable TLSA
    /// records, RFC 7672 §3.1.3).
    case encryptOnly
    /// RFC 7672 DANE. Only DANE-TA(2) and DANE-EE(3) records are given to OpenSSL; PKIX-TA(0) and
    /// PKIX-EE(1) are dropped (and so are records OpenSSL refuses, such as an unknown matching
    /// type or a digest of the wrong length). With no usable record left the handshake fails
    /// with `authenticationFailed` (65): a DANE request never degrades to `.encryptOnly`.
    ///
    /// SNI is `tlsaBaseDomain` (without a trailing dot). DANE-TA(2) matches are name-checked
    /// against `tlsaBaseDomain` and every name in `hostNames`; DANE-EE(3) matches are not
    /// name-checked (RFC 7672 §3.1.1), and neither their validity dates.
    case dane(tlsaBaseDomain: String, hostNames: [String], records: [TLSARecordData])
    /// RFC 6125 host name check and a chain to the trusted CAs (MTA-STS, RFC 8461 §4.2).
    case webPKI(hostName: String)
}

/// What was actually enforced on a connection (it differs from the request when a DANE policy has
/// no usable TLSA record).
public enum TLSAuthenticationApplied: String, Sendable, Equatable {
    case opportunistic
    case encryptOnly
    case dane
    case webPKI
}

/// The TLSA record that authenticated the peer and the chain depth it matched at
/// (0 = the server's own certificate).
public struct DANEMatch: Sendable, Equatable {
    public let usage: UInt8
    public let selector: UInt8
    public let matchingType: UInt8
    /// The record's association data in lowercase hexadecimal.
    public let dataHex: String
    public let depth: Int

    public init(usage: UInt8, selector: UInt8, matchingType: UInt8, dataHex: String, depth: Int) {
        self.usage = usage
        self.selector = selector
        self.matchingType = matchingType
        self.dataHex = dataHex
        self.depth = depth
    }
}

/// The result of a completed handshake, for logging and the `Received:`-style trace.
public struct TLSSessionInfo: Sendable, Equatable {
    /// "TLSv1.2" or "TLSv1.3".
    public let protocolVersion: String
    /// The OpenSSL cipher suite name, e.g. "TLS_AES_256_GCM_SHA384".
    public let cipher: String
    /// Secret bits of the cipher and bits of its algorithm (`SSL_CIPHER_get_bits`), e.g. 256/256.
    public let cipherBits: Int
    public let algorithmBits: Int
    /// The server certificate's subject and issuer (RFC 2253 form), nil when none was sent.
    public let peerCertificateSubject: String?
    public let peerCertificateIssuer: String?
    /// SHA-256 of the server certificate's SubjectPublicKeyInfo in lowercase hex: the data of a
    /// matching `3 1 1` TLSA record (what tells a missed key rollover from an attack).
    public let peerSPKISHA256: String?
    /// True only when the requested authentication (`.dane` with at least one usable record, or
    /// `.webPKI`) succeeded. Always false for `.opportunistic` and `.encryptOnly`.
    public let verified: Bool
    /// `SSL_get_verify_result` (0 = ok; informative only when `verified` is false).
    public let verifyResult: Int
    /// `X509_verify_cert_error_string(verifyResult)`.
    public let verifyResultText: String
    /// Which TLSA record matched and at which depth; nil unless DANE authenticated the peer.
    public let daneMatch: DANEMatch?
    /// What was enforced: `.encryptOnly` for a `.dane` request without usable records.
    public let authenticationApplied: TLSAuthenticationApplied
    /// TLSA records of a `.dane` request that were not used (usage 0/1, or refused by OpenSSL).
    public let unusableTLSARecords: Int

    public init(protocolVersion: String, cipher: String, cipherBits: Int = 0, algorithmBits: Int = 0,
                peerCertificateSubject: String?, peerCertificateIssuer: String?,
                peerSPKISHA256: String? = nil, verified: Bool, verifyResult: Int, verifyResultText: String, daneMatch: DANEMatch?,
                authenticationApplied: TLSAuthenticationApplied, unusableTLSARecords: Int) {
        self.protocolVersion = protocolVersion
        self.cipher = cipher
        self.cipherBits = cipherBits
        self.algorithmBits = algorithmBits
        self.peerCertificateSubject = peerCertificateSubject
        self.peerCertificateIssuer = peerCertificateIssuer
        self.peerSPKISHA256 = peerSPKISHA256
        self.verified = verified
        self.verifyResult = verifyResult
        self.verifyResultText = verifyResultText
        self.daneMatch = daneMatch
        self.authenticationApplied = authenticationApplied
        self.unusableTLSARecords = unusableTLSARecords
    }
}

/// Why a TLS handshake did not complete. Once the handler reports one of these, no application
/// byte has been (or will be) sent on the connection.
public enum TLSHandshakeError: Error, Sendable, Equatable, CustomStringConvertible {
    /// OpenSSL's name of an `X509_V_ERR_*` code (x509_vfy.h), for logs that an administrator
    /// can search for.
    public static func verifyResultName(_ code: Int) -> String {
        switch code {
        case 0: return "X509_V_OK"
        case 2: return "X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT"
        case 7: return "X509_V_ERR_CERT_SIGNATURE_FAILURE"
        case 9: return "X509_V_ERR_CERT_NOT_YET_VALID"
        case 10: return "X509_V_ERR_CERT_HAS_EXPIRED"
        case 18: return "X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT"
        case 19: return "X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN"
        case 20: return "X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY"
        case 21: return "X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE"
        case 23: return "X509_V_ERR_CERT_REVOKED"
        case 24: return "X509_V_ERR_INVALID_CA"
        case 26: return "X509_V_ERR_INVALID_PURPOSE"
        case 62: return "X509_V_ERR_HOSTNAME_MISMATCH"
        case 65: return "X509_V_ERR_DANE_NO_MATCH"
        case 66: return "X509_V_ERR_EE_KEY_TOO_SMALL"
        case 67: return "X509_V_ERR_CA_KEY_TOO_SMALL"
        case 68: return "X509_V_ERR_CA_MD_TOO_WEAK"
        default: return "X509_V_ERR #\(code)"
        }
    }

    /// The peer's certificate did not pass the requested check. `verifyResult` is OpenSSL's
    /// `X509_V_ERR_*`: 65 no matching TLSA record, 62 host name mismatch, 18/19/20/21 untrusted,
    /// 10 expired, ...
    case authenticationFailed(verifyResult: Int, reason: String)
    /// A protocol failure: an alert from the peer, "wrong version number" (a non-TLS peer), ...
    case handshakeFailed(reason: String)
    /// Bytes followed the STARTTLS 220 reply before TLS started (detected by the caller, which
    /// frames the SMTP replies; the handler itself never reports it).
    case unexpectedPlaintext
    /// The connection closed (or the handler was removed, or the channel was closed locally)
    /// before the handshake completed.
    case connectionClosed

    public var description: String {
        switch self {
        case .authenticationFailed(let code, let reason):
            return "TLS authentication failed: \(reason) (\(TLSHandshakeError.verifyResultName(code)), verify result \(code))"
        case .handshakeFailed(let reason): return "TLS handshake failed: \(reason)"
        case .unexpectedPlaintext: return "plaintext received after the STARTTLS reply, before the TLS handshake"
        case .connectionClosed: return "connection closed during the TLS handshake"
        }
    }
}

/// Errors after a successful handshake (fired through `errorCaught`, and used to fail writes).
public enum TLSConnectionError: Error, Sendable, Equatable, CustomStringConvertible {
    /// `SSL_read` failed (a corrupt record, an alert from the peer, ...). The channel is closed.
    case readFailed(reason: String)
    /// `SSL_write` failed. The channel is closed.
    case writeFailed(reason: String)

    public var description: String {
        switch self {
        case .readFailed(let reason): return "TLS read failed: \(reason)"
        case .writeFailed(let reason): return "TLS write failed: \(reason)"
        }
    }
}

/// Errors building a `TLSClientContext`.
public enum TLSContextError: Error, Sendable, Equatable, CustomStringConvertible {
    case openSSL(function: String, reason: String)
    case cannotLoadCAFile(path: String, reason: String)
    /// The server certificate chain file is missing, unreadable or not PEM certificates.
    case cannotLoadCertificateChain(path: String, reason: String)
    /// The private key file is missing, unreadable, encrypted or not a PEM key.
    case cannotLoadPrivateKey(path: String, reason: String)
    /// The key does not belong to the chain's first certificate.
    case keyDoesNotMatchCertificate(keyPath: String, certificatePath: String, reason: String)

    public var description: String {
        switch self {
        case .openSSL(let function, let reason): return "\(function) failed: \(reason)"
        case .cannotLoadCAFile(let path, let reason): return "cannot load CA file \(path): \(reason)"
        case .cannotLoadCertificateChain(let path, let reason): return "cannot load the certificate chain \(path): \(reason)"
        case .cannotLoadPrivateKey(let path, let reason): return "cannot load the private key \(path): \(reason)"
        case .keyDoesNotMatchCertificate(let key, let certificate, let reason):
            return "the private key \(key) does not belong to the first certificate of \(certificate): \(reason)"
        }
    }
}

enum HexCoding {
    static func encode(_ bytes: [UInt8]) -> String {
        let digits: [Character] = Array("0123456789abcdef")
        var out = ""
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return out
    }

    static func decode(_ text: String) -> [UInt8]? {
        var out: [UInt8] = []
        var high: UInt8?
        for scalar in text.unicodeScalars {
            let value: UInt8
            switch scalar {
            case "0"..."9": value = UInt8(scalar.value - 48)
            case "a"..."f": value = UInt8(scalar.value - 87)
            case "A"..."F": value = UInt8(scalar.value - 55)
            case " ", "\t", "\n", "\r": continue
            default: return nil
            }
            if let h = high {
                out.append(h << 4 | value)
                high = nil
            } else {
                high = value
            }
        }
        return high == nil ? out : nil
    }
}
