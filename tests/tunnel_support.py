"""Shared pieces of the tunnel tests: an edge with a fresh certificate on loopback,
clients and connectors dialled to it, and a UDP echo server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastproxy.tunnel import quic
from fastproxy.tunnel.certs import CertificatePair, generate_self_signed
from fastproxy.tunnel.dial import dial
from fastproxy.tunnel.edge import Edge, EdgeConfig

T = TypeVar("T")

CLIENT_TOKEN = "client-secret-1"
CONNECTOR_TOKEN = "connector-secret-1"
_CERT: CertificatePair | None = None


def certificate() -> CertificatePair:
    """One self-signed edge certificate for the whole test session."""
    global _CERT
    if _CERT is None:
        _CERT = generate_self_signed(tempfile.mkdtemp(prefix="fastproxy-test-"))
    return _CERT


def run(coro_fn: Callable[[], Awaitable[T]], timeout: float = 20.0) -> T:
    """Run an async test body on a fresh event loop with an overall time bound."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(bounded())


def networks(*cidrs: str) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


def ca_and_leaf(directory: str) -> tuple[str, CertificatePair]:
    """A CA certificate file and a server certificate it signed (SANs localhost, 127.0.0.1)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fastproxy test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {name: f"{directory}/{name}.pem" for name in ("ca", "cert", "key")}
    with open(paths["ca"], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert"], "wb") as f:
        f.write(leaf.public_bytes(serialization.Encoding.PEM))
    with open(paths["key"], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    from fastproxy.tunnel.certs import certificate_fingerprint

    return paths["ca"], CertificatePair(paths["cert"], paths["key"], certificate_fingerprint(leaf.public_bytes(serialization.Encoding.DER)))


@contextlib.asynccontextmanager
async def running_edge(host: str = "127.0.0.1", cert: CertificatePair | None = None, **config: Any) -> AsyncIterator[Edge]:
    config.setdefault("client_tokens", {CLIENT_TOKEN: None})
    config.setdefault("connector_tokens", (CONNECTOR_TOKEN,))
    cert = cert or certificate()
    edge = Edge(EdgeConfig(**config), cert_file=cert.cert_file, key_file=cert.key_file)
    await edge.start(host, 0)
    try:
        yield edge
    finally:
        edge.close()
        await asyncio.sleep(0.05)


def pin_trust() -> quic.Trust:
    return quic.Trust(pin=certificate().fingerprint)


class Inbox:
    """Collects datagrams a connection receives; ``wait(n)`` waits for n of them."""

    def __init__(self) -> None:
        self.items: list[bytes] = []
        self._event = asyncio.Event()

    def __call__(self, connection: Any, datagrams: list[bytes]) -> None:
        self.items.extend(datagrams)
        self._event.set()

    async def wait(self, count: int, timeout: float = 3.0) -> list[bytes]:
        async def until() -> None:
            while len(self.items) < count:
                self._event.clear()
                await self._event.wait()

        await asyncio.wait_for(until(), timeout)
        return self.items


async def dial_client(edge: Edge, token: str = CLIENT_TOKEN, host: str = "127.0.0.1") -> tuple[Any, Any, Inbox]:
    inbox = Inbox()
    connection, welcome = await dial(
        host, edge.port, trust=pin_trust(), role="client", token=token, on_datagrams=inbox
    )
    return connection, welcome, inbox


class UdpEcho(asyncio.DatagramProtocol):
    """Echoes every UDP payload back, prefixed with b'echo:'; answers b'big' with 1400 bytes."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.received: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)
        self.transport.sendto(b"x" * 1400 if data == b"big" else b"echo:" + data, addr)


@contextlib.asynccontextmanager
async def udp_echo_server(host: str = "127.0.0.1") -> AsyncIterator[tuple[UdpEcho, int]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(UdpEcho, local_addr=(host, 0))
    try:
        yield protocol, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


async def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    """Poll ``predicate`` every 10 ms until true (TimeoutError after ``timeout``)."""
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
