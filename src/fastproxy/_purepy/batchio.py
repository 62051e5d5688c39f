"""Pure-Python twin of fastproxy._core: batchio.

The same PacketBatch as the compiled core, built on a loop of socket.recvmsg /
sendmsg with the same control messages (recvfrom / sendto on Windows, where the
socket module has no recvmsg). Platform behaviour matches _cy/fp_batchio.h:
Linux sends TTLs as IP_TTL / IPV6_HOPLIMIT cmsgs; other POSIX sends the hop limit
as a cmsg and the IPv4 TTL by setsockopt(IP_TTL) around each packet; Windows
receives no TTL (-1) and sends both by setsockopt, restoring the socket's own
value afterwards.
"""

from __future__ import annotations

import errno
import operator
import os
import select
import socket
import sys
from collections.abc import Sequence

__all__ = ["PacketBatch"]

_MAX_SLOTS = 65536
_MAX_SLOT_SIZE = 262144
_CONTROL_BYTES = 128  # room for the TTL cmsg and whatever else the socket has enabled
_LINUX = sys.platform.startswith("linux")
_HAVE_MSG = hasattr(socket.socket, "recvmsg")  # not on Windows
_TTL_BY_SETSOCKOPT_V4 = not _LINUX
_TTL_BY_SETSOCKOPT_V6 = not _HAVE_MSG
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_WSAEMSGSIZE = 10040
# BSD labels a received TTL cmsg IP_RECVTTL (one byte); Python < 3.14 lacks the name.
_IP_RECVTTL_CMSG = None if _LINUX else getattr(socket, "IP_RECVTTL", 24 if sys.platform == "darwin" else None)
_IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", None)
_IPV6_HOPS_OPTION = getattr(socket, "IPV6_UNICAST_HOPS", None)

Address = tuple  # (host, port) or (host, port, flowinfo, scope_id)


def _parse_address(address: object) -> Address:
    """Socket-module address in its normalized form; the compiled core's rules exactly.

    Hosts are numeric IPv4 / IPv6 literals (an IPv6 host may carry a %scope suffix); a
    2-tuple is IPv4 if its host is an IPv4 literal, else IPv6.
    """
    if not isinstance(address, tuple):
        raise TypeError(f"address must be a tuple or None, not {type(address).__name__}")
    if not 2 <= len(address) <= 4:
        raise ValueError(f"address must be (host, port) or (host, port, flowinfo, scope_id): {address!r}")
    host = address[0]
    port = operator.index(address[1])
    flowinfo = operator.index(address[2]) if len(address) > 2 else 0
    scope_id = operator.index(address[3]) if len(address) > 3 else 0
    if not isinstance(host, str):
        raise TypeError(f"address host must be a str, not {type(host).__name__}")
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"address port must be 0-65535: {port}")
    if not 0 <= flowinfo <= 0xFFFFF:
        raise ValueError(f"address flowinfo must be 0-1048575: {flowinfo}")
    if not 0 <= scope_id <= 0xFFFFFFFF:
        raise ValueError(f"address scope_id must be 0-4294967295: {scope_id}")
    if len(address) == 2 and "%" not in host:
        try:
            return (socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, host)), port)
        except OSError:
            pass
    name, _, scope = host.partition("%")
    try:
        packed = socket.inet_pton(socket.AF_INET6, name)
    except OSError:
        raise ValueError(f"address host is not a numeric IPv4 or IPv6 address: {host!r}") from None
    if scope and scope_id == 0:
        try:
            scope_id = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
        except OSError:
            raise ValueError(f"unknown IPv6 scope in {host!r}") from None
    return (socket.inet_ntop(socket.AF_INET6, packed), port, flowinfo, scope_id)


def _received_address(address: object) -> Address | None:
    """A received peer address in normalized form; None for families other than IP."""
    if not isinstance(address, tuple):
        return None
    return _parse_address(address)


def _ttl_of(ancdata: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP:
            is_ttl = kind == socket.IP_TTL or kind == _IP_RECVTTL_CMSG
        else:
            is_ttl = level == socket.IPPROTO_IPV6 and kind == _IPV6_HOPLIMIT
        if not is_ttl:
            continue
        if len(data) >= 4:
            value = int.from_bytes(data[:4], sys.byteorder, signed=True)
        else:
            value = data[0] if data else -1
        return value if 0 <= value <= 255 else -1
    return -1


class _TtlBySockopt:
    """TTL by socket option where no per-message TTL exists; puts the socket's own back."""

    def __init__(self) -> None:
        self.option: tuple[int, int] | None = None
        self.original = 0
        self.current = 0

    def apply(self, sock: socket.socket, family: int, ttl: int) -> None:
        if family == socket.AF_INET:
            option = (socket.IPPROTO_IP, socket.IP_TTL)
        elif family == socket.AF_INET6 and _IPV6_HOPS_OPTION is not None:
            option = (socket.IPPROTO_IPV6, _IPV6_HOPS_OPTION)
        else:
            return
        if ttl < 0:  # a slot without a TTL goes with the socket's own
            if self.option is None:
                return
            ttl = self.original
        if self.option is None:
            self.original = self.current = sock.getsockopt(*option)
            self.option = option
        elif self.option != option:
            return  # mixed families on one socket cannot happen; leave the TTL alone
        if ttl != self.current:
            sock.setsockopt(*option, ttl)
            self.current = ttl

    def restore(self, sock: socket.socket) -> None:
        if self.option is not None and self.current != self.original:
            sock.setsockopt(*self.option, self.original)


def _usable_socket(sock: socket.socket | int) -> tuple[socket.socket, bool]:
    """A socket object whose calls never wait; True if it is a temporary to detach.

    Anything else with a fileno() (as the compiled core takes it) and a socket with a
    timeout (which polls before each call) are used through a bare object on their fd.
    """
    if isinstance(sock, int):
        return socket.socket(fileno=sock), True
    if type(sock) is not socket.socket or sock.gettimeout() not in (None, 0.0):
        return socket.socket(fileno=sock.fileno()), True
    return sock, False


class PacketBatch:
    """N preallocated packet slots for batched datagram socket I/O.

    Each slot holds up to ``slot_size`` bytes, a length, a peer address and a
    TTL / hop limit (-1 = none), all in one allocation that is reused forever.
    ``recv`` fills slots from 0; ``send`` drains a range, putting each slot's
    TTL on the wire. Not for concurrent use from two threads.
    """

    __slots__ = ("_slots", "_slot_size", "_stride", "_view", "_lengths", "_ttls", "_truncated", "_addrs", "_count")

    def __init__(self, slots: int, slot_size: int = 2048) -> None:
        slots = operator.index(slots)
        slot_size = operator.index(slot_size)
        if not 1 <= slots <= _MAX_SLOTS:
            raise ValueError(f"slots must be 1-{_MAX_SLOTS}: {slots}")
        if not 1 <= slot_size <= _MAX_SLOT_SIZE:
            raise ValueError(f"slot_size must be 1-{_MAX_SLOT_SIZE}: {slot_size}")
        self._slots = slots
        self._slot_size = slot_size
        self._stride = (slot_size + 15) & ~15
        self._view = memoryview(bytearray(slots * self._stride))
        self._lengths = [0] * slots
        self._ttls = [-1] * slots
        self._truncated = [False] * slots
        self._addrs: list[Address | None] = [None] * slots
        self._count = 0

    def _slot(self, i: int) -> int:
        k = operator.index(i)
        if not 0 <= k < self._slots:
            raise IndexError(f"slot index out of range (0-{self._slots - 1}): {k}")
        return k

    def __len__(self) -> int:
        return self._slots

    def __repr__(self) -> str:
        return f"PacketBatch(slots={self._slots}, slot_size={self._slot_size}, count={self._count})"

    @property
    def slot_size(self) -> int:
        """Usable bytes per slot."""
        return self._slot_size

    @property
    def count(self) -> int:
        """How many slots hold packets: filled by the last ``recv`` (0 before any, and after an
        error) or by a producer such as EchoNat.outbound; settable when filling slots by hand."""
        return self._count

    @count.setter
    def count(self, value: int) -> None:
        value = operator.index(value)
        if not 0 <= value <= self._slots:
            raise ValueError(f"count must be 0-{self._slots}, got {value}")
        self._count = value

    def recv(self, sock: socket.socket | int) -> int:
        """Receive up to len(self) datagrams without blocking, filling slots from 0.

        ``sock`` is a socket.socket or an int file descriptor. Returns how many
        arrived (0 when nothing is waiting); other errors raise OSError. Each slot
        gets its packet, length, source address and, if the socket has
        IP_RECVTTL / IPV6_RECVHOPLIMIT on, its TTL / hop limit (else -1).
        """
        self._count = 0
        s, temporary = _usable_socket(sock)
        try:
            n = self._recv_loop(s, 0)
        finally:
            if temporary:
                s.detach()
        self._count = n
        return n

    def recv_many(self, socks: Sequence[socket.socket | int], sources: memoryview | bytearray | object) -> int:
        """Receive without blocking from each of ``socks`` in turn into one batch, filling slots from 0.

        ``sources[i]`` is set to the index in ``socks`` of the socket slot i came
        from (at least len(self) items). Each socket is read until it has nothing
        more or the batch is full; when full, the sockets after the one of the last
        slot were not read. A socket whose receive fails with an error is skipped.
        Returns how many slots were filled (also ``count``). ``sources`` is a
        writable buffer of C int, such as ``array('i')``.
        """
        out = memoryview(sources)  # type: ignore[arg-type]
        if out.format != "i" or out.readonly:
            raise ValueError("sources must be a writable buffer of C int, such as array('i')")
        if len(out) < self._slots:
            raise ValueError(f"sources has {len(out)} items, the batch {self._slots} slots")
        self._count = 0
        filled = 0
        for k, sock in enumerate(socks):
            if filled == self._slots:
                break
            s, temporary = _usable_socket(sock)
            try:
                got = self._recv_loop(s, filled)
            except OSError:  # skipped, as in the compiled core
                got = 0
            finally:
                if temporary:
                    s.detach()
            for j in range(filled, filled + got):
                out[j] = k
            filled += got
        self._count = filled
        return filled

    def _recv_loop(self, s: socket.socket, start: int) -> int:
        """Receive into slots [start, slots); how many arrived."""
        size = self._slot_size
        n = start
        while n < self._slots:
            off = n * self._stride
            slot = self._view[off : off + size]
            try:
                if _HAVE_MSG:
                    nbytes, ancdata, flags, address = s.recvmsg_into([slot], _CONTROL_BYTES, _DONTWAIT)
                    truncated = bool(flags & socket.MSG_TRUNC)
                    ttl = _ttl_of(ancdata)
                else:
                    if not select.select([s], [], [], 0)[0]:
                        break
                    try:
                        nbytes, address = s.recvfrom_into(slot, size)
                        truncated = False
                    except OSError as exc:
                        if getattr(exc, "winerror", None) != _WSAEMSGSIZE:
                            raise
                        nbytes, address, truncated = size, None, True  # Python drops the address here
                    ttl = -1  # recvfrom carries no ancillary data
            except BlockingIOError:
                break
            except OSError:
                if n > start:
                    break  # like recvmmsg: report what arrived; the error comes back next call
                raise
            self._lengths[n] = min(nbytes, size)
            self._truncated[n] = truncated
            self._addrs[n] = _received_address(address)
            self._ttls[n] = ttl
            n += 1
        return n - start

    def send(self, sock: socket.socket | int, count: int, start: int = 0) -> int:
        """Send slots [start, start+count) without blocking.

        Each slot goes with its length, to its address (if it has one; none for
        connected sockets) and, if its ttl >= 0, with that TTL / hop limit on
        the wire. Returns how many were sent; a full send buffer after some
        packets gives the partial count (0 if none). Other errors raise OSError;
        retry from start + sent.
        """
        count = operator.index(count)
        start = operator.index(start)
        if count < 0 or start < 0 or start + count > self._slots:
            raise IndexError(f"slot range [{start}, {start + count}) outside 0-{self._slots}")
        s, temporary = _usable_socket(sock)
        by_sockopt = _TtlBySockopt()
        sent = 0
        error: OSError | None = None
        try:
            for i in range(start, start + count):
                try:
                    self._send_one(s, i, by_sockopt)
                except OSError as exc:
                    error = exc
                    break
                sent += 1
        finally:
            try:
                by_sockopt.restore(s)
            finally:
                if temporary:
                    s.detach()
        # like sendmmsg: an error after some packets went reports the partial count
        if error is not None and sent == 0 and not isinstance(error, BlockingIOError):
            raise error
        return sent

    def _send_one(self, s: socket.socket, i: int, by_sockopt: _TtlBySockopt) -> None:
        off = i * self._stride
        data = self._view[off : off + self._lengths[i]]
        address = self._addrs[i]
        ttl = self._ttls[i]
        ancdata: list[tuple[int, int, bytes]] = []
        family = s.family
        if address is not None:
            family = socket.AF_INET if len(address) == 2 else socket.AF_INET6
            if s.family == socket.AF_INET6 and family == socket.AF_INET:
                # the kernel takes a sockaddr_in on a dual-stack socket as this mapped address
                address = ("::ffff:" + address[0], address[1], 0, 0)
            elif s.family == socket.AF_INET and family == socket.AF_INET6:
                raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
        if (family == socket.AF_INET and _TTL_BY_SETSOCKOPT_V4) or (family == socket.AF_INET6 and _TTL_BY_SETSOCKOPT_V6):
            by_sockopt.apply(s, family, ttl)
        elif ttl >= 0:
            if family == socket.AF_INET:
                ancdata = [(socket.IPPROTO_IP, socket.IP_TTL, ttl.to_bytes(4, sys.byteorder))]
            elif family == socket.AF_INET6:
                ancdata = [(socket.IPPROTO_IPV6, _IPV6_HOPLIMIT, ttl.to_bytes(4, sys.byteorder))]
        if _HAVE_MSG:
            if address is None:
                s.sendmsg([data], ancdata, _DONTWAIT)
            else:
                s.sendmsg([data], ancdata, _DONTWAIT, address)
        elif address is None:
            s.send(data)
        else:
            s.sendto(data, address)

    def data(self, i: int) -> memoryview:
        """Writable view of slot i's packet bytes [0:length]."""
        k = self._slot(i)
        off = k * self._stride
        return self._view[off : off + self._lengths[k]]

    def buffer(self, i: int) -> memoryview:
        """Writable view of all of slot i (slot_size bytes), to build a packet in place."""
        off = self._slot(i) * self._stride
        return self._view[off : off + self._slot_size]

    def length(self, i: int) -> int:
        """Bytes in slot i."""
        return self._lengths[self._slot(i)]

    def set_length(self, i: int, n: int) -> None:
        """Set slot i's length; ValueError unless 0 <= n <= slot_size."""
        k = self._slot(i)
        n = operator.index(n)
        if not 0 <= n <= self._slot_size:
            raise ValueError(f"length must be 0-{self._slot_size}: {n}")
        self._lengths[k] = n

    def truncated(self, i: int) -> bool:
        """True if the datagram last received into slot i was longer than slot_size."""
        return self._truncated[self._slot(i)]

    def address(self, i: int) -> tuple | None:
        """Slot i's peer address as the socket module gives it, or None.

        (host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6.
        """
        return self._addrs[self._slot(i)]

    def set_address(self, i: int, address: tuple | None) -> None:
        """Set slot i's destination address (socket-module form), or None for none."""
        k = self._slot(i)
        self._addrs[k] = None if address is None else _parse_address(address)

    def ttl(self, i: int) -> int:
        """Slot i's TTL / hop limit: received with the packet, or set to send; -1 = none."""
        return self._ttls[self._slot(i)]

    def set_ttl(self, i: int, ttl: int) -> None:
        """Set the TTL / hop limit slot i is sent with (0-255), or -1 for the socket's own.

        Linux refuses an IPv4 TTL of 0 when sending (OSError EINVAL); hop limit 0 is allowed.
        """
        k = self._slot(i)
        ttl = operator.index(ttl)
        if not -1 <= ttl <= 255:
            raise ValueError(f"ttl must be 0-255, or -1 for none: {ttl}")
        self._ttls[k] = ttl

    def set(self, i: int, data: bytes | bytearray | memoryview, address: tuple | None = None, ttl: int = -1) -> None:
        """Copy ``data`` into slot i and set its address and TTL (one call to fill a slot).

        Checks everything first, so a ValueError leaves the slot as it was.
        """
        k = self._slot(i)
        src = memoryview(data).cast("B")
        n = src.nbytes
        ttl = operator.index(ttl)
        if n > self._slot_size:
            raise ValueError(f"data of {n} bytes does not fit a slot of {self._slot_size}")
        if not -1 <= ttl <= 255:
            raise ValueError(f"ttl must be 0-255, or -1 for none: {ttl}")
        parsed = None if address is None else _parse_address(address)
        off = k * self._stride
        self._view[off : off + n] = src
        self._addrs[k] = parsed
        self._lengths[k] = n
        self._ttls[k] = ttl

