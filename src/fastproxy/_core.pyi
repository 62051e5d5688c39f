"""Type stubs for the compiled core, fastproxy._core (the twin, fastproxy._purepy, has the same API)."""

from __future__ import annotations

from _typeshed import ReadableBuffer, WriteableBuffer

# ---- checksum ----
# ---- end checksum ----

# ---- packet ----
# ---- end packet ----

# ---- flowtable ----
# ---- end flowtable ----

# ---- batchio ----
import socket as _socket

class PacketBatch:
    """N preallocated packet slots for batched datagram socket I/O (recvmmsg / sendmmsg).

    Each slot: up to ``slot_size`` bytes, a length, a peer address and a TTL / hop
    limit (-1 = none). One allocation, reused forever. Not for concurrent use from
    two threads. Addresses are (host, port) for IPv4 and (host, port, flowinfo,
    scope_id) for IPv6, hosts numeric.
    """

    def __init__(self, slots: int, slot_size: int = 2048) -> None: ...
    def __len__(self) -> int: ...
    @property
    def slot_size(self) -> int:
        """Usable bytes per slot."""
    @property
    def count(self) -> int:
        """How many slots the last ``recv`` filled."""
    def recv(self, sock: _socket.socket | int) -> int:
        """Receive up to len(self) datagrams without blocking into slots 0..; how many (0 if none waits)."""
    def send(self, sock: _socket.socket | int, count: int, start: int = 0) -> int:
        """Send slots [start, start+count) with their addresses and TTLs; how many went (partial on a full buffer)."""
    def data(self, i: int) -> memoryview:
        """Writable view of slot i's packet bytes [0:length]."""
    def buffer(self, i: int) -> memoryview:
        """Writable view of the whole of slot i (slot_size bytes)."""
    def length(self, i: int) -> int:
        """Bytes in slot i."""
    def set_length(self, i: int, n: int) -> None:
        """Set slot i's length (ValueError unless 0 <= n <= slot_size)."""
    def truncated(self, i: int) -> bool:
        """True if the datagram last received into slot i did not fit."""
    def address(self, i: int) -> tuple[str, int] | tuple[str, int, int, int] | None:
        """Slot i's peer address, or None."""
    def set_address(self, i: int, address: tuple[str, int] | tuple[str, int, int, int] | None) -> None:
        """Set slot i's destination address, or None for none (connected sockets)."""
    def ttl(self, i: int) -> int:
        """Slot i's TTL / hop limit, -1 = none."""
    def set_ttl(self, i: int, ttl: int) -> None:
        """Set the TTL / hop limit slot i is sent with (0-255; Linux refuses IPv4 TTL 0), or -1 for the socket's own."""
    def set(
        self,
        i: int,
        data: ReadableBuffer,
        address: tuple[str, int] | tuple[str, int, int, int] | None = None,
        ttl: int = -1,
    ) -> None:
        """Copy data into slot i and set its address and TTL."""

# ---- end batchio ----

# ---- datagram ----
# ---- end datagram ----
