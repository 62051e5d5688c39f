"""``fastproxy ping`` and ``fastproxy traceroute``: ICMP echo through the tunnel with no
root and no TUN device, printed the way iputils ``ping`` and ``traceroute -n`` (or
``mtr --report``) print it.

Both run over a :class:`~fastproxy.client.interfaces.PacketTunnel`; ``clock`` and
``sleep`` are parameters so tests drive them with a fake clock.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TextIO

from ..errors import MalformedPacket
from ..packet import PacketInfo, build_echo, parse_packet
from .interfaces import PacketTunnel

__all__ = [
    "EXIT_ERROR",
    "EXIT_NO_REPLY",
    "EXIT_OK",
    "PingStats",
    "TraceHop",
    "ToolError",
    "format_rtt",
    "icmp_error_text",
    "ping",
    "resolve_target",
    "source_for",
    "traceroute",
]

EXIT_OK = 0
EXIT_NO_REPLY = 1
EXIT_ERROR = 2

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

_TUNNEL_MTU = 1280
_ECHO_REPLY = {4: 0, 6: 129}
_TIME_EXCEEDED = {4: 11, 6: 3}
_UNREACHABLE = {4: 3, 6: 1}
_V4_UNREACHABLE = {
    0: "Destination Net Unreachable", 1: "Destination Host Unreachable", 2: "Destination Protocol Unreachable",
    3: "Destination Port Unreachable", 5: "Source Route Failed", 6: "Destination Net Unknown",
    7: "Destination Host Unknown", 9: "Destination Net Prohibited", 10: "Destination Host Prohibited",
    13: "Packet filtered",
}
_V6_UNREACHABLE = {0: "No route", 1: "Administratively prohibited", 2: "Beyond scope", 3: "Address unreachable",
                   4: "Port unreachable", 5: "Source address failed ingress/egress policy", 6: "Reject route"}
# traceroute's annotations after a probe's time.
_V4_FLAGS = {0: "!N", 1: "!H", 2: "!P", 4: "!F", 9: "!X", 10: "!X", 13: "!X"}
_V6_FLAGS = {0: "!N", 1: "!X", 3: "!H", 4: "!P"}


class ToolError(Exception):
    """A problem that stops a tool before it starts (exit status 2); the message says what."""


def icmp_error_text(info: PacketInfo) -> str:
    """iputils' wording for an ICMP error message."""
    kind, code = info.icmp_type, info.icmp_code
    if info.version == 4:
        if kind == 11:
            return "Time to live exceeded" if code == 0 else "Frag reassembly time exceeded"
        if kind == 3:
            if code == 4:
                return f"Frag needed and DF set (mtu = {info.mtu or 0})"
            return _V4_UNREACHABLE.get(code, f"Dest Unreachable, Bad Code: {code}")
        return f"Bad ICMP type: {kind}"
    if kind == 3:
        return "Time exceeded: Hop limit" if code == 0 else "Time exceeded: Defragmentation failure"
    if kind == 1:
        return "Destination unreachable: " + _V6_UNREACHABLE.get(code, f"Unknown code {code}")
    if kind == 2:
        return f"Packet too big: mtu={info.mtu or 0}"
    return f"Bad ICMP type: {kind}"


def format_rtt(seconds: float) -> str:
    """A round-trip time as iputils prints it: 3 significant-ish digits (``0.053``,
    ``1.23``, ``12.3``, ``123``)."""
    us = round(seconds * 1e6)
    if us >= 100000 - 50:
        return f"{(us + 500) // 1000}"
    if us >= 10000 - 5:
        return f"{(us + 50) // 1000}.{((us + 50) % 1000) // 100}"
    if us >= 1000:
        return f"{(us + 5) // 1000}.{((us + 5) % 1000) // 10:02d}"
    return f"{us // 1000}.{us % 1000:03d}"


async def resolve_target(host: str, tunnel: PacketTunnel) -> IpAddress:
    """``host`` as an address the tunnel can reach: a literal, or the first address the
    local resolver gives in a family the edge assigned this client."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    families = [f for f, a in ((socket.AF_INET, tunnel.address_v4), (socket.AF_INET6, tunnel.address_v6)) if a]
    loop = asyncio.get_running_loop()
    for family in families:
        try:
            infos = await loop.getaddrinfo(host, None, family=family, type=socket.SOCK_DGRAM)
        except socket.gaierror:
            continue
        if infos:
            return ipaddress.ip_address(infos[0][4][0])
    raise ToolError(f"{host}: Name or service not known")


def source_for(target: IpAddress, tunnel: PacketTunnel) -> IpAddress:
    """The tunnel address to send from towards ``target`` (ToolError when the edge gave
    this client no address of that family)."""
    source = tunnel.address_v4 if target.version == 4 else tunnel.address_v6
    if source is None:
        raise ToolError(f"the edge assigned this client no IPv{target.version} address; cannot reach {target}")
    return source


_ROUTE_WAIT = 5.0
"""Seconds a tool waits for the edge to allow a route to its target (a connector may
still be coming up) before it gives up."""


async def _await_route(target: IpAddress, tunnel: PacketTunnel) -> None:
    """Return once the tunnel has a route to ``target`` (at once if it has one); ToolError
    after _ROUTE_WAIT seconds without. A tunnel that cannot say (no ``wait_for_route``,
    as fakes) is taken to have one."""
    wait = getattr(tunnel, "wait_for_route", None)
    if wait is not None:
        try:
            await wait(target, _ROUTE_WAIT)
        except asyncio.TimeoutError as exc:  # fastproxy.NoRouteError says what the edge allows
            raise ToolError(str(exc) or f"no route to {target} through the tunnel") from None


def _payload(size: int) -> bytes:
    return bytes((0x10 + i) & 0xFF for i in range(size))


def _echo_id() -> int:
    # Like iputils: the process id, so two tools running at once tell their replies apart.
    return (os.getpid() ^ int.from_bytes(os.urandom(2), "big")) & 0xFFFF


@dataclass
class _Answer:
    info: PacketInfo
    at: float


class _Listener:
    """Reads the tunnel, keeps the packets that answer our echo id (replies, or ICMP
    errors quoting our requests), and wakes whoever waits."""

    def __init__(self, tunnel: PacketTunnel, target: IpAddress, echo_id: int, clock: Clock, sleep: Sleep,
                 stop: asyncio.Event | None = None) -> None:
        self._tunnel = tunnel
        self._target = target.packed
        self._echo_id = echo_id
        self._clock = clock
        self._sleep = sleep
        self._stop = stop
        self.answers: asyncio.Queue[_Answer] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def __enter__(self) -> _Listener:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            packet = await self._tunnel.receive_packet()
            try:
                info = parse_packet(packet)
            except MalformedPacket:
                continue
            if self._ours(info):
                self.answers.put_nowait(_Answer(info, self._clock()))

    def _ours(self, info: PacketInfo) -> bool:
        if info.icmp_type == _ECHO_REPLY[info.version]:
            return info.echo_id == self._echo_id and info.src == self._target
        inner = info.inner
        return inner is not None and inner.echo_id == self._echo_id and inner.dst == self._target

    async def next(self, deadline: float) -> _Answer | None:
        """The next answer, or None once ``deadline`` (on the tool's clock) has passed or
        the stop event is set."""
        if not self.answers.empty():
            return self.answers.get_nowait()
        remaining = deadline - self._clock()
        if remaining <= 0 or (self._stop is not None and self._stop.is_set()):
            return None
        # The timer is the tool's own sleep, so a fake clock drives timeouts in tests.
        getter = asyncio.ensure_future(self.answers.get())
        waiters = {getter, asyncio.ensure_future(self._sleep(remaining))}
        if self._stop is not None:
            waiters.add(asyncio.ensure_future(self._stop.wait()))
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return getter.result() if getter in done else None


@dataclass
class PingStats:
    """What a ping run counted (``rtts`` in seconds)."""

    transmitted: int = 0
    received: int = 0
    errors: int = 0
    rtts: list[float] = field(default_factory=list)


async def ping(
    tunnel: PacketTunnel,
    host: str,
    *,
    count: int | None = None,
    interval: float = 1.0,
    ttl: int = 64,
    size: int = 56,
    timeout: float = 10.0,
    out: TextIO,
    stop: asyncio.Event | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    echo_id: int | None = None,
    on_rtt: Callable[[float], None] | None = None,
) -> int:
    """Ping ``host`` through ``tunnel`` and print as iputils does; returns the exit status
    (0 some reply, 1 none, 2 error). ``count`` None: until ``stop`` is set. ``timeout``:
    how long to wait for the last replies (the run ends early once all are in).
    ``on_rtt`` sees each round-trip time in seconds (for an RTT histogram)."""
    try:
        target = await resolve_target(host, tunnel)
        source = source_for(target, tunnel)
        limit = _TUNNEL_MTU - (20 if target.version == 4 else 40) - 8
        if not 0 <= size <= limit:
            raise ToolError(f"packet size {size} is too large for the tunnel (at most {limit} bytes of data)")
        if not 1 <= ttl <= 255:
            raise ToolError(f"ttl {ttl} out of range (1-255)")
        await _await_route(target, tunnel)
    except ToolError as exc:
        print(f"fastproxy ping: {exc}", file=out)
        return EXIT_ERROR
    echo_id = _echo_id() if echo_id is None else echo_id
    stop = stop or asyncio.Event()
    payload = _payload(size)
    header = 20 if target.version == 4 else 40
    if target.version == 4:
        print(f"PING {host} ({target}) {size}({size + 8 + header}) bytes of data.", file=out)
    else:
        print(f"PING {host} ({target}) {size} data bytes", file=out)
    stats = PingStats()
    sent_at: dict[int, float] = {}
    start = clock()
    finish = start
    with _Listener(tunnel, target, echo_id, clock, sleep, stop) as listener:

        def report(answer: _Answer) -> None:
            nonlocal finish
            info = answer.info
            seq = info.echo_seq if info.inner is None else info.inner.echo_seq
            if seq is None or seq not in sent_at:
                return
            finish = answer.at
            if info.inner is None:
                rtt = answer.at - sent_at.pop(seq)
                stats.received += 1
                stats.rtts.append(rtt)
                if on_rtt is not None:
                    on_rtt(rtt)
                length = info.total_length - info.header_length
                print(f"{length} bytes from {target}: icmp_seq={seq} ttl={info.ttl} time={format_rtt(rtt)} ms",
                      file=out)
            else:
                del sent_at[seq]
                stats.errors += 1
                print(f"From {ipaddress.ip_address(info.src)} icmp_seq={seq} {icmp_error_text(info)}", file=out)

        seq = 0
        while count is None or seq < count:
            if stop.is_set():
                break
            seq += 1
            wire_seq = seq & 0xFFFF
            sent_at[wire_seq] = clock()
            tunnel.send_packets([build_echo(source.packed, target.packed, echo_id, wire_seq, payload, ttl=ttl)])
            stats.transmitted += 1
            finish = max(finish, sent_at[wire_seq])
            last = count is not None and seq >= count
            deadline = sent_at[wire_seq] + (timeout if last else interval)
            while not stop.is_set():
                if last and not sent_at:
                    break
                answer = await listener.next(deadline)
                if answer is None:
                    break
                report(answer)
        while not listener.answers.empty():
            report(listener.answers.get_nowait())
    _print_ping_summary(host, stats, finish - start, out)
    return EXIT_OK if stats.received else EXIT_NO_REPLY


def _print_ping_summary(host: str, stats: PingStats, elapsed: float, out: TextIO) -> None:
    print(f"\n--- {host} ping statistics ---", file=out)
    parts = [f"{stats.transmitted} packets transmitted", f"{stats.received} received"]
    if stats.errors:
        parts.append(f"+{stats.errors} errors")
    if stats.transmitted:
        loss = (stats.transmitted - stats.received) * 100.0 / stats.transmitted
        parts.append(f"{loss:g}% packet loss")
    parts.append(f"time {round(elapsed * 1000)}ms")
    print(", ".join(parts), file=out)
    if stats.rtts:
        ms = [r * 1000 for r in stats.rtts]
        mean = sum(ms) / len(ms)
        mdev = math.sqrt(max(sum(m * m for m in ms) / len(ms) - mean * mean, 0.0))
        print(f"rtt min/avg/max/mdev = {min(ms):.3f}/{mean:.3f}/{max(ms):.3f}/{mdev:.3f} ms", file=out)


@dataclass
class TraceHop:
    """One TTL's results: per probe the answering address and RTT (None: no answer)."""

    ttl: int
    probes: list[tuple[IpAddress, float, str] | None] = field(default_factory=list)
    reached: bool = False

    @property
    def sent(self) -> int:
        return len(self.probes)


async def _probe_round(
    tunnel: PacketTunnel, listener: _Listener, source: IpAddress, target: IpAddress, echo_id: int,
    ttls: list[int], queries: int, payload: bytes, wait: float, clock: Clock, seq_base: int,
) -> dict[int, list[tuple[IpAddress, float, str] | None]]:
    """Send ``queries`` probes for each TTL at once, collect answers until all are in or
    ``wait`` has passed. Sequence numbers encode (ttl, query) from ``seq_base``."""
    packets, pending = [], {}
    start = clock()
    for ttl in ttls:
        for query in range(queries):
            seq = (seq_base + ttl * queries + query) & 0xFFFF
            pending[seq] = (ttl, query)
            packets.append(build_echo(source.packed, target.packed, echo_id, seq, payload, ttl=ttl))
    results: dict[int, list[tuple[IpAddress, float, str] | None]] = {t: [None] * queries for t in ttls}
    tunnel.send_packets(packets)
    deadline = start + wait
    while pending:
        answer = await listener.next(deadline)
        if answer is None:
            break
        info = answer.info
        seq = info.echo_seq if info.inner is None else info.inner.echo_seq
        slot = pending.pop(seq, None) if seq is not None else None
        if slot is None:
            continue
        flag = ""
        if info.inner is not None and info.icmp_type == _UNREACHABLE[info.version]:
            flags = _V4_FLAGS if info.version == 4 else _V6_FLAGS
            flag = flags.get(info.icmp_code, f"!<{info.icmp_code}>")
        elif info.inner is None:
            flag = "reached"
        results[slot[0]][slot[1]] = (ipaddress.ip_address(info.src), answer.at - start, flag)
    return results


async def traceroute(
    tunnel: PacketTunnel,
    host: str,
    *,
    max_hops: int = 30,
    queries: int = 3,
    wait: float = 3.0,
    report: bool = False,
    cycles: int = 10,
    out: TextIO,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    echo_id: int | None = None,
    local_name: str | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> int:
    """Trace the path to ``host`` with echo requests of growing TTL and print it as
    ``traceroute -n`` does (or, with ``report``, as ``mtr --report`` does after
    ``cycles`` rounds). Returns 0 when the target answered, 1 when not, 2 on error."""
    try:
        target = await resolve_target(host, tunnel)
        source = source_for(target, tunnel)
        if not 1 <= max_hops <= 255:
            raise ToolError(f"max hops {max_hops} out of range (1-255)")
        await _await_route(target, tunnel)
    except ToolError as exc:
        print(f"fastproxy traceroute: {exc}", file=out)
        return EXIT_ERROR
    echo_id = _echo_id() if echo_id is None else echo_id
    header = 20 if target.version == 4 else 40
    payload = _payload(60 - header - 8 if target.version == 4 else 80 - header - 8)
    with _Listener(tunnel, target, echo_id, clock, sleep) as listener:
        if report:
            return await _report(tunnel, listener, source, target, echo_id, max_hops, cycles, payload, wait,
                                 clock, out, local_name or socket.gethostname(), now)
        print(f"traceroute to {host} ({target}), {max_hops} hops max, {header + 8 + len(payload)} byte packets",
              file=out)
        for ttl in range(1, max_hops + 1):
            results = await _probe_round(tunnel, listener, source, target, echo_id, [ttl], queries, payload, wait,
                                         clock, 0)
            hop = TraceHop(ttl, results[ttl])
            print(_hop_line(hop), file=out)
            answered = [p for p in hop.probes if p is not None]
            if any(p[2] == "reached" for p in answered):
                return EXIT_OK
            if answered and all(p[2] for p in answered):  # unreachable: nothing lies beyond
                return EXIT_NO_REPLY
    return EXIT_NO_REPLY


def _hop_line(hop: TraceHop) -> str:
    line = f"{hop.ttl:2d} "
    shown: IpAddress | None = None
    for probe in hop.probes:
        if probe is None:
            line += " *"
            continue
        address, rtt, flag = probe
        if address != shown:
            line += f" {address}"
            shown = address
        line += f"  {rtt * 1000:.3f} ms"
        if flag and flag != "reached":
            line += f" {flag}"
    return line


async def _report(
    tunnel: PacketTunnel, listener: _Listener, source: IpAddress, target: IpAddress, echo_id: int,
    max_hops: int, cycles: int, payload: bytes, wait: float, clock: Clock, out: TextIO, local_name: str,
    now: Callable[[], datetime],
) -> int:
    started = now()
    hops = list(range(1, max_hops + 1))
    sent = dict.fromkeys(hops, 0)
    rtts: dict[int, list[float]] = {t: [] for t in hops}
    last: dict[int, float] = {}
    names: dict[int, dict[IpAddress, int]] = {t: {} for t in hops}
    end = max_hops
    for cycle in range(cycles):
        ttls = [t for t in hops if t <= end]
        results = await _probe_round(tunnel, listener, source, target, echo_id, ttls, 1, payload, wait, clock,
                                     (cycle * max_hops) & 0xFFFF)
        for ttl, (probe,) in results.items():
            sent[ttl] += 1
            if probe is None:
                continue
            address, rtt, flag = probe
            rtts[ttl].append(rtt * 1000)
            last[ttl] = rtt * 1000
            names[ttl][address] = names[ttl].get(address, 0) + 1
            if flag:  # the target (or an unreachable error): nothing lies beyond
                end = min(end, ttl)
    print(f"Start: {started.strftime('%Y-%m-%dT%H:%M:%S%z')}", file=out)
    print(f"{'HOST: ' + local_name:<33}{'Loss%':>6} {'Snt':>5} {'Last':>6} {'Avg':>6} {'Best':>6} {'Wrst':>6} "
          f"{'StDev':>6}", file=out)
    for ttl in range(1, end + 1):
        got = rtts[ttl]
        name = str(max(names[ttl], key=names[ttl].__getitem__)) if names[ttl] else "???"
        loss = 100.0 * (sent[ttl] - len(got)) / sent[ttl] if sent[ttl] else 0.0
        avg = sum(got) / len(got) if got else 0.0
        stdev = statistics.stdev(got) if len(got) > 1 else 0.0
        print(f"{ttl:3d}.|-- {name:<25}{loss:5.1f}% {sent[ttl]:5d} {last.get(ttl, 0.0):6.1f} {avg:6.1f} "
              f"{min(got, default=0.0):6.1f} {max(got, default=0.0):6.1f} {stdev:6.1f}", file=out)
    reached = bool(names[end]) and target in names[end]
    return EXIT_OK if reached else EXIT_NO_REPLY
