"""Type stubs for the compiled core, fastproxy._core (the twin, fastproxy._purepy, has the same API)."""

from __future__ import annotations

from _typeshed import ReadableBuffer, WriteableBuffer

# ---- checksum ----
# ---- end checksum ----

# ---- packet ----
# ---- end packet ----

# ---- flowtable ----
FLOW_KEY_SIZE: int
"""Size of one record of FlowTable.lookup_batch keys (40; see pack_flow_key)."""
FLOW_TABLE_MAX_CAPACITY: int
"""Largest capacity a FlowTable accepts (2**30)."""
FLOW_TABLE_MAX_IDLE_TIMEOUT: float
"""Largest idle timeout in seconds (about 12.4 days)."""

def pack_flow_key(conn_id: int, client_src: ReadableBuffer, dst: ReadableBuffer, echo_id: int) -> bytes:
    """Pack one key as a FLOW_KEY_SIZE-byte record for FlowTable.lookup_batch.

    uint32 conn_id (native) at 0, uint16 echo_id (native) at 4, uint8 family (4|6) at 6,
    pad at 7, client_src at 8 and dst at 24 (16 bytes each; IPv4 in the first 4, rest zero).
    """

class FlowTable:
    """Source-NAT flow table for ICMP echo: fixed capacity, lock-free readers.

    Maps (connection id, client source, destination, client echo id) to an echo id
    unique per destination, and back. Mutating methods from one thread at a time;
    lookup, reverse without now, and lookup_batch may run concurrently in other threads.
    """

    def __init__(self, capacity: int, *, max_per_connection: int = 0, idle_timeout: float = 60.0) -> None: ...
    @property
    def capacity(self) -> int:
        """Maximum number of live flows."""
    @property
    def idle_timeout(self) -> float:
        """Seconds a flow may stay unused before expire removes it."""
    @property
    def memory_bytes(self) -> int:
        """Bytes allocated by the table (slab, both indexes, connection counts, header)."""
    def __len__(self) -> int: ...
    def count_for_connection(self, conn_id: int) -> int:
        """Number of live flows of connection conn_id."""
    def acquire(self, conn_id: int, client_src: ReadableBuffer, dst: ReadableBuffer, echo_id: int, now: float) -> int:
        """Assigned echo id of the flow, creating it if new; refreshes its last-used time.

        Raises FlowTableFull("global" | "connection", limit), EchoIdExhausted, ValueError.
        """
    def lookup(self, conn_id: int, client_src: ReadableBuffer, dst: ReadableBuffer, echo_id: int) -> int | None:
        """Assigned echo id of the flow, or None; does not refresh it."""
    def reverse(self, dst: ReadableBuffer, assigned_id: int, now: float | None = None) -> tuple[int, bytes, int] | None:
        """(conn_id, client_src, client echo id) for assigned_id towards dst, or None; now refreshes it."""
    def remove(self, conn_id: int, client_src: ReadableBuffer, dst: ReadableBuffer, echo_id: int) -> bool:
        """Remove one flow; True if it existed."""
    def remove_connection(self, conn_id: int) -> int:
        """Remove every flow of connection conn_id; returns how many."""
    def expire(self, now: float, max_scan: int = 0) -> list[tuple[int, bytes, bytes, int, int]]:
        """Remove flows idle longer than idle_timeout; returns (conn_id, client_src, dst, echo_id, assigned_id).

        max_scan > 0 bounds the entries examined per call and resumes where the last call stopped.
        """
    def lookup_batch(self, keys: ReadableBuffer, out: WriteableBuffer) -> int:
        """Look up packed FLOW_KEY_SIZE-byte records without the GIL; out gets one native
        uint32 per key (assigned id or 0xFFFFFFFF). Returns the number of hits."""
# ---- end flowtable ----

# ---- batchio ----
# ---- end batchio ----

# ---- datagram ----
# ---- end datagram ----
