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
# ---- end packet ----

# ---- flowtable ----
# ---- end flowtable ----

# ---- batchio ----
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
