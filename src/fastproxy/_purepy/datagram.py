"""Pure-Python twin of fastproxy._core: datagram (the tunnel datagram codec, DESIGN section 2).

Byte-compatible with cloudflared's datagram v3 (quic/v3/datagram.go); the same
checks, in the same order, and the same ``reason`` strings as the compiled core.
"""

from __future__ import annotations

import operator
import struct
from typing import TYPE_CHECKING, Union

from fastproxy._datagram_types import IcmpDatagram, RegistrationResponse, UdpPayload, UdpRegistration
from fastproxy.errors import MalformedDatagram

from .checksum import byte_view

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = [
    "DATAGRAM_ICMP",
    "DATAGRAM_MALFORMED_REASONS",
    "DATAGRAM_REGISTRATION_RESPONSE",
    "DATAGRAM_UDP_PAYLOAD",
    "DATAGRAM_UDP_REGISTRATION",
    "MAX_DATAGRAM_PAYLOAD",
    "RESPONSE_DESTINATION_UNREACHABLE",
    "RESPONSE_ERROR",
    "RESPONSE_OK",
    "RESPONSE_TOO_MANY_ACTIVE_FLOWS",
    "RESPONSE_UNABLE_TO_BIND_SOCKET",
    "IcmpDatagram",
    "RegistrationResponse",
    "UdpPayload",
    "UdpRegistration",
    "decode_datagram",
    "encode_icmp",
    "encode_registration_response",
    "encode_udp_payload",
    "encode_udp_registration",
]

DATAGRAM_UDP_REGISTRATION = 0x00
DATAGRAM_UDP_PAYLOAD = 0x01
DATAGRAM_ICMP = 0x02
DATAGRAM_REGISTRATION_RESPONSE = 0x03

RESPONSE_OK = 0x00
RESPONSE_DESTINATION_UNREACHABLE = 0x01
RESPONSE_UNABLE_TO_BIND_SOCKET = 0x02
RESPONSE_TOO_MANY_ACTIVE_FLOWS = 0x03
RESPONSE_ERROR = 0xFF
_RESPONSE_CODES = frozenset(
    (RESPONSE_OK, RESPONSE_DESTINATION_UNREACHABLE, RESPONSE_UNABLE_TO_BIND_SOCKET, RESPONSE_TOO_MANY_ACTIVE_FLOWS, RESPONSE_ERROR)
)

MAX_DATAGRAM_PAYLOAD = 1280

DATAGRAM_MALFORMED_REASONS = (
    "empty",  # no type byte
    "unknown_type",  # type byte not 0x00..0x03
    "truncated_header",  # shorter than the fixed header of its type
    "bad_flags",  # registration flags with reserved bits (3..7) set
    "payload_too_large",  # payload, ICMP packet or message over its limit
    "payload_missing",  # ICMP datagram without a packet, or bundled flag without a payload
    "unexpected_payload",  # registration with bytes after the address but no bundled flag
    "bad_message_length",  # response message length disagrees with the datagram length
    "bad_utf8",  # response message is not valid UTF-8
    "bad_response_code",  # response code not one of RESPONSE_*
)

_REQUEST_ID_LEN = 16
_FLAG_IPV6 = 0x01
_FLAG_TRACED = 0x02
_FLAG_BUNDLED = 0x04
_REGISTRATION_V4_LEN = 26  # type, flags, port, idle timeout, request ID, IPv4 address
_REGISTRATION_V6_LEN = 38
_PAYLOAD_HEADER_LEN = 17  # type, request ID
_RESPONSE_HEADER_LEN = 20  # type, code, request ID, message length
_MAX_MESSAGE = 1260  # cloudflared: 1280 - the response header

Datagram = Union[IcmpDatagram, UdpRegistration, UdpPayload, RegistrationResponse]


def _malformed(reason: str, n: int) -> MalformedDatagram:
    return MalformedDatagram(reason, f"datagram of {n} bytes")


def decode_datagram(data: ReadableBuffer) -> Datagram:
    """Decode one tunnel datagram (any readable buffer).

    Returns an IcmpDatagram, UdpRegistration, UdpPayload or RegistrationResponse, whose
    byte fields are copies (bytes). Raises MalformedDatagram, with ``reason`` one of
    DATAGRAM_MALFORMED_REASONS, for anything malformed; never any other exception for
    bad content.
    """
    view = byte_view(data)
    n = len(view)
    if n == 0:
        raise _malformed("empty", n)
    kind = view[0]
    if kind == DATAGRAM_UDP_REGISTRATION:
        if n < 2:
            raise _malformed("truncated_header", n)
        flags = view[1]
        if flags & ~(_FLAG_IPV6 | _FLAG_TRACED | _FLAG_BUNDLED):
            raise _malformed("bad_flags", n)
        header_len = _REGISTRATION_V6_LEN if flags & _FLAG_IPV6 else _REGISTRATION_V4_LEN
        if n < header_len:
            raise _malformed("truncated_header", n)
        rest = n - header_len
        if flags & _FLAG_BUNDLED:
            if rest == 0:
                raise _malformed("payload_missing", n)
            if rest > MAX_DATAGRAM_PAYLOAD:
                raise _malformed("payload_too_large", n)
        elif rest:
            raise _malformed("unexpected_payload", n)
        port, idle_timeout = struct.unpack_from("!HH", view, 2)
        return UdpRegistration(
            bytes(view[6:22]),
            bytes(view[22:header_len]),
            port,
            idle_timeout,
            bool(flags & _FLAG_TRACED),
            bytes(view[header_len:]) if rest else None,
        )
    if kind == DATAGRAM_UDP_PAYLOAD:
        if n < _PAYLOAD_HEADER_LEN:
            raise _malformed("truncated_header", n)
        if n - _PAYLOAD_HEADER_LEN > MAX_DATAGRAM_PAYLOAD:
            raise _malformed("payload_too_large", n)
        return UdpPayload(bytes(view[1:17]), bytes(view[17:]))
    if kind == DATAGRAM_ICMP:
        if n == 1:
            raise _malformed("payload_missing", n)
        if n - 1 > MAX_DATAGRAM_PAYLOAD:
            raise _malformed("payload_too_large", n)
        return IcmpDatagram(bytes(view[1:]))
    if kind == DATAGRAM_REGISTRATION_RESPONSE:
        if n < _RESPONSE_HEADER_LEN:
            raise _malformed("truncated_header", n)
        code = view[1]
        if code not in _RESPONSE_CODES:
            raise _malformed("bad_response_code", n)
        (message_len,) = struct.unpack_from("!H", view, 18)
        if message_len > _MAX_MESSAGE:
            raise _malformed("payload_too_large", n)
        if message_len != n - _RESPONSE_HEADER_LEN:
            raise _malformed("bad_message_length", n)
        try:
            message = str(view[_RESPONSE_HEADER_LEN:], "utf-8")
        except UnicodeDecodeError:
            raise _malformed("bad_utf8", n) from None
        return RegistrationResponse(bytes(view[2:18]), code, message)
    raise _malformed("unknown_type", n)


def _request_id(request_id: ReadableBuffer) -> memoryview:
    view = byte_view(request_id)
    if len(view) != _REQUEST_ID_LEN:
        raise ValueError(f"request_id must be 16 bytes, got {len(view)}")
    return view


def _check_range(value: int, name: str, limit: int) -> int:
    value = operator.index(value)
    if not 0 <= value <= limit:
        raise ValueError(f"{name} must be 0..{limit}, got {value!r}")
    return value


def _check_payload(view: memoryview, name: str) -> None:
    if len(view) > MAX_DATAGRAM_PAYLOAD:
        raise ValueError(f"{name} of {len(view)} bytes exceeds MAX_DATAGRAM_PAYLOAD (1280)")


def encode_icmp(packet: ReadableBuffer) -> bytes:
    """The ICMP datagram (type 0x02) carrying ``packet``, one whole IP packet of 1 to 1280 bytes."""
    body = byte_view(packet)
    if not body:
        raise ValueError("packet must not be empty")
    _check_payload(body, "packet")
    return b"\x02" + body


def encode_udp_payload(request_id: ReadableBuffer, payload: ReadableBuffer) -> bytes:
    """The UDP session payload datagram (type 0x01) carrying ``payload`` (0 to 1280 bytes)."""
    rid = _request_id(request_id)
    body = byte_view(payload)
    _check_payload(body, "payload")
    return b"".join((b"\x01", rid, body))


def encode_udp_registration(
    request_id: ReadableBuffer,
    dst: ReadableBuffer,
    port: int,
    idle_timeout: int,
    *,
    traced: bool = False,
    payload: ReadableBuffer | None = None,
) -> bytes:
    """The UDP session registration datagram (type 0x00).

    ``dst`` is the destination address, 4 (IPv4) or 16 (IPv6) bytes; ``port`` and
    ``idle_timeout`` (seconds) are 16-bit. A non-empty ``payload`` (at most 1280
    bytes) is bundled and sets the bundled flag; None or empty bundles nothing.
    """
    rid = _request_id(request_id)
    addr = byte_view(dst)
    body = byte_view(payload if payload is not None else b"")
    if len(addr) not in (4, 16):
        raise ValueError(f"dst must be 4 (IPv4) or 16 (IPv6) bytes, got {len(addr)}")
    port = _check_range(port, "port", 0xFFFF)
    idle_timeout = _check_range(idle_timeout, "idle_timeout", 0xFFFF)
    _check_payload(body, "payload")
    flags = (_FLAG_IPV6 if len(addr) == 16 else 0) | (_FLAG_TRACED if traced else 0) | (_FLAG_BUNDLED if body else 0)
    return b"".join((struct.pack("!BBHH", DATAGRAM_UDP_REGISTRATION, flags, port, idle_timeout), rid, addr, body))


def encode_registration_response(request_id: ReadableBuffer, code: int, message: str = "") -> bytes:
    """The registration response datagram (type 0x03) with ``code`` (a RESPONSE_* value).

    ``message`` (str) is sent UTF-8 encoded, at most 1260 bytes.
    """
    rid = _request_id(request_id)
    if not isinstance(message, str):
        raise TypeError(f"message must be str, got {type(message).__name__}")
    code = operator.index(code)
    if code not in _RESPONSE_CODES:
        raise ValueError(f"code must be one of the RESPONSE_* values, got {code!r}")
    encoded = message.encode("utf-8")
    if len(encoded) > _MAX_MESSAGE:
        raise ValueError(f"message of {len(encoded)} UTF-8 bytes exceeds the limit of 1260")
    return b"".join((bytes((DATAGRAM_REGISTRATION_RESPONSE, code)), rid, struct.pack("!H", len(encoded)), encoded))
