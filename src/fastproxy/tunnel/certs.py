"""Certificates for the tunnel: the edge's own identity, and how a client checks it.

The edge makes its own certificate unless it is given one (``--cert``/``--key``) and
logs its fingerprint; it keeps what it made in a state directory (``--state-dir``), so
the pin survives restarts. Clients and connectors then check that fingerprint
(``--pin``), a CA bundle (``--ca``), or nothing at all (``--insecure``, for tests).

The CA-bundle check is done here, with ``cryptography``, not by the QUIC library: qh3's
verifier (webpki rules) refuses a certificate that is its own trust anchor when it says
``CA:TRUE`` -- what ``openssl req -x509`` makes -- while curl, ``openssl s_client`` and
Python's ssl accept a bundle holding the very certificate the server presents. Doing the
check ourselves also lets every failure say which certificate, what is wrong and what to do.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import CertificateFileError, CertificateRejected

__all__ = [
    "CERT_FILE_NAME",
    "KEY_FILE_NAME",
    "CertificatePair",
    "certificate_fingerprint",
    "check_key_pair",
    "check_pin",
    "default_state_dir",
    "generate_self_signed",
    "load_ca_bundle",
    "load_or_create_identity",
    "normalize_pin",
    "verify_with_bundle",
]

# The names of the edge's identity in its state directory (generate_self_signed writes them).
CERT_FILE_NAME = "edge-cert.pem"
KEY_FILE_NAME = "edge-key.pem"


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
    cert_file = os.path.join(directory, CERT_FILE_NAME)
    key_file = os.path.join(directory, KEY_FILE_NAME)
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


# -- the edge's identity: given files, or kept in a state directory ------------------------


def check_key_pair(cert_file: str, key_file: str, names: tuple[str, str] = ("certificate", "key")) -> str:
    """Check that ``cert_file`` is a PEM certificate and ``key_file`` its unencrypted PEM
    private key (the same public key); return the certificate's pin. Raises
    CertificateFileError naming the files (each after its ``names`` entry: the flag or
    config key it came from): a key that does not match would otherwise let the edge
    start and fail every handshake."""
    cert_name, key_name = names
    try:
        with open(cert_file, "rb") as f:
            cert_pem = f.read()
        cert = x509.load_pem_x509_certificate(cert_pem)
        with open(key_file, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CertificateFileError(f"{cert_name} {cert_file} / {key_name} {key_file}: need a PEM certificate and "
                                   f"its unencrypted PEM key: {exc}") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise CertificateFileError(f"{key_name} {key_file} is not the private key of {cert_name} {cert_file} (their "
                                   "public keys differ): give the key that was made with that certificate")
    return certificate_fingerprint(cert_pem)


def default_state_dir() -> str:
    """Where the edge keeps its generated identity unless told otherwise: /var/lib/fastproxy
    for root, else $XDG_STATE_HOME/fastproxy (default ~/.local/state/fastproxy)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return "/var/lib/fastproxy"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "fastproxy")


def load_or_create_identity(state_dir: str) -> tuple[CertificatePair, bool]:
    """The edge's self-signed identity kept in ``state_dir``: reused when there, else made
    (directory mode 0700, key 0600, as SSH host keys). Returns (pair, created). Raises
    CertificateFileError naming the path and the fix when the directory cannot be used or
    the files there are incomplete, corrupt or readable by others."""
    cert_file = os.path.join(state_dir, CERT_FILE_NAME)
    key_file = os.path.join(state_dir, KEY_FILE_NAME)
    fix = "(give --state-dir a directory this user owns and may write, or fix it)"
    try:
        os.makedirs(state_dir, mode=0o700)
    except FileExistsError:
        if not os.path.isdir(state_dir):
            raise CertificateFileError(f"state directory {state_dir} exists and is not a directory {fix}") from None
    except OSError as exc:
        raise CertificateFileError(f"state directory {state_dir}: cannot create it: {exc.strerror} {fix}") from None
    else:
        os.chmod(state_dir, 0o700)  # makedirs' mode is filtered by the umask
    have_cert, have_key = os.path.exists(cert_file), os.path.exists(key_file)
    if not have_cert and not have_key:
        if not os.access(state_dir, os.W_OK | os.X_OK):
            raise CertificateFileError(f"state directory {state_dir}: not writable by this user, so the edge "
                                       f"cannot keep its key there {fix}")
        try:
            return generate_self_signed(state_dir), True
        except OSError as exc:
            raise CertificateFileError(f"state directory {state_dir}: cannot write the edge's key: {exc.strerror} "
                                       f"{fix}") from None
    if have_cert != have_key:
        present, absent = (cert_file, key_file) if have_cert else (key_file, cert_file)
        raise CertificateFileError(f"state directory {state_dir} holds {present} but not {absent}: restore it, "
                                   "or remove both to make a new identity (every --pin then changes)")
    try:
        mode = stat.S_IMODE(os.stat(key_file).st_mode)
    except OSError as exc:
        raise CertificateFileError(f"{key_file}: cannot read the edge's key: {exc.strerror} {fix}") from None
    if mode & 0o077:
        raise CertificateFileError(f"{key_file}: the edge's private key is readable by group or others "
                                   f"(mode {mode:04o}); run: chmod 600 {key_file}")
    try:
        fingerprint = check_key_pair(cert_file, key_file)
    except CertificateFileError as exc:
        raise CertificateFileError(f"state directory {state_dir}: the edge's certificate or key is unreadable or "
                                   f"corrupt ({exc}); restore them from a backup, or remove both to make a new "
                                   "identity (every --pin then changes)") from None
    return CertificatePair(cert_file, key_file, fingerprint), False


# -- the client's check of the edge's certificate ---------------------------------------------


def load_ca_bundle(cafile: str) -> list[x509.Certificate]:
    """The certificates of the PEM bundle ``cafile``; CertificateFileError (a ValueError)
    saying why when it cannot be read or holds no PEM certificate."""
    try:
        with open(cafile, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CertificateFileError(f"cannot read the CA bundle: {exc.strerror}") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateFileError("holds no PEM certificate (want -----BEGIN CERTIFICATE----- blocks, such as "
                                   "the edge's own certificate or the CA that signed it)") from None


def _describe(cert: x509.Certificate) -> str:
    return f"the edge's certificate ({cert.subject.rfc4514_string() or 'no subject'})"


def check_pin(leaf_der: bytes, pin: str) -> None:
    """Raise CertificateRejected unless the certificate's SHA-256 is ``pin`` (normalized)."""
    presented = certificate_fingerprint(leaf_der)
    if presented != pin:
        raise CertificateRejected(
            f"the edge's certificate does not match --pin: expected SHA-256 {pin}, the edge presented {presented} "
            "(if the edge's certificate was replaced, take the new pin from the edge's log)")


def _san_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)] + [
        f"IP:{a}" for a in san.get_values_for_type(x509.IPAddress)]


def _name_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):  # a wildcard stands for exactly one leftmost label
        first, _, rest = host.partition(".")
        return bool(first) and rest == pattern[2:]
    return pattern == host


def _check_name(cert: x509.Certificate, host: str) -> None:
    names = _san_names(cert)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        ok = any(_name_matches(n[4:], host) for n in names if n.startswith("DNS:"))
        wanted = f"DNS:{host}"
    else:
        ok = f"IP:{address}" in names
        wanted = f"IP:{address}"
    if not ok:
        has = f"its subjectAltName holds {', '.join(names)}" if names else "it has no subjectAltName"
        raise CertificateRejected(
            f"{_describe(cert)} is not valid for {host}, the name dialled: {has}; dial the edge by one of "
            f"those, or make its certificate with subjectAltName={wanted} (openssl req: -addext "
            f"subjectAltName={wanted})")


def _check_period(cert: x509.Certificate, now: datetime.datetime) -> None:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    when = f"valid from {start:%Y-%m-%d %H:%M:%S} to {end:%Y-%m-%d %H:%M:%S} UTC"
    if now > end:
        raise CertificateRejected(f"{_describe(cert)} expired on {end:%Y-%m-%d %H:%M:%S} UTC ({when}, now "
                                  f"{now:%Y-%m-%d %H:%M:%S} UTC): renew it on the edge")
    if now < start:
        raise CertificateRejected(f"{_describe(cert)} is not valid yet ({when}, now {now:%Y-%m-%d %H:%M:%S} UTC): "
                                  "check the clocks of this host and of the edge")


def verify_with_bundle(
    leaf_der: bytes, chain_der: Sequence[bytes], cafile: str, host: str, now: datetime.datetime | None = None
) -> None:
    """Check the edge's certificate (``leaf_der``, with the ``chain_der`` it sent) against
    the PEM bundle ``cafile`` for the dialled ``host`` (name or IP literal): its validity
    period, a subjectAltName for ``host``, then trust -- the very certificate is in the
    bundle (a self-signed edge certificate as its own anchor, CA:TRUE or not), or a chain
    to a CA in it. Raises CertificateRejected with one line saying what and what to do."""
    from cryptography.x509.verification import (
        Criticality,
        ExtensionPolicy,
        PolicyBuilder,
        Store,
        VerificationError,
    )

    now = now or datetime.datetime.now(datetime.timezone.utc)
    leaf = x509.load_der_x509_certificate(leaf_der)
    try:
        anchors = load_ca_bundle(cafile)
    except CertificateFileError as exc:
        raise CertificateRejected(f"--ca {cafile}: {exc}") from None
    _check_period(leaf, now)
    _check_name(leaf, host)
    if any(anchor.public_bytes(serialization.Encoding.DER) == leaf_der for anchor in anchors):
        return  # pinned by the bundle itself, as curl and Python's ssl accept
    intermediates = [x509.load_der_x509_certificate(der) for der in chain_der]
    # webpki's profile, less its demand for an authorityKeyIdentifier: openssl and the
    # cryptography examples make certificates without one, and other TLS stacks accept them.
    aki = x509.AuthorityKeyIdentifier
    policies = {
        "ca_policy": ExtensionPolicy.webpki_defaults_ca().may_be_present(aki, Criticality.AGNOSTIC, None),
        "ee_policy": ExtensionPolicy.webpki_defaults_ee().may_be_present(aki, Criticality.AGNOSTIC, None),
    }
    try:
        subject: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host)
    verifier = (PolicyBuilder().store(Store(anchors)).time(now).extension_policies(**policies)
                .build_server_verifier(subject))
    try:
        verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        if leaf.issuer == leaf.subject:
            raise CertificateRejected(
                f"{_describe(leaf)} is self-signed and is not in --ca {cafile} (SHA-256 "
                f"{certificate_fingerprint(leaf_der)}; a bundle holding an older certificate of the same name "
                "means the edge's was remade): put the edge's current certificate in the bundle, or trust it by "
                "--pin with that fingerprint") from None
        top = _top_of_chain(leaf, intermediates)
        if not any(_issued_by(top, anchor) for anchor in anchors):
            raise CertificateRejected(
                f"{_describe(leaf)} is signed by an unknown CA ({top.issuer.rfc4514_string()}) that is not in "
                f"--ca {cafile}, and is not itself in it: put that CA's certificate (or the edge's certificate "
                "itself) in the bundle, or trust the edge by --pin FINGERPRINT") from None
        if _is_ca(leaf):
            raise CertificateRejected(
                f"{_describe(leaf)} is a CA certificate (basicConstraints CA:TRUE) used as the server's: issue the "
                f"edge a leaf certificate with CA:FALSE, or put this very certificate in --ca {cafile}") from None
        raise CertificateRejected(f"{_describe(leaf)} failed verification against --ca {cafile}: {exc}") from None


def _top_of_chain(leaf: x509.Certificate, intermediates: list[x509.Certificate]) -> x509.Certificate:
    """The last certificate reached from ``leaf`` by following issuers through ``intermediates``."""
    current, seen = leaf, {leaf.subject}
    by_subject = {c.subject: c for c in intermediates}
    while current.issuer in by_subject and current.issuer not in seen:
        current = by_subject[current.issuer]
        seen.add(current.subject)
    return current


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s name and key signed ``cert`` (two CAs may share a name)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
