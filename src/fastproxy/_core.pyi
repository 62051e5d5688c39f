"""Type stubs for the compiled core, fastproxy._core (the twin, fastproxy._purepy, has the same API)."""

from __future__ import annotations

from _typeshed import ReadableBuffer, WriteableBuffer

# ---- checksum ----
def internet_checksum(data: ReadableBuffer, initial: int = 0) -> int:
    """The RFC 1071 checksum of ``data`` (the value for a checksum field); ``initial`` is a 16-bit partial sum."""

def ones_complement_sum(data: ReadableBuffer, initial: int = 0) -> int:
    """The folded 16-bit one's-complement sum of ``data`` plus ``initial`` (not complemented)."""

def verify_checksum(data: ReadableBuffer, initial: int = 0) -> bool:
    """True when ``data`` (checksum field included) plus ``initial`` sums to 0xffff."""

def pseudo_header_sum(src: ReadableBuffer, dst: ReadableBuffer, length: int, next_header: int) -> int:
    """The folded sum of the IPv4 (4-byte addresses) or IPv6 (16-byte addresses) pseudo-header."""

def checksum_update16(checksum: int, old: int, new: int) -> int:
    """The checksum after a 16-bit field changes from ``old`` to ``new`` (RFC 1624 eqn. 3)."""

def checksum_update_bytes(checksum: int, old: ReadableBuffer, new: ReadableBuffer) -> int:
    """The checksum after an even-length field (an address) changes from ``old`` to ``new``."""

# ---- end checksum ----

# ---- packet ----
PACKET_MALFORMED_REASONS: tuple[str, ...]

class InnerPacket:
    """The IP packet quoted by an ICMP error (usually truncated); see PacketInfo.inner.

    offset/length: where the quote starts in the parsed buffer and how many bytes of the
    quoted packet it holds. icmp_type/icmp_code are None unless the quoted packet is
    ICMP(v6) of the same family (and, for v4, not a non-first fragment); echo_id/echo_seq
    are None unless it is an echo request or reply.
    """

    @property
    def offset(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def version(self) -> int: ...
    @property
    def header_length(self) -> int: ...
    @property
    def protocol(self) -> int: ...
    @property
    def ttl(self) -> int: ...
    @property
    def src(self) -> bytes: ...
    @property
    def dst(self) -> bytes: ...
    @property
    def icmp_type(self) -> int | None: ...
    @property
    def icmp_code(self) -> int | None: ...
    @property
    def echo_id(self) -> int | None: ...
    @property
    def echo_seq(self) -> int | None: ...

class PacketInfo:
    """What parse_packet found in one IPv4/IPv6 packet carrying ICMP(v6)."""

    @property
    def version(self) -> int: ...
    @property
    def header_length(self) -> int: ...
    @property
    def total_length(self) -> int: ...
    @property
    def ttl(self) -> int: ...
    @property
    def protocol(self) -> int: ...
    @property
    def src(self) -> bytes: ...
    @property
    def dst(self) -> bytes: ...
    @property
    def icmp_offset(self) -> int: ...
    @property
    def icmp_type(self) -> int: ...
    @property
    def icmp_code(self) -> int: ...
    @property
    def icmp_checksum(self) -> int: ...
    @property
    def echo_id(self) -> int | None: ...
    @property
    def echo_seq(self) -> int | None: ...
    @property
    def inner(self) -> InnerPacket | None: ...
    @property
    def mtu(self) -> int | None: ...

def parse_packet(data: ReadableBuffer, *, verify_checksums: bool = True) -> PacketInfo:
    """Parse and validate one whole IPv4/IPv6 ICMP packet; raises MalformedPacket (bytes past the total length too)."""

def build_echo(
    src: ReadableBuffer,
    dst: ReadableBuffer,
    echo_id: int,
    seq: int,
    payload: ReadableBuffer = b"",
    *,
    ttl: int = 64,
    reply: bool = False,
) -> bytes:
    """Echo request (or reply); v4 (id 0, DF) or v6 by address length; ValueError for bad arguments."""

def build_icmp_error(
    src: ReadableBuffer,
    original: ReadableBuffer,
    icmp_type: int,
    icmp_code: int,
    *,
    mtu: int = 0,
    ttl: int = 64,
) -> bytes:
    """ICMP(v6) error to original's source quoting as much as fits (v4 576 bytes, v6 1280 in all)."""

def build_time_exceeded(src: ReadableBuffer, original: ReadableBuffer) -> bytes:
    """Time Exceeded in transit (v4 type 11, v6 type 3; code 0) about original."""

def build_destination_unreachable(src: ReadableBuffer, original: ReadableBuffer, code: int) -> bytes:
    """Destination Unreachable (v4 type 3, v6 type 1) with the family's own code."""

def build_packet_too_big(src: ReadableBuffer, original: ReadableBuffer, mtu: int) -> bytes:
    """v4 Fragmentation Needed (type 3 code 4) or v6 Packet Too Big (type 2), carrying mtu."""

def rewrite_echo(
    buf: WriteableBuffer,
    *,
    src: ReadableBuffer | None = None,
    dst: ReadableBuffer | None = None,
    echo_id: int | None = None,
    ttl: int | None = None,
) -> None:
    """Rewrite an echo packet in place with incremental (RFC 1624) checksum updates."""

def decrement_ttl(buf: WriteableBuffer) -> int:
    """TTL/hop limit - 1 in place; returns it, or 0 with buf untouched when it was 0 or 1."""

def translate_icmp_error(buf: WriteableBuffer, client_addr: ReadableBuffer, client_echo_id: int) -> None:
    """RFC 5508 translation of an ICMP error quoting our echo message into the client's view, in place."""

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
import socket as _socket
from collections.abc import Sequence

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
        """How many slots hold packets (filled by the last ``recv``, or set by hand / a producer)."""
    @count.setter
    def count(self, value: int) -> None: ...
    def recv(self, sock: _socket.socket | int) -> int:
        """Receive up to len(self) datagrams without blocking into slots 0..; how many (0 if none waits)."""
    def recv_many(self, socks: Sequence[_socket.socket | int], sources: WriteableBuffer) -> int:
        """Receive from each of socks in turn into one batch from slot 0; sources[i] (an int buffer of
        at least len(self) items) gets the index in socks of slot i's socket. A full batch leaves the
        sockets after the last slot's unread; a socket whose receive fails is skipped. How many slots."""
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
from fastproxy._datagram_types import IcmpDatagram as IcmpDatagram
from fastproxy._datagram_types import RegistrationResponse as RegistrationResponse
from fastproxy._datagram_types import UdpPayload as UdpPayload
from fastproxy._datagram_types import UdpRegistration as UdpRegistration

DATAGRAM_UDP_REGISTRATION: int
DATAGRAM_UDP_PAYLOAD: int
DATAGRAM_ICMP: int
DATAGRAM_REGISTRATION_RESPONSE: int
RESPONSE_OK: int
RESPONSE_DESTINATION_UNREACHABLE: int
RESPONSE_UNABLE_TO_BIND_SOCKET: int
RESPONSE_TOO_MANY_ACTIVE_FLOWS: int
RESPONSE_ERROR: int
MAX_DATAGRAM_PAYLOAD: int
DATAGRAM_MALFORMED_REASONS: tuple[str, ...]

def decode_datagram(data: ReadableBuffer) -> IcmpDatagram | UdpRegistration | UdpPayload | RegistrationResponse:
    """Decode one tunnel datagram; raises MalformedDatagram (``reason`` in DATAGRAM_MALFORMED_REASONS)."""

def encode_icmp(packet: ReadableBuffer) -> bytes:
    """The ICMP datagram (type 0x02) carrying one whole IP packet of 1 to 1280 bytes."""

def encode_udp_registration(
    request_id: ReadableBuffer,
    dst: ReadableBuffer,
    port: int,
    idle_timeout: int,
    *,
    traced: bool = False,
    payload: ReadableBuffer | None = None,
) -> bytes:
    """The UDP session registration datagram (type 0x00); a non-empty payload is bundled."""

def encode_udp_payload(request_id: ReadableBuffer, payload: ReadableBuffer) -> bytes:
    """The UDP session payload datagram (type 0x01), payload 0 to 1280 bytes."""

def encode_registration_response(request_id: ReadableBuffer, code: int, message: str = "") -> bytes:
    """The registration response datagram (type 0x03); message at most 1260 UTF-8 bytes."""

# ---- end datagram ----

# ---- nat ----
from collections.abc import Iterable, Sequence

NAT_REFUSAL_REASONS: tuple[str, ...]
NAT_REPLY_DROP_REASONS: tuple[str, ...]

class EchoNat:
    """Batched source NAT of ICMP echo through a FlowTable (raw / Darwin backends)."""

    flows_created: int
    def __init__(self, table: FlowTable, allowed: Iterable[tuple[bytes, int]]) -> None: ...
    def outbound(
        self, conn_id: int, packets: Sequence[ReadableBuffer], out4: PacketBatch, out6: PacketBatch, now: float
    ) -> tuple[int, int, list[tuple[int, str]]]:
        """Queue echo requests as ICMP messages in out4/out6; returns (n4, n6, [(index, reason), ...])."""
    def inbound(self, received: PacketBatch, family: int, now: float) -> list[tuple[int, bytes]]:
        """Map packets a raw socket received back to (conn_id, client packet) pairs."""
    def take_drops(self) -> dict[str, int]:
        """Reply drops counted since the last call, by reason."""

def normalize_bsd_ipv4_headers(batch: PacketBatch) -> None:
    """Put back in network form the IPv4 headers a BSD/macOS ICMP socket delivered."""
# ---- end nat ----

# ---- edgeroute ----
def rendezvous_score(client_id: int, destination: ReadableBuffer, owner: int) -> int:
    """Rendezvous-hashing score of connector ``owner`` for (client, destination); highest wins."""

class EdgeIcmpRoutes:
    """The edge's batched ICMP fast path; the tables mirror EdgeRouter's."""

    def __init__(self) -> None: ...
    def set_routes(self, routes: Iterable[tuple[bytes, int, Sequence[int]]]) -> None:
        """Replace the prefix table: (network, prefix length, connector ids) triples."""
    def set_client(self, conn_id: int, v4: bytes | None, v6: bytes | None,
                   allowed: Iterable[tuple[bytes, int]] | None) -> None:
        """Admit or update a client: its addresses and the prefixes it may reach (None: any)."""
    def remove_client(self, conn_id: int) -> None:
        """Forget a client (nothing happens when it is unknown)."""
    def from_client(self, conn_id: int, datagrams: list[bytes], start: int, out: dict[int, list[bytes]]) -> int:
        """Forward the common-case ICMP datagrams from ``start`` on; the index of the first one left."""
    def from_connector(self, datagrams: list[bytes], start: int, out: dict[int, list[bytes]]) -> int:
        """Forward ICMP datagrams to clients by destination from ``start`` on; the index of the first one left."""
# ---- end edgeroute ----
