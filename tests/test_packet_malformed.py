"""fastproxy packet core on bad input: exact MalformedPacket reasons, truncation, fuzzing, twin parity.

Checksums in the hand-made corpus are fixed up with an independent RFC 1071 helper, so
that exactly the one property under test is wrong in each packet.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastproxy.errors import MalformedPacket
from tests.conftest import load_impl
from tests.test_packet import checksum

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

A4, B4, R4 = b"\xc0\x00\x02\x01", b"\xc6\x33\x64\x02", b"\xcb\x00\x71\x09"
A6, B6, R6 = (b"\x20\x01\x0d\xb8" + bytes(11) + bytes([i]) for i in (1, 2, 9))

INFO_FIELDS = ("version", "header_length", "total_length", "ttl", "protocol", "src", "dst", "icmp_offset", "icmp_type",
               "icmp_code", "icmp_checksum", "echo_id", "echo_seq", "mtu")
INNER_FIELDS = ("offset", "length", "version", "header_length", "protocol", "ttl", "src", "dst", "icmp_type", "icmp_code",
                "echo_id", "echo_seq")


def v4(icmp: bytes, *, proto: int = 1, flags: int = 0x4000, options: bytes = b"", length_delta: int = 0) -> bytes:
    """IPv4 packet around icmp with correct header and ICMP checksums."""
    icmp = bytearray(icmp)
    if len(icmp) >= 4:
        icmp[2:4] = b"\0\0"
        icmp[2:4] = checksum(bytes(icmp)).to_bytes(2, "big")
    hlen = 20 + len(options)
    header = bytearray([0x40 | hlen // 4, 0]) + (hlen + len(icmp) + length_delta).to_bytes(2, "big")
    header += b"\0\0" + flags.to_bytes(2, "big") + bytes([64, proto, 0, 0]) + A4 + B4 + options
    header[10:12] = checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header + icmp)


def v6(icmp: bytes, *, extensions: bytes = b"", next_header: int = 58, length_delta: int = 0) -> bytes:
    """IPv6 packet (extension headers already chained) around icmp with a correct ICMPv6 checksum."""
    icmp = bytearray(icmp)
    if len(icmp) >= 4:
        icmp[2:4] = b"\0\0"
        pseudo = A6 + B6 + len(icmp).to_bytes(4, "big") + b"\0\0\0\x3a"
        icmp[2:4] = checksum(pseudo + bytes(icmp)).to_bytes(2, "big")
    payload_length = len(extensions) + len(icmp) + length_delta
    return b"\x60\0\0\0" + payload_length.to_bytes(2, "big") + bytes([next_header, 64]) + A6 + B6 + extensions + bytes(icmp)


def ext(next_header: int, *, length: int = 8, segments_left: int = 0) -> bytes:
    """One extension header of length bytes (a multiple of 8) followed by next_header."""
    body = bytearray(length)
    body[0], body[1] = next_header, length // 8 - 1
    body[3] = segments_left
    return bytes(body)


ECHO4 = v4(bytes([8, 0, 0, 0, 0, 7, 0, 1]) + b"ping")
ECHO6 = v6(bytes([128, 0, 0, 0, 0, 7, 0, 1]) + b"ping")


def error4(quote: bytes, icmp_type: int = 11, rest: bytes = bytes(4), code: int = 0) -> bytes:
    return v4(bytes([icmp_type, code, 0, 0]) + rest + quote)


def error6(quote: bytes, icmp_type: int = 3, rest: bytes = bytes(4)) -> bytes:
    return v6(bytes([icmp_type, 0, 0, 0]) + rest + quote)


def corrupt(packet: bytes, offset: int, value: int) -> bytes:
    return packet[:offset] + bytes([value]) + packet[offset + 1 :]


CORPUS: list[tuple[str, bytes, str]] = [
    ("empty", b"", "empty"),
    ("version 5", corrupt(ECHO4, 0, 0x55), "bad_version"),
    ("version 0", bytes(40), "bad_version"),
    ("version 15", b"\xf0", "bad_version"),
    ("one byte of v4", b"\x45", "truncated_ip_header"),
    ("19 bytes of v4", ECHO4[:19], "truncated_ip_header"),
    ("IHL 4", corrupt(ECHO4, 0, 0x44), "bad_header_length"),
    ("IHL 0", corrupt(ECHO4, 0, 0x40), "bad_header_length"),
    ("IHL 15 beyond the buffer", corrupt(ECHO4, 0, 0x4F), "truncated_ip_header"),
    ("total length one more", v4(ECHO4[20:], length_delta=1), "bad_total_length"),
    ("total length one less", v4(ECHO4[20:], length_delta=-1), "bad_total_length"),
    ("total length below header", v4(ECHO4[20:], length_delta=-20), "bad_total_length"),
    ("trailing byte", ECHO4 + b"\0", "bad_total_length"),
    ("bad IP checksum", corrupt(ECHO4, 10, ECHO4[10] ^ 1), "bad_ip_checksum"),
    ("MF flag", v4(ECHO4[20:], flags=0x2000), "fragment"),
    ("fragment offset", v4(ECHO4[20:], flags=0x0001), "fragment"),
    ("UDP", v4(b"\0\x35\0\x35\0\x0c\0\0abcd", proto=17), "not_icmp"),
    ("TCP", v4(bytes(20), proto=6), "not_icmp"),
    ("ICMP of 4 bytes", v4(bytes([8, 0, 0, 0])), "truncated_icmp"),
    ("ICMP of 0 bytes", v4(b""), "truncated_icmp"),
    ("bad ICMP checksum", corrupt(ECHO4, 22, ECHO4[22] ^ 0x80), "bad_icmp_checksum"),
    ("error with no quote", error4(b""), "truncated_quote"),
    ("quote of 10 bytes", error4(ECHO4[:10]), "truncated_quote"),
    ("quote of header + 7", error4(ECHO4[:27]), "truncated_quote"),
    ("quote with options, header + 7", error4(v4(ECHO4[20:], options=bytes([1, 1, 1, 0]))[:31]), "truncated_quote"),
    ("v4 error quoting v6", error4(ECHO6[:48]), "bad_quote"),
    ("quote with IHL 4", error4(corrupt(ECHO4, 0, 0x44)), "bad_quote"),
    ("quote longer than its packet", error4(ECHO4 + b"\0\0\0\0"), "bad_quote"),
    ("quoted total length below header + 8", error4(v4(ECHO4[20:], length_delta=-12)[:28]), "bad_quote"),
    ("RFC 4884 length past the message", error4(ECHO4, rest=bytes([0, 100, 0, 0])), "bad_quote"),
    ("39 bytes of v6", ECHO6[:39], "truncated_ip_header"),
    ("v6 payload length one more", v6(ECHO6[40:], length_delta=1), "bad_total_length"),
    ("v6 payload length one less", v6(ECHO6[40:], length_delta=-1), "bad_total_length"),
    ("v6 trailing byte", ECHO6 + b"\0", "bad_total_length"),
    ("v6 fragment header", v6(ECHO6[40:], extensions=ext(58), next_header=44), "fragment"),
    ("v6 fragment after hop-by-hop", v6(ECHO6[40:], extensions=ext(44) + ext(58), next_header=0), "fragment"),
    ("v6 UDP", v6(b"\0\x35\0\x35\0\x0c\0\0abcd", next_header=17), "not_icmp"),
    ("v6 TCP after destination options", v6(bytes(20), extensions=ext(6), next_header=60), "not_icmp"),
    ("v6 ICMPv4 inside", v6(ECHO4[20:], next_header=1), "not_icmp"),
    ("v6 ESP", v6(bytes(16), next_header=50), "unsupported_extension_header"),
    ("v6 AH", v6(ECHO6[40:], extensions=ext(58), next_header=51), "unsupported_extension_header"),
    ("v6 mobility header", v6(bytes(8), next_header=135), "unsupported_extension_header"),
    ("v6 routing header in transit", v6(ECHO6[40:], extensions=ext(58, length=24, segments_left=1), next_header=43),
     "unsupported_extension_header"),
    ("v6 hop-by-hop past the end", v6(b"", extensions=ext(58, length=16)[:12], next_header=0), "truncated_extension_header"),
    ("v6 hop-by-hop cut to 1 byte", v6(b"", extensions=b"\x3a", next_header=0), "truncated_extension_header"),
    ("ICMPv6 of 4 bytes", v6(bytes([128, 0, 0, 0])), "truncated_icmp"),
    ("ICMPv6 of 0 bytes after extensions", v6(b"", extensions=ext(58), next_header=0), "truncated_icmp"),
    ("bad ICMPv6 checksum", corrupt(ECHO6, 42, ECHO6[42] ^ 1), "bad_icmp_checksum"),
    ("ICMPv6 checksum without pseudo-header", ECHO6[:42] + checksum(b"\x80\0\0\0\0\x07\0\x01ping").to_bytes(2, "big") + ECHO6[44:],
     "bad_icmp_checksum"),
    ("v6 error quoting v4", error6(ECHO4), "bad_quote"),
    ("v6 quote of header + 7", error6(ECHO6[:47]), "truncated_quote"),
    ("v6 quote with a cut extension header", error6(v6(ECHO6[40:], extensions=ext(58, length=16), next_header=0)[:50]),
     "truncated_quote"),
    ("v6 quote longer than its packet", error6(ECHO6 + b"\0"), "bad_quote"),
    ("v6 RFC 4884 length past the message", error6(ECHO6, icmp_type=1, rest=bytes([10, 0, 0, 0])), "bad_quote"),
]


@pytest.mark.parametrize(("packet", "reason"), [pytest.param(p, r, id=name) for name, p, r in CORPUS])
def test_corpus_gives_exact_reason(impl: ModuleType, packet: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket) as excinfo:
        impl.parse_packet(packet)
    assert excinfo.value.reason == reason
    assert reason in impl.PACKET_MALFORMED_REASONS


CHECKSUM_REASONS = ("bad_ip_checksum", "bad_icmp_checksum")


@pytest.mark.parametrize(("packet", "reason"), [pytest.param(p, r, id=n) for n, p, r in CORPUS if r in CHECKSUM_REASONS])
def test_checksums_ignored_without_verify(impl: ModuleType, packet: bytes, reason: str) -> None:
    assert impl.parse_packet(packet, verify_checksums=False).echo_id == 7


def test_valid_corpus_neighbours_parse(impl: ModuleType) -> None:
    """The corpus builders make valid packets when nothing is wrong (so each reason is the only fault)."""
    assert impl.parse_packet(ECHO4).echo_seq == 1
    assert impl.parse_packet(ECHO6).echo_seq == 1
    assert impl.parse_packet(v4(ECHO4[20:], flags=0x8000)).echo_id == 7  # the reserved flag bit is not a fragment
    assert impl.parse_packet(v4(ECHO4[20:], options=bytes([1, 1, 1, 0]))).header_length == 24
    chain = ext(43) + ext(60) + ext(58, length=16)  # hop-by-hop, routing, destination options
    assert impl.parse_packet(v6(ECHO6[40:], extensions=chain, next_header=0)).header_length == 72
    assert impl.parse_packet(v6(ECHO6[40:], extensions=ext(58, length=24), next_header=43)).header_length == 64
    assert impl.parse_packet(error4(ECHO4[:28])).inner.length == 28
    assert impl.parse_packet(error6(ECHO6[:48])).inner.length == 48
    assert impl.parse_packet(error6(v6(ECHO6[40:], extensions=ext(58), next_header=60)[:56])).inner.header_length == 48
    assert impl.parse_packet(error4(ECHO4, icmp_type=3, rest=bytes([0, 0, 5, 0xDC]), code=4)).mtu == 1500
    assert impl.parse_packet(error4(ECHO4, icmp_type=3, rest=bytes([0, 0, 5, 0xDC]), code=1)).mtu is None


def _packets(impl: ModuleType) -> list[tuple[int, bytes]]:
    """Valid echo and error packets of both families: (IP header length, packet)."""
    echo4 = impl.build_echo(A4, B4, 1, 2, b"0123456789")
    echo6 = impl.build_echo(A6, B6, 1, 2, b"0123456789")
    return [(20, echo4), (40, echo6), (20, impl.build_time_exceeded(R4, echo4)), (40, impl.build_packet_too_big(R6, echo6, 1280))]


def test_every_truncation_gives_the_right_reason(impl: ModuleType) -> None:
    for hlen, packet in _packets(impl):
        impl.parse_packet(packet)
        for length in range(len(packet)):
            with pytest.raises(MalformedPacket) as excinfo:
                impl.parse_packet(packet[:length])
            expected = "empty" if length == 0 else "truncated_ip_header" if length < hlen else "bad_total_length"
            assert excinfo.value.reason == expected, (packet.hex(), length)


def _relabel(packet: bytes, hlen: int) -> bytes:
    """A truncated packet whose IP length field and checksums are made to agree with its size."""
    return v4(packet[hlen:]) if hlen == 20 else v6(packet[hlen:])


def test_every_consistent_truncation_gives_the_right_reason(impl: ModuleType) -> None:
    """Truncations whose length field and checksums agree: the ICMP and quote checks must catch them."""
    for hlen, packet in _packets(impl):
        is_error = impl.parse_packet(packet).inner is not None
        for length in range(hlen, len(packet) + 1):
            candidate = _relabel(packet[:length], hlen)
            icmp_length = length - hlen
            if icmp_length < 8:
                expected = "truncated_icmp"
            elif is_error and icmp_length - 8 < hlen + 8:
                expected = "truncated_quote"
            else:
                expected = None
            if expected is None:
                info = impl.parse_packet(candidate)
                assert info.inner is None or info.inner.length == icmp_length - 8
            else:
                with pytest.raises(MalformedPacket) as excinfo:
                    impl.parse_packet(candidate)
                assert excinfo.value.reason == expected, (candidate.hex(), length)


# ---------------------------------------------------------------- fuzzing and twin parity

COMPILED, TWIN = load_impl("compiled"), load_impl("twin")


def _as_tuple(info: object) -> tuple:
    inner = info.inner
    return (*(getattr(info, f) for f in INFO_FIELDS), None if inner is None else tuple(getattr(inner, f) for f in INNER_FIELDS))


def _outcome(action: Callable[[ModuleType, bytearray], object], impl: ModuleType, data: bytes) -> tuple:
    """What one implementation did: its result and the buffer afterwards, or the MalformedPacket reason."""
    buf = bytearray(data)
    try:
        result = action(impl, buf)
    except MalformedPacket as exc:
        assert exc.reason in impl.PACKET_MALFORMED_REASONS
        return ("malformed", exc.reason, bytes(buf))
    if hasattr(result, "inner"):
        result = _as_tuple(result)
    return ("ok", result, bytes(buf))


def _address_for(buf: bytearray) -> bytes:
    """An address of the family buf claims to be (the actions must get past argument checks)."""
    return b"\x0a" * (16 if buf[:1] and buf[0] >> 4 == 6 else 4)


ACTIONS: dict[str, Callable[[ModuleType, bytearray], object]] = {
    "parse": lambda impl, buf: impl.parse_packet(buf),
    "parse_unverified": lambda impl, buf: impl.parse_packet(buf, verify_checksums=False),
    "rewrite_echo": lambda impl, buf: impl.rewrite_echo(buf, src=_address_for(buf), echo_id=0xBEEF, ttl=3),
    "decrement_ttl": lambda impl, buf: impl.decrement_ttl(buf),
    "translate_icmp_error": lambda impl, buf: impl.translate_icmp_error(buf, _address_for(buf), 9),
}


def _check_parity(data: bytes) -> None:
    for name, action in ACTIONS.items():
        compiled, twin = _outcome(action, COMPILED, data), _outcome(action, TWIN, data)
        assert compiled == twin, (name, data.hex())
        if compiled[0] == "malformed" and name != "parse":
            assert compiled[2] == data  # nothing written when refused


@SETTINGS
@given(data=st.binary(max_size=200))
def test_random_bytes_only_raise_malformed_packet_and_impls_agree(data: bytes) -> None:
    _check_parity(data)


@st.composite
def mutated_packets(draw: st.DrawFn) -> bytes:
    """Valid packets (echo, errors, with extension headers) with a few bytes changed or cut."""
    base = draw(st.sampled_from([ECHO4, ECHO6, error4(ECHO4), error6(ECHO6), error4(ECHO4[:28], icmp_type=3, rest=bytes([0, 0, 5, 0]), code=4),
                                 v6(ECHO6[40:], extensions=ext(60, length=16), next_header=0),
                                 error6(v6(ECHO6[40:], extensions=ext(58), next_header=0), icmp_type=1),
                                 v4(ECHO4[20:], options=bytes([1, 1, 1, 0]))]))
    packet = bytearray(base)
    for _ in range(draw(st.integers(0, 3))):
        packet[draw(st.integers(0, len(packet) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        packet = packet[: draw(st.integers(0, len(packet)))]
    if draw(st.booleans()) and len(packet) >= 40 and packet[0] >> 4 == 6:
        packet[4:6] = (len(packet) - 40).to_bytes(2, "big")   # keep the length consistent to reach deeper checks
    elif draw(st.booleans()) and len(packet) >= 20 and packet[0] >> 4 == 4:
        packet[2:4] = len(packet).to_bytes(2, "big")
    return bytes(packet)


@SETTINGS
@given(data=mutated_packets())
def test_mutated_packets_only_raise_malformed_packet_and_impls_agree(data: bytes) -> None:
    _check_parity(data)


@pytest.mark.parametrize("name", ["parse", "rewrite_echo", "decrement_ttl", "translate_icmp_error"])
def test_valid_packets_agree(name: str) -> None:
    for _, packet in _packets(COMPILED):
        assert _outcome(ACTIONS[name], COMPILED, packet) == _outcome(ACTIONS[name], TWIN, packet)


def test_reason_tables_agree() -> None:
    assert COMPILED.PACKET_MALFORMED_REASONS == TWIN.PACKET_MALFORMED_REASONS
    assert len(set(TWIN.PACKET_MALFORMED_REASONS)) == len(TWIN.PACKET_MALFORMED_REASONS)
