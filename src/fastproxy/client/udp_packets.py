"""UDP-in-IP packets as a TUN device carries them: parse one, build one.

The TUN bridge turns UDP packets from local programs into UDP session payloads and the
answers back into packets; the tunnel itself carries only the payloads.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ..checksum import internet_checksum, pseudo_header_sum

__all__ = ["UdpPacket", "build_udp_packet", "parse_udp_packet"]

_UDP = 17


class UdpPacket(NamedTuple):
    """One UDP datagram's addressing and payload (addresses as packed bytes)."""

    version: int
    src: bytes
    dst: bytes
    src_port: int
    dst_port: int
    payload: bytes


def parse_udp_packet(packet: bytes) -> UdpPacket | None:
    """The UDP datagram in ``packet`` (IPv4 unfragmented, or IPv6 with UDP as the first
    next header); None for anything else or anything truncated."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if len(packet) < 20 or ihl < 20 or packet[9] != _UDP:
            return None
        total = (packet[2] << 8) | packet[3]
        if (packet[6] & 0x3F) or packet[7] or total > len(packet) or total < ihl + 8:
            return None  # fragments are not reassembled here
        start, end, src, dst = ihl, total, packet[12:16], packet[16:20]
    elif version == 6:
        if len(packet) < 48 or packet[6] != _UDP:
            return None
        end = 40 + ((packet[4] << 8) | packet[5])
        if end > len(packet) or end < 48:
            return None
        start, src, dst = 40, packet[8:24], packet[24:40]
    else:
        return None
    src_port, dst_port, length = struct.unpack_from("!HHH", packet, start)
    if length < 8 or start + length > end:
        return None
    return UdpPacket(version, bytes(src), bytes(dst), src_port, dst_port, bytes(packet[start + 8:start + length]))


def build_udp_packet(src: bytes, dst: bytes, src_port: int, dst_port: int, payload: bytes, *, ttl: int = 64) -> bytes:
    """An IPv4 (4-byte addresses; DF set) or IPv6 (16-byte) packet carrying one UDP
    datagram, every checksum filled in."""
    length = 8 + len(payload)
    udp = bytearray(struct.pack("!HHHH", src_port, dst_port, length, 0) + payload)
    checksum = internet_checksum(udp, pseudo_header_sum(src, dst, length, _UDP)) or 0xFFFF
    struct.pack_into("!H", udp, 6, checksum)
    if len(src) == 4:
        header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0x4000, ttl, _UDP, 0, src, dst))
        struct.pack_into("!H", header, 10, internet_checksum(header))
        return bytes(header + udp)
    return struct.pack("!IHBB16s16s", 6 << 28, length, _UDP, ttl, src, dst) + bytes(udp)
