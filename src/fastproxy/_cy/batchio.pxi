# fastproxy._core: batchio (included by _core.pyx; see the module docstring there).
#
# PacketBatch: N preallocated packet slots filled by one recvmmsg and drained by one
# sendmmsg (a recvmsg/sendmsg loop off Linux, recvfrom/sendto on Windows), each slot
# with its peer address and TTL / hop limit. All socket-level C is in fp_batchio.h.
#
# C-level API for the NAT engine (same compilation unit). Given `cdef PacketBatch b`:
#   b.bio.base          uint8_t *       slot i's bytes start at b.bio.base + i * b.bio.stride
#   b.bio.stride        size_t          distance between slots (slot_size rounded up to 16)
#   b.bio.slot_size     size_t          usable bytes per slot
#   b.bio.slots         int             number of slots
#   b.bio.count         int             slots the last recv filled
#   b.bio.lengths       int32_t *       [slots] packet length, 0..slot_size (keep it so)
#   b.bio.ttls          int32_t *       [slots] TTL / hop limit, -1 = none (0..255 otherwise)
#   b.bio.flags         uint8_t *       [slots] FP_BIO_TRUNCATED after recv
#   b.bio.addrs         sockaddr_storage * [slots] peer address (filled by recv; used by send)
#   b.bio.addrlens      fp_bio_socklen * [slots] address length, 0 = no address
#   b._bio_recv(fd)                     noexcept nogil: fill slots from 0 without blocking;
#                                       count (0 if nothing waits) or -errno
#   b._bio_send(fd, start, count)       noexcept nogil: send [start, start+count); how many
#                                       went (would-block after some = partial) or -errno
#   fp_bio_set_addr4(&b.bio, i, ip4, port)                      nogil, -1 on a bad index
#   fp_bio_set_addr6(&b.bio, i, ip16, port, flowinfo, scope_id) nogil, -1 on a bad index
#   fp_bio_clear_addr(&b.bio, i) / fp_bio_get_addr(&b.bio, i, ip16, &port, &flow, &scope) -> 4|6|0
# (ip bytes in network order; port, flowinfo, scope_id as host numbers). On Windows the
# errors are negated WSA codes (FP_BIO_WINSOCK_ERRORS == 1); raise with _bio_oserror(-r).
# A PacketBatch is not for concurrent use from two threads.

cimport cython
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.number cimport PyNumber_Index
from libc.stdlib cimport free as _bio_free_mem, malloc as _bio_malloc

import os as _bio_os
import socket as _bio_socket

cdef extern from "fp_batchio.h" nogil:
    ctypedef int fp_bio_socklen
    struct sockaddr_storage:
        pass
    ctypedef struct fp_bio_batch:
        uint8_t *base
        size_t stride
        size_t slot_size
        int slots
        int count
        int32_t *lengths
        int32_t *ttls
        uint8_t *flags
        sockaddr_storage *addrs
        fp_bio_socklen *addrlens
    int FP_BIO_TRUNCATED
    int FP_BIO_MAX_SLOTS
    int FP_BIO_MAX_SLOT_SIZE
    int FP_BIO_WINSOCK_ERRORS
    int FP_BIO_USES_MMSG
    int fp_bio_init(fp_bio_batch *b, int slots, size_t slot_size)
    void fp_bio_free(fp_bio_batch *b)
    int fp_bio_recv(fp_bio_batch *b, int fd)
    int fp_bio_recv_from(fp_bio_batch *b, int fd, int start)
    int fp_bio_send(fp_bio_batch *b, int fd, int start, int count)
    int fp_bio_set_addr4(fp_bio_batch *b, int i, const uint8_t *ip, uint16_t port)
    int fp_bio_set_addr6(fp_bio_batch *b, int i, const uint8_t *ip, uint16_t port,
                         uint32_t flowinfo, uint32_t scope_id)
    int fp_bio_clear_addr(fp_bio_batch *b, int i)
    int fp_bio_get_addr(const fp_bio_batch *b, int i, uint8_t *ip, uint16_t *port,
                        uint32_t *flowinfo, uint32_t *scope_id)


cdef object _bio_oserror(int err):
    """OSError (the errno subclass) for a positive errno, or a WSA code on Windows."""
    if FP_BIO_WINSOCK_ERRORS:
        return OSError(None, f"winsock error {err}", None, err)
    return OSError(err, _bio_os.strerror(err))


cdef int _bio_fileno(object sock) except? -1:
    # Windows SOCKETs are handles, which fit 32 bits (Windows keeps them sign-extendable).
    if isinstance(sock, int):
        return sock
    return sock.fileno()


cdef tuple _bio_parse_address(object address):
    """(4 or 6, packed address, port, flowinfo, scope_id) from a socket-module address tuple.

    Hosts are numeric IPv4 / IPv6 literals (an IPv6 host may carry a %scope suffix); a
    2-tuple is IPv4 if its host is an IPv4 literal, else IPv6. ValueError otherwise.
    """
    if not isinstance(address, tuple):
        raise TypeError(f"address must be a tuple or None, not {type(address).__name__}")
    if not 2 <= len(address) <= 4:
        raise ValueError(f"address must be (host, port) or (host, port, flowinfo, scope_id): {address!r}")
    host = address[0]
    port = PyNumber_Index(address[1])
    flowinfo = PyNumber_Index(address[2]) if len(address) > 2 else 0
    scope_id = PyNumber_Index(address[3]) if len(address) > 3 else 0
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
            return (4, _bio_socket.inet_pton(_bio_socket.AF_INET, host), port, 0, 0)
        except OSError:
            pass
    name, _, scope = host.partition("%")
    try:
        packed = _bio_socket.inet_pton(_bio_socket.AF_INET6, name)
    except OSError:
        raise ValueError(f"address host is not a numeric IPv4 or IPv6 address: {host!r}") from None
    if scope and scope_id == 0:
        try:
            scope_id = int(scope) if scope.isdigit() else _bio_socket.if_nametoindex(scope)
        except OSError:
            raise ValueError(f"unknown IPv6 scope in {host!r}") from None
    return (6, packed, port, flowinfo, scope_id)


@cython.final
cdef class PacketBatch:
    """N preallocated packet slots for batched datagram socket I/O.

    Each slot holds up to ``slot_size`` bytes, a length, a peer address and a
    TTL / hop limit (-1 = none), all in one allocation that is reused forever.
    ``recv`` fills slots from 0 with one recvmmsg; ``send`` drains a range with
    one sendmmsg, putting each slot's TTL on the wire. Not for concurrent use
    from two threads.
    """

    cdef fp_bio_batch bio

    def __cinit__(self, slots: int, slot_size: int = 2048):
        slots = PyNumber_Index(slots)
        slot_size = PyNumber_Index(slot_size)
        if not 1 <= slots <= FP_BIO_MAX_SLOTS:
            raise ValueError(f"slots must be 1-{FP_BIO_MAX_SLOTS}: {slots}")
        if not 1 <= slot_size <= FP_BIO_MAX_SLOT_SIZE:
            raise ValueError(f"slot_size must be 1-{FP_BIO_MAX_SLOT_SIZE}: {slot_size}")
        if fp_bio_init(&self.bio, slots, slot_size) != 0:
            raise MemoryError()

    def __dealloc__(self):
        fp_bio_free(&self.bio)

    cdef int _bio_recv(self, int fd) noexcept nogil:
        return fp_bio_recv(&self.bio, fd)

    cdef int _bio_send(self, int fd, int start, int count) noexcept nogil:
        return fp_bio_send(&self.bio, fd, start, count)

    cdef int _bio_slot(self, object i) except -1:
        k = PyNumber_Index(i)
        if not 0 <= k < self.bio.slots:
            raise IndexError(f"slot index out of range (0-{self.bio.slots - 1}): {k}")
        return k

    def __len__(self) -> int:
        return self.bio.slots

    def __repr__(self) -> str:
        return f"PacketBatch(slots={self.bio.slots}, slot_size={self.bio.slot_size}, count={self.bio.count})"

    @property
    def slot_size(self) -> int:
        """Usable bytes per slot."""
        return self.bio.slot_size

    @property
    def count(self) -> int:
        """How many slots hold packets: filled by the last ``recv`` (0 before any, and after an
        error) or by a producer such as EchoNat.outbound; settable when filling slots by hand."""
        return self.bio.count

    @count.setter
    def count(self, value: int) -> None:
        value = PyNumber_Index(value)
        if not 0 <= value <= self.bio.slots:
            raise ValueError(f"count must be 0-{self.bio.slots}, got {value}")
        self.bio.count = value

    def recv(self, sock) -> int:
        """Receive up to len(self) datagrams without blocking, filling slots from 0.

        ``sock`` is a socket.socket or an int file descriptor. Returns how many
        arrived (0 when nothing is waiting); other errors raise OSError. Each slot
        gets its packet, length, source address and, if the socket has
        IP_RECVTTL / IPV6_RECVHOPLIMIT on, its TTL / hop limit (else -1).
        """
        cdef int fd = _bio_fileno(sock)
        cdef int n
        with nogil:
            n = self._bio_recv(fd)
        if n < 0:
            raise _bio_oserror(-n)
        return n

    def recv_many(self, socks, int[::1] sources not None) -> int:
        """Receive without blocking from each of ``socks`` in turn into one batch, filling slots from 0.

        ``socks`` is a sequence of sockets or int file descriptors (for example the
        ones epoll reports ready); ``sources[i]`` is set to the index in ``socks`` of
        the socket slot i came from (``sources``: a writable int buffer, such as
        ``array('i')``, of at least len(self) items). Each socket is read until it
        has nothing more or the batch is full; when full, the sockets after the one
        of the last slot were not read. A socket whose receive fails with an error
        (such as a pending ICMP error, which a receive reports once) is skipped.
        Returns how many slots were filled (also ``count``); one Python call for
        many sockets, one recvmmsg each.
        """
        cdef Py_ssize_t n = len(socks), k
        cdef int filled = 0, r, j
        cdef int *fds
        cdef int *out
        if sources.shape[0] < self.bio.slots:
            raise ValueError(f"sources has {sources.shape[0]} items, the batch {self.bio.slots} slots")
        self.bio.count = 0
        if n == 0:
            return 0
        out = &sources[0]
        fds = <int *>_bio_malloc(<size_t>n * sizeof(int))
        if fds == NULL:
            raise MemoryError()
        try:
            for k in range(n):
                fds[k] = _bio_fileno(socks[k])
            with nogil:
                for k in range(n):
                    if filled == self.bio.slots:
                        break
                    r = fp_bio_recv_from(&self.bio, fds[k], filled)
                    for j in range(filled, filled + r):  # r <= 0 (nothing, or an error): no slot
                        out[j] = <int>k
                    if r > 0:
                        filled += r
        finally:
            _bio_free_mem(fds)
        self.bio.count = filled
        return filled

    def send(self, sock, count: int, start: int = 0) -> int:
        """Send slots [start, start+count) in one sendmmsg, without blocking.

        Each slot goes with its length, to its address (if it has one; none for
        connected sockets) and, if its ttl >= 0, with that TTL / hop limit on
        the wire. Returns how many were sent; a full send buffer after some
        packets gives the partial count (0 if none). Other errors raise OSError;
        retry from start + sent.
        """
        cdef int fd = _bio_fileno(sock)
        cdef int n, first, number
        count = PyNumber_Index(count)
        start = PyNumber_Index(start)
        if count < 0 or start < 0 or start + count > self.bio.slots:
            raise IndexError(f"slot range [{start}, {start + count}) outside 0-{self.bio.slots}")
        first = start
        number = count
        with nogil:
            n = self._bio_send(fd, first, number)
        if n < 0:
            raise _bio_oserror(-n)
        return n

    def data(self, i: int) -> memoryview:
        """Writable view of slot i's packet bytes [0:length]."""
        cdef int k = self._bio_slot(i)
        return memoryview(_BioSlotView.wrap(self, k, self.bio.lengths[k]))

    def buffer(self, i: int) -> memoryview:
        """Writable view of all of slot i (slot_size bytes), to build a packet in place."""
        cdef int k = self._bio_slot(i)
        return memoryview(_BioSlotView.wrap(self, k, self.bio.slot_size))

    def length(self, i: int) -> int:
        """Bytes in slot i."""
        return self.bio.lengths[self._bio_slot(i)]

    def set_length(self, i: int, n: int) -> None:
        """Set slot i's length; ValueError unless 0 <= n <= slot_size."""
        cdef int k = self._bio_slot(i)
        n = PyNumber_Index(n)
        if not 0 <= n <= self.bio.slot_size:
            raise ValueError(f"length must be 0-{self.bio.slot_size}: {n}")
        self.bio.lengths[k] = n

    def truncated(self, i: int) -> bool:
        """True if the datagram last received into slot i was longer than slot_size."""
        return (self.bio.flags[self._bio_slot(i)] & FP_BIO_TRUNCATED) != 0

    def address(self, i: int) -> tuple | None:
        """Slot i's peer address as the socket module gives it, or None.

        (host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6.
        """
        cdef int k = self._bio_slot(i)
        cdef uint8_t ip[16]
        cdef uint16_t port
        cdef uint32_t flowinfo, scope_id
        cdef int version = fp_bio_get_addr(&self.bio, k, ip, &port, &flowinfo, &scope_id)
        if version == 4:
            return (_bio_socket.inet_ntop(_bio_socket.AF_INET, ip[:4]), port)
        if version == 6:
            return (_bio_socket.inet_ntop(_bio_socket.AF_INET6, ip[:16]), port, flowinfo, scope_id)
        return None

    def set_address(self, i: int, address: tuple | None) -> None:
        """Set slot i's destination address (socket-module form), or None for none."""
        cdef int k = self._bio_slot(i)
        self._bio_store_address(k, None if address is None else _bio_parse_address(address))

    cdef int _bio_store_address(self, int k, tuple parsed) except -1:
        """Store a _bio_parse_address result in slot k (None clears the address)."""
        cdef const uint8_t[::1] packed
        if parsed is None:
            fp_bio_clear_addr(&self.bio, k)
            return 0
        version, raw, port, flowinfo, scope_id = parsed
        packed = raw
        if version == 4:
            fp_bio_set_addr4(&self.bio, k, &packed[0], port)
        else:
            fp_bio_set_addr6(&self.bio, k, &packed[0], port, flowinfo, scope_id)
        return 0

    def ttl(self, i: int) -> int:
        """Slot i's TTL / hop limit: received with the packet, or set to send; -1 = none."""
        return self.bio.ttls[self._bio_slot(i)]

    def set_ttl(self, i: int, ttl: int) -> None:
        """Set the TTL / hop limit slot i is sent with (0-255), or -1 for the socket's own.

        Linux refuses an IPv4 TTL of 0 when sending (OSError EINVAL); hop limit 0 is allowed.
        """
        cdef int k = self._bio_slot(i)
        ttl = PyNumber_Index(ttl)
        if not -1 <= ttl <= 255:
            raise ValueError(f"ttl must be 0-255, or -1 for none: {ttl}")
        self.bio.ttls[k] = ttl

    def set(self, i: int, data, address: tuple | None = None, ttl: int = -1) -> None:
        """Copy ``data`` into slot i and set its address and TTL (one call to fill a slot).

        Checks everything first, so a ValueError leaves the slot as it was.
        """
        cdef int k = self._bio_slot(i)
        cdef const uint8_t[::1] src = data
        cdef Py_ssize_t n = src.shape[0]
        ttl = PyNumber_Index(ttl)
        if n > <Py_ssize_t>self.bio.slot_size:
            raise ValueError(f"data of {n} bytes does not fit a slot of {self.bio.slot_size}")
        if not -1 <= ttl <= 255:
            raise ValueError(f"ttl must be 0-255, or -1 for none: {ttl}")
        parsed = None if address is None else _bio_parse_address(address)
        self._bio_store_address(k, parsed)
        if n > 0:
            memcpy(self.bio.base + <size_t>k * self.bio.stride, &src[0], n)
        self.bio.lengths[k] = n
        self.bio.ttls[k] = ttl


@cython.final
cdef class _BioSlotView:
    """Buffer exporter for part of one PacketBatch slot; keeps the batch (its memory) alive."""

    cdef PacketBatch batch
    cdef uint8_t *ptr
    cdef Py_ssize_t size

    @staticmethod
    cdef _BioSlotView wrap(PacketBatch batch, int k, Py_ssize_t size):
        cdef _BioSlotView v = _BioSlotView.__new__(_BioSlotView)
        v.batch = batch
        v.ptr = batch.bio.base + <size_t>k * batch.bio.stride
        v.size = size
        return v

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self.ptr, self.size, 0, flags)

    def __releasebuffer__(self, Py_buffer *view):
        pass
