"""Pure-Python twin of fastproxy._core: flowtable.

Same API, behaviour and exceptions as the compiled FlowTable. It mirrors the
compiled table's slab (entry slots reused first-freed-first, the same expiry
sweep cursor and time arithmetic), so ``expire(now, max_scan)`` removes the
same flows in the same order; only the id picked when the client's own id is
taken differs (both pick a free one). Readers and the writer must not run
concurrently here (no lock-free guarantee without the compiled core).
"""

from __future__ import annotations

import ipaddress
import math
import operator
import os
import random
import struct
import sys
from collections import deque
from typing import TYPE_CHECKING

from fastproxy.errors import EchoIdExhausted, FlowTableFull

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = [
    "FLOW_KEY_SIZE",
    "FLOW_TABLE_MAX_CAPACITY",
    "FLOW_TABLE_MAX_IDLE_TIMEOUT",
    "FlowTable",
    "pack_flow_key",
]

FLOW_KEY_SIZE = 40
"""Size of one record of :meth:`FlowTable.lookup_batch` keys (see :func:`pack_flow_key`)."""

FLOW_TABLE_MAX_CAPACITY = 1 << 30
"""Largest capacity a FlowTable accepts (2**30)."""

FLOW_TABLE_MAX_IDLE_TIMEOUT = ((1 << 30) - 1) / 1000.0
"""Largest idle timeout in seconds (about 12.4 days; see the time notes in fp_flowtable.h)."""

_RECORD = struct.Struct("=IHBx16s16s")
_MISS = 0xFFFFFFFF

# slab entry fields (a list per live entry)
_CONN, _SRC, _DST, _ECHO, _ASSIGNED, _LAST = range(6)


def _family(client_src: bytes, dst: bytes) -> int:
    if len(client_src) != len(dst) or len(client_src) not in (4, 16):
        raise ValueError(
            "client_src and dst must both be 4 (IPv4) or both 16 (IPv6) bytes, "
            f"got {len(client_src)} and {len(dst)}"
        )
    return 4 if len(client_src) == 4 else 6


def _check_ids(conn_id: int, echo_id: int) -> None:
    conn_id = operator.index(conn_id)
    echo_id = operator.index(echo_id)
    if not 0 <= conn_id <= 0xFFFFFFFF:
        raise ValueError(f"conn_id must be in 0..4294967295, got {conn_id}")
    if not 0 <= echo_id <= 0xFFFF:
        raise ValueError(f"echo_id must be in 0..65535, got {echo_id}")


def _check_now(now: float) -> float:
    t = float(now)
    if not math.isfinite(t):
        raise ValueError(f"now must be a finite number of seconds, got {now!r}")
    return t


def pack_flow_key(conn_id: int, client_src: bytes, dst: bytes, echo_id: int) -> bytes:
    """Pack one key as a FLOW_KEY_SIZE-byte record for :meth:`FlowTable.lookup_batch`.

    Layout: uint32 conn_id (native endian) at 0, uint16 echo_id (native) at 4,
    uint8 family (4 or 6) at 6, a zero pad byte at 7, client_src at 8 and dst at 24,
    16 bytes each (IPv4: the first 4 bytes, the rest zero).
    """
    client_src, dst = bytes(client_src), bytes(dst)
    family = _family(client_src, dst)
    _check_ids(conn_id, echo_id)
    return _RECORD.pack(conn_id, echo_id, family, client_src, dst)


class FlowTable:
    """Source-NAT flow table for ICMP echo: fixed capacity (pure-Python twin).

    Maps (connection id, client source, destination, client echo id) to an echo
    id that is unique per destination, and back. ``capacity`` is the maximum
    number of live flows (a power of two); ``max_per_connection`` bounds the
    flows of one connection (0: only the capacity); flows idle for longer than
    ``idle_timeout`` seconds are removed by :meth:`expire`. Times are float
    seconds from ``time.monotonic()``.
    """

    def __init__(self, capacity: int, *, max_per_connection: int = 0, idle_timeout: float = 60.0) -> None:
        if (
            not isinstance(capacity, int)
            or capacity < 1
            or capacity & (capacity - 1)
            or capacity > FLOW_TABLE_MAX_CAPACITY
        ):
            raise ValueError(
                f"capacity must be a power of two between 1 and {FLOW_TABLE_MAX_CAPACITY}, got {capacity!r}"
            )
        if not 0 <= max_per_connection <= 0xFFFFFFFF:
            raise ValueError(
                f"max_per_connection must be >= 0 (0: no per-connection bound), got {max_per_connection!r}"
            )
        timeout = float(idle_timeout)
        if not 0.0 < timeout <= FLOW_TABLE_MAX_IDLE_TIMEOUT:
            raise ValueError(
                f"idle_timeout must be > 0 and <= {FLOW_TABLE_MAX_IDLE_TIMEOUT} seconds, got {idle_timeout!r}"
            )
        self._capacity = capacity
        self._max_per_conn = int(max_per_connection)
        self._idle_timeout = idle_timeout
        self._timeout_ms = math.floor(timeout * 1000.0 + 0.5)
        # the compiled table tracks this many distinct connections (3/4 of its cells)
        self._max_conns = max(capacity // 2, 64) // 4 * 3
        self._entries: list[list | None] = []  # the slab up to its high-water mark
        self._free: deque[int] = deque()
        self._fwd: dict[tuple[int, bytes, bytes, int], int] = {}
        self._rev: dict[tuple[bytes, int], int] = {}
        self._conns: dict[int, int] = {}
        self._cursor = 0
        self._epoch: float | None = None
        self._removals = 0
        self._memo: tuple[bytes, int] | None = None  # (dst, removals) found with all ids taken
        self._rng = random.Random(os.urandom(16))

    @property
    def capacity(self) -> int:
        """Maximum number of live flows."""
        return self._capacity

    @property
    def idle_timeout(self) -> float:
        """Seconds a flow may stay unused before :meth:`expire` removes it."""
        return self._idle_timeout

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the table's own containers (shallow estimate in the twin)."""
        live = [e for e in self._entries if e is not None]
        return (
            sys.getsizeof(self._entries)
            + sum(sys.getsizeof(e) for e in live)
            + sys.getsizeof(self._fwd)
            + sys.getsizeof(self._rev)
            + sys.getsizeof(self._conns)
            + sys.getsizeof(self._free)
        )

    def __len__(self) -> int:
        return len(self._fwd)

    def count_for_connection(self, conn_id: int) -> int:
        """Number of live flows of connection ``conn_id``."""
        _check_ids(conn_id, 0)
        return self._conns.get(conn_id, 0)

    def _now_ms(self, now: float) -> int:
        if self._epoch is None:
            self._epoch = now
        d = math.floor((now - self._epoch) * 1000.0)
        return min(d, 9 * 10**15) if d > 0 else 0

    def acquire(self, conn_id: int, client_src: bytes, dst: bytes, echo_id: int, now: float) -> int:
        """Assigned echo id of the flow, creating it if new; refreshes its last-used time.

        A new flow keeps the client's own echo id when that id is free towards
        ``dst``, otherwise gets a free one. Raises FlowTableFull("global", capacity)
        when the table is full (or tracks as many connections as it can, 3/8 of
        the capacity and at least 48), FlowTableFull("connection", limit) at the
        per-connection bound, EchoIdExhausted when all 65536 ids towards ``dst``
        are taken, ValueError for bad arguments. Nothing changes on error.
        """
        client_src, dst = bytes(client_src), bytes(dst)
        _family(client_src, dst)
        _check_ids(conn_id, echo_id)
        ms = self._now_ms(_check_now(now))
        key = (conn_id, client_src, dst, echo_id)
        e = self._fwd.get(key)
        if e is not None:
            entry = self._entries[e]
            entry[_LAST] = ms
            return entry[_ASSIGNED]
        if len(self._fwd) >= self._capacity:
            raise FlowTableFull("global", self._capacity)
        count = self._conns.get(conn_id, 0)
        if count == 0 and len(self._conns) >= self._max_conns:
            raise FlowTableFull("global", self._capacity)
        if self._max_per_conn and count >= self._max_per_conn:
            raise FlowTableFull("connection", self._max_per_conn)
        assigned = echo_id
        if (dst, assigned) in self._rev:
            if self._memo == (dst, self._removals):
                raise EchoIdExhausted(str(ipaddress.ip_address(dst)))
            start = self._rng.getrandbits(16)
            for i in range(65536):
                assigned = (start + i) & 0xFFFF
                if (dst, assigned) not in self._rev:
                    break
            else:
                self._memo = (dst, self._removals)
                raise EchoIdExhausted(str(ipaddress.ip_address(dst)))
        entry = [conn_id, client_src, dst, echo_id, assigned, ms]
        if self._free:
            e = self._free.popleft()
            self._entries[e] = entry
        else:
            e = len(self._entries)
            self._entries.append(entry)
        self._fwd[key] = e
        self._rev[(dst, assigned)] = e
        self._conns[conn_id] = count + 1
        return assigned

    def lookup(self, conn_id: int, client_src: bytes, dst: bytes, echo_id: int) -> int | None:
        """Assigned echo id of the flow, or None; does not refresh it."""
        client_src, dst = bytes(client_src), bytes(dst)
        _family(client_src, dst)
        _check_ids(conn_id, echo_id)
        e = self._fwd.get((conn_id, client_src, dst, echo_id))
        return None if e is None else self._entries[e][_ASSIGNED]

    def reverse(self, dst: bytes, assigned_id: int, now: float | None = None) -> tuple[int, bytes, int] | None:
        """(conn_id, client_src, client echo id) of the flow holding ``assigned_id`` towards ``dst``, or None.

        With ``now`` the flow's last-used time is refreshed (a reply keeps the flow alive).
        """
        dst = bytes(dst)
        if len(dst) not in (4, 16):
            raise ValueError(f"dst must be 4 (IPv4) or 16 (IPv6) bytes, got {len(dst)}")
        _check_ids(0, assigned_id)
        ms = None if now is None else self._now_ms(_check_now(now))
        e = self._rev.get((dst, assigned_id))
        if e is None:
            return None
        entry = self._entries[e]
        if ms is not None:
            entry[_LAST] = ms
        return (entry[_CONN], entry[_SRC], entry[_ECHO])

    def _remove_entry(self, e: int) -> None:
        entry = self._entries[e]
        self._entries[e] = None
        del self._fwd[(entry[_CONN], entry[_SRC], entry[_DST], entry[_ECHO])]
        del self._rev[(entry[_DST], entry[_ASSIGNED])]
        left = self._conns[entry[_CONN]] - 1
        if left:
            self._conns[entry[_CONN]] = left
        else:
            del self._conns[entry[_CONN]]
        self._free.append(e)
        self._removals += 1

    def remove(self, conn_id: int, client_src: bytes, dst: bytes, echo_id: int) -> bool:
        """Remove one flow; True if it existed."""
        client_src, dst = bytes(client_src), bytes(dst)
        _family(client_src, dst)
        _check_ids(conn_id, echo_id)
        e = self._fwd.get((conn_id, client_src, dst, echo_id))
        if e is None:
            return False
        self._remove_entry(e)
        return True

    def remove_connection(self, conn_id: int) -> int:
        """Remove every flow of connection ``conn_id`` (it closed); returns how many.

        Walks the slab only until the connection's flow count is reached.
        """
        _check_ids(conn_id, 0)
        total = left = self._conns.get(conn_id, 0)
        e = 0
        while left:
            entry = self._entries[e]
            if entry is not None and entry[_CONN] == conn_id:
                self._remove_entry(e)
                left -= 1
            e += 1
        return total

    def expire(self, now: float, max_scan: int = 0) -> list[tuple[int, bytes, bytes, int, int]]:
        """Remove flows idle for longer than ``idle_timeout`` at time ``now``.

        Returns the removed flows as (conn_id, client_src, dst, echo_id, assigned_id).
        ``max_scan`` > 0 examines at most that many slab entries and resumes where
        the previous call stopped (an incremental sweep that bounds the work per
        call); 0 examines every entry once.
        """
        t = _check_now(now)
        if max_scan < 0:
            raise ValueError(f"max_scan must be >= 0, got {max_scan}")
        ms = self._now_ms(t)
        mark = len(self._entries)
        removed: list[tuple[int, bytes, bytes, int, int]] = []
        if mark == 0:
            return removed
        todo = mark if max_scan == 0 or max_scan > mark else max_scan
        e = self._cursor
        for _ in range(todo):
            if e >= mark:
                e = 0
            entry = self._entries[e]
            if entry is not None and ms - entry[_LAST] > self._timeout_ms:
                removed.append((entry[_CONN], entry[_SRC], entry[_DST], entry[_ECHO], entry[_ASSIGNED]))
                self._remove_entry(e)
            e += 1
        self._cursor = e if e < mark else 0
        return removed

    def lookup_batch(self, keys: ReadableBuffer, out: WriteableBuffer) -> int:
        """Look up many packed keys at once; returns the number of hits.

        ``keys``: FLOW_KEY_SIZE-byte records (see :func:`pack_flow_key`); ``out``:
        a writable buffer with room for one native uint32 per key, set to the
        assigned id or 0xFFFFFFFF for a miss. Records with a family other than
        4 or 6 are misses.
        """
        kv = memoryview(keys).cast("B")
        ov = memoryview(out).cast("B")
        if ov.readonly:
            raise BufferError("out must be a writable buffer")
        if len(kv) % FLOW_KEY_SIZE:
            raise ValueError(f"keys length {len(kv)} is not a multiple of {FLOW_KEY_SIZE}")
        n = len(kv) // FLOW_KEY_SIZE
        if len(ov) < n * 4:
            raise ValueError(f"out has {len(ov)} bytes, needs {n * 4} for {n} keys")
        hits = 0
        for i in range(n):
            conn, echo, family, src, dst = _RECORD.unpack_from(kv, i * FLOW_KEY_SIZE)
            e = None
            if family in (4, 6):
                width = 4 if family == 4 else 16
                e = self._fwd.get((conn, src[:width], dst[:width], echo))
            if e is None:
                struct.pack_into("=I", ov, i * 4, _MISS)
            else:
                struct.pack_into("=I", ov, i * 4, self._entries[e][_ASSIGNED])
                hits += 1
        return hits
