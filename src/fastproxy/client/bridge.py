"""The TUN bridge of ``fastproxy client``: packets that local programs send into the TUN
device go through the tunnel, and what comes back is written to the device.

- ICMP echo requests (what ``ping``, ``traceroute -I`` and ``mtr`` send) go as whole IP
  packets; ICMP answers come back the same way, in batches both ways.
- UDP packets become UDP sessions, one per (local address, local port, remote address,
  remote port); answers are turned back into UDP packets.
- Anything else (TCP, neighbour discovery...) is dropped and counted by reason.

Too big for the tunnel: the device's MTU is the tunnel's (1280: an ICMP datagram carries
one IP packet of at most 1280 bytes, a UDP payload at most 1280 bytes), so the kernel
refuses larger DF packets itself (``ping -M do -s 1400``: "message too long, mtu=1280")
and fragments the rest. The bridge reassembles fragments (:mod:`.fragments`); a whole
packet that fits goes on, one that does not is a counted drop (``tun_too_big``), logged
once per flow, and answered as a router at the device's far end would: Fragmentation
Needed (v4) / Packet Too Big (v6) carrying the tunnel MTU, so ``ping`` says "Frag needed
and DF set (mtu = 1280)" instead of losing it silently. A reassembly that times out with
its first fragment in hand is answered with Time Exceeded (fragment reassembly, code 1).
A UDP flow whose session is refused as unreachable (no connector serves it, or the
policy forbids it) is answered with Destination Unreachable (net unreachable), so a
socket that asks for errors (IP_RECVERR) fails at once.
These answers come from 192.0.0.8, the IPv4 dummy address meant for exactly this
(RFC 7600), and fe80::1 (a link-local address of the device's far end), at most
``icmp_rate`` a second.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..datagram import MAX_DATAGRAM_PAYLOAD, RESPONSE_DESTINATION_UNREACHABLE
from ..icmp.ratelimit import RateLimitedLog, TokenBucketLimiter
from ..packet import build_destination_unreachable, build_icmp_error, build_packet_too_big
from .fragments import Reassembler, is_fragment
from .interfaces import PacketTunnel, UdpSessionOpener
from .tun import TunDevice
from .udp_packets import build_udp_packet, parse_udp_packet

__all__ = ["ROUTER_V4", "ROUTER_V6", "TUNNEL_MTU", "TunBridge"]

log = logging.getLogger("fastproxy.client.bridge")

_ECHO_REQUEST = {4: 8, 6: 128}
_ICMP = {4: 1, 6: 58}
_PENDING_LIMIT = 64
_TOLD_LIMIT = 1024  # flows remembered as already logged about

TUNNEL_MTU = MAX_DATAGRAM_PAYLOAD
"""The largest IP packet an ICMP datagram carries (DESIGN section 2): the TUN device's MTU."""
ROUTER_V4 = ipaddress.IPv4Address("192.0.0.8").packed
"""Source of the bridge's ICMPv4 errors: the IPv4 dummy address (RFC 7600)."""
ROUTER_V6 = ipaddress.IPv6Address("fe80::1").packed
"""Source of the bridge's ICMPv6 errors: a link-local address of the device's far end."""

FlowKey = tuple[bytes, int, bytes, int]


class _UdpFlow:
    __slots__ = ("session", "pending", "task", "first")

    def __init__(self) -> None:
        self.session: Any = None
        self.pending: list[bytes] = []
        self.first = b""  # the flow's first packet, quoted if its session is refused
        self.task: asyncio.Task[None] | None = None


class TunBridge:
    """Moves packets between ``tun`` and ``client`` (a PacketTunnel that also opens UDP
    sessions, such as :class:`fastproxy.Client`). ``start()`` watches the device;
    ``from_tunnel`` is the client's ``on_packets`` callback. Counters: ``stats``, and
    ``drops`` — the client's own drop counter when it has one, so the metrics show them
    as ``fastproxy_drops_total{component="client",reason="tun_..."}``."""

    def __init__(self, tun: TunDevice, client: Any, *, max_udp_flows: int = 1024, icmp_rate: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tun = tun
        self.client: PacketTunnel = client
        self.opener: UdpSessionOpener = client
        self.max_udp_flows = max_udp_flows
        self._flows: dict[FlowKey, _UdpFlow] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock = clock
        self.stats: Counter[str] = Counter()
        drops = getattr(client, "drops", None)
        self.drops: Counter[str] = drops if isinstance(drops, Counter) else Counter()
        self.reassembly = Reassembler(drops=self.drops, prefix="tun_")
        self._icmp_limiter = TokenBucketLimiter(icmp_rate, max(1.0, 2 * icmp_rate), max_keys=1)
        self._told: set[tuple[bytes, bytes, int]] = set()
        self._refusal_log = RateLimitedLog(log)
        self._expiry: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Read the device whenever it has packets."""
        self._loop = asyncio.get_running_loop()
        assert self.tun.fd is not None
        self._loop.add_reader(self.tun.fd, self._on_readable)

    def close(self) -> None:
        """Stop reading and end every UDP session (the device is the caller's to close)."""
        if self._loop is not None and self.tun.fd is not None:
            self._loop.remove_reader(self.tun.fd)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for flow in self._flows.values():
            if flow.session is not None:
                flow.session.close()
            if flow.task is not None:
                flow.task.cancel()
        self._flows.clear()

    def from_tunnel(self, packets: list[bytes]) -> None:
        """Whole IP packets from the edge: into the device, in one batch."""
        self.stats["packets_to_tun"] += self.tun.write_batch(packets)

    def _on_readable(self) -> None:
        self.from_device(self.tun.read_batch())

    def from_device(self, packets: list[bytes]) -> None:
        """Packets local programs sent into the device: into the tunnel, reassembled when
        fragmented; what cannot go is counted and, where IP has a signal, answered."""
        icmp: list[bytes] = []
        for packet in packets:
            if is_fragment(packet):
                whole = self.reassembly.add(packet, self._clock())
                self._schedule_expiry()
                if whole is None:
                    continue
                self.stats["reassembled"] += 1
                packet = whole
            version = packet[0] >> 4 if packet else 0
            if version == 4 and len(packet) >= 20 and packet[9] == 1:
                ihl = (packet[0] & 0x0F) * 4
                kind = packet[ihl] if len(packet) > ihl else -1
            elif version == 6 and len(packet) >= 41 and packet[6] == 58:
                kind = packet[40]
            else:
                self._udp(packet)
                continue
            if kind != _ECHO_REQUEST[version]:
                self.drops["tun_icmp_not_echo_request"] += 1
            elif len(packet) > TUNNEL_MTU:
                self._too_big(packet, version)
            else:
                icmp.append(packet)
        if icmp:
            self.stats["icmp_to_tunnel"] += len(icmp)
            self.client.send_packets(icmp)

    def _udp(self, packet: bytes) -> None:
        udp = parse_udp_packet(packet)
        if udp is None:
            self.drops["tun_not_icmp_or_udp"] += 1
            return
        if len(udp.payload) > MAX_DATAGRAM_PAYLOAD:
            self._too_big(packet, udp.version)
            return
        key = (udp.src, udp.src_port, udp.dst, udp.dst_port)
        flow = self._flows.get(key)
        if flow is None:
            if len(self._flows) >= self.max_udp_flows:
                self.drops["tun_udp_flow_limit"] += 1
                return
            flow = self._flows[key] = _UdpFlow()
            flow.first = packet
            assert self._loop is not None
            flow.task = self._loop.create_task(self._serve(key, flow))
        self.stats["udp_to_tunnel"] += 1
        if flow.session is not None:
            flow.session.send(udp.payload)
        elif len(flow.pending) < _PENDING_LIMIT:
            flow.pending.append(udp.payload)
        else:
            self.drops["tun_udp_pending_overflow"] += 1

    def _too_big(self, packet: bytes, version: int) -> None:
        """A whole packet the tunnel cannot carry: count, log once per flow, answer."""
        self.drops["tun_too_big"] += 1
        src, dst = (packet[12:16], packet[16:20]) if version == 4 else (packet[8:24], packet[24:40])
        flow = (bytes(src), bytes(dst), packet[9] if version == 4 else packet[6])
        if flow not in self._told:
            if len(self._told) >= _TOLD_LIMIT:
                self._told.clear()
            self._told.add(flow)
            log.warning("dropping a %d-byte packet from %s to %s: the tunnel carries at most %d bytes; "
                        "answered with %s (mtu %d); further drops for this flow are only counted",
                        len(packet), ipaddress.ip_address(src), ipaddress.ip_address(dst), TUNNEL_MTU,
                        "Fragmentation Needed" if version == 4 else "Packet Too Big", TUNNEL_MTU,
                        extra={"event": "tun_packet_too_big", "src": str(ipaddress.ip_address(src)),
                               "dst": str(ipaddress.ip_address(dst)), "size": len(packet), "mtu": TUNNEL_MTU})
        self._answer(build_packet_too_big, packet, version, TUNNEL_MTU)

    def _answer(self, build: Callable[..., bytes], packet: bytes, version: int, arg: int) -> None:
        if not self._icmp_limiter.allow(0, self._clock()):
            self.drops["tun_icmp_error_rate_limited"] += 1
            return
        answer = build(ROUTER_V4 if version == 4 else ROUTER_V6, packet, arg)
        self.stats["icmp_errors_to_tun"] += self.tun.write_batch([answer])

    def _schedule_expiry(self) -> None:
        if self._expiry is not None or self._loop is None or not len(self.reassembly):
            return

        def tick() -> None:
            self._expiry = None
            self.expire_fragments()
            self._schedule_expiry()

        self._expiry = self._loop.call_later(1.0, tick)

    def expire_fragments(self) -> None:
        """Forget reassemblies past their time; answer those whose first fragment came with
        Time Exceeded (fragment reassembly time exceeded, code 1)."""
        for first in self.reassembly.expire(self._clock()):
            version = first[0] >> 4
            self._answer(lambda src, original, code: build_icmp_error(src, original, 11 if version == 4 else 3, code),
                         first, version, 1)

    async def _serve(self, key: FlowKey, flow: _UdpFlow) -> None:
        local, local_port, remote, remote_port = key
        try:
            try:
                flow.session = await self.opener.open_udp(str(ipaddress.ip_address(remote)), remote_port)
            except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
                self._refusal_log.warning("tun_udp_session_refused", self._clock(), "%s", exc)
                self.drops["tun_udp_session_refused"] += len(flow.pending)
                if getattr(exc, "code", None) == RESPONSE_DESTINATION_UNREACHABLE and flow.first:
                    # The edge or connector cannot reach it: say so to the program, as a
                    # router would (net unreachable: the socket gets ENETUNREACH at once).
                    self._answer(build_destination_unreachable, flow.first, flow.first[0] >> 4, 0)
                return
            for payload in flow.pending:
                flow.session.send(payload)
            flow.pending.clear()
            while True:
                payload = await flow.session.receive()
                self.stats["udp_to_tun"] += self.tun.write_batch(
                    [build_udp_packet(remote, local, remote_port, local_port, payload)])
        except (EOFError, ConnectionError):
            pass
        finally:
            if flow.session is not None:
                flow.session.close()
            if self._flows.get(key) is flow:
                del self._flows[key]
