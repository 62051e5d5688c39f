"""The TUN bridge of ``fastproxy client``: packets that local programs send into the TUN
device go through the tunnel, and what comes back is written to the device.

- ICMP echo requests (what ``ping``, ``traceroute -I`` and ``mtr`` send) go as whole IP
  packets; ICMP answers come back the same way, in batches both ways.
- UDP packets become UDP sessions, one per (local address, local port, remote address,
  remote port); answers are turned back into UDP packets.
- Anything else (TCP, neighbour discovery...) is dropped and counted by reason.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter
from typing import Any

from .interfaces import PacketTunnel, UdpSessionOpener
from .tun import TunDevice
from .udp_packets import build_udp_packet, parse_udp_packet

__all__ = ["TunBridge"]

log = logging.getLogger("fastproxy.client.bridge")

_ECHO_REQUEST = {4: 8, 6: 128}
_ICMP = {4: 1, 6: 58}
_PENDING_LIMIT = 64

FlowKey = tuple[bytes, int, bytes, int]


class _UdpFlow:
    __slots__ = ("session", "pending", "task")

    def __init__(self) -> None:
        self.session: Any = None
        self.pending: list[bytes] = []
        self.task: asyncio.Task[None] | None = None


class TunBridge:
    """Moves packets between ``tun`` and ``client`` (a PacketTunnel that also opens UDP
    sessions, such as :class:`fastproxy.Client`). ``start()`` watches the device;
    ``from_tunnel`` is the client's ``on_packets`` callback. Counters: ``stats``, and
    ``drops`` — the client's own drop counter when it has one, so the metrics show them
    as ``fastproxy_drops_total{component="client",reason="tun_..."}``."""

    def __init__(self, tun: TunDevice, client: Any, *, max_udp_flows: int = 1024) -> None:
        self.tun = tun
        self.client: PacketTunnel = client
        self.opener: UdpSessionOpener = client
        self.max_udp_flows = max_udp_flows
        self._flows: dict[FlowKey, _UdpFlow] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats: Counter[str] = Counter()
        drops = getattr(client, "drops", None)
        self.drops: Counter[str] = drops if isinstance(drops, Counter) else Counter()

    def start(self) -> None:
        """Read the device whenever it has packets."""
        self._loop = asyncio.get_running_loop()
        assert self.tun.fd is not None
        self._loop.add_reader(self.tun.fd, self._on_readable)

    def close(self) -> None:
        """Stop reading and end every UDP session (the device is the caller's to close)."""
        if self._loop is not None and self.tun.fd is not None:
            self._loop.remove_reader(self.tun.fd)
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
        icmp: list[bytes] = []
        for packet in self.tun.read_batch():
            version = packet[0] >> 4 if packet else 0
            if version == 4 and len(packet) >= 20 and packet[9] == 1:
                ihl = (packet[0] & 0x0F) * 4
                kind = packet[ihl] if len(packet) > ihl else -1
            elif version == 6 and len(packet) >= 41 and packet[6] == 58:
                kind = packet[40]
            else:
                self._udp(packet)
                continue
            if kind == _ECHO_REQUEST[version]:
                icmp.append(packet)
            else:
                self.drops["tun_icmp_not_echo_request"] += 1
        if icmp:
            self.stats["icmp_to_tunnel"] += len(icmp)
            self.client.send_packets(icmp)

    def _udp(self, packet: bytes) -> None:
        udp = parse_udp_packet(packet)
        if udp is None:
            self.drops["tun_not_icmp_or_udp"] += 1
            return
        key = (udp.src, udp.src_port, udp.dst, udp.dst_port)
        flow = self._flows.get(key)
        if flow is None:
            if len(self._flows) >= self.max_udp_flows:
                self.drops["tun_udp_flow_limit"] += 1
                return
            flow = self._flows[key] = _UdpFlow()
            assert self._loop is not None
            flow.task = self._loop.create_task(self._serve(key, flow))
        self.stats["udp_to_tunnel"] += 1
        if flow.session is not None:
            flow.session.send(udp.payload)
        elif len(flow.pending) < _PENDING_LIMIT:
            flow.pending.append(udp.payload)
        else:
            self.drops["tun_udp_pending_overflow"] += 1

    async def _serve(self, key: FlowKey, flow: _UdpFlow) -> None:
        local, local_port, remote, remote_port = key
        try:
            try:
                flow.session = await self.opener.open_udp(str(ipaddress.ip_address(remote)), remote_port)
            except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
                log.debug("UDP session to %s:%d refused: %s", ipaddress.ip_address(remote), remote_port, exc)
                self.drops["tun_udp_session_refused"] += len(flow.pending)
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
