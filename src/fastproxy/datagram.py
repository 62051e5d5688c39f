"""The tunnel datagram codec (DESIGN section 2), byte-compatible with cloudflared's datagram v3.

Encoders return ``bytes`` and raise ValueError for bad arguments. ``decode_datagram``
returns one of IcmpDatagram, UdpRegistration, UdpPayload, RegistrationResponse (byte
fields are copies, ``bytes``), or raises MalformedDatagram whose ``reason`` is one of
DATAGRAM_MALFORMED_REASONS.
"""

from __future__ import annotations

from ._datagram_types import IcmpDatagram, RegistrationResponse, UdpPayload, UdpRegistration
from ._impl import core

DATAGRAM_UDP_REGISTRATION: int = core.DATAGRAM_UDP_REGISTRATION
DATAGRAM_UDP_PAYLOAD: int = core.DATAGRAM_UDP_PAYLOAD
DATAGRAM_ICMP: int = core.DATAGRAM_ICMP
DATAGRAM_REGISTRATION_RESPONSE: int = core.DATAGRAM_REGISTRATION_RESPONSE
RESPONSE_OK: int = core.RESPONSE_OK
RESPONSE_DESTINATION_UNREACHABLE: int = core.RESPONSE_DESTINATION_UNREACHABLE
RESPONSE_UNABLE_TO_BIND_SOCKET: int = core.RESPONSE_UNABLE_TO_BIND_SOCKET
RESPONSE_TOO_MANY_ACTIVE_FLOWS: int = core.RESPONSE_TOO_MANY_ACTIVE_FLOWS
RESPONSE_ERROR: int = core.RESPONSE_ERROR
MAX_DATAGRAM_PAYLOAD: int = core.MAX_DATAGRAM_PAYLOAD
DATAGRAM_MALFORMED_REASONS: tuple[str, ...] = core.DATAGRAM_MALFORMED_REASONS

decode_datagram = core.decode_datagram
encode_icmp = core.encode_icmp
encode_registration_response = core.encode_registration_response
encode_udp_payload = core.encode_udp_payload
encode_udp_registration = core.encode_udp_registration

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
