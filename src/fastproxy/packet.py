"""IPv4/IPv6 + ICMP/ICMPv6 packets: parse and validate, build, rewrite in place.

Thin re-export of the core (compiled, or the pure-Python twin when
``FASTPROXY_NO_EXTENSIONS=1``); see ``fastproxy._core.pyi`` for the API.
"""

from __future__ import annotations

from ._impl import core

PACKET_MALFORMED_REASONS = core.PACKET_MALFORMED_REASONS
InnerPacket = core.InnerPacket
PacketInfo = core.PacketInfo
build_destination_unreachable = core.build_destination_unreachable
build_echo = core.build_echo
build_icmp_error = core.build_icmp_error
build_packet_too_big = core.build_packet_too_big
build_time_exceeded = core.build_time_exceeded
decrement_ttl = core.decrement_ttl
parse_packet = core.parse_packet
rewrite_echo = core.rewrite_echo
translate_icmp_error = core.translate_icmp_error

__all__ = [
    "PACKET_MALFORMED_REASONS",
    "InnerPacket",
    "PacketInfo",
    "build_destination_unreachable",
    "build_echo",
    "build_icmp_error",
    "build_packet_too_big",
    "build_time_exceeded",
    "decrement_ttl",
    "parse_packet",
    "rewrite_echo",
    "translate_icmp_error",
]
