"""Control-stream codec: round trips, reassembly across chunks, and every malformed case."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy.tunnel.control import (
    CONTROL_MALFORMED_REASONS,
    ERROR_AUTHENTICATION_FAILED,
    MAX_MESSAGE_SIZE,
    MAX_PREFIXES,
    MAX_TOKEN_LENGTH,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Announce,
    ClientGone,
    ControlDecoder,
    Error,
    Hello,
    MalformedControlMessage,
    RouteUpdate,
    Welcome,
    decode_message,
    encode_message,
    is_version_refusal,
    negotiate,
)

v4_networks = st.builds(
    lambda a, n: ipaddress.ip_network((ipaddress.IPv4Address(a), n), strict=False),
    st.integers(0, 2**32 - 1), st.integers(0, 32),
)
v6_networks = st.builds(
    lambda a, n: ipaddress.ip_network((ipaddress.IPv6Address(a), n), strict=False),
    st.integers(0, 2**128 - 1), st.integers(0, 128),
)
prefix_lists = st.lists(st.one_of(v4_networks, v6_networks), max_size=20).map(tuple)
messages = st.one_of(
    st.builds(Hello, st.sampled_from(["client", "connector"]), st.text(max_size=100)),
    st.builds(Announce, prefix_lists),
    st.builds(
        Welcome,
        st.one_of(st.none(), st.integers(1, 2**32 - 1).map(ipaddress.IPv4Address)),
        st.one_of(st.none(), st.integers(1, 2**128 - 1).map(ipaddress.IPv6Address)),
        prefix_lists,
    ),
    st.builds(Error, st.integers(0, 0xFFFF), st.text(max_size=200)),
    st.builds(
        ClientGone,
        st.one_of(st.none(), st.integers(1, 2**32 - 1).map(ipaddress.IPv4Address)),
        st.one_of(st.none(), st.integers(1, 2**128 - 1).map(ipaddress.IPv6Address)),
    ),
    st.builds(RouteUpdate, prefix_lists),
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_round_trip(message: object) -> None:
    frame = encode_message(message)  # type: ignore[arg-type]
    assert decode_message(frame) == message
    assert ControlDecoder().feed(frame) == [message]


@settings(max_examples=200, deadline=None)
@given(st.lists(messages, min_size=1, max_size=5), st.data())
def test_decoder_reassembles_any_split(batch: list[object], data: st.DataObject) -> None:
    stream = b"".join(encode_message(m) for m in batch)  # type: ignore[arg-type]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = ControlDecoder()
    out: list[object] = []
    previous = 0
    for cut in cuts + [len(stream)]:
        out.extend(decoder.feed(stream[previous:cut]))
        previous = cut
    assert out == batch
    assert decoder.pending == 0


def _frame(kind: int, body: bytes, version: int = 1) -> bytes:
    return struct.pack("!HBB", 2 + len(body), version, kind) + body


def _reason(frame: bytes) -> str:
    with pytest.raises(MalformedControlMessage) as info:
        decode_message(frame)
    assert info.value.reason in CONTROL_MALFORMED_REASONS
    return info.value.reason


def test_every_truncation_of_every_message_is_rejected() -> None:
    samples = [
        Hello("client", "token"),
        Announce((ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))),
        Welcome(ipaddress.IPv4Address("100.96.0.2"), None, (ipaddress.ip_network("10.0.0.0/8"),)),
        Error(ERROR_AUTHENTICATION_FAILED, "bad token"),
        ClientGone(ipaddress.IPv4Address("100.96.0.2"), ipaddress.IPv6Address("fd00:fa57::2")),
        RouteUpdate((ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))),
        RouteUpdate(()),
    ]
    for message in samples:
        frame = encode_message(message)
        for cut in range(len(frame)):
            _reason(frame[:cut])
            # A stream decoder holds a partial message back instead of failing.
            decoder = ControlDecoder()
            assert decoder.feed(frame[:cut]) == []
        # The same body with a declared length that cuts a field short.
        body = frame[2:]
        for cut in range(2, len(body)):
            assert _reason(struct.pack("!H", cut) + body[:cut]) in ("truncated_field", "message_too_short")


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\x00\x01\x01", "message_too_short"),
        (b"\x00\x01\x01\x01", "message_too_short"),
        (struct.pack("!H", MAX_MESSAGE_SIZE + 1) + b"\x01\x01", "message_too_long"),
        (_frame(0x01, b"\x01\x00\x00", version=0), "unsupported_version"),
        (_frame(0x04, b"\x00\x01\x00\x00", version=3), "unsupported_version"),
        (_frame(0x06, b"\x00\x00", version=0), "unsupported_version"),
        (_frame(0x06, b"\x00\x00", version=1), "unknown_message_type"),
        (_frame(0x09, b""), "unknown_message_type"),
        (_frame(0x05, bytes(20) + b"x"), "trailing_bytes"),
        (_frame(0x01, b"\x03\x00\x00"), "bad_role"),
        (_frame(0x01, b"\x01\x00\x02\xff\xfe"), "bad_utf8"),
        (_frame(0x01, b"\x01" + struct.pack("!H", MAX_TOKEN_LENGTH + 1) + b"a" * (MAX_TOKEN_LENGTH + 1)), "token_too_long"),
        (_frame(0x01, b"\x01\x00\x00extra"), "trailing_bytes"),
        (_frame(0x01, b"\x01\x00\x00") + b"x", "trailing_bytes"),
        (_frame(0x02, struct.pack("!H", MAX_PREFIXES + 1)), "too_many_prefixes"),
        (_frame(0x02, b"\x00\x01\x05\x08\x0a\x00\x00\x00"), "bad_prefix_family"),
        (_frame(0x02, b"\x00\x01\x04\x21\x0a\x00\x00\x00"), "bad_prefix_length"),
        (_frame(0x02, b"\x00\x01\x06\x81" + bytes(16)), "bad_prefix_length"),
        (_frame(0x02, b"\x00\x01\x04\x08\x0a\x00\x00\x01"), "prefix_host_bits_set"),
        (_frame(0x02, b"\x00\x01\x04\x08\x0a\x00"), "truncated_field"),
        (_frame(0x04, b"\x00\x01\x00\x05abc"), "truncated_field"),
    ],
)
def test_malformed(frame: bytes, reason: str) -> None:
    assert _reason(frame) == reason


def test_stream_decoder_rejects_bad_length_prefix_early() -> None:
    with pytest.raises(MalformedControlMessage) as info:
        ControlDecoder().feed(struct.pack("!H", MAX_MESSAGE_SIZE + 1))
    assert info.value.reason == "message_too_long"


def test_encoder_refuses_what_the_format_cannot_carry() -> None:
    with pytest.raises(ValueError):
        encode_message(Hello("client", "x" * (MAX_TOKEN_LENGTH + 1)))
    with pytest.raises(ValueError):
        encode_message(Hello("router", ""))
    with pytest.raises(ValueError):
        encode_message(Error(0x10000, ""))


def test_versions_frame_and_negotiation() -> None:
    """HELLO says the highest version its sender speaks; the edge speaks the lower of the two."""
    assert PROTOCOL_VERSION == 2 and SUPPORTED_VERSIONS == (1, 2)
    hello = Hello("client", "t")
    assert encode_message(hello)[2] == PROTOCOL_VERSION
    assert encode_message(Hello("client", "t", version=1)) == _frame(0x01, b"\x01\x00\x01t", version=1)
    # A HELLO from a newer peer is read whatever its version (its layout never changes).
    future = decode_message(_frame(0x01, b"\x02\x00\x01k", version=7))
    assert future == Hello("connector", "k") and future.version == 7
    assert negotiate(7) == PROTOCOL_VERSION and negotiate(1) == 1 and negotiate(2) == 2
    # Every version-1 layout is unchanged: a version-1 peer reads exactly the bytes it always did.
    welcome = Welcome(ipaddress.IPv4Address("100.96.0.2"), None, (ipaddress.ip_network("10.0.0.0/8"),), version=1)
    frame = encode_message(welcome)
    assert frame[2] == 1 and decode_message(frame).version == 1
    assert encode_message(ClientGone(None, None), version=1)[2] == 1
    assert decode_message(encode_message(welcome, version=2)).version == 2


def test_route_update_exists_only_in_version_2() -> None:
    update = RouteUpdate((ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd12::/64")))
    frame = encode_message(update)
    assert frame == _frame(0x06, b"\x00\x02\x04\x08\x0a\x00\x00\x00\x06\x40\xfd\x12" + bytes(14), version=2)
    assert decode_message(frame) == update
    with pytest.raises(ValueError, match="needs control protocol version 2"):
        encode_message(update, version=1)
    with pytest.raises(ValueError, match="version 3"):
        encode_message(Error(1, "x"), version=3)
    assert _reason(frame[:2] + b"\x01" + frame[3:]) == "unknown_message_type"


def test_version_refusal_of_an_old_edge_is_recognised() -> None:
    # What a version-1 edge sends when it reads a version-2 HELLO (edge.py before version 2).
    assert is_version_refusal(0x01, "malformed control message: unsupported_version")
    assert not is_version_refusal(0x03, "authentication failed: bad token")
    assert not is_version_refusal(0x01, "malformed control message: bad_role")
