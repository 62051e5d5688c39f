"""A Linux TUN device: create it, give it addresses, MTU and routes, read and write
IP packets in batches, and remove it (with its routes) on close.

Addresses, MTU and routes are set with the ``ip`` command (iproute2), which every Linux
host that can create a TUN device has. The device is not persistent: closing its file
descriptor removes it, and the kernel removes its routes with it, so even a crash of the
process leaves nothing behind.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
import struct
import subprocess
import sys
from collections.abc import Iterable, Sequence

__all__ = ["DEFAULT_MTU", "TX_QUEUE_LENGTH", "TunDevice", "TunError"]

log = logging.getLogger("fastproxy.client.tun")

DEFAULT_MTU = 1280
"""IPv6's minimum MTU: a packet of this size fits in one tunnel datagram."""

TX_QUEUE_LENGTH = 4096
"""Packets the kernel holds for the client to read (its default, 500, is 25 ms of a
20k packets/s UDP flow: a client descheduled that long on a busy host lost the rest)."""

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_READ_SIZE = 65535
_MAX_BATCH = 256

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class TunError(OSError):
    """Creating or configuring the TUN device failed (the message says which step)."""


_PRIVILEGE_ADVICE = (" (creating a TUN device needs root or CAP_NET_ADMIN: run the client as root, or grant it the "
                     "capability, e.g. AmbientCapabilities=CAP_NET_ADMIN in its systemd unit)")


_NO_DRIVER_ADVICE = (" (this system has no TUN driver device: load it with `modprobe tun`; in a container, "
                     "pass the device in, e.g. `docker run --device /dev/net/tun --cap-add NET_ADMIN`)")


def _advice(err: int | None) -> str:
    """What to do about a refused TUN operation: the privilege it needs for a permission error,
    the driver for a missing device, else nothing (the error says it all)."""
    if err in (errno.EPERM, errno.EACCES):
        return _PRIVILEGE_ADVICE
    if err in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return _NO_DRIVER_ADVICE
    return ""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise TunError(f"`ip {' '.join(args)}` failed: {result.stderr.strip() or result.returncode}")


class TunDevice:
    """A TUN device (no packet-info header: each read or write is one whole IP packet).

    Use as a context manager::

        with TunDevice("fp0") as tun:
            tun.configure(["100.96.0.2/32"], routes=[ipaddress.ip_network("10.0.0.0/8")])
            packets = tun.read_batch()      # [] when nothing is waiting
            tun.write_batch(answers)

    ``name`` may contain ``%d`` for the kernel to pick a free number; :attr:`name` is the
    name it got. The file descriptor (:attr:`fd`) is non-blocking, for ``loop.add_reader``.
    """

    def __init__(self, name: str = "fastproxy%d", *, mtu: int = DEFAULT_MTU) -> None:
        if not sys.platform.startswith("linux"):
            raise TunError("TUN devices are supported on Linux only")
        if not 0 < len(name.encode()) < 16:
            raise TunError(f"bad interface name {name!r} (1 to 15 bytes)")
        self.mtu = mtu
        self.addresses: list[Interface] = []
        self.routes: list[Network] = []
        try:
            self.fd: int | None = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise TunError(exc.errno, f"cannot open /dev/net/tun: {exc.strerror}{_advice(exc.errno)}") from None
        try:
            answer = fcntl.ioctl(self.fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
        except OSError as exc:
            # Where /dev/net/tun is mode 0666 (most distributions) anyone may open it, and it is
            # this ioctl that refuses an unprivileged process (EPERM): the same advice.
            os.close(self.fd)
            self.fd = None
            raise TunError(exc.errno, f"cannot create TUN device {name!r}: {exc.strerror}{_advice(exc.errno)}") from None
        self.name: str = answer[:16].rstrip(b"\0").decode()
        log.debug("created TUN device %s", self.name)

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def configure(self, addresses: Iterable[str | Interface], routes: Iterable[Network] = ()) -> None:
        """Set the MTU, add ``addresses`` (``addr/prefix``; a bare address is a host
        address), bring the device up and route ``routes`` into it."""
        self._check_open()
        _ip("link", "set", "dev", self.name, "mtu", str(self.mtu), "txqueuelen", str(TX_QUEUE_LENGTH))
        self.set_addresses(addresses)
        _ip("link", "set", "dev", self.name, "up")
        self.add_routes(routes)

    def set_addresses(self, addresses: Iterable[str | Interface]) -> None:
        """Make the device's addresses exactly ``addresses`` (``addr/prefix``): add the new
        ones, remove the others (the edge may assign new ones after a reconnect)."""
        self._check_open()
        wanted = [ipaddress.ip_interface(address) for address in addresses]
        # Add before removing: when a device loses its last IPv4 address the kernel flushes
        # the routes through it.
        for interface in wanted:
            if interface not in self.addresses:
                extra = ["nodad"] if interface.version == 6 else []
                _ip("addr", "add", str(interface), "dev", self.name, *extra)
                self.addresses.append(interface)
        for old in [a for a in self.addresses if a not in wanted]:
            _ip("addr", "del", str(old), "dev", self.name)
            self.addresses.remove(old)

    def add_routes(self, routes: Iterable[Network]) -> None:
        """Route each prefix into this device."""
        self._check_open()
        for route in routes:
            family = "-6" if route.version == 6 else "-4"
            _ip(family, "route", "replace", str(route), "dev", self.name)
            if route not in self.routes:
                self.routes.append(route)

    def remove_routes(self, routes: Iterable[Network]) -> None:
        """Stop routing each prefix into this device (one already gone is no error)."""
        self._check_open()
        for route in routes:
            family = "-6" if route.version == 6 else "-4"
            result = subprocess.run(["ip", family, "route", "del", str(route), "dev", self.name],
                                    capture_output=True, text=True, check=False)
            # ESRCH ("No such process"): the kernel dropped it already (e.g. with an address).
            if result.returncode != 0 and "No such process" not in result.stderr:
                raise TunError(f"`ip {family} route del {route} dev {self.name}` failed: "
                               f"{result.stderr.strip() or result.returncode}")
            if route in self.routes:
                self.routes.remove(route)

    def set_routes(self, routes: Iterable[Network]) -> tuple[list[Network], list[Network]]:
        """Make the prefixes routed into this device exactly ``routes``; returns (added,
        removed). New routes go in before old ones go out, so a destination covered by
        both (a prefix split or merged) never loses its route."""
        wanted = list(dict.fromkeys(routes))
        added = [route for route in wanted if route not in self.routes]
        removed = [route for route in self.routes if route not in wanted]
        self.add_routes(added)
        self.remove_routes(removed)
        return added, removed

    def read_batch(self, limit: int = _MAX_BATCH) -> list[bytes]:
        """Every packet waiting on the device (up to ``limit``); [] when none is."""
        fd = self._check_open()
        packets: list[bytes] = []
        read = os.read
        while len(packets) < limit:
            try:
                packets.append(read(fd, _READ_SIZE))
            except BlockingIOError:
                break
        return packets

    def write_batch(self, packets: Sequence[bytes]) -> int:
        """Write each packet; returns how many the kernel took. A packet the kernel
        refuses (malformed, no buffer space) is skipped, not raised."""
        fd = self._check_open()
        written = 0
        for packet in packets:
            try:
                os.write(fd, packet)
                written += 1
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EINVAL, errno.ENOBUFS, errno.EIO):
                    raise
        return written

    def close(self) -> None:
        """Remove the device (its addresses and routes go with it); idempotent."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        os.close(fd)
        # Closing the only descriptor removes a non-persistent device; make sure of it.
        subprocess.run(["ip", "link", "del", "dev", self.name], capture_output=True, check=False)
        log.debug("removed TUN device %s", self.name)

    def _check_open(self) -> int:
        if self.fd is None:
            raise TunError(errno.EBADF, f"TUN device {self.name} is closed")
        return self.fd
