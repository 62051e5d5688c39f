"""Pure-Python twin of fastproxy._core: nat (batched source NAT of ICMP echo)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from ..errors import EchoIdExhausted, FlowTableFull, MalformedPacket
from .batchio import PacketBatch
from .checksum import internet_checksum, pseudo_header_sum
from .flowtable import FlowTable
from .packet import parse_packet, rewrite_echo, translate_icmp_error

__all__ = ["NAT_REFUSAL_REASONS", "NAT_REPLY_DROP_REASONS", "EchoNat", "normalize_bsd_ipv4_headers"]

NAT_REFUSAL_REASONS = (
    "not_echo_request",
    "destination_not_allowed",
    "ttl_expired",
    "flow_limit_global",
    "flow_limit_connection",
    "echo_ids_exhausted",
    "packet_too_large",
)
NAT_REPLY_DROP_REASONS = (
    "reply_malformed",
    "reply_bad_checksum",
    "reply_truncated",
    "reply_not_echo_or_error",
    "reply_unknown_flow",
)
_MAX_PREFIXES = 256
_ECHO_REQUEST = {4: 8, 6: 128}
_ECHO_REPLY = {4: 0, 6: 129}


def _address_tuple(address: bytes) -> tuple:
    if len(address) == 4:
        return (str(ipaddress.IPv4Address(address)), 0)
    return (str(ipaddress.IPv6Address(address)), 0, 0, 0)


def normalize_bsd_ipv4_headers(batch: PacketBatch) -> None:
    """Put back in network form the IPv4 headers a BSD/macOS ICMP socket delivered
    (see the compiled core: ip_len from the received length, ip_off DF in network order,
    header checksum computed again)."""
    for i in range(batch.count):
        p = batch.data(i)
        n = len(p)
        if n < 20 or n > 0xFFFF or p[0] >> 4 != 4:
            continue
        hlen = (p[0] & 0x0F) * 4
        if hlen < 20 or hlen > n:
            continue
        p[2:4] = n.to_bytes(2, "big")
        if p[6] == 0x00 and p[7] == 0x40:
            p[6:8] = b"\x40\x00"
        p[10:12] = b"\0\0"
        p[10:12] = internet_checksum(p[:hlen]).to_bytes(2, "big")


class EchoNat:
    """Batched source NAT of ICMP echo through a :class:`FlowTable` (raw / Darwin backends).

    ``allowed`` lists the destinations clients may reach as ``(network_bytes,
    prefix_length)`` pairs (4- or 16-byte network addresses, host bits ignored; at most 256 per family).
    The table must not be mutated elsewhere while a call runs (single writer).
    """

    __slots__ = ("_table", "_prefixes", "_drops", "flows_created")

    def __init__(self, table: FlowTable, allowed: Iterable[tuple[bytes, int]]) -> None:
        if table is None:
            raise TypeError("table must be a FlowTable, not None")
        self._table = table
        self._prefixes: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        self._drops = dict.fromkeys(NAT_REPLY_DROP_REASONS, 0)
        self.flows_created = 0
        for network, bits in allowed:
            network = bytes(network)
            family = {4: 4, 16: 6}.get(len(network))
            width = len(network) * 8
            if family is None or not 0 <= bits <= width:
                raise ValueError(f"allowed prefix must be (4- or 16-byte network, length), got {(network, bits)!r}")
            if len(self._prefixes[family]) == _MAX_PREFIXES:
                raise ValueError(f"at most {_MAX_PREFIXES} IPv{family} prefixes")
            mask = ((1 << bits) - 1) << (width - bits)
            self._prefixes[family].append((int.from_bytes(network, "big") & mask, mask))

    def _allowed(self, dst: bytes, family: int) -> bool:
        value = int.from_bytes(dst, "big")
        return any(value & mask == network for network, mask in self._prefixes[family])

    def _forward_one(self, conn_id: int, packet: object, out4: PacketBatch, out6: PacketBatch, now: float) -> str | None:
        try:
            info = parse_packet(packet, verify_checksums=True)  # type: ignore[arg-type]
        except MalformedPacket as exc:
            return exc.reason
        family = info.version
        if info.echo_id is None or info.icmp_type != _ECHO_REQUEST[family]:
            return "not_echo_request"
        if not self._allowed(info.dst, family):
            return "destination_not_allowed"
        if info.ttl <= 1:
            return "ttl_expired"
        out = out4 if family == 4 else out6
        message = bytearray(memoryview(packet)[info.icmp_offset : info.total_length])  # type: ignore[arg-type]
        if len(message) > out.slot_size:
            return "packet_too_large"
        before = len(self._table)
        try:
            assigned = self._table.acquire(conn_id, info.src, info.dst, info.echo_id, now)
        except FlowTableFull as exc:
            return "flow_limit_global" if exc.scope == "global" else "flow_limit_connection"
        except EchoIdExhausted:
            return "echo_ids_exhausted"
        if len(self._table) != before:
            self.flows_created += 1
        csum = int.from_bytes(message[2:4], "big")
        acc = (~csum & 0xFFFF) + (~info.echo_id & 0xFFFF) + assigned  # RFC 1624 eqn. 3
        while acc >> 16:
            acc = (acc & 0xFFFF) + (acc >> 16)
        message[2:4] = (~acc & 0xFFFF).to_bytes(2, "big")
        message[4:6] = assigned.to_bytes(2, "big")
        slot = out.count
        out.set(slot, message, address=_address_tuple(info.dst), ttl=info.ttl - 1)
        out.count = slot + 1
        return None

    def outbound(
        self, conn_id: int, packets: Sequence[object], out4: PacketBatch, out6: PacketBatch, now: float
    ) -> tuple[int, int, list[tuple[int, str]]]:
        """NAT client packets of connection ``conn_id`` into send batches (see the compiled core)."""
        if out4 is None or out6 is None:
            raise TypeError("out4 and out6 must be PacketBatch objects")
        packets = list(packets)
        if len(packets) > len(out4) or len(packets) > len(out6):
            raise ValueError(f"{len(packets)} packets do not fit send batches of {len(out4)} / {len(out6)} slots")
        out4.count = 0
        out6.count = 0
        refused = []
        for index, packet in enumerate(packets):
            reason = self._forward_one(conn_id, packet, out4, out6, now)
            if reason is not None:
                refused.append((index, reason))
        return out4.count, out6.count, refused

    def _reply_one(self, data: memoryview, family: int, peer: bytes, ttl: int, now: float) -> tuple[int, bytes] | None:
        if family == 4:
            try:
                info = parse_packet(data, verify_checksums=True)
            except MalformedPacket as exc:
                self._drops["reply_bad_checksum" if "checksum" in exc.reason else "reply_malformed"] += 1
                return None
            buf = bytearray(data)
        else:
            n = len(data)
            if n > 0xFFFF:  # more than an IPv6 payload length can say (no jumbograms)
                self._drops["reply_malformed"] += 1
                return None
            header = bytes([0x60, 0, 0, 0]) + n.to_bytes(2, "big") + bytes([58, ttl if ttl >= 0 else 64])
            buf = bytearray(header + peer + bytes(16) + bytes(data))
            try:
                info = parse_packet(buf, verify_checksums=False)
            except MalformedPacket:
                self._drops["reply_malformed"] += 1
                return None
        inner = info.inner
        if info.echo_id is not None and info.icmp_type == _ECHO_REPLY[family]:
            key = (info.src, info.echo_id)
        elif (inner is not None and inner.echo_id is not None and inner.version == family
              and inner.icmp_type == _ECHO_REQUEST[family]):
            key = (inner.dst, inner.echo_id)
        else:
            self._drops["reply_not_echo_or_error"] += 1
            return None
        owner = self._table.reverse(key[0], key[1], now)
        if owner is None:
            self._drops["reply_unknown_flow"] += 1
            return None
        conn_id, client_src, client_echo_id = owner
        if family == 6:
            buf[24:40] = client_src
            buf[42:44] = b"\0\0"
            csum = internet_checksum(buf[40:], pseudo_header_sum(bytes(buf[8:24]), client_src, len(buf) - 40, 58))
            buf[42:44] = csum.to_bytes(2, "big")
        try:
            if inner is not None:
                translate_icmp_error(buf, client_src, client_echo_id)
            elif family == 4:
                rewrite_echo(buf, dst=client_src, echo_id=client_echo_id)
            else:
                rewrite_echo(buf, echo_id=client_echo_id)
        except MalformedPacket:
            self._drops["reply_malformed"] += 1
            return None
        return conn_id, bytes(buf)

    def inbound(self, received: PacketBatch, family: int, now: float) -> list[tuple[int, bytes]]:
        """Map packets a raw socket of ``family`` received back to their clients (see the compiled core)."""
        if family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, got {family}")
        result = []
        for i in range(received.count):
            if received.truncated(i):
                self._drops["reply_truncated"] += 1
                continue
            peer = b""
            if family == 6:
                address = received.address(i)
                if address is None or len(address) != 4:
                    self._drops["reply_malformed"] += 1
                    continue
                peer = ipaddress.IPv6Address(address[0].partition("%")[0]).packed
            reply = self._reply_one(received.data(i), family, peer, received.ttl(i), now)
            if reply is not None:
                result.append(reply)
        return result

    def take_drops(self) -> dict[str, int]:
        """Reply drops counted since the last call, by reason (only non-zero ones)."""
        counts = {reason: n for reason, n in self._drops.items() if n}
        for reason in counts:
            self._drops[reason] = 0
        return counts
