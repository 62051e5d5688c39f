"""The connector's ICMP proxy, sans-I/O (DESIGN section 3).

:class:`IcmpProxy` takes whole IPv4/IPv6 packets that arrived from a client
connection and returns whole packets to send back to client connections. It
validates, applies policy, answers Time Exceeded itself, source-NATs echo
requests through a flow table and hands them to a backend
(:mod:`fastproxy.icmp.backends`), and maps the backend's replies and ICMP errors
back to the client. It opens no socket: the backend does the I/O and
:mod:`fastproxy.icmp.service` drives both from an event loop, so every rule here
is testable with a fake backend.

Two paths, one per kind of backend:

- batched (:class:`~fastproxy.icmp.backends.BatchedBackend`: raw sockets,
  Darwin): the core's ``EchoNat`` parses, verifies, polices, acquires flows,
  rewrites echo ids and fills the send batches in one C call per batch of client
  packets, and maps a received batch back to clients in one C call. Python only
  sees what needs a decision of its own: refused packets (answered or counted
  here) and send failures.
- per packet (:class:`~fastproxy.icmp.backends.PerPacketBackend`: ping
  sockets, whose kernel demultiplexes by socket, and Windows): each client packet
  goes through :meth:`IcmpProxy._outbound`, each received one through
  :meth:`IcmpProxy._inbound`.

Both share the policy answers (:meth:`IcmpProxy._refused`), the flow table,
expiry and connection close.
"""

from __future__ import annotations

import errno as errno_codes
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from fastproxy._impl import core
from fastproxy.errors import EchoIdExhausted, FlowTableFull, MalformedPacket

from .backends import BackendFlow, BatchedBackend, IcmpBackend, PerPacketBackend, ReceivedPacket, SendFailure
from .metrics import IcmpMetrics
from .ratelimit import RateLimitedLog, TokenBucketLimiter
from .source import SourceAddressSelector

__all__ = ["ClientPacket", "IcmpProxy"]

logger = logging.getLogger("fastproxy.icmp")

#: A packet for a client connection: (conn_id, whole IP packet).
ClientPacket = tuple[int, "bytes | bytearray"]

FlowKey = tuple[int, bytes, bytes, int]

_ECHO_REQUEST = {4: 8, 6: 128}
# Refusals answered with Destination Unreachable, administratively prohibited, when asked to.
_POLICY_REFUSALS = frozenset(("not_echo_request", "destination_not_allowed"))
# Refusals that mean a bound was reached: counted and logged (rate-limited).
_LIMIT_REFUSALS = frozenset(("flow_limit_global", "flow_limit_connection", "echo_ids_exhausted"))
_ECHO_REPLY = {4: 0, 6: 129}
# ICMP errors a forwarded echo request can cause, which we translate back (RFC 5508).
_ERRORS = {4: frozenset((3, 11, 12)), 6: frozenset((1, 2, 3, 4))}
# Administratively prohibited: v4 type 3 code 13 (RFC 1812), v6 type 1 code 1 (RFC 4443).
_PROHIBITED_CODE = {4: 13, 6: 1}
# Destination Unreachable code for a local send error, per version.
_UNREACHABLE_CODES = {
    errno_codes.ENETUNREACH: {4: 0, 6: 0},
    errno_codes.EHOSTUNREACH: {4: 1, 6: 3},
    errno_codes.EACCES: {4: 13, 6: 1},
    errno_codes.EPERM: {4: 13, 6: 1},
}


def _is_icmp_error(version: int, icmp_type: int) -> bool:
    # RFC 1812 4.3.2.7 / RFC 4443 2.4(e): never answer an ICMP error with an error.
    return icmp_type in (3, 4, 5, 11, 12) if version == 4 else icmp_type < 128


class _PrefixSet:
    """Allowed destination prefixes, matched on integers (no ipaddress object per packet)."""

    __slots__ = ("_v4", "_v6", "networks")

    def __init__(self, prefixes: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network | str]) -> None:
        self._v4: list[tuple[int, int]] = []
        self._v6: list[tuple[int, int]] = []
        #: (network address bytes, prefix length) pairs, the form EchoNat takes.
        self.networks: list[tuple[bytes, int]] = []
        for prefix in prefixes:
            network = ipaddress.ip_network(prefix)
            target = self._v4 if network.version == 4 else self._v6
            target.append((int(network.network_address), int(network.netmask)))
            self.networks.append((network.network_address.packed, network.prefixlen))

    def __contains__(self, address: bytes) -> bool:
        value = int.from_bytes(address, "big")
        for network, mask in self._v4 if len(address) == 4 else self._v6:
            if value & mask == network:
                return True
        return False


class IcmpProxy:
    """Source-NAT ICMP echo proxy for many client connections (sans-I/O).

    Feed client packets with :meth:`handle_client_packets`, pull what the
    network sent with :meth:`read_backend` (one batch from one descriptor) or
    :meth:`poll_backend` (everything waiting, up to a limit), call :meth:`expire`
    now and then and :meth:`close_connection` when a client connection ends.
    Each returns the packets to send to clients as ``(conn_id, packet)`` pairs.

    Parameters:
        allowed_prefixes: destinations clients may ping (``ipaddress`` networks or strings).
        backend: the :class:`~fastproxy.icmp.backends.IcmpBackend` doing the I/O.
        icmpv4_source / icmpv6_source: the connector's own address for the ICMP
            errors it originates (Time Exceeded, unreachable); when None, the
            address the kernel would use towards each destination, never loopback,
            link-local or a container bridge unless the destination is one.
        idle_timeout: seconds a flow lives without traffic (RFC 5508 asks for >= 60).
        max_flows: global flow bound (rounded up to a power of two).
        max_flows_per_connection: per client connection bound (0: none).
        time_exceeded_rate / time_exceeded_burst: token bucket per client
            (connection, source) for every ICMP error the proxy originates.
        answer_prohibited: answer refused echo requests with Destination
            Unreachable, administratively prohibited.
        metrics: the counters sink (a fresh :class:`IcmpMetrics` when None).
        source_selector: override of the source-address choice (tests).
    """

    def __init__(
        self,
        allowed_prefixes: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network | str],
        backend: IcmpBackend,
        *,
        icmpv4_source: ipaddress.IPv4Address | str | None = None,
        icmpv6_source: ipaddress.IPv6Address | str | None = None,
        idle_timeout: float = 60.0,
        max_flows: int = 65536,
        max_flows_per_connection: int = 4096,
        time_exceeded_rate: float = 20.0,
        time_exceeded_burst: float = 20.0,
        answer_prohibited: bool = False,
        metrics: IcmpMetrics | None = None,
        source_selector: SourceAddressSelector | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        self.backend = backend
        self.metrics = metrics if metrics is not None else IcmpMetrics()
        self.answer_prohibited = answer_prohibited
        self._allowed = _PrefixSet(allowed_prefixes)
        self._clock = clock
        capacity = 1 << (max_flows - 1).bit_length()
        self._table = core.FlowTable(
            capacity, max_per_connection=max_flows_per_connection, idle_timeout=idle_timeout
        )
        self._sources = source_selector or SourceAddressSelector(icmpv4_source, icmpv6_source)
        self._error_limiter = TokenBucketLimiter(time_exceeded_rate, time_exceeded_burst)
        self._log = RateLimitedLog(logger)
        self._flows: dict[FlowKey, BackendFlow] = {}
        self._by_connection: dict[int, set[FlowKey]] = {}
        # Client packets handed to a per-packet backend since the last flush, to answer send failures.
        self._pending: list[tuple[int, bytes | bytearray | memoryview]] = []
        # Exactly one of the two is set: the kind of backend decides the path.
        self._batched = backend if isinstance(backend, BatchedBackend) else None
        self._per_packet = backend if isinstance(backend, PerPacketBackend) else None
        if self._batched is not None:
            self._nat = core.EchoNat(self._table, self._allowed.networks)
            self._send_batches = {4: core.PacketBatch(backend.batch_size), 6: core.PacketBatch(backend.batch_size)}
        elif self._per_packet is not None:
            self._nat = None
        else:
            raise TypeError(f"backend must be a BatchedBackend or a PerPacketBackend, not {type(backend).__name__}")

    def set_allowed_prefixes(self, prefixes: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network | str]) -> None:
        """Replace the destinations clients may ping (a connector's routes were reloaded).
        New echo requests are checked against the new set; flows already open run until
        they expire."""
        allowed = _PrefixSet(prefixes)
        if self._nat is not None:
            for reason, count in self._nat.take_drops().items():
                self.metrics.drop(reason, count)
            self._nat = core.EchoNat(self._table, allowed.networks)  # the flows live in the table
        self._allowed = allowed

    # ---- client side -------------------------------------------------------------------------

    def handle_client_packets(
        self, conn_id: int, packets: Iterable[bytes | bytearray | memoryview], now: float | None = None
    ) -> list[ClientPacket]:
        """Process packets that client connection ``conn_id`` sent; returns packets for clients.

        The answers returned are the proxy's own (Time Exceeded, Destination
        Unreachable); echo replies come later from :meth:`read_backend`.
        """
        if now is None:
            now = self._clock()
        out: list[ClientPacket] = []
        if self._batched is not None:
            packets = packets if isinstance(packets, list) else list(packets)
            size = self._batched.batch_size
            if len(packets) <= size:
                self._outbound_batch(conn_id, packets, now, out)
            else:
                for first in range(0, len(packets), size):
                    self._outbound_batch(conn_id, packets[first : first + size], now, out)
        else:
            for packet in packets:
                self._outbound(conn_id, packet, now, out)
            if self._pending:
                backend = self._per_packet
                assert backend is not None
                for failure in backend.flush():
                    failed_conn, failed_packet = self._pending[failure.index]
                    self._answer_send_failure(failed_conn, failed_packet, failure.errno, failure.mtu, now, out)
                self._pending.clear()
                # ICMP errors about earlier requests the flush took off the network: their
                # descriptors may not wake the reader again, so they are answered here.
                for received in backend.received_while_sending():
                    self._inbound(received, now, out)
        self.metrics.packets_out += len(out)
        return out

    def _outbound_batch(
        self, conn_id: int, packets: list[bytes | bytearray | memoryview], now: float, out: list[ClientPacket]
    ) -> None:
        """A batch of client packets through EchoNat (one C call) and the backend's batched send."""
        nat, backend = self._nat, self._batched
        assert nat is not None and backend is not None
        metrics = self.metrics
        batches = self._send_batches
        created = nat.flows_created
        n4, n6, refused = nat.outbound(conn_id, packets, batches[4], batches[6], now)
        metrics.packets_in += len(packets)
        metrics.forwarded += n4 + n6
        for index, reason in refused:
            self._refused(conn_id, packets[index], reason, now, out)
        if nat.flows_created != created:
            self._track_new_flows(conn_id, packets, refused)
        for family, count in ((4, n4), (6, n6)):
            if count:
                failures = backend.send_batch(family, batches[family], count)
                if failures:
                    self._answer_batch_failures(conn_id, packets, refused, family, failures, now, out)

    def _forwarded_indices(
        self, packets: list[bytes | bytearray | memoryview], refused: list[tuple[int, str]], family: int
    ) -> list[int]:
        """Indices of ``packets`` EchoNat queued in ``family``'s send batch, in slot order."""
        skipped = {index for index, _reason in refused}
        return [index for index, packet in enumerate(packets) if index not in skipped and packet[0] >> 4 == family]

    def _answer_batch_failures(
        self, conn_id: int, packets: list[bytes | bytearray | memoryview], refused: list[tuple[int, str]],
        family: int, failures: list[SendFailure], now: float, out: list[ClientPacket],
    ) -> None:
        indices = self._forwarded_indices(packets, refused, family)
        for failure in failures:
            self._answer_send_failure(conn_id, packets[indices[failure.index]], failure.errno, failure.mtu, now, out)

    def _track_new_flows(
        self, conn_id: int, packets: list[bytes | bytearray | memoryview], refused: list[tuple[int, str]]
    ) -> None:
        """Record the flows EchoNat just created (for :meth:`flows`, the gauges and connection close);
        runs only for batches that created some, so never in the steady state."""
        for family in (4, 6):
            for index in self._forwarded_indices(packets, refused, family):
                info = core.parse_packet(packets[index], verify_checksums=False)
                key = (conn_id, info.src, info.dst, info.echo_id)
                assigned = self._table.lookup(*key)
                flow = self._flows.get(key)
                if assigned is None or (flow is not None and flow.echo_id == assigned):
                    continue
                if flow is not None:  # the table let the old flow go and gave it a new id
                    self._forget(key)
                self._remember(BackendFlow(conn_id, info.src, info.dst, info.echo_id, assigned))

    def _outbound(
        self, conn_id: int, packet: bytes | bytearray | memoryview, now: float, out: list[ClientPacket]
    ) -> None:
        """One client packet for a per-packet backend: validate, police, answer or NAT it and queue it."""
        metrics = self.metrics
        metrics.packets_in += 1
        try:
            info = core.parse_packet(packet, verify_checksums=True)
        except MalformedPacket as exc:
            metrics.drop(exc.reason)
            return
        version = info.version
        if info.icmp_type != _ECHO_REQUEST[version]:
            self._refused(conn_id, packet, "not_echo_request", now, out, info)
            return
        if info.dst not in self._allowed:
            self._refused(conn_id, packet, "destination_not_allowed", now, out, info)
            return
        if info.ttl <= 1:
            self._refused(conn_id, packet, "ttl_expired", now, out, info)
            return
        flow = self._flow_for(conn_id, info, packet, now, out)
        if flow is None:
            return
        buf = bytearray(memoryview(packet)[: info.total_length])
        if info.echo_id != flow.echo_id:
            core.rewrite_echo(buf, echo_id=flow.echo_id)
        assert self._per_packet is not None
        self._per_packet.send_echo(flow, memoryview(buf)[info.icmp_offset :], info.ttl - 1)
        self._pending.append((conn_id, packet))
        metrics.forwarded += 1

    def _refused(
        self, conn_id: int, packet: bytes | bytearray | memoryview, reason: str, now: float,
        out: list[ClientPacket], info: Any = None,
    ) -> None:
        """A client packet not forwarded for ``reason`` (a malformed-packet reason or a
        NAT_REFUSAL_REASONS name): answer Time Exceeded for an expired TTL, optionally
        Destination Unreachable for a policy refusal, count and log the rest."""
        if reason == "ttl_expired":
            if info is None:
                info = core.parse_packet(packet, verify_checksums=False)
            if not self._error_limiter.allow((conn_id, info.src), now):
                self.metrics.drop("time_exceeded_rate_limited")
                self._log.warning(
                    "time_exceeded_rate_limited", now,
                    "ICMP: Time Exceeded answers to connection %d rate-limited", conn_id,
                )
                return
            out.append((conn_id, bytearray(core.build_time_exceeded(self._sources.source_for(info.dst), packet))))
            self.metrics.time_exceeded_sent += 1
            return
        self.metrics.drop(reason)
        if reason in _POLICY_REFUSALS:
            if not self.answer_prohibited:
                return
            if info is None:
                info = core.parse_packet(packet, verify_checksums=False)
            # RFC 1812 4.3.2.7 / RFC 4443 2.4(e): never answer an ICMP error with an error.
            if reason == "not_echo_request" and _is_icmp_error(info.version, info.icmp_type):
                return
            self._answer_unreachable(conn_id, info, packet, _PROHIBITED_CODE[info.version], now, out)
        elif reason in _LIMIT_REFUSALS:
            self._log.warning(reason, now, "ICMP: new flow from connection %d refused: %s", conn_id, reason)

    def _flow_for(
        self, conn_id: int, info: Any, packet: bytes | bytearray | memoryview, now: float, out: list[ClientPacket]
    ) -> BackendFlow | None:
        """The flow of an echo request (created and opened on the backend when new), or None if refused."""
        src, dst, echo_id = info.src, info.dst, info.echo_id  # type: ignore[attr-defined]
        try:
            assigned = self._table.acquire(conn_id, src, dst, echo_id, now)
        except FlowTableFull as exc:
            reason = "flow_limit_global" if exc.scope == "global" else "flow_limit_connection"
            self._refused(conn_id, packet, reason, now, out, info)
            return None
        except EchoIdExhausted:
            self._refused(conn_id, packet, "echo_ids_exhausted", now, out, info)
            return None
        key = (conn_id, src, dst, echo_id)
        flow = self._flows.get(key)
        if flow is not None and flow.echo_id == assigned:
            return flow
        if flow is not None:  # the table let the old flow go and gave it a new id: reopen
            self._forget(key)
        flow = BackendFlow(conn_id, src, dst, echo_id, assigned)
        assert self._per_packet is not None
        try:
            self._per_packet.open_flow(flow)
        except OSError as exc:
            self._table.remove(conn_id, src, dst, echo_id)
            self.metrics.drop("backend_open_failed")
            self._log.warning("backend_open_failed", now, "ICMP: cannot open a flow on the %s backend: %s",
                              self.backend.name, exc)
            return None
        self._remember(flow)
        return flow

    def _answer_unreachable(
        self, conn_id: int, info: Any, packet: bytes | bytearray | memoryview, code: int, now: float,
        out: list[ClientPacket], mtu: int = 0,
    ) -> None:
        """Answer a client packet with Destination Unreachable ``code`` (or, with ``mtu``, Frag Needed /
        Packet Too Big) from the connector's address, within the client's error rate limit."""
        src, dst = info.src, info.dst  # type: ignore[attr-defined]
        if not self._error_limiter.allow((conn_id, src), now):
            self.metrics.drop("answer_rate_limited")
            return
        source = self._sources.source_for(dst)
        if mtu:
            answer = core.build_packet_too_big(source, packet, mtu)
        else:
            answer = core.build_destination_unreachable(source, packet, code)
        out.append((conn_id, bytearray(answer)))
        self.metrics.unreachable_sent += 1

    def _answer_send_failure(
        self, conn_id: int, packet: bytes | bytearray | memoryview, err: int, mtu: int, now: float,
        out: list[ClientPacket],
    ) -> None:
        self.metrics.drop("backend_send_failed")
        self._log.warning("backend_send_failed", now, "ICMP: sending an echo request failed: %s",
                          errno_codes.errorcode.get(err, str(err)))
        info = core.parse_packet(packet, verify_checksums=False)
        if err == errno_codes.EMSGSIZE and mtu:
            self._answer_unreachable(conn_id, info, packet, 4, now, out, mtu=mtu)
        elif err in _UNREACHABLE_CODES:
            self._answer_unreachable(conn_id, info, packet, _UNREACHABLE_CODES[err][info.version], now, out)

    # ---- network side ------------------------------------------------------------------------

    def read_backend(self, fd: int | None, limit: int = 256, now: float | None = None) -> list[ClientPacket] | None:
        """Read one batch from the backend; returns the packets for clients, or None when nothing
        was waiting (drained).

        A batched backend reads one batch from its socket ``fd`` (one of its
        ``filenos()``); a per-packet backend reads up to ``limit`` packets from
        all it has (``fd`` is not needed and may be None).
        """
        if now is None:
            now = self._clock()
        metrics = self.metrics
        nat = self._nat
        if nat is not None:
            assert self._batched is not None and fd is not None
            family, batch = self._batched.receive_batch(fd)
            if not batch.count:
                return None
            metrics.replies_in += batch.count
            out = nat.inbound(batch, family, now)
            for reason, count in nat.take_drops().items():
                metrics.drop(reason, count)
        else:
            assert self._per_packet is not None
            received = self._per_packet.receive(limit)
            if not received:
                return None
            out = []
            for packet in received:
                self._inbound(packet, now, out)
        metrics.packets_out += len(out)
        return out

    def poll_backend(self, limit: int = 256, now: float | None = None) -> list[ClientPacket]:
        """Read every backend descriptor until it is drained or ``limit`` packets came; returns the
        packets for clients."""
        if now is None:
            now = self._clock()
        out: list[ClientPacket] = []
        read = self.metrics.replies_in
        sources: list[int | None] = list(self._batched.filenos()) if self._batched is not None else [None]
        for fd in sources:
            while self.metrics.replies_in - read < limit:
                batch = self.read_backend(fd, limit - (self.metrics.replies_in - read), now)
                if batch is None:
                    break
                out += batch
        return out

    def _inbound(self, received: ReceivedPacket, now: float, out: list[ClientPacket]) -> None:
        """One packet from a per-packet backend: verify, find its flow, restore the client's view."""
        metrics = self.metrics
        metrics.replies_in += 1
        packet = received.packet
        try:
            info = core.parse_packet(packet, verify_checksums=True)
        except MalformedPacket as exc:
            metrics.drop("reply_bad_checksum" if "checksum" in exc.reason else "reply_malformed")
            return
        version = info.version
        if info.icmp_type == _ECHO_REPLY[version]:
            peer, echo_id = info.src, info.echo_id
        elif info.icmp_type in _ERRORS[version]:
            inner = info.inner
            if inner is None or inner.icmp_type != _ECHO_REQUEST[version] or inner.echo_id is None:
                metrics.drop("reply_unknown_flow")
                return
            peer, echo_id = inner.dst, inner.echo_id
        else:
            metrics.drop("reply_not_echo_or_error")
            return
        flow = received.flow
        if flow is not None and (flow.dst != peer or flow.echo_id != echo_id):
            metrics.drop("reply_spoofed")
            return
        owner = self._table.reverse(peer, echo_id, now)
        if owner is None:
            metrics.drop("reply_unknown_flow")
            return
        conn_id, client_src, client_echo_id = owner
        buf = bytearray(packet)
        if info.inner is None:
            core.rewrite_echo(buf, dst=client_src, echo_id=client_echo_id)
        else:
            core.translate_icmp_error(buf, client_src, client_echo_id)
        out.append((conn_id, buf))

    # ---- flows -------------------------------------------------------------------------------

    def expire(self, now: float | None = None, max_scan: int = 0) -> int:
        """Remove flows idle longer than the idle timeout (scan at most ``max_scan`` slots, 0: all);
        returns how many went."""
        if now is None:
            now = self._clock()
        expired = self._table.expire(now, max_scan)
        for conn_id, client_src, dst, echo_id, _assigned in expired:
            self._forget((conn_id, client_src, dst, echo_id))
        self.metrics.flows_active = len(self._flows)
        return len(expired)

    def close_connection(self, conn_id: int) -> int:
        """Free every flow of client connection ``conn_id`` now; returns how many."""
        self._table.remove_connection(conn_id)
        keys = self._by_connection.pop(conn_id, ())
        for key in keys:
            flow = self._flows.pop(key, None)
            if flow is not None and self._per_packet is not None:
                self._per_packet.close_flow(flow)
        self._error_limiter.forget_if(lambda key: key[0] == conn_id)  # type: ignore[index]
        self.metrics.flows_active = len(self._flows)
        return len(keys)

    def _remember(self, flow: BackendFlow) -> None:
        key = (flow.conn_id, flow.client_src, flow.dst, flow.client_echo_id)
        self._flows[key] = flow
        self._by_connection.setdefault(flow.conn_id, set()).add(key)
        self.metrics.flows_total += 1
        self.metrics.flows_active = len(self._flows)

    def _forget(self, key: FlowKey) -> None:
        flow = self._flows.pop(key, None)
        if flow is None:
            return
        keys = self._by_connection.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_connection[key[0]]
        if self._per_packet is not None:
            self._per_packet.close_flow(flow)

    def flows(self) -> list[BackendFlow]:
        """The flows alive now (for inspection; not for the packet path)."""
        return list(self._flows.values())

    @property
    def flow_count(self) -> int:
        """Flows alive now."""
        return len(self._flows)

    def close(self) -> None:
        """Close every flow and the backend."""
        for conn_id in list(self._by_connection):
            self.close_connection(conn_id)
        self.backend.close()
