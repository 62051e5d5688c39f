"""Unit tests of the backends' pure parts: kernel filters, error-queue records, Windows results,
packet rebuilding, the ping_group_range check, source selection and the rate limiters."""

from __future__ import annotations

import logging
import socket
import struct

import pytest
from scapy.layers.inet import ICMP, IP, IPerror, ICMPerror
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6TimeExceeded, IPerror6, IPv6

from fastproxy.icmp import create_backend
from fastproxy.icmp.backends import BackendFlow
from fastproxy.icmp.backends import linux_ping
from fastproxy.icmp.backends._wire import send_slots, wrap_icmp_message
from fastproxy.icmp.backends.linux_ping import parse_extended_error
from fastproxy.icmp.backends.raw import icmp6_type_filter, icmp_type_filter_v4
from fastproxy.icmp.backends.windows import declare_icmp_api, packet_from_echo_reply
from fastproxy.icmp.ratelimit import RateLimitedLog, TokenBucketLimiter
from fastproxy.icmp.source import InterfaceAddress, SourceAddressSelector

from .icmp_fakes import addr
from .test_icmp_proxy import checksums_ok


def run_bpf(program: bytes, packet: bytes) -> int:
    """A tiny interpreter for the instructions our filter uses (the kernel runs the real thing)."""
    code = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    pc, x, a = 0, 0, 0
    while True:
        op, jt, jf, k = code[pc]
        if op == 0xB1:
            x = 4 * (packet[k] & 0xF)
        elif op == 0x50:
            a = packet[x + k]
        elif op == 0x15:
            pc += jt if a == k else jf
        elif op == 0x06:
            return k
        pc += 1


@pytest.mark.parametrize("icmp_type", range(0, 20))
def test_v4_filter_accepts_only_replies_and_errors(icmp_type: int) -> None:
    packet = bytes(IP(src="192.0.2.9", dst="192.0.2.1", options=[]) / ICMP(type=icmp_type))
    assert bool(run_bpf(icmp_type_filter_v4(), packet)) == (icmp_type in (0, 3, 11, 12))


def test_icmp6_filter_passes_only_replies_and_errors() -> None:
    words = struct.unpack("=8I", icmp6_type_filter())
    passed = [t for t in range(256) if not words[t >> 5] & (1 << (t & 31))]
    assert passed == [1, 2, 3, 4, 129]


def test_parse_extended_error_v4_and_v6() -> None:
    v4 = struct.pack("=IBBBBII", 113, 2, 11, 0, 0, 0, 0) + struct.pack("=HH4s8x", socket.AF_INET, 0, addr("192.0.2.2"))
    assert parse_extended_error(v4) == (113, 2, 11, 0, 0, addr("192.0.2.2"))
    v6 = struct.pack("=IBBBBII", 90, 3, 2, 0, 0, 1280, 0) + struct.pack("=HHI16sI", socket.AF_INET6, 0, 0,
                                                                        addr("2001:db8:1::2"), 0)
    assert parse_extended_error(v6) == (90, 3, 2, 0, 1280, addr("2001:db8:1::2"))
    assert parse_extended_error(v4[:16])[5] is None
    with pytest.raises(ValueError):
        parse_extended_error(v4[:10])


@pytest.mark.parametrize("version", [4, 6])
def test_wrap_icmp_message_makes_valid_packets(version: int) -> None:
    if version == 4:
        message = bytes(ICMP(type=0, id=5, seq=6) / b"data")
        packet = wrap_icmp_message(addr("203.0.113.2"), bytes(4), 60, message)
        assert IP(bytes(packet)).ttl == 60
    else:
        message = bytes(ICMPv6EchoReply(id=5, seq=6, data=b"data", cksum=0xBEEF))
        packet = wrap_icmp_message(addr("2001:db8:3::2"), bytes(16), 60, message)
        assert IPv6(bytes(packet)).hlim == 60
    assert checksums_ok(bytes(packet))


FLOW4 = BackendFlow(1, addr("198.51.100.7"), addr("203.0.113.9"), 0x1234, 0x0042)
FLOW6 = BackendFlow(1, addr("2001:db8:c::7"), addr("2001:db8:9::9"), 0x1234, 0x0042)
REQUEST = bytes(ICMP(type=8, id=0x42, seq=3) / b"payload!")


def v4_reply_record(address: str, status: int, ttl: int, data: bytes) -> bytes:
    return (struct.pack("<4sIIHHQ", addr(address), status, 1, len(data), 0, 0xDEAD0000)
            + struct.pack("<BBBBIQ", ttl, 0, 0, 0, 0, 0) + data)


def v6_reply_record(address: str, status: int, data: bytes) -> bytes:
    return struct.pack("<HI16sI2xII", 0, 0, addr(address), 0, status, 1) + data


def test_windows_success_becomes_echo_reply() -> None:
    packet = packet_from_echo_reply(4, v4_reply_record("203.0.113.9", 0, 57, b"payload!"), FLOW4, REQUEST, 63)
    parsed = IP(packet)
    assert (parsed.src, parsed.ttl, parsed[ICMP].type, parsed[ICMP].id, parsed[ICMP].seq) == ("203.0.113.9", 57, 0, 0x42, 3)
    assert bytes(parsed[ICMP].payload) == b"payload!" and checksums_ok(packet)
    packet6 = packet_from_echo_reply(6, v6_reply_record("2001:db8:9::9", 0, b"payload!"), FLOW6,
                                     bytes(ICMPv6EchoRequest(id=0x42, seq=3, data=b"payload!")), 63)
    parsed6 = IPv6(packet6)
    assert parsed6.src == "2001:db8:9::9" and parsed6[ICMPv6EchoReply].seq == 3 and checksums_ok(packet6)


@pytest.mark.parametrize(("status", "expected"), [(11013, (11, 0)), (11002, (3, 0)), (11003, (3, 1)), (11009, (3, 4))])
def test_windows_errors_become_icmp_errors_quoting_the_request(status: int, expected: tuple[int, int]) -> None:
    packet = packet_from_echo_reply(4, v4_reply_record("192.0.2.254", status, 250, b""), FLOW4, REQUEST, 63,
                                    mtu=1280 if status == 11009 else 0)
    parsed = IP(packet)
    assert parsed.src == "192.0.2.254" and (parsed[ICMP].type, parsed[ICMP].code) == expected
    quoted = parsed[IPerror]
    assert quoted.dst == "203.0.113.9" and quoted[ICMPerror].id == 0x42 and quoted[ICMPerror].seq == 3
    assert checksums_ok(packet)


def test_windows_v6_time_exceeded_and_timeout() -> None:
    request6 = bytes(ICMPv6EchoRequest(id=0x42, seq=3, data=b"payload!"))
    packet = packet_from_echo_reply(6, v6_reply_record("2001:db8:1::fe", 11013, b""), FLOW6, request6, 63)
    parsed = IPv6(packet)
    assert isinstance(parsed.payload, ICMPv6TimeExceeded) and parsed[IPerror6].dst == "2001:db8:9::9"
    assert packet_from_echo_reply(4, v4_reply_record("0.0.0.0", 11010, 0, b""), FLOW4, REQUEST, 63) is None
    with pytest.raises(ValueError):
        packet_from_echo_reply(4, b"short", FLOW4, REQUEST, 63)


def test_ping_group_range_message_names_the_sysctl(tmp_path, monkeypatch) -> None:
    sysctl = tmp_path / "ping_group_range"
    sysctl.write_text("1\t0\n")
    monkeypatch.setattr(linux_ping, "PING_GROUP_RANGE", str(sysctl))
    allowed, why = linux_ping.ping_sockets_allowed()
    assert not allowed and "net.ipv4.ping_group_range" in why and "sysctl -w" in why
    with pytest.raises(Exception, match="ping_group_range"):
        create_backend("ping")


def test_unknown_backend_name() -> None:
    with pytest.raises(ValueError, match="auto"):
        create_backend("carrier-pigeon")


def test_source_selection_avoids_loopback_link_local_and_bridges(monkeypatch) -> None:
    from fastproxy.icmp import source

    interfaces = [
        InterfaceAddress("lo", addr("127.0.0.1"), 8, False),
        InterfaceAddress("docker0", addr("172.17.0.1"), 16, True),
        InterfaceAddress("eth0", addr("192.0.2.5"), 24, False),
    ]
    monkeypatch.setattr(source, "interface_addresses", lambda: interfaces)
    monkeypatch.setattr(source, "kernel_source_address", lambda dst: addr("172.17.0.1"))
    selector = SourceAddressSelector()
    assert selector.source_for(addr("203.0.113.9")) == addr("192.0.2.5")  # not the bridge
    assert selector.source_for(addr("172.17.0.3")) == addr("172.17.0.1")  # a container: the bridge is right
    monkeypatch.setattr(source, "kernel_source_address", lambda dst: addr("127.0.0.1"))
    assert SourceAddressSelector().source_for(addr("203.0.113.9")) == addr("192.0.2.5")
    assert SourceAddressSelector().source_for(addr("127.0.0.5")) == addr("127.0.0.1")
    assert SourceAddressSelector("198.51.100.1").source_for(addr("203.0.113.9")) == addr("198.51.100.1")


def test_token_bucket_and_rate_limited_log(caplog) -> None:
    limiter = TokenBucketLimiter(rate=2.0, burst=2, max_keys=2)
    assert [limiter.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("a", 0.5) and not limiter.allow("a", 0.5)
    limiter.allow("b", 0.0)
    limiter.allow("c", 0.0)
    assert len(limiter) == 2
    log = RateLimitedLog(logging.getLogger("fastproxy.test"), interval=10.0)
    with caplog.at_level(logging.WARNING, "fastproxy.test"):
        results = [log.warning("flood", t, "full") for t in (0.0, 1.0, 2.0, 11.0)]
    assert results == [True, False, False, True]
    assert "2 similar lines suppressed" in caplog.records[-1].getMessage()


def test_engine_closes_the_ipv4_socket_when_the_ipv6_one_fails() -> None:
    import errno

    from fastproxy.icmp.backends.raw import DatagramIcmpEngine

    opened: list[socket.socket] = []

    class FailingV6(DatagramIcmpEngine):
        def _open_socket(self, version: int) -> socket.socket:
            if version == 6:
                raise OSError(errno.EINVAL, "no IPv6 socket for this test")
            opened.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            return opened[-1]

    with pytest.raises(OSError, match="no IPv6 socket"):
        FailingV6()
    assert len(opened) == 1 and opened[0].fileno() == -1  # closed, not left to the garbage collector


def test_windows_api_signatures_are_declared_pointer_sized() -> None:
    """Every HANDLE and pointer parameter is declared, so ctypes does not pass them as 32-bit ints."""
    import ctypes
    from types import SimpleNamespace

    names = ("IcmpCreateFile", "Icmp6CreateFile", "IcmpCloseHandle", "IcmpSendEcho2", "Icmp6SendEcho2")
    lib = declare_icmp_api(SimpleNamespace(**{name: SimpleNamespace() for name in names}))
    assert lib.IcmpCreateFile.restype is ctypes.c_void_p and lib.Icmp6CreateFile.restype is ctypes.c_void_p
    assert len(lib.IcmpSendEcho2.argtypes) == 11 and len(lib.Icmp6SendEcho2.argtypes) == 12
    assert lib.IcmpSendEcho2.argtypes[0] is ctypes.c_void_p and lib.IcmpCloseHandle.argtypes == [ctypes.c_void_p]
    for name in names:  # each is a signature ctypes can build a real function type from
        function = getattr(lib, name)
        ctypes.CFUNCTYPE(function.restype, *function.argtypes)


class ScriptedBatch:
    """A send batch whose sends fail as scripted: ``errors[n]`` is the errno of the n-th call (0: the
    call sends everything asked)."""

    def __init__(self, errors: list[int]) -> None:
        self.errors = errors
        self.calls: list[tuple[int, int]] = []

    def send(self, sock: object, count: int, start: int) -> int:
        self.calls.append((start, count))
        err = self.errors[len(self.calls) - 1] if len(self.calls) <= len(self.errors) else 0
        if err:
            raise OSError(err, "scripted")
        return count


def test_send_slots_retries_a_refused_slot_once_when_asked() -> None:
    import errno

    asked: list[int] = []

    def retry(err: int) -> bool:
        asked.append(err)
        return err == errno.EHOSTUNREACH

    # slot 0 refused once (a pending error), then sent with the rest
    batch = ScriptedBatch([errno.EHOSTUNREACH])
    assert send_slots(batch, 0, 0, 3, retry) == [] and batch.calls == [(0, 3), (0, 3)]
    # refused again after the retry: reported, and the next slots still go
    batch = ScriptedBatch([errno.EHOSTUNREACH, errno.EHOSTUNREACH])
    assert send_slots(batch, 0, 0, 3, retry) == [(0, errno.EHOSTUNREACH)] and batch.calls == [(0, 3), (0, 3), (1, 2)]
    # an error retry() declines: reported at once
    asked.clear()
    batch = ScriptedBatch([errno.EPERM])
    assert send_slots(batch, 0, 0, 2, retry) == [(0, errno.EPERM)] and asked == [errno.EPERM]
    # without retry, as before
    batch = ScriptedBatch([errno.EHOSTUNREACH])
    assert send_slots(batch, 0, 0, 2) == [(0, errno.EHOSTUNREACH)] and batch.calls == [(0, 2), (1, 1)]
