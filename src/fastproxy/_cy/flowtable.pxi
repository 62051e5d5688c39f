# fastproxy._core: flowtable (included by _core.pyx; see the module docstring there).
#
# The source-NAT flow table for ICMP echo. The data structure, its memory layout,
# the time representation and the lock-free read protocol are described at the
# top of fp_flowtable.h; this file is the Python API and the C-level API.
#
# C-level API for the NAT engine (same compilation unit). All are cdef methods of
# FlowTable, `noexcept nogil`, on raw pointers; `family` is 4 or 6 and addresses
# are 4 or 16 bytes accordingly. WRITER methods must be called by one thread at a
# time (the thread that holds the GIL in the Python API); READER methods are
# lock-free and may run concurrently with the writer in any number of threads.
#
#   int32_t _ft_acquire_c(uint32_t conn, const uint8_t* src, const uint8_t* dst, int family,
#                         uint16_t echo_id, double now, int* err)                     WRITER
#       assigned id (0..65535), or -1 with *err = FP_FT_ERR_FULL_GLOBAL,
#       FP_FT_ERR_FULL_CONNECTION, FP_FT_ERR_EXHAUSTED or FP_FT_ERR_BAD_ARGUMENT
#       (family not 4/6). `now` is float seconds (time.monotonic()).
#   int32_t _ft_lookup_c(uint32_t conn, const uint8_t* src, const uint8_t* dst, int family,
#                        uint16_t echo_id)                                            READER
#       assigned id, or -1 on a miss. No refresh.
#   bint _ft_reverse_c(const uint8_t* dst, int family, uint16_t assigned, fp_ft_flow* out)  READER
#       fills out (entry, conn, src[16], echo_id, family) and returns True on a hit.
#   void _ft_touch_c(uint32_t entry, double now)                                      WRITER
#       refreshes the last-used time of out.entry from a _ft_reverse_c hit made by
#       this same writer thread (reply seen: the flow stays alive).
#   bint _ft_remove_c(uint32_t conn, const uint8_t* src, const uint8_t* dst, int family,
#                     uint16_t echo_id)                                               WRITER
#   size_t _ft_lookup_batch_c(const uint8_t* keys, size_t n, uint8_t* out)            READER
#       n packed FLOW_KEY_SIZE-byte records -> n native uint32 at out (any alignment),
#       assigned id or 0xFFFFFFFF; returns the number of hits.

import ipaddress as _ft_ipaddress
import math as _ft_math
import os as _ft_os

from libc.math cimport floor
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer

cdef extern from "fp_flowtable.h" nogil:
    ctypedef struct fp_ft_entry:
        uint32_t ctrl
        uint32_t conn
        uint32_t src[4]
        uint32_t dst[4]
        uint32_t ids
    ctypedef struct fp_ft_table:
        fp_ft_entry* entries
        uint32_t capacity
        uint32_t live
        uint32_t watermark
        uint32_t sweep_cursor
        uint32_t max_per_conn
        uint32_t max_conns
    ctypedef struct fp_ft_flow:
        uint32_t entry
        uint32_t conn
        uint8_t src[16]
        uint16_t echo_id
        uint8_t family
    ctypedef struct fp_ft_key:
        pass
    int FP_FT_OK
    int FP_FT_ERR_FULL_GLOBAL
    int FP_FT_ERR_FULL_CONNECTION
    int FP_FT_ERR_EXHAUSTED
    int FP_FT_ERR_BAD_ARGUMENT
    uint32_t FP_FT_V6
    uint32_t FP_FT_NONE
    uint32_t FP_FT_MAX_CAPACITY
    int64_t FP_FT_MAX_TIMEOUT_MS
    int FP_FT_KEY_SIZE
    fp_ft_table* fp_ft_create(uint32_t capacity, uint32_t max_per_conn, int64_t timeout_ms, const uint8_t* seed)
    void fp_ft_destroy(fp_ft_table* t)
    size_t fp_ft_memory_bytes(const fp_ft_table* t)
    int fp_ft_make_key(fp_ft_key* k, uint32_t conn, const uint8_t* src, const uint8_t* dst, int family, uint16_t echo_id)
    int32_t fp_ft_acquire(fp_ft_table* t, const fp_ft_key* k, double now, int* err)
    int32_t fp_ft_lookup(const fp_ft_table* t, const fp_ft_key* k)
    uint32_t fp_ft_find_rev(const fp_ft_table* t, const uint32_t* dst, unsigned family, uint16_t assigned, fp_ft_flow* out)
    int fp_ft_remove(fp_ft_table* t, const fp_ft_key* k)
    void fp_ft_remove_entry(fp_ft_table* t, uint32_t e)
    void fp_ft_touch(fp_ft_table* t, uint32_t e, double now)
    int64_t fp_ft_now(fp_ft_table* t, double now)
    int fp_ft_expired(const fp_ft_table* t, uint32_t e, int64_t ms)
    uint32_t fp_ft_count_for_connection(const fp_ft_table* t, uint32_t conn)
    uint32_t fp_ft_remove_connection(fp_ft_table* t, uint32_t conn)
    size_t fp_ft_lookup_batch(const fp_ft_table* t, const uint8_t* keys, size_t n, uint8_t* out)

FLOW_KEY_SIZE = 40
"""Size of one record of :meth:`FlowTable.lookup_batch` keys (see :func:`pack_flow_key`)."""

FLOW_TABLE_MAX_CAPACITY = FP_FT_MAX_CAPACITY
"""Largest capacity a FlowTable accepts (2**30)."""

FLOW_TABLE_MAX_IDLE_TIMEOUT = (FP_FT_MAX_TIMEOUT_MS - 1) / 1000.0
"""Largest idle timeout in seconds (about 12.4 days; see the time notes in fp_flowtable.h)."""


cdef int _ft_family(const uint8_t[::1] src, const uint8_t[::1] dst) except -1:
    """Address family (4 or 6) of a key's two addresses; ValueError when they are not both 4 or both 16 bytes."""
    if src.shape[0] != dst.shape[0] or src.shape[0] not in (4, 16):
        raise ValueError(
            f"client_src and dst must both be 4 (IPv4) or both 16 (IPv6) bytes, got {src.shape[0]} and {dst.shape[0]}"
        )
    return 4 if src.shape[0] == 4 else 6


cdef int _ft_check_ids(object conn_id, object echo_id) except -1:
    if not 0 <= conn_id <= 0xFFFFFFFF:
        raise ValueError(f"conn_id must be in 0..4294967295, got {conn_id}")
    if not 0 <= echo_id <= 0xFFFF:
        raise ValueError(f"echo_id must be in 0..65535, got {echo_id}")
    return 0


cdef int64_t _ft_timeout_ms(object idle_timeout) except -1:
    """idle_timeout (seconds) as whole milliseconds; ValueError outside (0, FLOW_TABLE_MAX_IDLE_TIMEOUT]."""
    cdef double t = idle_timeout
    if not (0.0 < t <= FLOW_TABLE_MAX_IDLE_TIMEOUT):
        raise ValueError(f"idle_timeout must be > 0 and <= {FLOW_TABLE_MAX_IDLE_TIMEOUT} seconds, got {idle_timeout!r}")
    return <int64_t>floor(t * 1000.0 + 0.5)


cdef double _ft_check_now(object now) except? -1.0:
    cdef double t = now
    if not _ft_math.isfinite(t):
        raise ValueError(f"now must be a finite number of seconds, got {now!r}")
    return t


def pack_flow_key(conn_id: int, client_src: bytes, dst: bytes, echo_id: int) -> bytes:
    """Pack one key as a FLOW_KEY_SIZE-byte record for :meth:`FlowTable.lookup_batch`.

    Layout: uint32 conn_id (native endian) at 0, uint16 echo_id (native) at 4,
    uint8 family (4 or 6) at 6, a zero pad byte at 7, client_src at 8 and dst at 24,
    16 bytes each (IPv4: the first 4 bytes, the rest zero).
    """
    cdef int family = _ft_family(client_src, dst)
    _ft_check_ids(conn_id, echo_id)
    cdef bytearray rec = bytearray(FLOW_KEY_SIZE)
    cdef uint8_t* p = rec
    cdef uint32_t conn = conn_id
    cdef uint16_t echo = echo_id
    cdef const uint8_t[::1] s = client_src
    cdef const uint8_t[::1] d = dst
    memcpy(p, &conn, 4)
    memcpy(p + 4, &echo, 2)
    p[6] = family
    memcpy(p + 8, &s[0], s.shape[0])
    memcpy(p + 24, &d[0], d.shape[0])
    return bytes(rec)


cdef class FlowTable:
    """Source-NAT flow table for ICMP echo: fixed capacity, lock-free readers.

    Maps (connection id, client source, destination, client echo id) to an echo
    id that is unique per destination, and back. ``capacity`` is the maximum
    number of live flows (a power of two); ``max_per_connection`` bounds the
    flows of one connection (0: only the capacity); flows idle for longer than
    ``idle_timeout`` seconds are removed by :meth:`expire`. Times are float
    seconds from ``time.monotonic()``. Mutating methods must be called from one
    thread at a time; ``lookup``, ``reverse`` without ``now`` and ``lookup_batch``
    may run concurrently with them in other threads. On free-threaded Python the
    mutating methods (and ``reverse`` / ``count_for_connection``, which read
    writer-only state) take the object's critical section, so concurrent writers
    serialize instead of corrupting the table; the lock-free readers take none.
    """

    cdef fp_ft_table* _t
    cdef double _idle_timeout

    def __cinit__(self, capacity: int, *, max_per_connection: int = 0, idle_timeout: float = 60.0) -> None:
        if not isinstance(capacity, int) or capacity < 1 or capacity & (capacity - 1) or capacity > FP_FT_MAX_CAPACITY:
            raise ValueError(f"capacity must be a power of two between 1 and {FP_FT_MAX_CAPACITY}, got {capacity!r}")
        if not 0 <= max_per_connection <= 0xFFFFFFFF:
            raise ValueError(f"max_per_connection must be >= 0 (0: no per-connection bound), got {max_per_connection!r}")
        timeout_ms = _ft_timeout_ms(idle_timeout)
        seed = _ft_os.urandom(32)
        self._t = fp_ft_create(capacity, max_per_connection, timeout_ms, seed)
        if self._t == NULL:
            raise MemoryError(f"cannot allocate a flow table of capacity {capacity}")
        self._idle_timeout = idle_timeout

    def __dealloc__(self) -> None:
        fp_ft_destroy(self._t)
        self._t = NULL

    # ---- C-level API (see the top of this file) ----

    cdef int32_t _ft_acquire_c(self, uint32_t conn, const uint8_t* src, const uint8_t* dst, int family,
                               uint16_t echo_id, double now, int* err) noexcept nogil:
        cdef fp_ft_key k
        if not fp_ft_make_key(&k, conn, src, dst, family, echo_id):
            err[0] = FP_FT_ERR_BAD_ARGUMENT
            return -1
        return fp_ft_acquire(self._t, &k, now, err)

    cdef int32_t _ft_lookup_c(self, uint32_t conn, const uint8_t* src, const uint8_t* dst, int family,
                              uint16_t echo_id) noexcept nogil:
        cdef fp_ft_key k
        if not fp_ft_make_key(&k, conn, src, dst, family, echo_id):
            return -1
        return fp_ft_lookup(self._t, &k)

    cdef bint _ft_reverse_c(self, const uint8_t* dst, int family, uint16_t assigned, fp_ft_flow* out) noexcept nogil:
        cdef uint32_t d[4]
        if family != 4 and family != 6:
            return False
        memset(d, 0, 16)
        memcpy(d, dst, 4 if family == 4 else 16)
        return fp_ft_find_rev(self._t, d, family, assigned, out) != FP_FT_NONE

    cdef void _ft_touch_c(self, uint32_t entry, double now) noexcept nogil:
        fp_ft_touch(self._t, entry, now)

    cdef bint _ft_remove_c(self, uint32_t conn, const uint8_t* src, const uint8_t* dst, int family,
                           uint16_t echo_id) noexcept nogil:
        cdef fp_ft_key k
        if not fp_ft_make_key(&k, conn, src, dst, family, echo_id):
            return False
        return fp_ft_remove(self._t, &k) != 0

    cdef size_t _ft_lookup_batch_c(self, const uint8_t* keys, size_t n, uint8_t* out) noexcept nogil:
        return fp_ft_lookup_batch(self._t, keys, n, out)

    # ---- Python API ----

    @property
    def capacity(self) -> int:
        """Maximum number of live flows."""
        return self._t.capacity

    @property
    def idle_timeout(self) -> float:
        """Seconds a flow may stay unused before :meth:`expire` removes it."""
        return self._idle_timeout

    @property
    def memory_bytes(self) -> int:
        """Bytes allocated by the table (slab, both indexes, connection counts, header)."""
        return fp_ft_memory_bytes(self._t)

    def __len__(self) -> int:
        return self._t.live

    @cython.critical_section
    def count_for_connection(self, conn_id: int) -> int:
        """Number of live flows of connection ``conn_id``."""
        _ft_check_ids(conn_id, 0)
        return fp_ft_count_for_connection(self._t, conn_id)

    @cython.critical_section
    def acquire(self, conn_id: int, client_src: bytes, dst: bytes, echo_id: int, now: float) -> int:
        """Assigned echo id of the flow, creating it if new; refreshes its last-used time.

        A new flow keeps the client's own echo id when that id is free towards
        ``dst``, otherwise gets a free one. Raises FlowTableFull("global", capacity)
        when the table is full (or tracks as many connections as it can, 3/8 of
        the capacity and at least 48), FlowTableFull("connection", limit) at the
        per-connection bound, EchoIdExhausted when all 65536 ids towards ``dst``
        are taken, ValueError for bad arguments. Nothing changes on error.
        """
        cdef int family = _ft_family(client_src, dst)
        _ft_check_ids(conn_id, echo_id)
        cdef double t = _ft_check_now(now)
        cdef const uint8_t[::1] s = client_src
        cdef const uint8_t[::1] d = dst
        cdef int err = 0
        cdef int32_t r = self._ft_acquire_c(conn_id, &s[0], &d[0], family, echo_id, t, &err)
        if r >= 0:
            return r
        if err == FP_FT_ERR_FULL_CONNECTION:
            raise FlowTableFull("connection", self._t.max_per_conn)
        if err == FP_FT_ERR_EXHAUSTED:
            raise EchoIdExhausted(str(_ft_ipaddress.ip_address(bytes(dst))))
        raise FlowTableFull("global", self._t.capacity)

    def lookup(self, conn_id: int, client_src: bytes, dst: bytes, echo_id: int) -> int | None:
        """Assigned echo id of the flow, or None; does not refresh it."""
        cdef int family = _ft_family(client_src, dst)
        _ft_check_ids(conn_id, echo_id)
        cdef const uint8_t[::1] s = client_src
        cdef const uint8_t[::1] d = dst
        cdef int32_t r = self._ft_lookup_c(conn_id, &s[0], &d[0], family, echo_id)
        return None if r < 0 else r

    @cython.critical_section
    def reverse(self, dst: bytes, assigned_id: int, now: float | None = None) -> tuple[int, bytes, int] | None:
        """(conn_id, client_src, client echo id) of the flow holding ``assigned_id`` towards ``dst``, or None.

        With ``now`` the flow's last-used time is refreshed (a reply keeps the flow alive).
        """
        cdef const uint8_t[::1] d = dst
        if d.shape[0] not in (4, 16):
            raise ValueError(f"dst must be 4 (IPv4) or 16 (IPv6) bytes, got {d.shape[0]}")
        _ft_check_ids(0, assigned_id)
        cdef double t = 0.0
        if now is not None:
            t = _ft_check_now(now)
            fp_ft_now(self._t, t)  # the first time seen starts the clock, as in acquire
        cdef int family = 4 if d.shape[0] == 4 else 6
        cdef fp_ft_flow flow
        if not self._ft_reverse_c(&d[0], family, assigned_id, &flow):
            return None
        if now is not None:
            self._ft_touch_c(flow.entry, t)
        return (flow.conn, (<char*>flow.src)[:d.shape[0]], flow.echo_id)

    @cython.critical_section
    def remove(self, conn_id: int, client_src: bytes, dst: bytes, echo_id: int) -> bool:
        """Remove one flow; True if it existed."""
        cdef int family = _ft_family(client_src, dst)
        _ft_check_ids(conn_id, echo_id)
        cdef const uint8_t[::1] s = client_src
        cdef const uint8_t[::1] d = dst
        return self._ft_remove_c(conn_id, &s[0], &d[0], family, echo_id)

    @cython.critical_section
    def remove_connection(self, conn_id: int) -> int:
        """Remove every flow of connection ``conn_id`` (it closed); returns how many.

        Walks the slab only until the connection's flow count is reached.
        """
        _ft_check_ids(conn_id, 0)
        return fp_ft_remove_connection(self._t, conn_id)

    @cython.critical_section
    def expire(self, now: float, max_scan: int = 0) -> list[tuple[int, bytes, bytes, int, int]]:
        """Remove flows idle for longer than ``idle_timeout`` at time ``now``.

        Returns the removed flows as (conn_id, client_src, dst, echo_id, assigned_id).
        ``max_scan`` > 0 examines at most that many slab entries and resumes where
        the previous call stopped (an incremental sweep that bounds the work per
        call); 0 examines every entry once.
        """
        cdef double t = _ft_check_now(now)
        if max_scan < 0:
            raise ValueError(f"max_scan must be >= 0, got {max_scan}")
        cdef int64_t ms = fp_ft_now(self._t, t)
        cdef uint32_t mark = self._t.watermark
        cdef uint64_t todo = mark if max_scan == 0 or max_scan > mark else max_scan
        cdef uint32_t e = self._t.sweep_cursor
        cdef fp_ft_entry* en
        cdef int n
        removed = []
        if mark == 0:
            return removed
        while todo:
            if e >= mark:
                e = 0
            if fp_ft_expired(self._t, e, ms):
                en = &self._t.entries[e]
                n = 16 if en.ctrl & FP_FT_V6 else 4
                removed.append((
                    en.conn,
                    (<char*>en.src)[:n],
                    (<char*>en.dst)[:n],
                    en.ids & 0xFFFF,
                    en.ids >> 16,
                ))
                fp_ft_remove_entry(self._t, e)
            e += 1
            todo -= 1
        self._t.sweep_cursor = e if e < mark else 0
        return removed

    def lookup_batch(self, keys, out) -> int:
        """Look up many packed keys at once, without the GIL; returns the number of hits.

        ``keys``: FLOW_KEY_SIZE-byte records (see :func:`pack_flow_key`); ``out``:
        a writable buffer with room for one native uint32 per key, set to the
        assigned id or 0xFFFFFFFF for a miss. Records with a family other than
        4 or 6 are misses.
        """
        cdef Py_buffer kb
        cdef Py_buffer ob
        cdef size_t n, hits
        PyObject_GetBuffer(keys, &kb, PyBUF_SIMPLE)
        try:
            PyObject_GetBuffer(out, &ob, PyBUF_SIMPLE | PyBUF_WRITABLE)
            try:
                if kb.len % FLOW_KEY_SIZE:
                    raise ValueError(f"keys length {kb.len} is not a multiple of {FLOW_KEY_SIZE}")
                n = kb.len // FLOW_KEY_SIZE
                if <size_t>ob.len < n * 4:
                    raise ValueError(f"out has {ob.len} bytes, needs {n * 4} for {n} keys")
                with nogil:
                    hits = self._ft_lookup_batch_c(<const uint8_t*>kb.buf, n, <uint8_t*>ob.buf)
                return hits
            finally:
                PyBuffer_Release(&ob)
        finally:
            PyBuffer_Release(&kb)
