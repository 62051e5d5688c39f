"""Certificates for the tunnel: a self-signed edge certificate and its SHA-256 pin.

The edge makes its own certificate unless it is given one (``--cert``/``--key``) and
logs its fingerprint; clients and connectors then check that fingerprint (``--pin``),
a CA bundle (``--ca``), or nothing at all (``--insecure``, for tests).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import tempfile
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificatePair", "certificate_fingerprint", "generate_self_signed", "normalize_pin"]


@dataclass(frozen=True)
class CertificatePair:
    """Paths of a PEM certificate and its PEM private key, plus the certificate's pin."""

    cert_file: str
    key_file: str
    fingerprint: str


def certificate_fingerprint(cert_pem_or_der: bytes) -> str:
    """SHA-256 of the certificate's DER bytes as lowercase hex with ``:`` between bytes."""
    if cert_pem_or_der.lstrip().startswith(b"-----BEGIN"):
        der = x509.load_pem_x509_certificate(cert_pem_or_der).public_bytes(serialization.Encoding.DER)
    else:
        der = cert_pem_or_der
    return ":".join(f"{b:02x}" for b in hashlib.sha256(der).digest())


def normalize_pin(pin: str) -> str:
    """A pin as given by a user (hex, with or without ``:``, any case, optional ``sha256/``
    prefix) in the form certificate_fingerprint returns; ValueError if it is not 32 bytes."""
    text = pin.strip().lower()
    if text.startswith("sha256:") or text.startswith("sha256/"):
        text = text[7:]
    hexdigits = text.replace(":", "")
    try:
        raw = bytes.fromhex(hexdigits)
    except ValueError:
        raise ValueError(f"pin is not hexadecimal: {pin!r}") from None
    if len(raw) != 32:
        raise ValueError(f"pin must be a SHA-256 digest (32 bytes), got {len(raw)} bytes")
    return ":".join(f"{b:02x}" for b in raw)


def generate_self_signed(
    directory: str | None = None, *, common_name: str = "fastproxy-edge", valid_days: int = 825
) -> CertificatePair:
    """Write a new ECDSA P-256 self-signed certificate and key (key file mode 0600) into
    ``directory`` (a new private temporary directory when None) and return their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(common_name),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        # A leaf, not a CA: TLS stacks (rustls/webpki) refuse a CA certificate as a server's.
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    if directory is None:
        directory = tempfile.mkdtemp(prefix="fastproxy-cert-")
    cert_file = os.path.join(directory, "edge-cert.pem")
    key_file = os.path.join(directory, "edge-key.pem")
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    with open(cert_file, "wb") as f:
        f.write(cert_pem)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return CertificatePair(cert_file, key_file, certificate_fingerprint(cert_pem))
