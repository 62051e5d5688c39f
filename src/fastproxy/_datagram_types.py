"""The decoded tunnel datagrams (DESIGN section 2), shared by the compiled core and its twin.

Both implementations of ``decode_datagram`` build these same classes, so results
compare equal across them. Byte fields are ``bytes`` (copied out of the datagram),
so a result stays valid after the receive buffer is reused.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["IcmpDatagram", "RegistrationResponse", "UdpPayload", "UdpRegistration"]


class _Datagram:
    """Value semantics for the datagram classes: equality, hashing and repr by field."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({fields})"


class IcmpDatagram(_Datagram):
    """Type 0x02: one whole IPv4 or IPv6 packet carrying ICMP (1 to 1280 bytes)."""

    __slots__ = ("packet",)
    _fields = __slots__

    def __init__(self, packet: bytes) -> None:
        self.packet = packet


class UdpRegistration(_Datagram):
    """Type 0x00: open a UDP session to ``dst`` (4 or 16 bytes) port ``port``.

    ``idle_timeout`` is in seconds; ``payload`` is the bundled first payload, or None.
    """

    __slots__ = ("request_id", "dst", "port", "idle_timeout", "traced", "payload")
    _fields = __slots__

    def __init__(
        self, request_id: bytes, dst: bytes, port: int, idle_timeout: int, traced: bool, payload: bytes | None
    ) -> None:
        self.request_id = request_id
        self.dst = dst
        self.port = port
        self.idle_timeout = idle_timeout
        self.traced = traced
        self.payload = payload


class UdpPayload(_Datagram):
    """Type 0x01: one UDP payload (0 to 1280 bytes) of session ``request_id``."""

    __slots__ = ("request_id", "payload")
    _fields = __slots__

    def __init__(self, request_id: bytes, payload: bytes) -> None:
        self.request_id = request_id
        self.payload = payload


class RegistrationResponse(_Datagram):
    """Type 0x03: the answer to a registration; ``code`` is one of the RESPONSE_* constants."""

    __slots__ = ("request_id", "code", "message")
    _fields = __slots__

    def __init__(self, request_id: bytes, code: int, message: str) -> None:
        self.request_id = request_id
        self.code = code
        self.message = message
