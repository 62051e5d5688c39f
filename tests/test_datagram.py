"""The tunnel datagram codec (DESIGN section 2, cloudflared datagram v3), compiled core and twin."""

from __future__ import annotations

from types import ModuleType

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fastproxy.datagram
from fastproxy._datagram_types import IcmpDatagram, RegistrationResponse, UdpPayload, UdpRegistration
from fastproxy.errors import MalformedDatagram

from .conftest import IMPLEMENTATIONS, load_impl

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
RID = bytes(range(0xA0, 0xB0))
CODES = [0x00, 0x01, 0x02, 0x03, 0xFF]

request_ids = st.binary(min_size=16, max_size=16)
payloads = st.binary(max_size=1280)
u16 = st.integers(0, 0xFFFF)
addresses = st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16))


def reason(impl: ModuleType, data: bytes) -> str:
    with pytest.raises(MalformedDatagram) as info:
        impl.decode_datagram(data)
    assert info.value.reason in impl.DATAGRAM_MALFORMED_REASONS
    return info.value.reason


# ---- exact bytes, laid out as cloudflared's quic/v3/datagram.go lays them out ----

def test_registration_ipv4_bytes(impl: ModuleType) -> None:
    encoded = impl.encode_udp_registration(RID, bytes([192, 0, 2, 7]), 53, 210)
    expected = bytes.fromhex("00" "00" "0035" "00d2") + RID + bytes([192, 0, 2, 7])
    assert encoded == expected and len(encoded) == 26
    assert impl.decode_datagram(expected) == UdpRegistration(RID, bytes([192, 0, 2, 7]), 53, 210, False, None)


def test_registration_ipv6_traced_bundled_bytes(impl: ModuleType) -> None:
    dst = bytes.fromhex("20010db8000000000000000000000001")
    encoded = impl.encode_udp_registration(RID, dst, 0x1234, 65535, traced=True, payload=b"\x01\x02\x03")
    expected = bytes.fromhex("00" "07" "1234" "ffff") + RID + dst + b"\x01\x02\x03"
    assert encoded == expected and len(encoded) == 38 + 3
    assert impl.decode_datagram(expected) == UdpRegistration(RID, dst, 0x1234, 65535, True, b"\x01\x02\x03")


def test_registration_empty_payload_is_not_bundled(impl: ModuleType) -> None:
    """As cloudflared: the bundled flag is set only for a non-empty payload."""
    assert impl.encode_udp_registration(RID, bytes(4), 1, 2, payload=b"")[1] == 0x00


def test_payload_bytes(impl: ModuleType) -> None:
    assert impl.encode_udp_payload(RID, b"dns?") == b"\x01" + RID + b"dns?"
    assert impl.decode_datagram(b"\x01" + RID) == UdpPayload(RID, b"")  # an empty UDP datagram is legal


def test_icmp_bytes(impl: ModuleType) -> None:
    packet = bytes.fromhex("4500001c0001000040017cdec0000201c0000202") + bytes.fromhex("0800f7ff00000000")
    assert impl.encode_icmp(packet) == b"\x02" + packet
    assert impl.decode_datagram(b"\x02" + packet) == IcmpDatagram(packet)


def test_icmp_encoding_takes_every_buffer_kind(impl: ModuleType) -> None:
    packet = bytes.fromhex("4500001c0001000040017cdec0000201c0000202") + bytes.fromhex("0800f7ff00000000")
    for kind in (bytes, bytearray, memoryview, lambda p: memoryview(b"\x02" + p)[1:]):
        assert impl.encode_icmp(kind(packet)) == b"\x02" + packet
        assert impl.encode_icmp(kind(bytes(1280))) == b"\x02" + bytes(1280)
        with pytest.raises(ValueError, match="1280"):
            impl.encode_icmp(kind(bytes(1281)))
        with pytest.raises(ValueError, match="must not be empty"):
            impl.encode_icmp(kind(b""))


def test_response_bytes(impl: ModuleType) -> None:
    assert impl.encode_registration_response(RID, impl.RESPONSE_OK) == b"\x03\x00" + RID + b"\x00\x00"
    encoded = impl.encode_registration_response(RID, impl.RESPONSE_ERROR, "no route ✗")
    message = "no route ✗".encode()
    assert encoded == b"\x03\xff" + RID + len(message).to_bytes(2, "big") + message
    assert impl.decode_datagram(encoded) == RegistrationResponse(RID, 0xFF, "no route ✗")


def test_constants(impl: ModuleType) -> None:
    assert (impl.DATAGRAM_UDP_REGISTRATION, impl.DATAGRAM_UDP_PAYLOAD, impl.DATAGRAM_ICMP) == (0, 1, 2)
    assert impl.DATAGRAM_REGISTRATION_RESPONSE == 3
    assert [
        impl.RESPONSE_OK,
        impl.RESPONSE_DESTINATION_UNREACHABLE,
        impl.RESPONSE_UNABLE_TO_BIND_SOCKET,
        impl.RESPONSE_TOO_MANY_ACTIVE_FLOWS,
        impl.RESPONSE_ERROR,
    ] == CODES
    assert impl.MAX_DATAGRAM_PAYLOAD == 1280
    assert impl.DATAGRAM_MALFORMED_REASONS == load_impl("twin").DATAGRAM_MALFORMED_REASONS
    assert len(set(impl.DATAGRAM_MALFORMED_REASONS)) == len(impl.DATAGRAM_MALFORMED_REASONS)


# ---- round trips ----

@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@SETTINGS
@given(rid=request_ids, dst=addresses, port=u16, idle=u16, traced=st.booleans(), payload=st.none() | payloads)
def test_registration_round_trip(name: str, rid: bytes, dst: bytes, port: int, idle: int, traced: bool, payload: bytes | None) -> None:
    impl = load_impl(name)
    encoded = impl.encode_udp_registration(rid, memoryview(dst), port, idle, traced=traced, payload=payload)
    assert impl.decode_datagram(encoded) == UdpRegistration(rid, dst, port, idle, traced, payload or None)
    assert encoded == load_impl("twin").encode_udp_registration(rid, dst, port, idle, traced=traced, payload=payload)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@SETTINGS
@given(rid=request_ids, payload=payloads)
def test_payload_round_trip(name: str, rid: bytes, payload: bytes) -> None:
    impl = load_impl(name)
    encoded = impl.encode_udp_payload(bytearray(rid), payload)
    assert impl.decode_datagram(memoryview(encoded)) == UdpPayload(rid, payload)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@SETTINGS
@given(packet=st.binary(min_size=1, max_size=1280))
def test_icmp_round_trip(name: str, packet: bytes) -> None:
    impl = load_impl(name)
    assert impl.decode_datagram(bytearray(impl.encode_icmp(packet))) == IcmpDatagram(packet)


messages = st.text(max_size=300).filter(lambda m: len(m.encode()) <= 1260)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@SETTINGS
@given(rid=request_ids, code=st.sampled_from(CODES), message=messages)
@example(rid=RID, code=0xFF, message="x" * 1260)
def test_response_round_trip(name: str, rid: bytes, code: int, message: str) -> None:
    impl = load_impl(name)
    assert impl.decode_datagram(impl.encode_registration_response(rid, code, message)) == RegistrationResponse(rid, code, message)


# ---- malformed input ----

def _valid_datagrams(twin: ModuleType) -> list[tuple[bytes, str]]:
    return [
        (twin.encode_udp_registration(RID, bytes(4), 53, 5), "registration_v4"),
        (twin.encode_udp_registration(RID, bytes(16), 53, 5, traced=True), "registration_v6"),
        (twin.encode_udp_registration(RID, bytes(4), 53, 5, payload=b"abc"), "registration_v4_bundled"),
        (twin.encode_udp_registration(RID, bytes(16), 53, 5, payload=b"abc"), "registration_v6_bundled"),
        (twin.encode_udp_payload(RID, b"hello"), "payload"),
        (twin.encode_icmp(b"\x45" + bytes(27)), "icmp"),
        (twin.encode_registration_response(RID, 0xFF, "héllo"), "response_message"),
        (twin.encode_registration_response(RID, 0x00), "response_ok"),
    ]


def _expected_truncation(kind: str, full: bytes, n: int) -> str | None:
    """The reason for ``full[:n]``, or None where the prefix is itself a valid datagram."""
    if n == 0:
        return "empty"
    if kind.startswith("registration"):
        header = 38 if full[1] & 1 else 26
        if n < header:
            return "truncated_header"
        return "payload_missing" if n == header and kind.endswith("bundled") else None
    if kind == "payload":
        return "truncated_header" if n < 17 else None
    if kind == "icmp":
        return "payload_missing" if n == 1 else None
    return "truncated_header" if n < 20 else "bad_message_length"


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_every_truncation_gives_its_reason(name: str) -> None:
    impl = load_impl(name)
    for full, kind in _valid_datagrams(load_impl("twin")):
        impl.decode_datagram(full)
        for n in range(len(full)):
            expected = _expected_truncation(kind, full, n)
            if expected is None:
                impl.decode_datagram(full[:n])  # a shorter payload is still a datagram
            else:
                assert reason(impl, full[:n]) == expected, (kind, n)


def test_malformed_reasons(impl: ModuleType) -> None:
    assert reason(impl, b"") == "empty"
    assert reason(impl, b"\x04" + bytes(40)) == "unknown_type"
    assert reason(impl, b"\xff") == "unknown_type"
    v4 = impl.encode_udp_registration(RID, bytes(4), 53, 5)
    for bit in range(3, 8):
        assert reason(impl, v4[:1] + bytes([1 << bit]) + v4[2:]) == "bad_flags"
    assert reason(impl, v4 + b"x") == "unexpected_payload"
    assert reason(impl, b"\x02") == "payload_missing"
    response = impl.encode_registration_response(RID, 0xFF, "abc")
    assert reason(impl, response + b"x") == "bad_message_length"
    assert reason(impl, response[:18] + b"\x00\x02" + b"\xc3\x28") == "bad_utf8"
    assert reason(impl, response[:18] + b"\x00\x03" + b"\xed\xa0\x80") == "bad_utf8"  # a surrogate
    assert reason(impl, response[:18] + b"\x00\x02" + b"\xc0\xaf") == "bad_utf8"  # overlong
    for code in (0x04, 0x10, 0xFE):
        assert reason(impl, response[:1] + bytes([code]) + response[2:]) == "bad_response_code"
    big = 1261
    assert reason(impl, response[:18] + big.to_bytes(2, "big") + b"x" * big) == "payload_too_large"


def test_oversize_payloads_rejected(impl: ModuleType) -> None:
    assert reason(impl, b"\x02" + bytes(1281)) == "payload_too_large"
    assert reason(impl, b"\x01" + RID + bytes(1281)) == "payload_too_large"
    v6 = impl.encode_udp_registration(RID, bytes(16), 53, 5, payload=b"x")
    assert reason(impl, v6 + bytes(1280)) == "payload_too_large"
    impl.decode_datagram(b"\x02" + bytes(1280))
    impl.decode_datagram(b"\x01" + RID + bytes(1280))
    with pytest.raises(ValueError, match="1280"):
        impl.encode_icmp(bytes(1281))
    with pytest.raises(ValueError, match="1280"):
        impl.encode_udp_payload(RID, bytes(1281))
    with pytest.raises(ValueError, match="1280"):
        impl.encode_udp_registration(RID, bytes(4), 53, 5, payload=bytes(1281))
    with pytest.raises(ValueError, match="1260"):
        impl.encode_registration_response(RID, 0xFF, "é" * 631)


def test_encoder_argument_errors(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="request_id must be 16 bytes"):
        impl.encode_udp_payload(bytes(15), b"")
    with pytest.raises(ValueError, match="request_id must be 16 bytes"):
        impl.encode_registration_response(bytes(17), 0)
    with pytest.raises(ValueError, match="dst must be 4"):
        impl.encode_udp_registration(RID, bytes(5), 53, 5)
    with pytest.raises(ValueError, match="port"):
        impl.encode_udp_registration(RID, bytes(4), 65536, 5)
    with pytest.raises(ValueError, match="port"):
        impl.encode_udp_registration(RID, bytes(4), -1, 5)
    with pytest.raises(ValueError, match="idle_timeout"):
        impl.encode_udp_registration(RID, bytes(4), 53, 70000)
    with pytest.raises(ValueError, match="code"):
        impl.encode_registration_response(RID, 4)
    with pytest.raises(ValueError, match="must not be empty"):
        impl.encode_icmp(b"")
    with pytest.raises(TypeError):
        impl.encode_registration_response(RID, 0, b"bytes")
    with pytest.raises(TypeError):
        impl.encode_udp_registration(RID, bytes(4), 53.0, 5)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@settings(max_examples=500, deadline=None)
@given(data=st.one_of(st.binary(max_size=64), st.binary(min_size=1, max_size=1400)), kind=st.integers(0, 5))
@example(data=b"\x03" + RID + b"\x00\x00\x00\x00", kind=3)
def test_random_bytes_only_ever_raise_malformed(name: str, data: bytes, kind: int) -> None:
    impl, twin = load_impl(name), load_impl("twin")
    if data and kind < 4:
        data = bytes([kind]) + data[1:]  # mostly known types, so the deep checks are reached
    try:
        result = impl.decode_datagram(data)
    except MalformedDatagram as exc:
        with pytest.raises(MalformedDatagram) as twin_exc:
            twin.decode_datagram(data)
        assert exc.reason == twin_exc.value.reason
    else:
        assert twin.decode_datagram(data) == result


def _mutated(text: str, at: int, value: int, cut: bool) -> bytes:
    """Valid UTF-8 with one byte replaced or the tail cut: reaches every multi-byte branch."""
    raw = bytearray(text.encode())
    if raw:
        at %= len(raw)
        if cut:
            del raw[at:]
        else:
            raw[at] = value
    return bytes(raw)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@SETTINGS
@given(message=st.one_of(st.binary(max_size=40), st.builds(_mutated, st.text(max_size=20), st.integers(0, 80), st.integers(0, 255), st.booleans())))
def test_utf8_check_matches_python(name: str, message: bytes) -> None:
    impl = load_impl(name)
    data = b"\x03\xff" + RID + len(message).to_bytes(2, "big") + message
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        assert reason(impl, data) == "bad_utf8"
    else:
        assert impl.decode_datagram(data).message == text


def test_public_module_exports(impl: ModuleType) -> None:
    for name in fastproxy.datagram.__all__:
        assert getattr(fastproxy.datagram, name) is not None
        assert hasattr(impl, name)
    assert fastproxy.datagram.UdpPayload is UdpPayload
