"""fastproxy packet core: parse, build and rewrite IPv4/IPv6 ICMP, with scapy as the oracle.

Every test runs on the compiled core and on the pure-Python twin (the ``impl`` fixture).
scapy builds the expected bytes independently (its own checksum code); hypothesis picks
addresses, identifiers, payloads and TTLs.
"""

from __future__ import annotations

import ipaddress
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import (
    ICMP,
    IP,
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPOption_NOP,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    UDP,
    raw,
)

from fastproxy.errors import MalformedPacket

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

v4_addr = st.binary(min_size=4, max_size=4)
v6_addr = st.binary(min_size=16, max_size=16)
u16 = st.integers(0, 0xFFFF)
u8 = st.integers(0, 0xFF)


def text(addr: bytes) -> str:
    return str(ipaddress.ip_address(addr))


def checksum(data: bytes) -> int:
    """RFC 1071, written out independently of the code under test."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def scapy_echo(src: bytes, dst: bytes, echo_id: int, seq: int, payload: bytes, ttl: int, reply: bool) -> bytes:
    """Echo packet with our builder's header choices (v4: id 0, DF; v6: tc 0, flow label 0)."""
    if len(src) == 4:
        return raw(IP(src=text(src), dst=text(dst), id=0, flags="DF", ttl=ttl) / ICMP(type=0 if reply else 8, id=echo_id, seq=seq) / payload)
    cls = ICMPv6EchoReply if reply else ICMPv6EchoRequest
    return raw(IPv6(src=text(src), dst=text(dst), hlim=ttl) / cls(id=echo_id, seq=seq, data=payload))


def scapy_error(src: bytes, dst: bytes, kind: str, quote: bytes, ttl: int = 64, mtu: int = 0) -> bytes:
    """ICMP error packet from src to dst (header choices as ours) carrying quote."""
    if len(src) == 4:
        icmp = {
            "time_exceeded": ICMP(type=11, code=0),
            "unreachable": ICMP(type=3, code=1),
            "too_big": ICMP(type=3, code=4, nexthopmtu=mtu),
        }[kind]
        return raw(IP(src=text(src), dst=text(dst), id=0, flags="DF", ttl=ttl) / icmp / quote)
    icmp6 = {
        "time_exceeded": ICMPv6TimeExceeded(code=0),
        "unreachable": ICMPv6DestUnreach(code=3),
        "too_big": ICMPv6PacketTooBig(mtu=mtu),
    }[kind]
    return raw(IPv6(src=text(src), dst=text(dst), hlim=ttl) / icmp6 / quote)


@st.composite
def echo_args(draw: st.DrawFn) -> tuple[bytes, bytes, int, int, bytes, int, bool]:
    addr = draw(st.sampled_from([v4_addr, v6_addr]))
    payload = draw(st.binary(max_size=1400))
    return draw(addr), draw(addr), draw(u16), draw(u16), payload, draw(u8), draw(st.booleans())


# ---------------------------------------------------------------- building


@SETTINGS
@given(args=echo_args())
def test_build_echo_matches_scapy(impl: ModuleType, args: tuple) -> None:
    src, dst, echo_id, seq, payload, ttl, reply = args
    assert impl.build_echo(src, dst, echo_id, seq, payload, ttl=ttl, reply=reply) == scapy_echo(*args)


def test_build_echo_defaults_and_buffers(impl: ModuleType) -> None:
    src, dst = b"\xc0\x00\x02\x01", bytearray(b"\xc0\x00\x02\x02")
    packet = impl.build_echo(src, memoryview(dst), 7, 9)
    assert packet == scapy_echo(src, bytes(dst), 7, 9, b"", 64, False)
    assert type(packet) is bytes


@SETTINGS
@given(
    v6=st.booleans(),
    payload_size=st.integers(0, 1500),
    kind=st.sampled_from(["time_exceeded", "unreachable", "too_big"]),
    mtu=st.integers(68, 0xFFFF),
    router=st.binary(min_size=16, max_size=16),
)
def test_build_icmp_error_matches_scapy(impl: ModuleType, v6: bool, payload_size: int, kind: str, mtu: int, router: bytes) -> None:
    alen = 16 if v6 else 4
    client, target, router = b"\x01" * alen, b"\x02" * alen, router[:alen]
    original = scapy_echo(client, target, 1, 2, bytes(i % 253 for i in range(payload_size)), 3, False)
    if kind == "time_exceeded":
        built = impl.build_time_exceeded(router, original)
    elif kind == "unreachable":
        built = impl.build_destination_unreachable(router, original, 3 if v6 else 1)
    else:
        built = impl.build_packet_too_big(router, original, mtu)
    limit = 1280 if v6 else 576
    quote = original[: limit - (48 if v6 else 28)]
    assert len(built) == min(limit, len(original) + (48 if v6 else 28))
    assert built == scapy_error(router, client, kind, quote, mtu=mtu)


def test_build_icmp_error_recomputed_by_scapy(impl: ModuleType) -> None:
    """scapy recomputes the outer checksums of our error messages to the same bytes."""
    for src, dst in ((b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"), (b"\x20\x01\x0d\xb8" + bytes(11) + b"\x01", b"\x20\x01\x0d\xb8" + bytes(11) + b"\x02")):
        original = impl.build_echo(src, dst, 0x1234, 5, b"x" * 2000)
        built = impl.build_icmp_error(b"\x0a\x00\x00\x09" if len(src) == 4 else b"\xfe\x80" + bytes(13) + b"\x09", original, 3 if len(src) == 4 else 1, 0)
        pkt = IP(built) if len(src) == 4 else IPv6(built)
        if len(src) == 4:
            del pkt[IP].chksum, pkt[ICMP].chksum
        else:
            del pkt[ICMPv6DestUnreach].cksum
        assert raw(pkt) == built


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((b"\1\2\3", b"\1\2\3\4", 1, 1), {}),  # bad address length
        ((b"\1\2\3\4", bytes(16), 1, 1), {}),  # mixed families
        ((b"\1\2\3\4", b"\1\2\3\4", 65536, 1), {}),
        ((b"\1\2\3\4", b"\1\2\3\4", 1, -1), {}),
        ((b"\1\2\3\4", b"\1\2\3\4", 1, 1), {"ttl": 256}),
        ((b"\1\2\3\4", b"\1\2\3\4", 1, 1, bytes(65536 - 28)), {}),  # exceeds IPv4 total length
        ((bytes(16), bytes(16), 1, 1, bytes(65536 - 8)), {}),  # exceeds IPv6 payload length
    ],
)
def test_build_echo_rejects_unusable_arguments(impl: ModuleType, args: tuple, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        impl.build_echo(*args, **kwargs)


def test_build_echo_largest_fits(impl: ModuleType) -> None:
    assert len(impl.build_echo(b"\1\2\3\4", b"\1\2\3\4", 1, 1, bytes(65535 - 28))) == 65535
    assert len(impl.build_echo(bytes(16), bytes(16), 1, 1, bytes(65535 - 8))) == 65535 + 40


def test_build_icmp_error_rejects_unusable_arguments(impl: ModuleType) -> None:
    v4 = impl.build_echo(b"\1\2\3\4", b"\5\6\7\10", 1, 1)
    v6 = impl.build_echo(bytes(16), bytes(16), 1, 1)
    router4, router6 = b"\x0a\0\0\1", bytes(15) + b"\1"
    for args, kwargs in [
        ((router6, v4, 1, 0), {}),  # family mismatch
        ((router4, v6, 3, 1), {}),
        ((b"\1\2", v4, 3, 1), {}),
        ((router4, v4[:19], 3, 1), {}),  # no whole header to take the source from
        ((router4, v4, 256, 0), {}),
        ((router4, v4, 3, 256), {}),
        ((router4, v4, 3, 4), {"mtu": 65536}),
        ((router6, v6, 2, 0), {"mtu": 1 << 32}),
        ((router4, v4, 11, 0), {"mtu": 1400}),  # no MTU field in this message
        ((router4, v4, 11, 0), {"ttl": 300}),
    ]:
        with pytest.raises(ValueError):
            impl.build_icmp_error(*args, **kwargs)


# ---------------------------------------------------------------- parsing


@SETTINGS
@given(args=echo_args(), tos=u8, ip_id=u16, df=st.booleans(), options=st.integers(0, 40), flow=st.integers(0, 0xFFFFF),
       extensions=st.lists(st.sampled_from(["hop", "dest", "routing"]), max_size=3))
def test_parse_scapy_echo(impl: ModuleType, args: tuple, tos: int, ip_id: int, df: bool, options: int, flow: int, extensions: list) -> None:
    src, dst, echo_id, seq, payload, ttl, reply = args
    if len(src) == 4:
        ip = IP(src=text(src), dst=text(dst), tos=tos, id=ip_id, flags="DF" if df else 0, ttl=ttl, options=[IPOption_NOP()] * options)
        pkt = ip / ICMP(type=0 if reply else 8, id=echo_id, seq=seq) / payload
        header_length = 20 + (options + 3) // 4 * 4
    else:
        pkt = IPv6(src=text(src), dst=text(dst), tc=tos, fl=flow, hlim=ttl)
        for ext in extensions:
            pkt /= {"hop": IPv6ExtHdrHopByHop(), "dest": IPv6ExtHdrDestOpt(), "routing": IPv6ExtHdrRouting(addresses=[])}[ext]
        pkt /= (ICMPv6EchoReply if reply else ICMPv6EchoRequest)(id=echo_id, seq=seq, data=payload)
        header_length = 40 + 8 * len(extensions)
    data = raw(pkt)
    info = impl.parse_packet(data)
    assert (info.version, info.header_length, info.total_length, info.ttl) == (4 if len(src) == 4 else 6, header_length, len(data), ttl)
    assert (info.protocol, info.src, info.dst, info.icmp_offset) == (1 if len(src) == 4 else 58, src, dst, header_length)
    icmp = data[header_length:]
    assert (info.icmp_type, info.icmp_code, info.icmp_checksum) == (icmp[0], 0, int.from_bytes(icmp[2:4], "big"))
    assert icmp[0] == ((0 if reply else 8) if len(src) == 4 else (129 if reply else 128))
    assert (info.echo_id, info.echo_seq, info.inner, info.mtu) == (echo_id, seq, None, None)


QUOTED_KINDS = ["time_exceeded", "unreachable", "too_big"]


@SETTINGS
@given(args=echo_args(), kind=st.sampled_from(QUOTED_KINDS), cut=st.integers(0, 2000), mtu=u16, router=v6_addr, ttl=u8)
def test_parse_scapy_error(impl: ModuleType, args: tuple, kind: str, cut: int, mtu: int, router: bytes, ttl: int) -> None:
    src, dst, echo_id, seq, payload, inner_ttl, reply = args
    v4 = len(src) == 4
    router = router[: len(src)]
    original = scapy_echo(src, dst, echo_id, seq, payload, inner_ttl, reply)
    hlen = 20 if v4 else 40
    quote = original[: hlen + 8 + cut]
    data = scapy_error(router, src, kind, quote, ttl=ttl, mtu=mtu)
    info = impl.parse_packet(data)
    assert (info.src, info.dst, info.ttl, info.total_length, info.echo_id, info.echo_seq) == (router, src, ttl, len(data), None, None)
    expected_type = {"time_exceeded": (11, 0), "unreachable": (3, 1), "too_big": (3, 4)} if v4 else {"time_exceeded": (3, 0), "unreachable": (1, 3), "too_big": (2, 0)}
    assert (info.icmp_type, info.icmp_code) == expected_type[kind]
    assert info.mtu == (mtu if kind == "too_big" else None)
    inner = info.inner
    assert (inner.offset, inner.length, inner.version, inner.header_length) == (hlen + 8, len(quote), info.version, hlen)
    assert (inner.protocol, inner.ttl, inner.src, inner.dst) == (info.protocol, inner_ttl, src, dst)
    echo_type = (0 if reply else 8) if v4 else (129 if reply else 128)
    assert (inner.icmp_type, inner.icmp_code, inner.echo_id, inner.echo_seq) == (echo_type, 0, echo_id, seq)


def test_parse_v6_parameter_problem_and_v4_parameter_problem(impl: ModuleType) -> None:
    original6 = scapy_echo(bytes(15) + b"\1", bytes(15) + b"\2", 3, 4, b"", 9, False)
    info = impl.parse_packet(raw(IPv6(src="::9", dst="::1") / ICMPv6ParamProblem(code=0, ptr=6) / original6))
    assert (info.icmp_type, info.mtu, info.inner.echo_id) == (4, None, 3)
    original4 = scapy_echo(b"\1\1\1\1", b"\2\2\2\2", 3, 4, b"", 9, False)
    info = impl.parse_packet(raw(IP(src="9.9.9.9", dst="1.1.1.1") / ICMP(type=12, code=0, ptr=1) / original4))
    assert (info.icmp_type, info.mtu, info.inner.echo_id, info.inner.ttl) == (12, None, 3, 9)


def test_parse_quote_not_echo(impl: ModuleType) -> None:
    """Quoted UDP, and a quoted non-first fragment, have no ICMP fields."""
    udp = raw(IP(src="1.1.1.1", dst="2.2.2.2", ttl=5) / UDP(sport=53, dport=53) / b"12345678")
    error = impl.build_destination_unreachable(b"\2\2\2\2", udp, 3)
    inner = impl.parse_packet(error).inner
    assert (inner.protocol, inner.icmp_type, inner.icmp_code, inner.echo_id, inner.echo_seq) == (17, None, None, None, None)
    fragment = bytearray(raw(IP(src="1.1.1.1", dst="2.2.2.2", frag=100) / ICMP() / b"payload!"))
    inner = impl.parse_packet(impl.build_time_exceeded(b"\3\3\3\3", fragment)).inner
    assert (inner.protocol, inner.icmp_type, inner.echo_id) == (1, None, None)


def with_rfc4884_extension(packet: bytes, v6: bool, pad_to: int) -> bytes:
    """Pad the quote to pad_to bytes, set the RFC 4884 length and append an extension structure."""
    hlen = 40 if v6 else 20
    quote = packet[hlen + 8 :].ljust(pad_to, b"\0")
    extension = bytes([0x20, 0, 0, 0]) + bytes([0, 8, 1, 1]) + b"\0\0\0\x2a"
    extension = extension[:2] + checksum(extension).to_bytes(2, "big") + extension[4:]
    icmp = bytearray(packet[hlen : hlen + 8] + quote + extension)
    icmp[4 if v6 else 5] = pad_to // (8 if v6 else 4)
    header = bytearray(packet[:hlen])
    if v6:
        header[4:6] = len(icmp).to_bytes(2, "big")
        pseudo = header[8:40] + len(icmp).to_bytes(4, "big") + b"\0\0\0\x3a"
    else:
        header[2:4] = (hlen + len(icmp)).to_bytes(2, "big")
        header[10:12] = b"\0\0"
        header[10:12] = checksum(bytes(header)).to_bytes(2, "big")
        pseudo = b""
    icmp[2:4] = b"\0\0"
    icmp[2:4] = checksum(bytes(pseudo + icmp)).to_bytes(2, "big")
    return bytes(header + icmp)


@pytest.mark.parametrize("v6", [False, True])
def test_parse_rfc4884_extended_error(impl: ModuleType, v6: bool) -> None:
    """A padded quote followed by an extension structure (routers with MPLS send these)."""
    alen = 16 if v6 else 4
    original = impl.build_echo(b"\1" * alen, b"\2" * alen, 77, 1, b"ab")
    plain = impl.build_time_exceeded(b"\3" * alen, original)
    data = with_rfc4884_extension(plain, v6, 128)
    assert (IPv6(data) if v6 else IP(data)).summary()  # scapy reads it too
    inner = impl.parse_packet(data).inner
    assert (inner.length, inner.echo_id, inner.src) == (len(original), 77, b"\1" * alen)
    translated = bytearray(data)
    impl.translate_icmp_error(translated, b"\4" * alen, 5)
    assert impl.parse_packet(translated).inner.echo_id == 5
    # A length pointing past the message is a bad quote.
    bad = bytearray(data)
    bad[(40 if v6 else 20) + (4 if v6 else 5)] = 255
    with pytest.raises(MalformedPacket) as excinfo:
        impl.parse_packet(bad, verify_checksums=False)
    assert excinfo.value.reason == "bad_quote"


def test_parse_accepts_any_buffer(impl: ModuleType) -> None:
    packet = impl.build_echo(b"\1\2\3\4", b"\5\6\7\10", 1, 2, b"abc")
    expected = impl.parse_packet(packet)
    assert impl.parse_packet(bytearray(packet)) == expected
    assert impl.parse_packet(memoryview(b"xx" + packet)[2:]) == expected
    assert repr(expected).startswith("PacketInfo(version=4, header_length=20")


# ---------------------------------------------------------------- rewriting


@SETTINGS
@given(args=echo_args(), new_src=st.none() | st.binary(min_size=16, max_size=16), new_dst=st.none() | st.binary(min_size=16, max_size=16),
       new_id=st.none() | u16, new_ttl=st.none() | u8)
def test_rewrite_echo_matches_scapy(impl: ModuleType, args: tuple, new_src: bytes | None, new_dst: bytes | None,
                                    new_id: int | None, new_ttl: int | None) -> None:
    src, dst, echo_id, seq, payload, ttl, reply = args
    alen = len(src)
    new_src = None if new_src is None else new_src[:alen]
    new_dst = None if new_dst is None else new_dst[:alen]
    buf = bytearray(scapy_echo(*args))
    impl.rewrite_echo(buf, src=new_src, dst=new_dst, echo_id=new_id, ttl=new_ttl)
    expected = scapy_echo(
        src if new_src is None else new_src,
        dst if new_dst is None else new_dst,
        echo_id if new_id is None else new_id,
        seq,
        payload,
        ttl if new_ttl is None else new_ttl,
        reply,
    )
    assert bytes(buf) == expected


def test_rewrite_echo_refuses(impl: ModuleType) -> None:
    echo = impl.build_echo(b"\1\2\3\4", b"\5\6\7\10", 1, 2)
    error = impl.build_time_exceeded(b"\x0a\0\0\1", echo)
    with pytest.raises(BufferError):
        impl.rewrite_echo(echo, echo_id=3)  # bytes are read-only
    buf = bytearray(error)
    with pytest.raises(MalformedPacket) as excinfo:
        impl.rewrite_echo(buf, echo_id=3)
    assert excinfo.value.reason == "not_echo"
    buf = bytearray(echo)
    for kwargs in ({"src": bytes(16)}, {"dst": b"\1"}, {"echo_id": 1 << 16}, {"ttl": -1}, {"echo_id": 5, "ttl": 256}):
        with pytest.raises(ValueError):
            impl.rewrite_echo(buf, **kwargs)
        assert buf == echo  # nothing written when an argument is unusable


@SETTINGS
@given(args=echo_args())
def test_decrement_ttl_matches_scapy(impl: ModuleType, args: tuple) -> None:
    src, dst, echo_id, seq, payload, ttl, reply = args
    buf = bytearray(scapy_echo(*args))
    result = impl.decrement_ttl(buf)
    if ttl <= 1:
        assert result == 0
        assert bytes(buf) == scapy_echo(*args)  # untouched, to be quoted as received
    else:
        assert result == ttl - 1
        assert bytes(buf) == scapy_echo(src, dst, echo_id, seq, payload, ttl - 1, reply)


def test_decrement_ttl_error_packet(impl: ModuleType) -> None:
    error = bytearray(impl.build_time_exceeded(b"\x0a\0\0\1", impl.build_echo(b"\1\2\3\4", b"\5\6\7\10", 1, 2)))
    assert impl.decrement_ttl(error) == 63
    assert impl.parse_packet(error).ttl == 63


@SETTINGS
@given(
    v6=st.booleans(),
    kind=st.sampled_from(QUOTED_KINDS),
    nat=v6_addr,
    client=v6_addr,
    router=v6_addr,
    target=v6_addr,
    ids=st.tuples(u16, u16, u16),
    payload_size=st.integers(0, 1400),
    extra_quote=st.integers(0, 1500),
)
def test_translate_icmp_error_matches_scapy(impl: ModuleType, v6: bool, kind: str, nat: bytes, client: bytes, router: bytes,
                                            target: bytes, ids: tuple, payload_size: int, extra_quote: int) -> None:
    """RFC 5508: the error we receive becomes exactly what scapy builds for the client."""
    alen = 16 if v6 else 4
    nat, client, router, target = nat[:alen], client[:alen], router[:alen], target[:alen]
    our_id, client_id, seq = ids
    payload = bytes(i % 251 for i in range(payload_size))
    quote_length = (48 if v6 else 28) + extra_quote
    sent = scapy_echo(nat, target, our_id, seq, payload, 1, False)
    received = bytearray(scapy_error(router, nat, kind, sent[:quote_length], mtu=1400))
    impl.translate_icmp_error(received, client, client_id)
    original = scapy_echo(client, target, client_id, seq, payload, 1, False)
    assert bytes(received) == scapy_error(router, client, kind, original[:quote_length], mtu=1400)


def test_translate_icmp_error_refuses(impl: ModuleType) -> None:
    echo = impl.build_echo(b"\1\2\3\4", b"\5\6\7\10", 1, 2)
    for packet, reason in [
        (echo, "not_icmp_error"),
        (impl.build_time_exceeded(b"\x0a\0\0\1", raw(IP(src="1.2.3.4", dst="5.6.7.8") / UDP())), "quote_not_echo"),
        (echo[:-1], "bad_total_length"),
    ]:
        buf = bytearray(packet)
        with pytest.raises(MalformedPacket) as excinfo:
            impl.translate_icmp_error(buf, b"\x09" * 4, 1)
        assert excinfo.value.reason == reason
        assert buf == packet
    error = bytearray(impl.build_time_exceeded(b"\x0a\0\0\1", echo))
    with pytest.raises(ValueError):
        impl.translate_icmp_error(error, bytes(16), 1)
    with pytest.raises(ValueError):
        impl.translate_icmp_error(error, b"\1\1\1\1", 70000)


def test_public_module_reexports_the_selected_core() -> None:
    from fastproxy import _impl, packet

    from fastproxy._purepy import packet as twin

    assert packet.__all__ == twin.__all__
    for name in packet.__all__:
        assert getattr(packet, name) is getattr(_impl.core, name)
