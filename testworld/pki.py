"""Test PKI for the tlsrelay test world.

One test CA (the relay's ``tls_ca_file``), one foreign CA (for certificates
that must *not* validate), and leaf certificates in the variants the scenarios
need: ``good``, ``expired``, ``wrongname``, ``selfsigned``, ``otherca``.

Everything is generated fresh into ``DIR/pki`` on every ``up``; nothing here is
ever committed.  ECDSA P-256 keys keep generation well under a second.

TLSA association data (RFC 6698 §2.1, RFC 7671 §5):
  * ``3 1 1`` = SHA-256 of the leaf's SubjectPublicKeyInfo (DANE-EE, RFC 7672 §3.1.1)
  * ``2 1 1`` = SHA-256 of the issuing CA's SubjectPublicKeyInfo (DANE-TA, RFC 7672 §3.1.2)
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VARIANTS = ("good", "expired", "wrongname", "selfsigned", "otherca")
WRONG_NAME = "not-the-mx.example"

_NOW = _dt.datetime.now(_dt.timezone.utc)


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def spki_der(public_key) -> bytes:
    """DER SubjectPublicKeyInfo (TLSA selector 1, RFC 6698 §2.1.2)."""
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def spki_sha256(public_key) -> str:
    """TLSA matching type 1 over selector 1 (RFC 6698 §2.1.3)."""
    return hashlib.sha256(spki_der(public_key)).hexdigest()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tlsrelay test world"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class CA:
    name: str
    key: object
    cert: x509.Certificate

    @classmethod
    def create(cls, cn: str) -> "CA":
        key = _key()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder()
                .subject_name(_name(cn)).issuer_name(_name(cn))
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(_NOW - _dt.timedelta(days=1))
                .not_valid_after(_NOW + _dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                             crl_sign=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .sign(key, hashes.SHA256()))
        return cls(cn, key, cert)

    @property
    def spki_sha256(self) -> str:
        return spki_sha256(self.cert.public_key())

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _leaf(names, issuer: CA | None, not_before, not_after):
    """Issue a server certificate for ``names``; ``issuer=None`` = self-signed."""
    key = _key()
    subject = _name(names[0])
    b = (x509.CertificateBuilder()
         .subject_name(subject)
         .issuer_name(issuer.cert.subject if issuer else subject)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(not_before).not_valid_after(not_after)
         .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    if issuer:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.cert.public_key()), critical=False)
    cert = b.sign(issuer.key if issuer else key, hashes.SHA256())
    return key, cert


def _write(path: str, data: bytes, mode=0o644):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


class PKI:
    """Writes ``ca.pem``, ``other-ca.pem`` and ``certs/<label>.{key,crt,chain.pem}``."""

    def __init__(self, directory: str):
        self.dir = directory
        os.makedirs(os.path.join(directory, "certs"), exist_ok=True)
        self.ca = CA.create("tlsrelay test CA")
        self.other_ca = CA.create("tlsrelay foreign CA (not trusted)")
        _write(self.ca_file, self.ca.pem())
        _write(os.path.join(directory, "ca.key"),
               self.ca.key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()), 0o600)
        _write(self.other_ca_file, self.other_ca.pem())

    @property
    def ca_file(self) -> str:
        return os.path.join(self.dir, "ca.pem")

    @property
    def other_ca_file(self) -> str:
        return os.path.join(self.dir, "other-ca.pem")

    def issue(self, label: str, host: str, variant: str = "good") -> dict:
        """Create a certificate for ``host`` in ``variant``; return its file paths and TLSA data.

        The chain file holds leaf + issuing CA (RFC 7671 §5.2.2: a DANE-TA
        trust anchor should be in the presented chain).
        """
        if variant not in VARIANTS:
            raise ValueError(f"unknown certificate variant {variant!r}")
        nb, na = _NOW - _dt.timedelta(days=1), _NOW + _dt.timedelta(days=90)
        issuer = self.ca
        names = [host]
        if variant == "expired":
            nb, na = _NOW - _dt.timedelta(days=60), _NOW - _dt.timedelta(days=30)
        elif variant == "wrongname":
            names = [WRONG_NAME]
        elif variant == "selfsigned":
            issuer = None
        elif variant == "otherca":
            issuer = self.other_ca
        key, cert = _leaf(names, issuer, nb, na)
        base = os.path.join(self.dir, "certs", label)
        leaf_pem = cert.public_bytes(serialization.Encoding.PEM)
        _write(base + ".key", key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), 0o644)
        _write(base + ".crt", leaf_pem)
        _write(base + ".chain.pem", leaf_pem + (issuer.pem() if issuer else b""))
        return {
            "variant": variant,
            "names": names,
            "issuer": issuer.name if issuer else "self",
            "not_after": na.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "key_file": base + ".key",
            "cert_file": base + ".crt",
            "chain_file": base + ".chain.pem",
            "spki_sha256": spki_sha256(cert.public_key()),
            "issuer_spki_sha256": issuer.spki_sha256 if issuer else spki_sha256(cert.public_key()),
        }


def random_sha256() -> str:
    """Association data that matches nothing (for TLSA-mismatch scenarios)."""
    return hashlib.sha256(os.urandom(32)).hexdigest()
