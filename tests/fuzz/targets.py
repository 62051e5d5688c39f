"""The fuzz targets: one function per decoder, each taking arbitrary bytes.

A target returns normally for every input the decoder handles correctly (a result, or
its one documented error class with a known ``reason``) and raises AssertionError, or
lets any other exception escape, when something is wrong. Wherever a decoder has a
compiled core and a pure-Python twin, the target runs both on the same input and
asserts they agree exactly (result, reason, and what they wrote into buffers).

The same functions serve three callers: the atheris runner (tests/fuzz/run.py, the long
coverage-guided run of ``make fuzz``), the short in-suite run (tests/test_fuzz.py), and
the replay of every committed corpus file and crash reproducer (tests/fuzz/corpus/).

Inputs that carry several packets are split by :func:`chunks` (a length byte, then that
many bytes), so a mutation of one length byte moves one packet boundary. Packets the
fuzzer would almost never get past a checksum check are fed a second time with their
checksums made right by :func:`fix_checksums`, which lets coverage reach the code behind.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import ipaddress
import os
import random
import tempfile
from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import Any

try:
    from fastproxy.client.bridge import TunBridge
except ImportError:  # Windows: no TUN device (fcntl); the bridge target checks the parser only
    TunBridge = None  # type: ignore[assignment,misc]
from fastproxy.client.fragments import is_fragment
from fastproxy.client.udp_packets import build_udp_packet, parse_udp_packet
from fastproxy.config import SCHEMAS, ConfigError, apply_config
from fastproxy.errors import MalformedDatagram, MalformedPacket
from fastproxy.tunnel import control as ctl

__all__ = ["TARGETS", "chunks", "fix_checksums"]

COMPILED: ModuleType = importlib.import_module("fastproxy._core")
TWIN: ModuleType = importlib.import_module("fastproxy._purepy")
CORES = (COMPILED, TWIN)


def chunks(data: bytes, limit: int = 64) -> list[bytes]:
    """Split ``data`` into at most ``limit`` pieces: a length byte, then up to that many bytes."""
    pieces: list[bytes] = []
    i = 0
    while i < len(data) and len(pieces) < limit:
        n = data[i]
        pieces.append(data[i + 1 : i + 1 + n])
        i += 1 + n
    return pieces


def _sum16(data: bytes | bytearray, initial: int = 0) -> int:
    """RFC 1071 checksum, written out here so the harness does not trust the code under test."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = initial + sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def fix_checksums(packet: bytes) -> bytes:
    """``packet`` with its IPv4 header checksum and ICMP(v6) checksum made right, where the
    headers are long enough to have them (extension headers are not followed)."""
    p = bytearray(packet)
    if len(p) >= 20 and p[0] >> 4 == 4:
        hlen = (p[0] & 0x0F) * 4
        if 20 <= hlen <= len(p):
            p[10:12] = b"\0\0"
            p[10:12] = _sum16(p[:hlen]).to_bytes(2, "big")
            end = min(len(p), int.from_bytes(p[2:4], "big"))
            if p[9] == 1 and end - hlen >= 4:
                p[hlen + 2 : hlen + 4] = b"\0\0"
                p[hlen + 2 : hlen + 4] = _sum16(p[hlen:end]).to_bytes(2, "big")
    elif len(p) >= 44 and p[0] >> 4 == 6 and p[6] == 58:
        end = min(len(p), 40 + int.from_bytes(p[4:6], "big"))
        if end - 40 >= 4:
            p[42:44] = b"\0\0"
            pseudo = bytes(p[8:40]) + (end - 40).to_bytes(4, "big") + b"\0\0\0\x3a"
            p[42:44] = _sum16(pseudo + bytes(p[40:end])).to_bytes(2, "big")
    return bytes(p)


# ---------------------------------------------------------------- tunnel datagrams


def _decode(core: ModuleType, data: bytes | bytearray | memoryview) -> tuple[str, object]:
    try:
        return ("ok", core.decode_datagram(data))
    except MalformedDatagram as exc:
        assert exc.reason in core.DATAGRAM_MALFORMED_REASONS, exc.reason
        return ("malformed", exc.reason)


def _encode(core: ModuleType, datagram: object) -> bytes:
    """The bytes ``core``'s encoders make of a decoded datagram (decoding is canonical)."""
    kind = type(datagram).__name__
    d: Any = datagram
    if kind == "IcmpDatagram":
        return core.encode_icmp(d.packet)  # type: ignore[no-any-return]
    if kind == "UdpPayload":
        return core.encode_udp_payload(d.request_id, d.payload)  # type: ignore[no-any-return]
    if kind == "UdpRegistration":
        return core.encode_udp_registration(  # type: ignore[no-any-return]
            d.request_id, d.dst, d.port, d.idle_timeout, traced=d.traced, payload=d.payload)
    assert kind == "RegistrationResponse", kind
    return core.encode_registration_response(d.request_id, d.code, d.message)  # type: ignore[no-any-return]


def datagram(data: bytes) -> None:
    """decode_datagram: compiled and twin agree (on bytes and on a memoryview); what
    decodes re-encodes, with either core, to exactly the input."""
    outcome = _decode(COMPILED, data)
    assert _decode(COMPILED, memoryview(bytearray(data))) == outcome
    assert _decode(TWIN, data) == outcome, (outcome, data.hex())
    if outcome[0] == "ok":
        for core in CORES:
            assert _encode(core, outcome[1]) == data, (core.__name__, data.hex())


# ---------------------------------------------------------------- control messages


def control(data: bytes) -> None:
    """ControlDecoder: only MalformedControlMessage (with a known reason) for bad input;
    feeding the stream whole or in pieces gives the same messages, the same error and
    the same pending bytes; every message decoded re-encodes to exactly its frame."""
    def run(pieces: list[bytes]) -> tuple[list[object], str | None, int]:
        decoder = ctl.ControlDecoder()
        messages: list[object] = []
        for piece in pieces:
            try:
                messages += decoder.feed(piece)
            except ctl.MalformedControlMessage as exc:
                assert exc.reason in ctl.CONTROL_MALFORMED_REASONS, exc.reason
                return messages, exc.reason, -1
        return messages, None, decoder.pending

    whole = run([data])
    rng = random.Random(len(data))  # the split depends on the input only
    pieces, i = [], 0
    while i < len(data):
        n = rng.randint(1, 9)
        pieces.append(data[i : i + n])
        i += n
    split = run(pieces)
    if whole[1] is None:
        assert split == whole, (whole, split)
    else:  # whole: the error surfaces before any message is returned
        assert split[1] == whole[1], (whole, split)
    # Each frame round-trips in the version it was framed with (a message carries no
    # version of its own except Hello and Welcome, which keep the frame's), and
    # decode_message agrees with the stream decoder.
    pos = 0
    for message in split[0]:
        version = data[pos + 2]
        if isinstance(message, (ctl.Hello, ctl.Welcome)):
            assert message.version == version, (message, data.hex())
        if isinstance(message, ctl.Hello) and version not in ctl.SUPPORTED_VERSIONS:
            # A HELLO of a newer version is read (same layout) but cannot be written:
            # every byte but the version is the one this version would write.
            frame = ctl.encode_message(message, ctl.PROTOCOL_VERSION)
            frame = frame[:2] + bytes([version]) + frame[3:]
        else:
            frame = ctl.encode_message(message, version)  # type: ignore[arg-type]
        assert data[pos : pos + len(frame)] == frame, (message, data.hex())
        decoded = ctl.decode_message(frame)
        assert decoded == message and getattr(decoded, "version", None) == getattr(message, "version", None)
        pos += len(frame)


# ---------------------------------------------------------------- IP / ICMP packets


def _address_for(buf: bytes | bytearray) -> bytes:
    return b"\x0a" * (16 if buf[:1] and buf[0] >> 4 == 6 else 4)


def _as_tuple(result: object) -> object:
    if hasattr(result, "inner") and hasattr(result, "icmp_offset"):
        info: Any = result
        inner = info.inner
        fields = ("version", "header_length", "total_length", "ttl", "protocol", "src", "dst", "icmp_offset",
                  "icmp_type", "icmp_code", "icmp_checksum", "echo_id", "echo_seq", "mtu")
        inner_fields = ("offset", "length", "version", "header_length", "protocol", "ttl", "src", "dst",
                        "icmp_type", "icmp_code", "echo_id", "echo_seq")
        return (tuple(getattr(info, f) for f in fields),
                None if inner is None else tuple(getattr(inner, f) for f in inner_fields))
    return result


PACKET_ACTIONS: dict[str, Callable[[ModuleType, bytearray], object]] = {
    "parse": lambda core, buf: core.parse_packet(buf),
    "parse_unverified": lambda core, buf: core.parse_packet(buf, verify_checksums=False),
    "rewrite_echo": lambda core, buf: core.rewrite_echo(buf, src=_address_for(buf), echo_id=0xBEEF, ttl=3),
    "rewrite_echo_dst": lambda core, buf: core.rewrite_echo(buf, dst=_address_for(buf)),
    "decrement_ttl": lambda core, buf: core.decrement_ttl(buf),
    "translate_icmp_error": lambda core, buf: core.translate_icmp_error(buf, _address_for(buf), 9),
    "time_exceeded": lambda core, buf: core.build_time_exceeded(_address_for(buf), buf),
    "packet_too_big": lambda core, buf: core.build_packet_too_big(_address_for(buf), buf, 1280),
}


def _packet_outcome(action: Callable[[ModuleType, bytearray], object], core: ModuleType, data: bytes) -> tuple:
    buf = bytearray(data)
    try:
        result = action(core, buf)
    except MalformedPacket as exc:
        assert exc.reason in core.PACKET_MALFORMED_REASONS, exc.reason
        return ("malformed", exc.reason, bytes(buf))
    except ValueError as exc:  # the builders' argument check (original not an IP header of src's family)
        assert not isinstance(exc, MalformedPacket)
        return ("value_error", bytes(buf))
    return ("ok", _as_tuple(result), bytes(buf))


def packet(data: bytes) -> None:
    """parse_packet, rewrite_echo, decrement_ttl, translate_icmp_error and the error
    builders: compiled and twin agree on the input and on it with checksums fixed; a
    refused packet is left unchanged; a built error parses."""
    for candidate in dict.fromkeys((data, fix_checksums(data))):
        parsed_ok = _packet_outcome(PACKET_ACTIONS["parse"], TWIN, candidate)[0] == "ok"
        for name, action in PACKET_ACTIONS.items():
            compiled, twin = _packet_outcome(action, COMPILED, candidate), _packet_outcome(action, TWIN, candidate)
            assert compiled == twin, (name, compiled, twin, candidate.hex())
            if compiled[0] != "ok" and not name.startswith("parse"):
                assert compiled[-1] == candidate, name  # nothing written when refused
            if compiled[0] == "ok" and name in ("time_exceeded", "packet_too_big") and parsed_ok:
                COMPILED.parse_packet(compiled[1])  # an error about a good packet is a good packet


# ---------------------------------------------------------------- EchoNat

_NAT_ALLOWED = [(ipaddress.ip_address("10.0.0.0").packed, 8), (ipaddress.ip_address("fd00::").packed, 8),
                (ipaddress.ip_address("192.0.2.0").packed, 24)]
_V6_PEERS = ("fd00::1", "fd00::a0a:a0a", "2001:db8::1")


def _nat_run(core: ModuleType, control_byte: int, requests: list[bytes], replies: list[bytes]) -> tuple:
    table = core.FlowTable(16, max_per_connection=8, idle_timeout=30.0)
    nat = core.EchoNat(table, _NAT_ALLOWED)
    out4, out6 = core.PacketBatch(len(requests) or 1, 512), core.PacketBatch(len(requests) or 1, 512)
    n4, n6, refused = nat.outbound(7, requests, out4, out6, 1.0)
    for reason in (r for _, r in refused):
        assert reason in core.NAT_REFUSAL_REASONS or reason in core.PACKET_MALFORMED_REASONS, reason
    sent = [(bytes(o.data(i)), o.address(i), o.ttl(i)) for o, n in ((out4, n4), (out6, n6)) for i in range(n)]
    for message, address, _ in sent:
        if len(address) == 2:  # v4: the rewritten echo keeps a valid checksum
            assert _sum16(message) == 0, message.hex()
    family = 6 if control_byte & 1 else 4
    received = core.PacketBatch(max(1, len(replies)), 256)
    for i, reply in enumerate(replies):
        address = (_V6_PEERS[i % 3], 0, 0, 0) if family == 6 else ("10.10.10.10", 0)
        received.set(i, reply[:256], address=address, ttl=(control_byte >> 1) % 70 - 1)
    received.count = len(replies)
    answers = nat.inbound(received, family, 2.0)
    drops = nat.take_drops()
    for reason in drops:
        assert reason in core.NAT_REPLY_DROP_REASONS, reason
    assert len(answers) + sum(drops.values()) == len(replies), (answers, drops)
    flows = len(table)
    expired = table.expire(100.0)  # every flow: (conn, client src, dst, client echo id, assigned id)
    # A flow keeps the client's echo id when it is free towards that destination; else the
    # table picks one at random (seeded from os.urandom in both cores, so they differ):
    # compare those as "random", with the checksum bytes that depend on them.
    client_id = {assigned: echo_id for _, _, _, echo_id, assigned in expired}

    def canonical(assigned: int) -> int | str:
        return assigned if client_id.get(assigned, assigned) == assigned else "random"

    sent_canonical = [(m[:2], canonical(int.from_bytes(m[4:6], "big")), m[6:], a, t) for m, a, t in sent]
    flows_canonical = sorted((c, s, d, e, str(canonical(a))) for c, s, d, e, a in expired)
    return n4, n6, refused, sent_canonical, answers, drops, flows, nat.flows_created, flows_canonical


def nat(data: bytes) -> None:
    """EchoNat outbound (client echo requests) then inbound (what the raw socket got):
    compiled and twin agree on every slot, answer, refusal and drop count; every reply
    is either answered or counted as dropped."""
    if not data:
        return
    pieces = chunks(data[1:])
    requests = [fix_checksums(p) if data[0] & 2 else p for p in pieces[0::2]]
    replies = [fix_checksums(p) if data[0] & 4 else p for p in pieces[1::2]]
    compiled = _nat_run(COMPILED, data[0], requests, replies)
    twin = _nat_run(TWIN, data[0], requests, replies)
    assert compiled == twin, (compiled, twin, data.hex())


# ---------------------------------------------------------------- the TUN bridge


class _FakeTun:
    fd = -1

    def __init__(self) -> None:
        self.inbox: list[bytes] = []
        self.written: list[bytes] = []

    def read_batch(self) -> list[bytes]:
        batch, self.inbox = self.inbox, []
        return batch

    def write_batch(self, packets: list[bytes]) -> int:
        self.written += packets
        return len(packets)


class _FakeSession:
    def __init__(self, tunnel: _FakeTunnel) -> None:
        self.tunnel = tunnel

    def send(self, payload: bytes) -> None:
        self.tunnel.udp_sent.append(payload)

    async def receive(self) -> bytes:
        raise EOFError

    def close(self) -> None:
        pass


class _FakeTunnel:
    def __init__(self) -> None:
        self.drops: Counter[str] = Counter()
        self.icmp_sent: list[bytes] = []
        self.udp_sent: list[bytes] = []
        self.opened: list[tuple[str, int]] = []

    def send_packets(self, packets: list[bytes]) -> None:
        self.icmp_sent += packets

    async def open_udp(self, host: str, port: int) -> _FakeSession:
        self.opened.append((host, port))
        if port % 5 == 0:
            raise ConnectionError("refused")
        return _FakeSession(self)


_LOOP: asyncio.AbstractEventLoop | None = None


# Drops counted on top of a packet's own outcome (it was already counted as udp_to_tunnel
# or tun_too_big), or per fragment / per reassembly rather than per whole packet.
_BRIDGE_SECONDARY_DROPS = ("tun_udp_session_refused", "tun_udp_pending_overflow", "tun_icmp_error_rate_limited")


def _is_icmp_error_from_router(p: bytes) -> bool:
    if p[:1] and p[0] >> 4 == 4:
        return p[9] == 1 and p[(p[0] & 0x0F) * 4] in (3, 11) and p[12:16] == bytes([192, 0, 0, 8])
    return p[6] == 58 and p[40] in (1, 2, 3) and p[8:24] == ipaddress.ip_address("fe80::1").packed


def bridge(data: bytes) -> None:
    """The TUN bridge's parser: the packets of one read from the device are each sent on
    as an ICMP echo request, turned into a UDP payload, counted as a drop (never an
    exception), or, being fragments, held until reassembled (the whole packet then has one
    of those outcomes), dropped or timed out; what the bridge writes back into the device
    is an ICMP error from the far end that parses; parse_udp_packet's result builds back
    into a packet that parses the same."""
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
    packets = chunks(data)
    for p in packets:
        udp = parse_udp_packet(p)
        if udp is not None:
            assert udp.version == p[0] >> 4 and len(udp.src) == len(udp.dst) == (4 if udp.version == 4 else 16)
            again = parse_udp_packet(build_udp_packet(udp.src, udp.dst, udp.src_port, udp.dst_port, udp.payload))
            assert again == udp, (udp, again)
    if TunBridge is None:
        return
    # Its once-per-flow warnings would be once per input here: fuzzing speed, not a check.
    bridge_log = logging.getLogger("fastproxy.client.bridge")
    was_disabled, bridge_log.disabled = bridge_log.disabled, True
    try:
        _bridge_run(packets)
    finally:
        bridge_log.disabled = was_disabled


def _bridge_run(packets: list[bytes]) -> None:
    assert _LOOP is not None
    tun, tunnel, now = _FakeTun(), _FakeTunnel(), [0.0]
    bridge = TunBridge(tun, tunnel, max_udp_flows=4, clock=lambda: now[0])  # type: ignore[arg-type]
    bridge._loop = _LOOP  # started without add_reader: the harness calls the reader itself
    tun.inbox = packets
    bridge._on_readable()
    _LOOP.run_until_complete(asyncio.sleep(0))
    _LOOP.run_until_complete(asyncio.sleep(0))
    for p in tunnel.icmp_sent:  # only whole echo requests that fit go out as ICMP
        assert (p[0] >> 4 == 4 and p[9] == 1 and p[(p[0] & 0x0F) * 4] == 8) or (p[0] >> 4 == 6 and p[40] == 128)
        assert len(p) <= 1280 and not is_fragment(p), p.hex()
    fragments = sum(1 for p in packets if is_fragment(p))
    whole = len(packets) - fragments + bridge.stats["reassembled"]
    assert bridge.stats["reassembled"] <= fragments, bridge.stats
    drops = sum(n for reason, n in tunnel.drops.items()
                if reason not in _BRIDGE_SECONDARY_DROPS and not reason.startswith("tun_fragment_"))
    assert len(tunnel.icmp_sent) + bridge.stats["udp_to_tunnel"] + drops == whole, (tunnel.drops, bridge.stats)
    assert len(tunnel.udp_sent) + tunnel.drops["tun_udp_session_refused"] <= bridge.stats["udp_to_tunnel"]
    # Every fragment still held is forgotten once its time is up, and counted.
    held, timeouts = len(bridge.reassembly), tunnel.drops["tun_fragment_timeout"]
    assert held <= fragments
    now[0] = bridge.reassembly.timeout + 1.0
    bridge.expire_fragments()
    assert len(bridge.reassembly) == 0 and tunnel.drops["tun_fragment_timeout"] == timeouts + held
    assert bridge.stats["icmp_errors_to_tun"] == len(tun.written)
    for p in tun.written:
        assert _is_icmp_error_from_router(p), p.hex()
        for core in CORES:
            core.parse_packet(p)  # well-formed, checksums right
    tun.fd = None  # type: ignore[assignment]  # nothing to remove_reader for
    bridge.close()
    _LOOP.run_until_complete(asyncio.sleep(0))
    assert not bridge._flows


# ---------------------------------------------------------------- the config loader

_CONFIG_DIR = tempfile.mkdtemp(prefix="fastproxy-fuzz-config-")
_CONFIG_PATH = os.path.join(_CONFIG_DIR, "fuzz.toml")
_KIND_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "path": (str,), "bool": (bool,), "int": (int,),
                                           "float": (float,), "host_port": (tuple,),
                                           "cidr": (ipaddress.IPv4Network, ipaddress.IPv6Network)}


def config(data: bytes) -> None:
    """TOML bytes -> each role's settings, or a ConfigError naming the file; never any
    other exception; every value converted to its kind's type."""
    with open(_CONFIG_PATH, "wb") as f:
        f.write(data)
    for section, schema in SCHEMAS.items():
        try:
            args = apply_config(argparse.Namespace(config=_CONFIG_PATH), section)
        except ConfigError as exc:
            assert str(exc), section
            continue
        for setting in schema.settings:
            value = getattr(args, setting.key)
            if value is None:
                assert not setting.required
                continue
            values = value if setting.many else [value]
            assert isinstance(values, list)
            for item in values:
                assert isinstance(item, _KIND_TYPES[setting.kind]), (setting.key, item)
                if setting.kind == "int":
                    assert not isinstance(item, bool), (setting.key, item)
            if setting.choices:
                assert value in setting.choices


TARGETS: dict[str, Callable[[bytes], None]] = {
    "datagram": datagram,
    "control": control,
    "packet": packet,
    "nat": nat,
    "bridge": bridge,
    "config": config,
}
