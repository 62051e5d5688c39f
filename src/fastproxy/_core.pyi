"""Type stubs for the compiled core, fastproxy._core (the twin, fastproxy._purepy, has the same API)."""

from __future__ import annotations

from _typeshed import ReadableBuffer, WriteableBuffer

# ---- checksum ----
def internet_checksum(data: ReadableBuffer, initial: int = 0) -> int:
    """The RFC 1071 checksum of ``data`` (the value for a checksum field); ``initial`` is a 16-bit partial sum."""

def ones_complement_sum(data: ReadableBuffer, initial: int = 0) -> int:
    """The folded 16-bit one's-complement sum of ``data`` plus ``initial`` (not complemented)."""

def verify_checksum(data: ReadableBuffer, initial: int = 0) -> bool:
    """True when ``data`` (checksum field included) plus ``initial`` sums to 0xffff."""

def pseudo_header_sum(src: ReadableBuffer, dst: ReadableBuffer, length: int, next_header: int) -> int:
    """The folded sum of the IPv4 (4-byte addresses) or IPv6 (16-byte addresses) pseudo-header."""

def checksum_update16(checksum: int, old: int, new: int) -> int:
    """The checksum after a 16-bit field changes from ``old`` to ``new`` (RFC 1624 eqn. 3)."""

def checksum_update_bytes(checksum: int, old: ReadableBuffer, new: ReadableBuffer) -> int:
    """The checksum after an even-length field (an address) changes from ``old`` to ``new``."""

# ---- end checksum ----

# ---- packet ----
PACKET_MALFORMED_REASONS: tuple[str, ...]

class InnerPacket:
    """The IP packet quoted by an ICMP error (usually truncated); see PacketInfo.inner.

    offset/length: where the quote starts in the parsed buffer and how many bytes of the
    quoted packet it holds. icmp_type/icmp_code are None unless the quoted packet is
    ICMP(v6) of the same family (and, for v4, not a non-first fragment); echo_id/echo_seq
    are None unless it is an echo request or reply.
    """

    @property
    def offset(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def version(self) -> int: ...
    @property
    def header_length(self) -> int: ...
    @property
    def protocol(self) -> int: ...
    @property
    def ttl(self) -> int: ...
    @property
    def src(self) -> bytes: ...
    @property
    def dst(self) -> bytes: ...
    @property
    def icmp_type(self) -> int | None: ...
    @property
    def icmp_code(self) -> int | None: ...
    @property
    def echo_id(self) -> int | None: ...
    @property
    def echo_seq(self) -> int | None: ...

class PacketInfo:
    """What parse_packet found in one IPv4/IPv6 packet carrying ICMP(v6)."""

    @property
    def version(self) -> int: ...
    @property
    def header_length(self) -> int: ...
    @property
    def total_length(self) -> int: ...
    @property
    def ttl(self) -> int: ...
    @property
    def protocol(self) -> int: ...
    @property
    def src(self) -> bytes: ...
    @property
    def dst(self) -> bytes: ...
    @property
    def icmp_offset(self) -> int: ...
    @property
    def icmp_type(self) -> int: ...
    @property
    def icmp_code(self) -> int: ...
    @property
    def icmp_checksum(self) -> int: ...
    @property
    def echo_id(self) -> int | None: ...
    @property
    def echo_seq(self) -> int | None: ...
    @property
    def inner(self) -> InnerPacket | None: ...
    @property
    def mtu(self) -> int | None: ...

def parse_packet(data: ReadableBuffer, *, verify_checksums: bool = True) -> PacketInfo:
    """Parse and validate one whole IPv4/IPv6 ICMP packet; raises MalformedPacket (bytes past the total length too)."""

def build_echo(
    src: ReadableBuffer,
    dst: ReadableBuffer,
    echo_id: int,
    seq: int,
    payload: ReadableBuffer = b"",
    *,
    ttl: int = 64,
    reply: bool = False,
) -> bytes:
    """Echo request (or reply); v4 (id 0, DF) or v6 by address length; ValueError for bad arguments."""

def build_icmp_error(
    src: ReadableBuffer,
    original: ReadableBuffer,
    icmp_type: int,
    icmp_code: int,
    *,
    mtu: int = 0,
    ttl: int = 64,
) -> bytes:
    """ICMP(v6) error to original's source quoting as much as fits (v4 576 bytes, v6 1280 in all)."""

def build_time_exceeded(src: ReadableBuffer, original: ReadableBuffer) -> bytes:
    """Time Exceeded in transit (v4 type 11, v6 type 3; code 0) about original."""

def build_destination_unreachable(src: ReadableBuffer, original: ReadableBuffer, code: int) -> bytes:
    """Destination Unreachable (v4 type 3, v6 type 1) with the family's own code."""

def build_packet_too_big(src: ReadableBuffer, original: ReadableBuffer, mtu: int) -> bytes:
    """v4 Fragmentation Needed (type 3 code 4) or v6 Packet Too Big (type 2), carrying mtu."""

def rewrite_echo(
    buf: WriteableBuffer,
    *,
    src: ReadableBuffer | None = None,
    dst: ReadableBuffer | None = None,
    echo_id: int | None = None,
    ttl: int | None = None,
) -> None:
    """Rewrite an echo packet in place with incremental (RFC 1624) checksum updates."""

def decrement_ttl(buf: WriteableBuffer) -> int:
    """TTL/hop limit - 1 in place; returns it, or 0 with buf untouched when it was 0 or 1."""

def translate_icmp_error(buf: WriteableBuffer, client_addr: ReadableBuffer, client_echo_id: int) -> None:
    """RFC 5508 translation of an ICMP error quoting our echo message into the client's view, in place."""

# ---- end packet ----

# ---- flowtable ----
# ---- end flowtable ----

# ---- batchio ----
import socket as _socket

class PacketBatch:
    """N preallocated packet slots for batched datagram socket I/O (recvmmsg / sendmmsg).

    Each slot: up to ``slot_size`` bytes, a length, a peer address and a TTL / hop
    limit (-1 = none). One allocation, reused forever. Not for concurrent use from
    two threads. Addresses are (host, port) for IPv4 and (host, port, flowinfo,
    scope_id) for IPv6, hosts numeric.
    """

    def __init__(self, slots: int, slot_size: int = 2048) -> None: ...
    def __len__(self) -> int: ...
    @property
    def slot_size(self) -> int:
        """Usable bytes per slot."""
    @property
    def count(self) -> int:
        """How many slots the last ``recv`` filled."""
    def recv(self, sock: _socket.socket | int) -> int:
        """Receive up to len(self) datagrams without blocking into slots 0..; how many (0 if none waits)."""
    def send(self, sock: _socket.socket | int, count: int, start: int = 0) -> int:
        """Send slots [start, start+count) with their addresses and TTLs; how many went (partial on a full buffer)."""
    def data(self, i: int) -> memoryview:
        """Writable view of slot i's packet bytes [0:length]."""
    def buffer(self, i: int) -> memoryview:
        """Writable view of the whole of slot i (slot_size bytes)."""
    def length(self, i: int) -> int:
        """Bytes in slot i."""
    def set_length(self, i: int, n: int) -> None:
        """Set slot i's length (ValueError unless 0 <= n <= slot_size)."""
    def truncated(self, i: int) -> bool:
        """True if the datagram last received into slot i did not fit."""
    def address(self, i: int) -> tuple[str, int] | tuple[str, int, int, int] | None:
        """Slot i's peer address, or None."""
    def set_address(self, i: int, address: tuple[str, int] | tuple[str, int, int, int] | None) -> None:
        """Set slot i's destination address, or None for none (connected sockets)."""
    def ttl(self, i: int) -> int:
        """Slot i's TTL / hop limit, -1 = none."""
    def set_ttl(self, i: int, ttl: int) -> None:
        """Set the TTL / hop limit slot i is sent with (0-255; Linux refuses IPv4 TTL 0), or -1 for the socket's own."""
    def set(
        self,
        i: int,
        data: ReadableBuffer,
        address: tuple[str, int] | tuple[str, int, int, int] | None = None,
        ttl: int = -1,
    ) -> None:
        """Copy data into slot i and set its address and TTL."""

# ---- end batchio ----

# ---- datagram ----
from fastproxy._datagram_types import IcmpDatagram as IcmpDatagram
from fastproxy._datagram_types import RegistrationResponse as RegistrationResponse
from fastproxy._datagram_types import UdpPayload as UdpPayload
from fastproxy._datagram_types import UdpRegistration as UdpRegistration

DATAGRAM_UDP_REGISTRATION: int
DATAGRAM_UDP_PAYLOAD: int
DATAGRAM_ICMP: int
DATAGRAM_REGISTRATION_RESPONSE: int
RESPONSE_OK: int
RESPONSE_DESTINATION_UNREACHABLE: int
RESPONSE_UNABLE_TO_BIND_SOCKET: int
RESPONSE_TOO_MANY_ACTIVE_FLOWS: int
RESPONSE_ERROR: int
MAX_DATAGRAM_PAYLOAD: int
DATAGRAM_MALFORMED_REASONS: tuple[str, ...]

def decode_datagram(data: ReadableBuffer) -> IcmpDatagram | UdpRegistration | UdpPayload | RegistrationResponse:
    """Decode one tunnel datagram; raises MalformedDatagram (``reason`` in DATAGRAM_MALFORMED_REASONS)."""

def encode_icmp(packet: ReadableBuffer) -> bytes:
    """The ICMP datagram (type 0x02) carrying one whole IP packet of 1 to 1280 bytes."""

def encode_udp_registration(
    request_id: ReadableBuffer,
    dst: ReadableBuffer,
    port: int,
    idle_timeout: int,
    *,
    traced: bool = False,
    payload: ReadableBuffer | None = None,
) -> bytes:
    """The UDP session registration datagram (type 0x00); a non-empty payload is bundled."""

def encode_udp_payload(request_id: ReadableBuffer, payload: ReadableBuffer) -> bytes:
    """The UDP session payload datagram (type 0x01), payload 0 to 1280 bytes."""

def encode_registration_response(request_id: ReadableBuffer, code: int, message: str = "") -> bytes:
    """The registration response datagram (type 0x03); message at most 1260 UTF-8 bytes."""

# ---- end datagram ----
