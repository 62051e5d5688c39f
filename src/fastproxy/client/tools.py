"""``fastproxy ping`` and ``fastproxy traceroute``: ICMP echo through the tunnel with no
root and no TUN device, printed the way iputils ``ping`` and ``traceroute -n`` (or
``mtr --report`` / ``mtr --json``) print it, with the flags people know from them.

Both run over a :class:`~fastproxy.client.interfaces.PacketTunnel`; ``clock`` and
``sleep`` are parameters so tests drive them with a fake clock. :func:`check_ping_flags`
and :func:`check_traceroute_flags` turn the flags as typed into options (or a ToolError
worded as iputils / traceroute word it) before anything is sent.

Host names are resolved on this machine (its own resolver), unless ``resolver`` names a
DNS server inside the private network: then they are asked of it through the tunnel.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import os
import re
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TextIO

from ..errors import MalformedPacket
from ..packet import PacketInfo, build_echo, parse_packet
from .interfaces import PacketTunnel

__all__ = [
    "EXIT_ERROR",
    "EXIT_NO_REPLY",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "PingOptions",
    "PingStats",
    "TracerouteOptions",
    "TraceHop",
    "ToolError",
    "check_ping_flags",
    "check_traceroute_flags",
    "format_rtt",
    "icmp_error_text",
    "is_privileged",
    "literal_address",
    "ping",
    "resolve_target",
    "source_for",
    "traceroute",
]

EXIT_OK = 0
EXIT_NO_REPLY = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what the shell shows for traceroute stopped by Ctrl-C

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


def literal_address(host: str) -> IpAddress | None:
    """``host`` as an IP address literal (IPv6 may be in brackets: ``[::1]``), or None
    when it is a name."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _family_error(host: str) -> ToolError:
    return ToolError(f"{host}: Address family for hostname not supported")


async def resolve_target(host: str, tunnel: PacketTunnel, *, family: int | None = None,
                         resolver: IpAddress | None = None) -> IpAddress:
    """``host`` as an address the tunnel can reach: a literal (``[v6]`` too), or the first
    address of a family the edge assigned this client (``family`` 4 or 6: only that one).
    Names are resolved on this machine, or with ``resolver``: by that DNS server inside
    the private network, asked through the tunnel (``tunnel`` must then open UDP sessions)."""
    literal = literal_address(host)
    if literal is not None:
        if family is not None and literal.version != family:
            raise _family_error(host)
        return literal
    if host.startswith("["):
        raise ToolError(f"{host}: Name or service not known (brackets hold an IPv6 address, not a name)")
    assigned = [v for v, a in ((4, tunnel.address_v4), (6, tunnel.address_v6)) if a is not None]
    versions = [family] if family is not None else assigned
    if resolver is not None:
        return await _resolve_remote(host, tunnel, versions, resolver)
    loop = asyncio.get_running_loop()
    for version in versions:
        try:
            infos = await loop.getaddrinfo(host, None, family=socket.AF_INET if version == 4 else socket.AF_INET6,
                                           type=socket.SOCK_DGRAM)
        except socket.gaierror:
            continue
        if infos:
            return ipaddress.ip_address(infos[0][4][0])
    raise ToolError(f"{host}: Name or service not known (resolved on this machine; "
                    "--resolver IP asks a DNS server in the private network)")


async def _resolve_remote(host: str, tunnel: Any, versions: list[int], resolver: IpAddress) -> IpAddress:
    from .dns import TYPE_A, TYPE_AAAA, RCODE_NXDOMAIN, DnsError, resolve_through_tunnel

    if not hasattr(tunnel, "open_udp"):
        raise ToolError("--resolver needs a tunnel that carries UDP sessions")
    for version in versions:
        try:
            answer = await resolve_through_tunnel(tunnel, resolver, host, TYPE_A if version == 4 else TYPE_AAAA)
        except DnsError as exc:
            raise ToolError(f"{host}: {exc}") from None
        if answer.addresses:
            return answer.addresses[0]
        if answer.rcode == RCODE_NXDOMAIN:
            break  # no such name: no other type will have it either
    raise ToolError(f"{host}: Name or service not known (asked the resolver {resolver} through the tunnel)")


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


def _payload(size: int, pattern: bytes | None = None) -> bytes:
    if pattern:
        return (pattern * (size // len(pattern) + 1))[:size]
    return bytes((0x10 + i) & 0xFF for i in range(size))


def _echo_id() -> int:
    # Like iputils: the process id, so two tools running at once tell their replies apart.
    return (os.getpid() ^ int.from_bytes(os.urandom(2), "big")) & 0xFFFF


# -- flags as typed -------------------------------------------------------------------

_LONG_MAX = 2**63 - 1
_INT_MAX = 2**31 - 1
_MIN_USER_INTERVAL = 0.002  # iputils: "minimal interval allowed for user is 2ms"
_CAP_NET_RAW = 13
_DECIMAL = re.compile(r"[+-]?[0-9]+")


def _iputils_int(text: str, low: int, high: int) -> int:
    """An integer flag value checked as iputils' strtol_or_err checks it (same messages)."""
    if not _DECIMAL.fullmatch(text):
        raise ToolError(f"invalid argument: '{text}'")
    value = int(text)
    if not low <= value <= high:
        raise ToolError(f"invalid argument: '{text}': out of range: {low} <= value <= {high}")
    return value


def _iputils_float(text: str) -> float:
    """A seconds flag value; iputils only warns about garbage ("this will become fatal
    error in the future"): here it is fatal already."""
    try:
        value = float(text)
    except ValueError:
        raise ToolError(f"option argument contains garbage: {text}") from None
    if not math.isfinite(value):
        raise ToolError(f"option argument contains garbage: {text}")
    return value


def _pattern(text: str) -> bytes:
    """``-p`` as iputils reads it: hex digits two at a time, at most 16 bytes."""
    if not text or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ToolError(f"patterns must be specified as hex digits: {text}")
    return bytes(int(text[i:i + 2], 16) for i in range(0, min(len(text), 32), 2))


def is_privileged() -> bool:
    """Root, or CAP_NET_RAW in the effective set: who may flood and send faster than every
    2 ms, as with iputils."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_NET_RAW & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _family(v4: bool, v6: bool, host: str) -> int | None:
    if v4 and v6:
        raise ToolError("only one -4 or -6 option may be specified")
    family = 4 if v4 else 6 if v6 else None
    literal = literal_address(host)
    if family is not None and literal is not None and literal.version != family:
        raise _family_error(host)
    return family


@dataclass(frozen=True)
class PingOptions:
    """Checked ``fastproxy ping`` settings: exactly the keyword arguments of :func:`ping`."""

    count: int | None = None
    interval: float = 1.0
    ttl: int = 64
    size: int = 56
    timeout: float = 10.0
    deadline: float | None = None
    flood: bool = False
    quiet: bool = False
    timestamps: bool = False
    outstanding: bool = False
    pattern: bytes | None = None
    family: int | None = None


def check_ping_flags(
    host: str, *, count: str | None = None, interval: str | None = None, ttl: str | None = None,
    size: str | None = None, timeout: str | None = None, deadline: str | None = None, pattern: str | None = None,
    flood: bool = False, quiet: bool = False, timestamps: bool = False, outstanding: bool = False,
    v4: bool = False, v6: bool = False, privileged: bool | None = None,
) -> PingOptions:
    """The ping flags as typed (strings) checked as iputils ping checks them, with its
    messages; ToolError on the first bad one. ``privileged`` None: ask :func:`is_privileged`."""
    family = _family(v4, v6, host)
    options: dict[str, Any] = {"flood": flood, "quiet": quiet, "timestamps": timestamps,
                               "outstanding": outstanding, "family": family}
    if count is not None:
        options["count"] = _iputils_int(count, 1, _LONG_MAX)
    if interval is not None:
        seconds = _iputils_float(interval)
        if seconds < 0 or seconds > _INT_MAX // 1000:
            raise ToolError(f"bad timing interval: {interval}")
        options["interval"] = seconds
    elif flood:
        options["interval"] = 0.0  # as fast as the replies come, or 100 a second
    if options.get("interval", 1.0) < _MIN_USER_INTERVAL and not (is_privileged() if privileged is None
                                                                  else privileged):
        raise ToolError("cannot flood; minimal interval allowed for user is 2ms")
    if ttl is not None:
        options["ttl"] = _iputils_int(ttl, 0, 255)
        if options["ttl"] == 0:
            raise ToolError("cannot set unicast time-to-live: Invalid argument")
    if size is not None:
        options["size"] = _iputils_int(size, 0, _INT_MAX)
    if timeout is not None:
        options["timeout"] = _iputils_float(timeout)
        if options["timeout"] < 0 or options["timeout"] > _INT_MAX // 1000:
            raise ToolError(f"bad linger time: {timeout}")
    if deadline is not None:
        options["deadline"] = _iputils_int(deadline, 0, _INT_MAX) or None  # -w 0: no deadline
    if pattern is not None:
        options["pattern"] = _pattern(pattern)
    return PingOptions(**options)


@dataclass(frozen=True)
class TracerouteOptions:
    """Checked ``fastproxy traceroute`` settings: exactly the keyword arguments of :func:`traceroute`."""

    first_ttl: int = 1
    max_hops: int = 30
    queries: int = 3
    wait: float = 3.0
    in_flight: int = 16
    report: bool = False
    json_output: bool = False
    cycles: int = 10
    family: int | None = None


def check_traceroute_flags(
    host: str, *, first_ttl: int = 1, max_hops: int = 30, queries: int = 3, wait: float = 3.0, in_flight: int = 16,
    report: bool = False, json_output: bool = False, cycles: int | None = None, v4: bool = False, v6: bool = False,
) -> TracerouteOptions:
    """The traceroute flags checked (traceroute's limits, with messages that say which flag);
    ToolError on the first bad one. ``cycles`` None: -c not given."""
    family = _family(v4, v6, host)
    if not 1 <= max_hops <= 255:
        raise ToolError(f"-m {max_hops}: max hops must be 1-255 (traceroute: max hops cannot be more than 255)")
    if not 1 <= first_ttl <= max_hops:
        raise ToolError(f"-f {first_ttl}: first hop out of range (1 to the max hops, -m {max_hops})")
    if not 1 <= queries <= 10:
        raise ToolError(f"-q {queries}: probes per hop must be 1-10")
    if not (math.isfinite(wait) and wait > 0):
        raise ToolError(f"-w {wait:g}: the wait must be a positive number of seconds")
    if in_flight < 1:
        raise ToolError(f"-N {in_flight}: simultaneous probes must be at least 1")
    report = report or json_output
    if cycles is not None and not report:
        raise ToolError("-c COUNT is the number of rounds of --report (or --json); without them traceroute "
                        "sends -q probes per hop once: add --report, or use -q")
    if cycles is not None and cycles < 1:
        raise ToolError(f"-c {cycles}: rounds must be at least 1")
    return TracerouteOptions(first_ttl, max_hops, queries, wait, in_flight, report, json_output,
                             10 if cycles is None else cycles, family)


# -- reading answers --------------------------------------------------------------------


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


# -- ping ---------------------------------------------------------------------------------


@dataclass
class PingStats:
    """What a ping run counted (``rtts`` in seconds)."""

    transmitted: int = 0
    received: int = 0
    errors: int = 0
    rtts: list[float] = field(default_factory=list)


_FLOOD_GAP = 0.01  # iputils -f: the next request when the reply is in, or after 10 ms


async def ping(
    tunnel: PacketTunnel,
    host: str,
    *,
    count: int | None = None,
    interval: float = 1.0,
    ttl: int = 64,
    size: int = 56,
    timeout: float = 10.0,
    deadline: float | None = None,
    flood: bool = False,
    quiet: bool = False,
    timestamps: bool = False,
    outstanding: bool = False,
    pattern: bytes | None = None,
    family: int | None = None,
    resolver: IpAddress | None = None,
    out: TextIO,
    err: TextIO | None = None,
    stop: asyncio.Event | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    wall_clock: Clock = time.time,
    echo_id: int | None = None,
    on_rtt: Callable[[float], None] | None = None,
) -> int:
    """Ping ``host`` through ``tunnel`` and print as iputils does; returns the exit status
    (0 some reply, 1 none, or with ``deadline`` and ``count`` fewer than ``count``; 2 error).

    ``count`` None: until ``stop`` is set (or ``deadline`` seconds have passed). With a
    ``deadline``, requests go on until ``count`` have been answered (iputils ``-w``).
    ``timeout``: how long to wait for the last reply (iputils ``-W``). ``interval`` 0: the
    next request as soon as the reply is in (at most 10 ms later). ``flood``: a dot per
    request and a backspace per reply instead of lines; ``quiet``: only the summary;
    ``timestamps``: lines start with the Unix time (``wall_clock``); ``outstanding``: say
    when a request is still unanswered as the next one goes; ``pattern``: fill the data
    with these bytes; ``family``: 4 or 6 only; ``resolver``: see :func:`resolve_target`.
    Errors go to ``err`` (default ``out``). ``on_rtt`` sees each round-trip time in seconds.
    """
    err = err or out
    try:
        target = await resolve_target(host, tunnel, family=family, resolver=resolver)
        source = source_for(target, tunnel)
        limit = _TUNNEL_MTU - (20 if target.version == 4 else 40) - 8
        if not 0 <= size <= limit:
            raise ToolError(f"packet size {size} is too large for the tunnel (at most {limit} bytes of data)")
        if not 1 <= ttl <= 255:
            raise ToolError(f"ttl {ttl} out of range (1-255)")
        await _await_route(target, tunnel)
    except ToolError as exc:
        print(f"fastproxy ping: {exc}", file=err, flush=True)
        return EXIT_ERROR
    shown = host[1:-1] if host.startswith("[") else host
    echo_id = _echo_id() if echo_id is None else echo_id
    stop = stop or asyncio.Event()
    payload = _payload(size, pattern)
    header = 20 if target.version == 4 else 40
    if pattern:
        print(f"PATTERN: 0x{pattern.hex()}", file=out)
    if target.version == 4:
        print(f"PING {shown} ({target}) {size}({size + 8 + header}) bytes of data.", file=out, flush=True)
    else:
        print(f"PING {shown} ({target}) {size} data bytes", file=out, flush=True)
    stats = PingStats()
    ewma = 0.0
    sent_at: dict[int, float] = {}
    start = clock()
    finish = start
    deadline_at = start + deadline if deadline else None
    gap = interval if interval > 0 else _FLOOD_GAP

    def say(text: str) -> None:
        if quiet or flood:
            return
        stamp = f"[{wall_clock():.6f}] " if timestamps else ""
        out.write(f"{stamp}{text}\n")
        out.flush()

    def dot(text: str) -> None:
        if flood and not quiet:
            out.write(text)
            out.flush()

    with _Listener(tunnel, target, echo_id, clock, sleep, stop) as listener:

        def report(answer: _Answer) -> None:
            nonlocal finish, ewma
            info = answer.info
            seq = info.echo_seq if info.inner is None else info.inner.echo_seq
            if seq is None or seq not in sent_at:
                return
            finish = answer.at
            if info.inner is None:
                rtt = answer.at - sent_at.pop(seq)
                stats.received += 1
                stats.rtts.append(rtt)
                ewma = rtt if len(stats.rtts) == 1 else ewma + (rtt - ewma) / 8  # iputils' rtt/8 average
                if on_rtt is not None:
                    on_rtt(rtt)
                length = info.total_length - info.header_length
                say(f"{length} bytes from {target}: icmp_seq={seq} ttl={info.ttl} time={format_rtt(rtt)} ms")
                dot("\b \b")
            else:
                del sent_at[seq]
                stats.errors += 1
                say(f"From {ipaddress.ip_address(info.src)} icmp_seq={seq} {icmp_error_text(info)}")
                dot("\bE")

        def done() -> bool:
            if stop.is_set() or (deadline_at is not None and (clock() >= deadline_at or stats.errors)):
                return True  # iputils -w also ends at the first error
            if count is None:
                return False
            # With -w, -c counts answers; without, requests.
            return stats.received + stats.errors >= count if deadline_at is not None else seq >= count

        seq = 0
        while not done():
            if outstanding and seq and (seq & 0xFFFF) in sent_at:
                say(f"no answer yet for icmp_seq={seq & 0xFFFF}")
            seq += 1
            wire_seq = seq & 0xFFFF
            sent_at[wire_seq] = clock()
            tunnel.send_packets([build_echo(source.packed, target.packed, echo_id, wire_seq, payload, ttl=ttl)])
            stats.transmitted += 1
            dot(".")
            finish = max(finish, sent_at[wire_seq])
            last = count is not None and deadline_at is None and seq >= count
            wait_until = sent_at[wire_seq] + (timeout if last else gap)
            if deadline_at is not None:
                wait_until = min(wait_until, deadline_at)
            while not stop.is_set():
                if (last or interval <= 0) and wire_seq not in sent_at:
                    break  # the reply is in: no more to wait for (-c), or the next goes now (-f, -i 0)
                answer = await listener.next(wait_until)
                if answer is None:
                    break
                report(answer)
                if done() and deadline_at is not None:
                    break
        while not listener.answers.empty():
            report(listener.answers.get_nowait())
    if deadline_at is not None and clock() >= deadline_at:
        finish = deadline_at  # iputils: the time of a run the deadline ended is the deadline
    _print_ping_summary(shown, stats, finish - start, out, ewma if flood or interval <= 0 else None)
    short = deadline_at is not None and count is not None and stats.received < count
    return EXIT_OK if stats.received and not short else EXIT_NO_REPLY


def _print_ping_summary(host: str, stats: PingStats, elapsed: float, out: TextIO, ewma: float | None) -> None:
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
        line = f"rtt min/avg/max/mdev = {min(ms):.3f}/{mean:.3f}/{max(ms):.3f}/{mdev:.3f} ms"
        if ewma is not None:  # iputils adds the inter-packet gap and the moving average when flooding
            ipg = elapsed * 1000 / (stats.transmitted - 1) if stats.transmitted > 1 else 0.0
            line += f", ipg/ewma {ipg:.3f}/{ewma * 1000:.3f} ms"
        print(line, file=out)
    out.flush()


# -- traceroute -------------------------------------------------------------------------

Probe = tuple[IpAddress, float, str]
"""An answered probe: who answered, the round-trip time in seconds, and its flag
(``"reached"`` for the target's echo reply, ``"!H"``... for an unreachable, else ``""``)."""


@dataclass
class TraceHop:
    """One TTL's results: per probe the answering address and RTT (None: no answer)."""

    ttl: int
    probes: list[Probe | None] = field(default_factory=list)
    reached: bool = False

    @property
    def sent(self) -> int:
        return len(self.probes)


async def _run_probes(
    tunnel: PacketTunnel, listener: _Listener, source: IpAddress, target: IpAddress, echo_id: int,
    payload: bytes, *, ttls: list[int], queries: int, in_flight: int, wait: float, clock: Clock, seq_base: int,
    stop: asyncio.Event, on_result: Callable[[int, int, Probe | None], int],
) -> bool:
    """Send ``queries`` probes for each TTL in ``ttls`` (ascending), in that order, with at
    most ``in_flight`` unanswered at once (traceroute -N), each waiting ``wait`` seconds.
    Every answer or expiry goes to ``on_result(ttl, query, probe or None)``, which returns
    the highest TTL still worth probing (lowered once the target answered: probes above it
    are neither sent nor waited for). Returns False when ``stop`` cut the run short.
    Sequence numbers are ``seq_base`` + the probe's index."""
    slots = [(ttl, query) for ttl in ttls for query in range(queries)]
    pending: dict[int, tuple[int, int, int, float]] = {}  # seq -> (index, ttl, query, sent at)
    limit = ttls[-1] if ttls else 0
    index = 0
    while True:
        packets = []
        now = clock()
        while len(pending) < in_flight and index < len(slots) and slots[index][0] <= limit and not stop.is_set():
            ttl, query = slots[index]
            seq = (seq_base + index) & 0xFFFF
            pending[seq] = (index, ttl, query, now)
            packets.append(build_echo(source.packed, target.packed, echo_id, seq, payload, ttl=ttl))
            index += 1
        if packets:
            tunnel.send_packets(packets)
        for seq in [s for s, p in pending.items() if p[1] > limit]:
            del pending[seq]
        if stop.is_set():
            return False
        if not pending:
            return True
        deadline = min(p[3] for p in pending.values()) + wait
        answer = await listener.next(deadline)
        if answer is None:
            if stop.is_set():
                return False
            now = max(clock(), deadline)
            for seq, (_, ttl, query, sent) in sorted(pending.items(), key=lambda item: item[1][0]):
                if sent + wait <= now:
                    del pending[seq]
                    limit = min(limit, on_result(ttl, query, None))
            continue
        info = answer.info
        seq = info.echo_seq if info.inner is None else info.inner.echo_seq
        slot = pending.pop(seq, None) if seq is not None else None
        if slot is None:
            continue  # a late answer to a probe already given up on
        flag = ""
        if info.inner is not None and info.icmp_type == _UNREACHABLE[info.version]:
            flags = _V4_FLAGS if info.version == 4 else _V6_FLAGS
            flag = flags.get(info.icmp_code, f"!<{info.icmp_code}>")
        elif info.inner is None:
            flag = "reached"
        limit = min(limit, on_result(slot[1], slot[2], (ipaddress.ip_address(info.src), answer.at - slot[3], flag)))


async def traceroute(
    tunnel: PacketTunnel,
    host: str,
    *,
    first_ttl: int = 1,
    max_hops: int = 30,
    queries: int = 3,
    wait: float = 3.0,
    in_flight: int = 16,
    report: bool = False,
    json_output: bool = False,
    cycles: int = 10,
    family: int | None = None,
    resolver: IpAddress | None = None,
    out: TextIO,
    err: TextIO | None = None,
    stop: asyncio.Event | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    echo_id: int | None = None,
    local_name: str | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> int:
    """Trace the path to ``host`` with echo requests of growing TTL (from ``first_ttl``),
    ``in_flight`` at once, and print it as ``traceroute -n`` does, each hop's row as soon
    as it is complete; or, with ``report``, as ``mtr --report`` does after ``cycles`` rounds
    (``json_output``: as ``mtr --json``). Returns 0 when the target answered, 1 when not,
    2 on error, 130 when ``stop`` was set (Ctrl-C): what was gathered is printed first."""
    err = err or out
    stop = stop or asyncio.Event()
    try:
        target = await resolve_target(host, tunnel, family=family, resolver=resolver)
        source = source_for(target, tunnel)
        if not 1 <= max_hops <= 255:
            raise ToolError(f"max hops {max_hops} out of range (1-255)")
        if not 1 <= first_ttl <= max_hops:
            raise ToolError(f"first hop {first_ttl} out of range (1-{max_hops})")
        await _await_route(target, tunnel)
    except ToolError as exc:
        print(f"fastproxy traceroute: {exc}", file=err, flush=True)
        return EXIT_ERROR
    shown = host[1:-1] if host.startswith("[") else host
    echo_id = _echo_id() if echo_id is None else echo_id
    header = 20 if target.version == 4 else 40
    payload = _payload(60 - header - 8 if target.version == 4 else 80 - header - 8)
    probe = _ProbeArgs(tunnel, source, target, echo_id, payload, in_flight, wait, clock, stop)
    with _Listener(tunnel, target, echo_id, clock, sleep, stop) as listener:
        if report:
            return await _report(probe, listener, shown, first_ttl, max_hops, cycles, out,
                                 local_name or socket.gethostname(), now, json_output)
        print(f"traceroute to {shown} ({target}), {max_hops} hops max, {header + 8 + len(payload)} byte packets",
              file=out, flush=True)
        rows: dict[int, list[Probe | None]] = {t: [None] * queries for t in range(first_ttl, max_hops + 1)}
        resolved: dict[int, list[bool]] = {t: [False] * queries for t in rows}  # answered or given up on
        printed = first_ttl - 1
        end = max_hops
        status = EXIT_NO_REPLY

        def on_result(ttl: int, query: int, answer: Probe | None) -> int:
            nonlocal printed, end, status
            rows[ttl][query] = answer
            resolved[ttl][query] = True
            if answer is not None and answer[2] == "reached":
                end = min(end, ttl)  # the target is at most this far: nothing beyond it to probe
            while printed < end and all(resolved[printed + 1]):
                printed += 1
                hop = TraceHop(printed, rows[printed])
                print(_hop_line(hop), file=out, flush=True)
                answered = [p for p in hop.probes if p is not None]
                if any(p[2] == "reached" for p in answered):
                    end, status = printed, EXIT_OK
                elif answered and all(p[2] for p in answered):  # unreachable: nothing lies beyond
                    end = printed
            return end

        finished = await _run_probes(tunnel, listener, source, target, echo_id, payload,
                                     ttls=list(rows), queries=queries, in_flight=in_flight, wait=wait, clock=clock,
                                     seq_base=0, stop=stop, on_result=on_result)
        if not finished:
            # Ctrl-C: the hop in progress with what it has (its unanswered probes left out).
            if printed < end and any(resolved[printed + 1]):
                partial = [p for p, known in zip(rows[printed + 1], resolved[printed + 1]) if known]
                print(_hop_line(TraceHop(printed + 1, partial)), file=out, flush=True)
            return EXIT_INTERRUPTED
        return status


@dataclass
class _ProbeArgs:
    """What every round of probes of one traceroute run shares."""

    tunnel: PacketTunnel
    source: IpAddress
    target: IpAddress
    echo_id: int
    payload: bytes
    in_flight: int
    wait: float
    clock: Clock
    stop: asyncio.Event


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
    probe: _ProbeArgs, listener: _Listener, host: str, first_ttl: int, max_hops: int, cycles: int, out: TextIO,
    local_name: str, now: Callable[[], datetime], json_output: bool,
) -> int:
    started = now()
    hops = list(range(first_ttl, max_hops + 1))
    sent = dict.fromkeys(hops, 0)
    rtts: dict[int, list[float]] = {t: [] for t in hops}
    last: dict[int, float] = {}
    names: dict[int, dict[IpAddress, int]] = {t: {} for t in hops}
    end = max_hops
    seq_base = 0
    finished = True

    def on_result(ttl: int, query: int, answer: Probe | None) -> int:
        nonlocal end
        sent[ttl] += 1
        if answer is not None:
            address, rtt, flag = answer
            rtts[ttl].append(rtt * 1000)
            last[ttl] = rtt * 1000
            names[ttl][address] = names[ttl].get(address, 0) + 1
            if flag:  # the target (or an unreachable error): nothing lies beyond
                end = min(end, ttl)
        return end

    for _ in range(cycles):
        ttls = [t for t in hops if t <= end]
        finished = await _run_probes(probe.tunnel, listener, probe.source, probe.target, probe.echo_id,
                                     probe.payload, ttls=ttls, queries=1, in_flight=probe.in_flight, wait=probe.wait,
                                     clock=probe.clock, seq_base=seq_base, stop=probe.stop, on_result=on_result)
        seq_base += len(ttls)
        if not finished:
            break  # Ctrl-C: the table of what was counted so far
    rows = []
    for ttl in range(first_ttl, end + 1):
        got = rtts[ttl]
        rows.append({
            "count": ttl,
            "host": str(max(names[ttl], key=names[ttl].__getitem__)) if names[ttl] else "???",
            "Loss%": 100.0 * (sent[ttl] - len(got)) / sent[ttl] if sent[ttl] else 0.0,
            "Snt": sent[ttl],
            "Last": last.get(ttl, 0.0),
            "Avg": sum(got) / len(got) if got else 0.0,
            "Best": min(got, default=0.0),
            "Wrst": max(got, default=0.0),
            "StDev": statistics.stdev(got) if len(got) > 1 else 0.0,
        })
    if json_output:
        _print_json_report(rows, local_name, host, cycles, len(probe.payload) + 8 + (20 if probe.target.version == 4
                                                                                     else 40), out)
    else:
        _print_report(rows, started, local_name, out)
    if not finished:
        return EXIT_INTERRUPTED
    reached = end in names and probe.target in names[end]
    return EXIT_OK if reached else EXIT_NO_REPLY


def _print_report(rows: list[dict[str, Any]], started: datetime, local_name: str, out: TextIO) -> None:
    print(f"Start: {started.strftime('%Y-%m-%dT%H:%M:%S%z')}", file=out)
    print(f"{'HOST: ' + local_name:<33}{'Loss%':>6} {'Snt':>5} {'Last':>6} {'Avg':>6} {'Best':>6} {'Wrst':>6} "
          f"{'StDev':>6}", file=out)
    for row in rows:
        print(f"{row['count']:3d}.|-- {row['host']:<25}{row['Loss%']:5.1f}% {row['Snt']:5d} {row['Last']:6.1f} "
              f"{row['Avg']:6.1f} {row['Best']:6.1f} {row['Wrst']:6.1f} {row['StDev']:6.1f}", file=out)
    out.flush()


def _print_json_report(rows: list[dict[str, Any]], local_name: str, host: str, cycles: int, packet_size: int,
                       out: TextIO) -> None:
    """``mtr --json``'s layout and key names (times in ms, 3 decimals as mtr gives them)."""
    hubs = [{key: round(value, 3) if isinstance(value, float) else value for key, value in row.items()}
            for row in rows]
    document = {"report": {
        "mtr": {"src": local_name, "dst": host, "tos": 0, "tests": cycles, "psize": str(packet_size),
                "bitpattern": "0x00"},
        "hubs": hubs,
    }}
    print(json.dumps(document, indent=4), file=out, flush=True)
