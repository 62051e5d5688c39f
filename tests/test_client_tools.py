"""fastproxy ping / traceroute logic and their exact output, over a fake tunnel whose
answers arrive on a fake clock (no sockets, no waiting)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import io
import ipaddress
import json
from collections.abc import Callable
from datetime import datetime, timezone

import pytest

from fastproxy.client.interfaces import PacketTunnel
from fastproxy.client.tools import ToolError, check_ping_flags, check_traceroute_flags, format_rtt, ping, traceroute
from fastproxy.packet import build_destination_unreachable, build_echo, build_time_exceeded, parse_packet

V4 = ipaddress.IPv4Address("100.96.0.2")
V6 = ipaddress.IPv6Address("fd00:fa57::2")


class FakeTime:
    """A virtual clock: sleep() jumps ahead, running every timer due on the way."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = 0

    def clock(self) -> float:
        return self.now

    def call_at(self, at: float, callback: Callable[[], None]) -> None:
        self._order += 1
        heapq.heappush(self._timers, (at, self._order, callback))

    async def sleep(self, delay: float) -> None:
        target = self.now + delay
        while self._timers and self._timers[0][0] <= target:
            at, _, callback = heapq.heappop(self._timers)
            self.now = max(self.now, at)
            callback()
            for _ in range(5):  # let the tool see what just arrived
                await asyncio.sleep(0)
        self.now = max(self.now, target)
        await asyncio.sleep(0)


class FakeTunnel:
    """Hops ``path`` (the last is the target). A request with TTL t dies at hop t (Time
    Exceeded from it) or reaches the target (echo reply); hop i answers after
    ``(i + 1) * step`` seconds. ``lose(ttl, seq)`` True drops the answer."""

    def __init__(self, time: FakeTime, path: list[str], *, step: float = 0.0005,
                 lose: Callable[[int, int], bool] = lambda ttl, seq: False,
                 unreachable_from: str | None = None, v6: bool = True) -> None:
        self.time = time
        self.path = [ipaddress.ip_address(a) for a in path]
        self.step = step
        self.lose = lose
        self.unreachable_from = ipaddress.ip_address(unreachable_from) if unreachable_from else None
        self.address_v4 = V4
        self.address_v6 = V6 if v6 else None
        self.prefixes = (ipaddress.ip_network("0.0.0.0/0"),)
        self.sent: list[bytes] = []
        self.batches: list[int] = []  # how many packets each send_packets call carried
        self._ready: list[bytes] = []
        self._event = asyncio.Event()

    def send_packets(self, packets: list[bytes]) -> None:
        self.batches.append(len(packets))
        for packet in packets:
            self.sent.append(packet)
            info = parse_packet(packet)
            if self.lose(info.ttl, info.echo_seq):
                continue
            if self.unreachable_from is not None:
                answer = build_destination_unreachable(self.unreachable_from.packed, packet, 1 if info.version == 4 else 3)
                hop = 1
            elif info.ttl < len(self.path):
                answer = build_time_exceeded(self.path[info.ttl - 1].packed, packet)
                hop = info.ttl
            else:
                payload = packet[info.icmp_offset + 8:]
                answer = build_echo(info.dst, info.src, info.echo_id, info.echo_seq, payload, reply=True,
                                    ttl=65 - len(self.path))
                hop = len(self.path)
            self.time.call_at(self.time.now + hop * self.step, lambda a=answer: self._arrive(a))

    def _arrive(self, packet: bytes) -> None:
        self._ready.append(packet)
        self._event.set()

    async def receive_packet(self, timeout: float | None = None) -> bytes:
        while not self._ready:
            self._event.clear()
            await self._event.wait()
        return self._ready.pop(0)


def run_ping(tunnel: FakeTunnel, host: str, **kwargs: object) -> tuple[int, str]:
    out = io.StringIO()

    async def main() -> int:
        return await ping(tunnel, host, out=out, clock=tunnel.time.clock, sleep=tunnel.time.sleep, echo_id=0x1234,
                          **kwargs)  # type: ignore[arg-type]

    return asyncio.run(main()), out.getvalue()


def run_trace(tunnel: FakeTunnel, host: str, **kwargs: object) -> tuple[int, str]:
    out = io.StringIO()

    async def main() -> int:
        return await traceroute(tunnel, host, out=out, clock=tunnel.time.clock, sleep=tunnel.time.sleep,
                                echo_id=0x4321, local_name="laptop",
                                now=lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
                                **kwargs)  # type: ignore[arg-type]

    return asyncio.run(main()), out.getvalue()


PATH4 = ["100.96.0.1", "192.0.2.1", "198.51.100.1", "203.0.113.8"]


def test_fake_tunnel_is_a_packet_tunnel() -> None:
    assert isinstance(FakeTunnel(FakeTime(), PATH4), PacketTunnel)


@pytest.mark.parametrize(("seconds", "text"), [
    (0.000053, "0.053"), (0.00053, "0.530"), (0.001234, "1.23"), (0.0123, "12.3"), (0.1234, "123"), (1.5, "1500"),
])
def test_rtt_format_matches_iputils(seconds: float, text: str) -> None:
    assert format_rtt(seconds) == text


def test_ping_all_replies_exact_output() -> None:
    tunnel = FakeTunnel(FakeTime(), PATH4)
    status, text = run_ping(tunnel, "203.0.113.8", count=3)
    assert status == 0
    assert text == (
        "PING 203.0.113.8 (203.0.113.8) 56(84) bytes of data.\n"
        "64 bytes from 203.0.113.8: icmp_seq=1 ttl=61 time=2.00 ms\n"
        "64 bytes from 203.0.113.8: icmp_seq=2 ttl=61 time=2.00 ms\n"
        "64 bytes from 203.0.113.8: icmp_seq=3 ttl=61 time=2.00 ms\n"
        "\n--- 203.0.113.8 ping statistics ---\n"
        "3 packets transmitted, 3 received, 0% packet loss, time 2002ms\n"
        "rtt min/avg/max/mdev = 2.000/2.000/2.000/0.000 ms\n"
    )
    requests = [parse_packet(p) for p in tunnel.sent]
    assert [r.echo_seq for r in requests] == [1, 2, 3]
    assert all(r.src == V4.packed and r.ttl == 64 and r.echo_id == 0x1234 for r in requests)
    assert all(r.total_length == 84 for r in requests)


def test_ping_loss_ttl_size_interval() -> None:
    tunnel = FakeTunnel(FakeTime(), PATH4, lose=lambda ttl, seq: seq == 2)
    status, text = run_ping(tunnel, "203.0.113.8", count=3, interval=0.2, size=100, ttl=9, timeout=1.0)
    assert status == 0
    lines = text.splitlines()
    assert lines[0] == "PING 203.0.113.8 (203.0.113.8) 100(128) bytes of data."
    assert [line.split()[4] for line in lines[1:3]] == ["icmp_seq=1", "icmp_seq=3"]
    assert lines[1].startswith("108 bytes from")
    assert lines[-2] == "3 packets transmitted, 2 received, 33.3333% packet loss, time 402ms"
    assert all(parse_packet(p).ttl == 9 for p in tunnel.sent)


def test_ping_no_reply_exits_1_without_rtt_line() -> None:
    tunnel = FakeTunnel(FakeTime(), PATH4, lose=lambda ttl, seq: True)
    status, text = run_ping(tunnel, "203.0.113.8", count=2, timeout=2.0)
    assert status == 1
    assert text.splitlines()[-1] == "2 packets transmitted, 0 received, 100% packet loss, time 1000ms"
    assert "rtt" not in text


def test_ping_time_exceeded_is_reported_as_error() -> None:
    tunnel = FakeTunnel(FakeTime(), PATH4)
    status, text = run_ping(tunnel, "203.0.113.8", count=2, ttl=2, interval=0.5)
    assert status == 1
    lines = text.splitlines()
    assert lines[1] == "From 192.0.2.1 icmp_seq=1 Time to live exceeded"
    assert lines[2] == "From 192.0.2.1 icmp_seq=2 Time to live exceeded"
    assert lines[-1] == "2 packets transmitted, 0 received, +2 errors, 100% packet loss, time 501ms"


def test_ping_unreachable() -> None:
    tunnel = FakeTunnel(FakeTime(), PATH4, unreachable_from="192.0.2.1")
    status, text = run_ping(tunnel, "203.0.113.8", count=1)
    assert status == 1
    assert "From 192.0.2.1 icmp_seq=1 Destination Host Unreachable" in text


def test_ping_ipv6() -> None:
    tunnel = FakeTunnel(FakeTime(), ["fd00:fa57::1", "2001:db8::1", "2001:db8:1::8"])
    status, text = run_ping(tunnel, "2001:db8:1::8", count=1)
    assert status == 0
    assert text.splitlines()[:2] == [
        "PING 2001:db8:1::8 (2001:db8:1::8) 56 data bytes",
        "64 bytes from 2001:db8:1::8: icmp_seq=1 ttl=62 time=1.50 ms",
    ]
    status, text = run_ping(FakeTunnel(FakeTime(), ["fd00:fa57::1", "2001:db8::1", "2001:db8:1::8"]),
                            "2001:db8:1::8", count=1, ttl=1)
    assert "From fd00:fa57::1 icmp_seq=1 Time exceeded: Hop limit" in text


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"size": 1253}, "too large for the tunnel (at most 1252 bytes of data)"),
    ({"ttl": 0}, "ttl 0 out of range"),
])
def test_ping_bad_arguments_exit_2(kwargs: dict[str, int], message: str) -> None:
    status, text = run_ping(FakeTunnel(FakeTime(), PATH4), "203.0.113.8", count=1, **kwargs)
    assert status == 2 and message in text


def test_ping_family_the_edge_did_not_assign_exits_2() -> None:
    status, text = run_ping(FakeTunnel(FakeTime(), PATH4, v6=False), "2001:db8::8", count=1)
    assert status == 2
    assert "no IPv6 address" in text


def test_ping_stops_on_event_and_prints_summary() -> None:
    tunnel = FakeTunnel(FakeTime(), PATH4)
    out = io.StringIO()

    async def main() -> int:
        stop = asyncio.Event()
        tunnel.time.call_at(tunnel.time.now + 2.5, stop.set)
        return await ping(tunnel, "203.0.113.8", out=out, clock=tunnel.time.clock, sleep=tunnel.time.sleep,
                          stop=stop)

    assert asyncio.run(main()) == 0
    assert "3 packets transmitted, 3 received, 0% packet loss" in out.getvalue()


def test_traceroute_lists_every_hop_then_stops() -> None:
    tunnel = FakeTunnel(FakeTime(), PATH4)
    status, text = run_trace(tunnel, "203.0.113.8")
    assert status == 0
    assert text == (
        "traceroute to 203.0.113.8 (203.0.113.8), 30 hops max, 60 byte packets\n"
        " 1  100.96.0.1  0.500 ms  0.500 ms  0.500 ms\n"
        " 2  192.0.2.1  1.000 ms  1.000 ms  1.000 ms\n"
        " 3  198.51.100.1  1.500 ms  1.500 ms  1.500 ms\n"
        " 4  203.0.113.8  2.000 ms  2.000 ms  2.000 ms\n"
    )
    # As traceroute: 16 probes at once (-N 16), hop after hop; none beyond the target once it answered.
    assert tunnel.batches[0] == 16
    assert [parse_packet(p).ttl for p in tunnel.sent[:16]] == [t for t in range(1, 6) for _ in range(3)] + [6]
    # Each answer from hops 1-3 let one more go before the target's replies ended the run.
    assert len(tunnel.sent) == 16 + 9


def test_traceroute_silent_hop_and_max_hops() -> None:
    tunnel = FakeTunnel(FakeTime(), PATH4, lose=lambda ttl, seq: ttl == 2 or ttl >= 4)
    status, text = run_trace(tunnel, "203.0.113.8", max_hops=5, wait=1.0)
    assert status == 1
    lines = text.splitlines()
    assert lines[0] == "traceroute to 203.0.113.8 (203.0.113.8), 5 hops max, 60 byte packets"
    assert lines[2] == " 2  * * *"
    assert lines[4:] == [" 4  * * *", " 5  * * *"]


def test_traceroute_partial_answers_and_unreachable_flag() -> None:
    tunnel = FakeTunnel(FakeTime(), PATH4, lose=lambda ttl, seq: ttl == 1 and seq % 3 == 1)
    status, text = run_trace(tunnel, "203.0.113.8", wait=1.0)
    assert text.splitlines()[1] == " 1  100.96.0.1  0.500 ms *  0.500 ms"
    status, text = run_trace(FakeTunnel(FakeTime(), PATH4, unreachable_from="192.0.2.1"), "203.0.113.8")
    assert status == 1
    assert text.splitlines()[1:] == [" 1  192.0.2.1  0.500 ms !H  0.500 ms !H  0.500 ms !H"]


def test_traceroute_report_table() -> None:
    hop2_probes = itertools.count()
    tunnel = FakeTunnel(FakeTime(), PATH4, lose=lambda ttl, seq: ttl == 2 and next(hop2_probes) % 2 == 1)
    status, text = run_trace(tunnel, "203.0.113.8", report=True, cycles=4, wait=1.0)
    assert status == 0
    assert text == (
        "Start: 2026-01-02T03:04:05+0000\n"
        "HOST: laptop                      Loss%   Snt   Last    Avg   Best   Wrst  StDev\n"
        "  1.|-- 100.96.0.1                 0.0%     4    0.5    0.5    0.5    0.5    0.0\n"
        "  2.|-- 192.0.2.1                 50.0%     4    1.0    1.0    1.0    1.0    0.0\n"
        "  3.|-- 198.51.100.1               0.0%     4    1.5    1.5    1.5    1.5    0.0\n"
        "  4.|-- 203.0.113.8                0.0%     4    2.0    2.0    2.0    2.0    0.0\n"
    )


def test_traceroute_ipv6_header() -> None:
    tunnel = FakeTunnel(FakeTime(), ["fd00:fa57::1", "2001:db8::8"])
    status, text = run_trace(tunnel, "2001:db8::8")
    assert status == 0
    assert text.splitlines()[0] == "traceroute to 2001:db8::8 (2001:db8::8), 30 hops max, 80 byte packets"
    assert text.splitlines()[2].startswith(" 2  2001:db8::8  1.000 ms")


# -- the flags people know from iputils ping and traceroute ------------------------------


def test_ping_deadline_sends_until_count_replies() -> None:
    """iputils -w: -c counts replies, and requests go on until they came or time is up."""
    tunnel = FakeTunnel(FakeTime(), PATH4, lose=lambda ttl, seq: seq in (1, 2))
    status, text = run_ping(tunnel, "203.0.113.8", count=2, deadline=10)
    assert status == 0
    assert [line.split()[4] for line in text.splitlines() if "bytes from" in line] == ["icmp_seq=3", "icmp_seq=4"]
    assert "4 packets transmitted, 2 received, 50% packet loss" in text
    tunnel = FakeTunnel(FakeTime(), PATH4, lose=lambda ttl, seq: seq != 1)
    status, text = run_ping(tunnel, "203.0.113.8", count=3, deadline=2)
    assert status == 1  # fewer than COUNT replies by the deadline
    assert text.splitlines()[-2] == "2 packets transmitted, 1 received, 50% packet loss, time 2000ms"


def test_ping_quiet_timestamps_outstanding() -> None:
    tunnel = FakeTunnel(FakeTime(), PATH4, lose=lambda ttl, seq: seq == 1)
    out = io.StringIO()

    async def main(**kwargs: object) -> int:
        return await ping(tunnel, "203.0.113.8", count=3, out=out, clock=tunnel.time.clock, sleep=tunnel.time.sleep,
                          wall_clock=lambda: tunnel.time.now + 1_700_000_000, echo_id=7, **kwargs)  # type: ignore[arg-type]

    assert asyncio.run(main(timestamps=True, outstanding=True)) == 0
    assert out.getvalue().splitlines()[1:4] == [
        "[1700001001.000000] no answer yet for icmp_seq=1",
        "[1700001001.002000] 64 bytes from 203.0.113.8: icmp_seq=2 ttl=61 time=2.00 ms",
        "[1700001002.002000] 64 bytes from 203.0.113.8: icmp_seq=3 ttl=61 time=2.00 ms",
    ]
    out.seek(0)
    out.truncate()
    tunnel = FakeTunnel(FakeTime(), PATH4)
    assert asyncio.run(main(quiet=True)) == 0
    assert out.getvalue().splitlines()[:3] == [
        "PING 203.0.113.8 (203.0.113.8) 56(84) bytes of data.", "", "--- 203.0.113.8 ping statistics ---"]


def test_ping_flood_output() -> None:
    tunnel = FakeTunnel(FakeTime(), PATH4, lose=lambda ttl, seq: seq == 2)
    status, text = run_ping(tunnel, "203.0.113.8", count=3, flood=True, interval=0.0)
    assert status == 0
    assert text.split("\n")[1] == ".\b \b..\b \b"  # seq 2 lost: its dot stays, after 10 ms the next goes
    assert text.split("\n")[4] == "rtt min/avg/max/mdev = 2.000/2.000/2.000/0.000 ms, ipg/ewma 7.000/2.000 ms"
    assert [parse_packet(p).echo_seq for p in tunnel.sent] == [1, 2, 3]


def test_ping_pattern_fills_the_data() -> None:
    tunnel = FakeTunnel(FakeTime(), PATH4)
    status, text = run_ping(tunnel, "203.0.113.8", count=1, pattern=b"\xff\x00\x01", size=8)
    assert status == 0 and text.splitlines()[0] == "PATTERN: 0xff0001"
    info = parse_packet(tunnel.sent[0])
    assert tunnel.sent[0][info.icmp_offset + 8:] == b"\xff\x00\x01\xff\x00\x01\xff\x00"


def test_ping_bracketed_ipv6_and_family() -> None:
    path = ["fd00:fa57::1", "2001:db8::1", "2001:db8:1::8"]
    status, text = run_ping(FakeTunnel(FakeTime(), path), "[2001:db8:1::8]", count=1)
    assert status == 0 and text.startswith("PING 2001:db8:1::8 (2001:db8:1::8) 56 data bytes\n")
    status, text = run_ping(FakeTunnel(FakeTime(), path), "2001:db8:1::8", count=1, family=4)
    assert status == 2 and text == "fastproxy ping: 2001:db8:1::8: Address family for hostname not supported\n"
    status, text = run_ping(FakeTunnel(FakeTime(), path), "[not-an-address]", count=1)
    assert status == 2 and "[not-an-address]: Name or service not known" in text


@pytest.mark.parametrize(("flags", "privileged", "message"), [
    # What iputils ping 20221126 says for a user without privilege (ping -i 0.001, ping -f).
    ({"interval": "0.001"}, False, "cannot flood; minimal interval allowed for user is 2ms"),
    ({"flood": True}, False, "cannot flood; minimal interval allowed for user is 2ms"),
    ({"interval": "-1"}, True, "bad timing interval: -1"),
    ({"count": "0"}, True, "invalid argument: '0': out of range: 1 <= value <= 9223372036854775807"),
    ({"size": "-1"}, True, "invalid argument: '-1': out of range: 0 <= value <= 2147483647"),
    ({"pattern": "0xg"}, True, "patterns must be specified as hex digits: 0xg"),
    ({"v4": True, "v6": True}, True, "only one -4 or -6 option may be specified"),
])
def test_ping_flag_checks(flags: dict[str, object], privileged: bool, message: str) -> None:
    with pytest.raises(ToolError) as caught:
        check_ping_flags("203.0.113.8", privileged=privileged, **flags)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_ping_flags_privileged_flood_and_values() -> None:
    options = check_ping_flags("203.0.113.8", flood=True, count="5", privileged=True)
    assert options.flood and options.interval == 0.0 and options.count == 5
    options = check_ping_flags("::1", interval="0.002", ttl="9", size="0", timeout="1.5", deadline="3",
                               pattern="abc", v6=True, privileged=False)
    assert (options.interval, options.ttl, options.size, options.timeout, options.deadline, options.pattern,
            options.family) == (0.002, 9, 0, 1.5, 3, b"\xab\x0c", 6)
    assert check_ping_flags("203.0.113.8", deadline="0").deadline is None  # -w 0: no deadline, as iputils


def test_traceroute_probes_in_parallel_so_silence_costs_one_wait_per_batch() -> None:
    tunnel = FakeTunnel(FakeTime(), PATH4, lose=lambda ttl, seq: ttl >= 3)
    started = tunnel.time.now
    status, text = run_trace(tunnel, "203.0.113.8", max_hops=10, wait=1.0)
    assert status == 1
    assert [line.split()[0] for line in text.splitlines()[1:]] == [str(t) for t in range(1, 11)]
    assert text.splitlines()[3:] == [f"{t:2d}  * * *" for t in range(3, 11)]
    assert tunnel.batches[0] == 16 and len(tunnel.sent) == 30
    # 24 silent probes, 16 at a time: two waits (one by one it would be eight).
    assert tunnel.time.now - started == pytest.approx(2.0, abs=0.01)
    tunnel = FakeTunnel(FakeTime(), PATH4, lose=lambda ttl, seq: ttl >= 3)
    started = tunnel.time.now
    run_trace(tunnel, "203.0.113.8", max_hops=10, wait=1.0, in_flight=3)  # -N 3: a hop at a time
    assert max(tunnel.batches) == 3 and tunnel.time.now - started == pytest.approx(8.0, abs=0.01)


def test_traceroute_first_ttl() -> None:
    tunnel = FakeTunnel(FakeTime(), PATH4)
    status, text = run_trace(tunnel, "203.0.113.8", first_ttl=3, queries=1)
    assert status == 0
    assert text.splitlines()[1:] == [" 3  198.51.100.1  1.500 ms", " 4  203.0.113.8  2.000 ms"]


def run_trace_stopped(tunnel: FakeTunnel, stop_after: float, **kwargs: object) -> tuple[int, str]:
    out = io.StringIO()

    async def main() -> int:
        stop = asyncio.Event()
        tunnel.time.call_at(tunnel.time.now + stop_after, stop.set)
        return await traceroute(tunnel, "203.0.113.8", out=out, clock=tunnel.time.clock, sleep=tunnel.time.sleep,
                                stop=stop, echo_id=0x4321, local_name="laptop",
                                now=lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
                                **kwargs)  # type: ignore[arg-type]

    return asyncio.run(main()), out.getvalue()


def test_traceroute_stop_prints_what_it_has() -> None:
    # Hop 2's second probe is lost, hop 3 and beyond are silent; Ctrl-C after 1.5 s of a 5 s wait.
    tunnel = FakeTunnel(FakeTime(), PATH4, lose=lambda ttl, seq: ttl >= 3 or seq == 4)
    started = tunnel.time.now
    status, text = run_trace_stopped(tunnel, 1.5, wait=5.0)
    assert status == 130
    assert text.splitlines()[1:] == [" 1  100.96.0.1  0.500 ms  0.500 ms  0.500 ms", " 2  192.0.2.1  1.000 ms  1.000 ms"]
    assert tunnel.time.now - started < 2


def test_traceroute_report_stop_prints_the_table() -> None:
    tunnel = FakeTunnel(FakeTime(), PATH4, lose=lambda ttl, seq: ttl >= 3)
    status, text = run_trace_stopped(tunnel, 2.5, report=True, cycles=100, max_hops=3, wait=1.0)
    assert status == 130
    assert text.splitlines()[2:] == [
        "  1.|-- 100.96.0.1                 0.0%     3    0.5    0.5    0.5    0.5    0.0",
        "  2.|-- 192.0.2.1                  0.0%     3    1.0    1.0    1.0    1.0    0.0",
        "  3.|-- ???                      100.0%     2    0.0    0.0    0.0    0.0    0.0",
    ]


def test_traceroute_json_report() -> None:
    status, text = run_trace(FakeTunnel(FakeTime(), PATH4), "203.0.113.8", report=True, json_output=True, cycles=2)
    assert status == 0
    document = json.loads(text)
    assert document["report"]["mtr"] == {"src": "laptop", "dst": "203.0.113.8", "tos": 0, "tests": 2, "psize": "60",
                                         "bitpattern": "0x00"}
    assert document["report"]["hubs"][1] == {"count": 2, "host": "192.0.2.1", "Loss%": 0.0, "Snt": 2, "Last": 1.0,
                                             "Avg": 1.0, "Best": 1.0, "Wrst": 1.0, "StDev": 0.0}
    assert [hub["host"] for hub in document["report"]["hubs"]] == PATH4


@pytest.mark.parametrize(("flags", "message"), [
    ({"cycles": 5}, "-c COUNT is the number of rounds of --report (or --json)"),
    ({"first_ttl": 5, "max_hops": 3}, "-f 5: first hop out of range"),
    ({"max_hops": 256}, "-m 256: max hops must be 1-255"),
    ({"queries": 11}, "-q 11: probes per hop must be 1-10"),
    ({"in_flight": 0}, "-N 0: simultaneous probes must be at least 1"),
    ({"wait": 0.0}, "-w 0: the wait must be a positive number of seconds"),
    ({"v4": True, "host": "2001:db8::1"}, "2001:db8::1: Address family for hostname not supported"),
])
def test_traceroute_flag_checks(flags: dict[str, object], message: str) -> None:
    host = str(flags.pop("host", "203.0.113.8"))
    with pytest.raises(ToolError) as caught:
        check_traceroute_flags(host, **flags)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)
    assert check_traceroute_flags(host, json_output=True, cycles=3).report  # --json is a report
