"""The connector's own address for the ICMP errors it originates.

Time Exceeded and Destination Unreachable answers must come from an address
the client can make sense of in a traceroute: the configured one, else the
address the kernel would use to reach the destination (a connected UDP socket
and getsockname: a route lookup, no packet sent). Never loopback, link-local or
a container bridge (docker0, br-*, an interface that is or belongs to a Linux
bridge) — unless the destination itself is one (a loopback, link-local or
on-bridge destination) — then the next-best address of an ordinary interface is
used, and a log line says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import ipaddress
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass

__all__ = ["InterfaceAddress", "SourceAddressSelector", "interface_addresses", "kernel_source_address"]

logger = logging.getLogger("fastproxy.icmp")

_BRIDGE_NAME_PREFIXES = ("docker", "br-", "virbr", "cni", "podman", "lxcbr", "lxdbr")


@dataclass(frozen=True, slots=True)
class InterfaceAddress:
    """One address of a local interface."""

    interface: str
    address: bytes
    prefix_length: int
    is_bridge: bool

    def contains(self, other: bytes) -> bool:
        """True if ``other`` is inside this address's subnet."""
        if len(other) != len(self.address):
            return False
        bits = 8 * len(other)
        shift = bits - self.prefix_length
        return int.from_bytes(other, "big") >> shift == int.from_bytes(self.address, "big") >> shift


def kernel_source_address(dst: bytes) -> bytes | None:
    """The source address the kernel would pick to reach ``dst`` (no packet is sent); None if unroutable."""
    family = socket.AF_INET if len(dst) == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            # connect() on UDP only looks up the route and binds a source address.
            probe.connect((socket.inet_ntop(family, dst), 9))
        except OSError:
            return None
        return socket.inet_pton(family, probe.getsockname()[0])


def _is_bridge_interface(name: str) -> bool:
    if name.startswith(_BRIDGE_NAME_PREFIXES):
        return True
    if sys.platform.startswith("linux"):
        # A bridge has /sys/class/net/<if>/bridge; a port of one (veth in a bridge) has brport.
        base = f"/sys/class/net/{name}"
        return os.path.exists(f"{base}/bridge") or os.path.exists(f"{base}/brport")
    return False


class _Sockaddr(ctypes.Structure):
    _fields_ = [("head", ctypes.c_uint16), ("data", ctypes.c_uint8 * 26)]


class _Ifaddrs(ctypes.Structure):
    pass


_Ifaddrs._fields_ = [
    ("ifa_next", ctypes.POINTER(_Ifaddrs)),
    ("ifa_name", ctypes.c_char_p),
    ("ifa_flags", ctypes.c_uint),
    ("ifa_addr", ctypes.POINTER(_Sockaddr)),
    ("ifa_netmask", ctypes.POINTER(_Sockaddr)),
]


def _sockaddr_family_and_bytes(pointer: ctypes._Pointer) -> tuple[int, bytes] | None:  # type: ignore[type-arg]
    if not pointer:
        return None
    raw = ctypes.string_at(pointer, 28)
    # BSD sockaddrs start with a length byte, then a one-byte family; Linux has a 16-bit family.
    family = raw[1] if sys.platform == "darwin" or "bsd" in sys.platform else int.from_bytes(raw[:2], sys.byteorder)
    if family == socket.AF_INET:
        return family, raw[4:8]
    if family == socket.AF_INET6:
        return family, raw[8:24]
    return None


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def interface_addresses() -> list[InterfaceAddress]:
    """Every IPv4/IPv6 address of every local interface (getifaddrs); empty where unavailable."""
    if sys.platform == "win32":
        return []
    libc = _libc()
    head = ctypes.POINTER(_Ifaddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        return []
    found: list[InterfaceAddress] = []
    try:
        entry = head
        while entry:
            item = entry.contents
            address = _sockaddr_family_and_bytes(item.ifa_addr)
            if address is not None:
                netmask = _sockaddr_family_and_bytes(item.ifa_netmask)
                prefix = bin(int.from_bytes(netmask[1], "big")).count("1") if netmask else 8 * len(address[1])
                name = item.ifa_name.decode(errors="replace")
                found.append(InterfaceAddress(name, address[1], prefix, _is_bridge_interface(name)))
            entry = item.ifa_next
    finally:
        libc.freeifaddrs(head)
    return found


def _special(address: bytes) -> str | None:
    ip = ipaddress.ip_address(address)
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    return None


class SourceAddressSelector:
    """Chooses (and caches for ``cache_seconds``) the source of proxy-originated ICMP errors per destination."""

    def __init__(
        self,
        icmpv4_source: ipaddress.IPv4Address | str | None = None,
        icmpv6_source: ipaddress.IPv6Address | str | None = None,
        *,
        cache_seconds: float = 60.0,
        max_cached: int = 4096,
    ) -> None:
        self._configured = {
            4: ipaddress.IPv4Address(icmpv4_source).packed if icmpv4_source is not None else None,
            6: ipaddress.IPv6Address(icmpv6_source).packed if icmpv6_source is not None else None,
        }
        self._cache_seconds = cache_seconds
        self._max_cached = max_cached
        self._cache: dict[bytes, tuple[float, bytes]] = {}

    def source_for(self, dst: bytes) -> bytes:
        """The address the connector answers from for packets towards ``dst`` (4 or 16 bytes)."""
        configured = self._configured[4 if len(dst) == 4 else 6]
        if configured is not None:
            return configured
        now = time.monotonic()
        cached = self._cache.get(dst)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        if len(self._cache) >= self._max_cached:
            self._cache.clear()
        source = self._detect(dst)
        self._cache[dst] = (now, source)
        return source

    def _detect(self, dst: bytes) -> bytes:
        kernel_pick = kernel_source_address(dst)
        addresses = interface_addresses()
        if kernel_pick is not None:
            why_not = self._unsuitable(kernel_pick, dst, addresses)
            if why_not is None:
                return kernel_pick
        else:
            why_not = "no route"
        for candidate in addresses:
            if len(candidate.address) == len(dst) and self._unsuitable(candidate.address, dst, addresses) is None:
                logger.info(
                    "ICMP: answering for %s from %s on %s (the kernel's choice, %s, is %s)",
                    _text(dst), _text(candidate.address), candidate.interface,
                    _text(kernel_pick) if kernel_pick else "none", why_not,
                )
                return candidate.address
        fallback = kernel_pick or bytes(len(dst))
        logger.warning(
            "ICMP: no suitable own address to answer for %s; using %s (%s). Set icmpv%d_source.",
            _text(dst), _text(fallback), why_not, 4 if len(dst) == 4 else 6,
        )
        return fallback

    @staticmethod
    def _unsuitable(source: bytes, dst: bytes, addresses: list[InterfaceAddress]) -> str | None:
        kind = _special(source)
        if kind is not None and _special(dst) != kind:
            return kind
        for entry in addresses:
            if entry.address == source and entry.is_bridge and not entry.contains(dst):
                return f"on container bridge {entry.interface}"
        return None


def _text(address: bytes) -> str:
    return str(ipaddress.ip_address(address))
