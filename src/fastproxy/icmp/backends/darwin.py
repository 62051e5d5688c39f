"""macOS: ICMP through SOCK_DGRAM / IPPROTO_ICMP(V6) sockets, which need no privilege there.

Unlike Linux ping sockets, macOS neither rewrites the echo id nor
demultiplexes replies, so this is the raw backend's engine with different
socket setup: ids are rewritten by the proxy through the flow table, every
reply reaches the one socket per family, and the ICMPv6 type filter keeps
unrelated messages out. (Tested on Linux through the raw backend, which shares
all but :meth:`DarwinBackend._open_socket`.)
"""

from __future__ import annotations

import socket

from fastproxy._impl import core

from .raw import DatagramIcmpEngine, icmp6_type_filter

__all__ = ["DarwinBackend"]

_DARWIN_ICMP6_FILTER = 18  # <netinet/icmp6.h> on macOS
_DARWIN_IPV6_RECVHOPLIMIT = 37


class DarwinBackend(DatagramIcmpEngine):
    """ICMP through macOS datagram ICMP sockets (IPv4 ones deliver the IP header, as raw ones do)."""

    name = "darwin"

    def _open_socket(self, version: int) -> socket.socket:
        if version == 4:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        else:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)
            try:
                sock.setsockopt(socket.IPPROTO_ICMPV6, _DARWIN_ICMP6_FILTER, icmp6_type_filter())
                sock.setsockopt(socket.IPPROTO_IPV6, _DARWIN_IPV6_RECVHOPLIMIT, 1)
            except BaseException:
                sock.close()
                raise
        sock.setblocking(False)
        return sock

    def receive_batch(self, fd: int) -> tuple[int, core.PacketBatch]:
        """As the raw engine, with the IPv4 headers macOS delivers (ip_len and ip_off in host
        order) put back in network form so the strict parse accepts them."""
        version, batch = super().receive_batch(fd)
        if version == 4:
            core.normalize_bsd_ipv4_headers(batch)
        return version, batch
