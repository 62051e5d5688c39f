"""The control stream: a small, versioned, length-prefixed message format.

Each QUIC tunnel connection has one bidirectional control stream (stream 0, opened by
the client or connector). Both directions carry a sequence of messages; integers are
big-endian, strings UTF-8.

Frame (every message)::

    0-1  body length N (u16, 2 <= N <= MAX_MESSAGE_SIZE)
    2    version (u8: the connection's control-protocol version, see "Versions")
    3    type (u8)
    4..  type-specific fields, exactly N - 2 bytes (no trailing bytes)

Types and fields:

==========  ====  ======================================================================
HELLO       0x01  role u8 (1 client, 2 connector) · token length u16 · token (UTF-8,
                  at most MAX_TOKEN_LENGTH bytes; length 0 = no token)
ANNOUNCE    0x02  prefix list (connector -> edge: the prefixes it serves)
WELCOME     0x03  client IPv4 (4 bytes, 0.0.0.0 = none) · client IPv6 (16 bytes, :: = none) ·
                  prefix list (edge -> client or connector: what it may reach / what was
                  accepted)
ERROR       0x04  code u16 (ERROR_* below) · reason length u16 · reason (UTF-8); the edge
                  sends it just before it closes the connection
CLIENT_GONE 0x05  client IPv4 (4 bytes, 0.0.0.0 = none) · client IPv6 (16 bytes, :: = none)
                  (edge -> every connector: that client's connection ended, so the
                  connector frees its ICMP flows now instead of letting them expire)
ROUTES      0x06  prefix list (version 2; edge -> client: the full set it may reach now,
                  sent whenever that set changes; it replaces the previous set)
==========  ====  ======================================================================

A prefix list is a count u16 (at most MAX_PREFIXES) and, for each prefix, family u8 (4
or 6) · prefix length u8 (<= 32 or <= 128) · the network address (4 or 16 bytes, no
host bits set).

Order: the dialling side sends HELLO first (a connector then ANNOUNCE); the edge answers
WELCOME, or ERROR and closes. After its WELCOME a connector may receive CLIENT_GONE at
any time. Decoding is strict: every length is checked before it is
read, and anything malformed raises MalformedControlMessage with a stable ``reason``
(one of CONTROL_MALFORMED_REASONS), after which the connection is closed.

Versions (SUPPORTED_VERSIONS; PROTOCOL_VERSION is the newest):

- 1: the messages above except ROUTES. A client learns its prefixes once, in WELCOME.
- 2: routes live. The edge sends a client ROUTES with its whole reachable set (what is
  announced now, within its policy) each time that set changes; a connector may send
  ANNOUNCE again at any time, which replaces the prefixes it serves (the edge answers
  WELCOME again). Every version-1 layout is unchanged.

Negotiation: the dialling side frames its HELLO with the highest version it speaks.
HELLO's layout is the same in every version, so an edge reads a HELLO of any version
>= 1 and speaks ``negotiate(hello.version)`` (the lower of the two) from its WELCOME on:
every later message on that connection, both ways, is framed with that version, and only
the messages that version defines are sent. Every other message must carry a version
in SUPPORTED_VERSIONS (else ``unsupported_version``), and its type must exist in that
version (else ``unknown_message_type``: a ROUTES framed as version 1 is one); either is
a protocol error that closes the connection, since a peer sends only what was
negotiated. Old peers: an edge of version 1 refuses a version-2 HELLO with ERROR
(ERROR_PROTOCOL, reason ``malformed control message: unsupported_version``) and closes;
the dialling side then dials again speaking version 1 (``is_version_refusal``), and
gets version-1 behaviour (no ROUTES; a connector that changes its routes reconnects).
A version-1 client or connector gets version-1 behaviour from a version-2 edge.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Union

from ..errors import FastproxyError

__all__ = [
    "CONTROL_MALFORMED_REASONS",
    "ERROR_AUTHENTICATION_FAILED",
    "ERROR_INTERNAL",
    "ERROR_POLICY",
    "ERROR_PROTOCOL",
    "ERROR_UNSUPPORTED_VERSION",
    "MAX_MESSAGE_SIZE",
    "MAX_PREFIXES",
    "MAX_TOKEN_LENGTH",
    "PROTOCOL_VERSION",
    "ROLE_CLIENT",
    "ROLE_CONNECTOR",
    "SUPPORTED_VERSIONS",
    "Announce",
    "ClientGone",
    "ControlDecoder",
    "ControlMessage",
    "Error",
    "Hello",
    "MalformedControlMessage",
    "Network",
    "RouteUpdate",
    "Welcome",
    "decode_message",
    "encode_message",
    "is_version_refusal",
    "negotiate",
]

PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS: tuple[int, ...] = (1, 2)
MAX_MESSAGE_SIZE = 16384
MAX_TOKEN_LENGTH = 1024
MAX_PREFIXES = 1024

ROLE_CLIENT = "client"
ROLE_CONNECTOR = "connector"
_ROLE_CODES = {ROLE_CLIENT: 1, ROLE_CONNECTOR: 2}
_ROLE_NAMES = {code: name for name, code in _ROLE_CODES.items()}

_TYPE_HELLO = 0x01
_TYPE_ANNOUNCE = 0x02
_TYPE_WELCOME = 0x03
_TYPE_ERROR = 0x04
_TYPE_CLIENT_GONE = 0x05
_TYPE_ROUTES = 0x06
# The first version that defines each type.
_SINCE = {_TYPE_HELLO: 1, _TYPE_ANNOUNCE: 1, _TYPE_WELCOME: 1, _TYPE_ERROR: 1, _TYPE_CLIENT_GONE: 1, _TYPE_ROUTES: 2}

# Error codes: also used as the QUIC application close code.
ERROR_PROTOCOL = 0x01
ERROR_UNSUPPORTED_VERSION = 0x02
ERROR_AUTHENTICATION_FAILED = 0x03
ERROR_POLICY = 0x04
ERROR_INTERNAL = 0x05

CONTROL_MALFORMED_REASONS: tuple[str, ...] = (
    "message_too_short",
    "message_too_long",
    "unsupported_version",
    "unknown_message_type",
    "truncated_field",
    "trailing_bytes",
    "bad_role",
    "bad_utf8",
    "token_too_long",
    "too_many_prefixes",
    "bad_prefix_family",
    "bad_prefix_length",
    "prefix_host_bits_set",
)

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class MalformedControlMessage(FastproxyError, ValueError):
    """A control-stream message failed validation; ``reason`` is in CONTROL_MALFORMED_REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Hello:
    """First message of a client or connector: its role, its token ("" = none) and the
    highest control-protocol version it speaks (the frame's version byte)."""

    role: str
    token: str = ""
    version: int = field(default=PROTOCOL_VERSION, compare=False)


@dataclass(frozen=True)
class Announce:
    """Connector -> edge: the prefixes the connector serves."""

    prefixes: tuple[Network, ...]


@dataclass(frozen=True)
class Welcome:
    """Edge -> peer: accepted. Clients get their tunnel addresses and the prefixes they
    may reach; connectors get the prefixes the edge accepted from their announce."""

    client_v4: ipaddress.IPv4Address | None
    client_v6: ipaddress.IPv6Address | None
    prefixes: tuple[Network, ...]
    version: int = field(default=PROTOCOL_VERSION, compare=False)
    """The version the edge speaks on this connection from now on (the frame's version byte)."""


@dataclass(frozen=True)
class RouteUpdate:
    """Edge -> client (version 2): every prefix the client may reach now; replaces the
    set of the WELCOME or of the previous RouteUpdate."""

    prefixes: tuple[Network, ...]


@dataclass(frozen=True)
class Error:
    """Edge -> peer: why the connection is about to be closed (code is ERROR_*)."""

    code: int
    reason: str


@dataclass(frozen=True)
class ClientGone:
    """Edge -> connectors: the client that had these tunnel addresses has gone."""

    client_v4: ipaddress.IPv4Address | None
    client_v6: ipaddress.IPv6Address | None


ControlMessage = Union[Hello, Announce, Welcome, Error, ClientGone, RouteUpdate]


def negotiate(peer_version: int) -> int:
    """The version a connection speaks when the peer's HELLO says ``peer_version``."""
    return min(peer_version, PROTOCOL_VERSION)


def is_version_refusal(code: int, reason: str) -> bool:
    """True if an edge's ERROR (``code``, ``reason``) is how a version-1 edge refuses a
    HELLO of a newer version (then dial again with ``Hello(..., version=1)``)."""
    return code == ERROR_PROTOCOL and "unsupported_version" in reason

_ZERO_V4 = ipaddress.IPv4Address(0)
_ZERO_V6 = ipaddress.IPv6Address(0)


def _encode_text(text: str, limit: int) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > limit:
        raise ValueError(f"text of {len(raw)} bytes exceeds {limit}")
    return struct.pack("!H", len(raw)) + raw


def _encode_prefixes(prefixes: tuple[Network, ...]) -> bytes:
    if len(prefixes) > MAX_PREFIXES:
        raise ValueError(f"{len(prefixes)} prefixes exceed {MAX_PREFIXES}")
    parts = [struct.pack("!H", len(prefixes))]
    for prefix in prefixes:
        parts.append(bytes((prefix.version, prefix.prefixlen)) + prefix.network_address.packed)
    return b"".join(parts)


def encode_message(message: ControlMessage, version: int | None = None) -> bytes:
    """The framed bytes of ``message`` in control-protocol ``version`` (default: a Hello's
    or Welcome's own ``version``, else PROTOCOL_VERSION). ValueError for values the
    format cannot carry, and for a message that ``version`` does not define."""
    if version is None:
        version = message.version if isinstance(message, (Hello, Welcome)) else PROTOCOL_VERSION
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"control protocol version {version} is not one of {SUPPORTED_VERSIONS}")
    if isinstance(message, Hello):
        if message.role not in _ROLE_CODES:
            raise ValueError(f"unknown role {message.role!r}")
        kind = _TYPE_HELLO
        body = bytes((_ROLE_CODES[message.role],)) + _encode_text(message.token, MAX_TOKEN_LENGTH)
    elif isinstance(message, Announce):
        kind, body = _TYPE_ANNOUNCE, _encode_prefixes(message.prefixes)
    elif isinstance(message, Welcome):
        kind = _TYPE_WELCOME
        body = (
            (message.client_v4 or _ZERO_V4).packed
            + (message.client_v6 or _ZERO_V6).packed
            + _encode_prefixes(message.prefixes)
        )
    elif isinstance(message, Error):
        if not 0 <= message.code <= 0xFFFF:
            raise ValueError(f"error code {message.code} out of range")
        kind, body = _TYPE_ERROR, struct.pack("!H", message.code) + _encode_text(message.reason, 1024)
    elif isinstance(message, ClientGone):
        kind = _TYPE_CLIENT_GONE
        body = (message.client_v4 or _ZERO_V4).packed + (message.client_v6 or _ZERO_V6).packed
    elif isinstance(message, RouteUpdate):
        kind, body = _TYPE_ROUTES, _encode_prefixes(message.prefixes)
    else:
        raise TypeError(f"not a control message: {message!r}")
    if version < _SINCE[kind]:
        raise ValueError(f"{type(message).__name__} needs control protocol version {_SINCE[kind]}, "
                         f"this connection speaks {version}")
    length = 2 + len(body)
    if length > MAX_MESSAGE_SIZE:
        raise ValueError(f"message of {length} bytes exceeds {MAX_MESSAGE_SIZE}")
    return struct.pack("!HBB", length, version, kind) + body


class _Reader:
    """A bounds-checked cursor over one message body."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise MalformedControlMessage("truncated_field", f"{what}: need {n} bytes at {self.pos}, have {len(self.data) - self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def text(self, what: str, limit: int, too_long_reason: str) -> str:
        length = self.u16(what + " length")
        if length > limit:
            raise MalformedControlMessage(too_long_reason, f"{what} of {length} bytes exceeds {limit}")
        raw = self.take(length, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedControlMessage("bad_utf8", what) from None

    def prefixes(self) -> tuple[Network, ...]:
        count = self.u16("prefix count")
        if count > MAX_PREFIXES:
            raise MalformedControlMessage("too_many_prefixes", f"{count} > {MAX_PREFIXES}")
        result: list[Network] = []
        for index in range(count):
            family = self.u8("prefix family")
            if family not in (4, 6):
                raise MalformedControlMessage("bad_prefix_family", f"prefix {index}: family {family}")
            length = self.u8("prefix length")
            bits = 32 if family == 4 else 128
            if length > bits:
                raise MalformedControlMessage("bad_prefix_length", f"prefix {index}: /{length} for IPv{family}")
            raw = self.take(4 if family == 4 else 16, "prefix address")
            address = ipaddress.ip_address(raw)
            try:
                result.append(ipaddress.ip_network((address, length), strict=True))
            except ValueError:
                raise MalformedControlMessage("prefix_host_bits_set", f"prefix {index}: {address}/{length}") from None
        return tuple(result)

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise MalformedControlMessage("trailing_bytes", f"{len(self.data) - self.pos} bytes after the message")


def decode_message(frame: bytes) -> ControlMessage:
    """Decode exactly one framed message (length prefix included)."""
    if len(frame) < 4:
        raise MalformedControlMessage("message_too_short", f"{len(frame)} bytes")
    length = int.from_bytes(frame[0:2], "big")
    if length < 2:
        raise MalformedControlMessage("message_too_short", f"declared body length {length}")
    if length > MAX_MESSAGE_SIZE:
        raise MalformedControlMessage("message_too_long", f"declared body length {length}")
    if len(frame) < 2 + length:
        raise MalformedControlMessage("truncated_field", f"body: declared {length}, have {len(frame) - 2}")
    if len(frame) > 2 + length:
        raise MalformedControlMessage("trailing_bytes", f"{len(frame) - 2 - length} bytes after the message")
    return _decode_body(bytes(frame[2:]))


def _decode_body(body: bytes) -> ControlMessage:
    version, kind = body[0], body[1]
    # HELLO's layout never changes, so any version >= 1 is read (it says what the peer speaks).
    if version not in SUPPORTED_VERSIONS and not (kind == _TYPE_HELLO and version >= 1):
        raise MalformedControlMessage("unsupported_version",
                                      f"version {version}, expected one of {SUPPORTED_VERSIONS}")
    if kind not in _SINCE or (kind != _TYPE_HELLO and _SINCE[kind] > version):
        raise MalformedControlMessage("unknown_message_type", f"type 0x{kind:02x} in version {version}")
    reader = _Reader(body)
    reader.pos = 2
    message: ControlMessage
    if kind == _TYPE_HELLO:
        role_code = reader.u8("role")
        if role_code not in _ROLE_NAMES:
            raise MalformedControlMessage("bad_role", f"role {role_code}")
        token = reader.text("token", MAX_TOKEN_LENGTH, "token_too_long")
        message = Hello(_ROLE_NAMES[role_code], token, version)
    elif kind == _TYPE_ANNOUNCE:
        message = Announce(reader.prefixes())
    elif kind == _TYPE_WELCOME:
        v4 = ipaddress.IPv4Address(reader.take(4, "client IPv4"))
        v6 = ipaddress.IPv6Address(reader.take(16, "client IPv6"))
        message = Welcome(v4 if v4 != _ZERO_V4 else None, v6 if v6 != _ZERO_V6 else None, reader.prefixes(),
                          version)
    elif kind == _TYPE_CLIENT_GONE:
        v4 = ipaddress.IPv4Address(reader.take(4, "client IPv4"))
        v6 = ipaddress.IPv6Address(reader.take(16, "client IPv6"))
        message = ClientGone(v4 if v4 != _ZERO_V4 else None, v6 if v6 != _ZERO_V6 else None)
    elif kind == _TYPE_ERROR:
        code = reader.u16("error code")
        message = Error(code, reader.text("reason", 1024, "message_too_long"))
    else:  # _TYPE_ROUTES (every other type was refused above)
        message = RouteUpdate(reader.prefixes())
    reader.finish()
    return message


class ControlDecoder:
    """Reassembles messages from control-stream chunks (a stream may split or join them)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[ControlMessage]:
        """Add received bytes; return every complete message, in order. Raises
        MalformedControlMessage as soon as a length prefix or message is malformed."""
        self._buffer += data
        messages: list[ControlMessage] = []
        buffer = self._buffer
        while len(buffer) >= 2:
            length = int.from_bytes(buffer[0:2], "big")
            if length < 2:
                raise MalformedControlMessage("message_too_short", f"declared body length {length}")
            if length > MAX_MESSAGE_SIZE:
                raise MalformedControlMessage("message_too_long", f"declared body length {length}")
            if len(buffer) < 2 + length:
                break
            body = bytes(buffer[2 : 2 + length])
            del buffer[: 2 + length]
            messages.append(_decode_body(body))
        return messages

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buffer)
