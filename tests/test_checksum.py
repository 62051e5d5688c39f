"""RFC 1071 checksums and RFC 1624 updates, compiled core and twin, against scapy and a naive reference."""

from __future__ import annotations

import array
import ipaddress
from types import ModuleType

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, in4_chksum
from scapy.layers.inet6 import IPv6, in6_chksum
from scapy.utils import checksum as scapy_checksum

import fastproxy.checksum

from .conftest import IMPLEMENTATIONS, load_impl

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PUBLIC = [
    "checksum_update16",
    "checksum_update_bytes",
    "internet_checksum",
    "ones_complement_sum",
    "pseudo_header_sum",
    "verify_checksum",
]


def naive_sum(data: bytes, initial: int = 0) -> int:
    """The textbook RFC 1071 loop: big-endian 16-bit words, end-around carry after each add."""
    if len(data) % 2:
        data += b"\0"
    total = initial
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


# A buffer with room around the data: slices start at any offset (unaligned) and end anywhere.
buffers = st.tuples(st.binary(min_size=0, max_size=3000), st.integers(0, 15), st.integers(0, 15))
words = st.integers(0, 0xFFFF)


def _slice(buf: tuple[bytes, int, int]) -> memoryview:
    data, head, tail = buf
    backing = bytearray(b"\xa5" * head + data + b"\x5a" * tail)
    return memoryview(backing)[head : head + len(data)]


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@SETTINGS
@given(buf=buffers, initial=words)
@example(buf=(b"", 0, 0), initial=0)
@example(buf=(b"\x00" * 7, 3, 0), initial=0)
@example(buf=(b"\xff" * 1501, 1, 0), initial=0xFFFF)
@example(buf=(b"\xff\xff", 0, 0), initial=0)
def test_sum_matches_naive_reference(name: str, buf: tuple[bytes, int, int], initial: int) -> None:
    impl = load_impl(name)
    view = _slice(buf)
    data = bytes(view)
    expected = naive_sum(data, initial)
    assert impl.ones_complement_sum(view, initial) == expected
    assert impl.internet_checksum(view, initial) == ~expected & 0xFFFF
    assert impl.ones_complement_sum(bytearray(data), initial) == expected
    assert impl.internet_checksum(data, initial) == ~expected & 0xFFFF


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@SETTINGS
@given(buf=buffers)
def test_checksum_matches_scapy(name: str, buf: tuple[bytes, int, int]) -> None:
    impl = load_impl(name)
    view = _slice(buf)
    assert impl.internet_checksum(view) == scapy_checksum(bytes(view))


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@SETTINGS
@given(data=st.binary(min_size=2, max_size=1600), initial=words, at=st.integers(0, 799))
def test_verify_accepts_stored_checksum_and_rejects_corruption(name: str, data: bytes, initial: int, at: int) -> None:
    impl = load_impl(name)
    at = 2 * (at % (len(data) // 2))  # an even offset for the 16-bit checksum field
    packet = bytearray(data)
    packet[at : at + 2] = b"\0\0"
    packet[at : at + 2] = impl.internet_checksum(packet, initial).to_bytes(2, "big")
    assert impl.verify_checksum(packet, initial)
    flipped = bytearray(packet)
    flipped[at] ^= 0x01  # a single-bit error is always detected
    assert not impl.verify_checksum(flipped, initial)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@SETTINGS
@given(
    body=st.binary(min_size=0, max_size=200).filter(lambda b: len(b) % 2 == 0),
    at=st.integers(0, 100),
    new=words,
    zero_checksum=st.booleans(),
)
@example(body=b"", at=0, new=0, zero_checksum=False)
def test_update16_equals_recomputation(name: str, body: bytes, at: int, new: int, zero_checksum: bool) -> None:
    impl = load_impl(name)
    # body, one adjustment word, then the checksum field. The adjustment can make the stored
    # checksum 0x0000 (sum 0xffff): the input-side corner case of RFC 1624 section 3.
    adjust = 0xFFFF - naive_sum(body) if zero_checksum else 0x1234
    packet = bytearray(body + adjust.to_bytes(2, "big") + b"\0\0")
    checksum = impl.internet_checksum(packet)
    assert checksum == 0 or not zero_checksum
    at = 2 * (at % (len(body) // 2 + 1))
    old = int.from_bytes(packet[at : at + 2], "big")
    packet[at : at + 2] = new.to_bytes(2, "big")
    # All-zero data has checksum 0xffff, which eqn. 3 never yields (RFC 1624 section 3); such
    # data is not a packet.
    assume(any(packet))
    recomputed = impl.internet_checksum(packet)
    assert impl.checksum_update16(checksum, old, new) == recomputed
    # The byte-wise update over the same 2-byte field agrees.
    assert impl.checksum_update_bytes(checksum, old.to_bytes(2, "big"), new.to_bytes(2, "big")) == recomputed


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_rfc1624_section3_example(name: str) -> None:
    """RFC 1624 section 3: eqn. 3 gives 0x0000 where the older eqn. 2 gives the wrong 0xffff."""
    impl = load_impl(name)
    # Other header words sum to 0xCD7A; the field m changes from 0x5555 to 0x3285.
    assert impl.checksum_update16(0xDD2F, 0x5555, 0x3285) == 0x0000
    packet = (0xCD7A).to_bytes(2, "big") + (0x5555).to_bytes(2, "big")
    assert impl.internet_checksum(packet) == 0xDD2F
    assert impl.internet_checksum((0xCD7A).to_bytes(2, "big") + (0x3285).to_bytes(2, "big")) == 0x0000


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@SETTINGS
@given(body=st.binary(min_size=40, max_size=400), size=st.sampled_from([4, 16]), at=st.integers(0, 9), new=st.data())
def test_update_bytes_equals_recomputation(name: str, body: bytes, size: int, at: int, new: st.DataObject) -> None:
    impl = load_impl(name)
    packet = bytearray(body) + b"\0\0"
    at = 2 * at
    checksum = impl.internet_checksum(packet)
    replacement = new.draw(st.binary(min_size=size, max_size=size))
    old = bytes(packet[at : at + size])
    packet[at : at + size] = replacement
    assume(any(packet))
    assert impl.checksum_update_bytes(checksum, old, replacement) == impl.internet_checksum(packet)


def test_update_bytes_rejects_unequal_or_odd_lengths(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="same even length"):
        impl.checksum_update_bytes(0, b"\0" * 4, b"\0" * 16)
    with pytest.raises(ValueError, match="same even length"):
        impl.checksum_update_bytes(0, b"\0" * 3, b"\0" * 3)
    assert impl.checksum_update_bytes(0x1234, b"", b"") == 0x1234


addresses_v4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
addresses_v6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@SETTINGS
@given(src=addresses_v4, dst=addresses_v4, payload=st.binary(max_size=600), proto=st.sampled_from([1, 6, 17]))
def test_pseudo_header_ipv4_matches_scapy(name: str, src: str, dst: str, payload: bytes, proto: int) -> None:
    impl = load_impl(name)
    initial = impl.pseudo_header_sum(ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed, len(payload), proto)
    assert impl.internet_checksum(payload, initial) == in4_chksum(proto, IP(src=src, dst=dst), payload)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
@SETTINGS
@given(src=addresses_v6, dst=addresses_v6, payload=st.binary(max_size=1300))
def test_pseudo_header_icmpv6_matches_scapy(name: str, src: str, dst: str, payload: bytes) -> None:
    impl = load_impl(name)
    initial = impl.pseudo_header_sum(ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed, len(payload), 58)
    assert impl.internet_checksum(payload, initial) == in6_chksum(58, IPv6(src=src, dst=dst), payload)


def test_pseudo_header_large_ipv6_length(impl: ModuleType) -> None:
    """A jumbogram length uses both 16-bit halves of the 32-bit IPv6 length field."""
    zero = bytes(16)
    assert impl.pseudo_header_sum(zero, zero, 0x0001_0002, 58) == naive_sum(bytes(8) + (0x0001_0002).to_bytes(4, "big") + bytes(3) + b"\x3a")


def test_pseudo_header_rejects_bad_arguments(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="4 .IPv4. or 16"):
        impl.pseudo_header_sum(bytes(4), bytes(16), 8, 1)
    with pytest.raises(ValueError, match="4 .IPv4. or 16"):
        impl.pseudo_header_sum(bytes(5), bytes(5), 8, 1)
    with pytest.raises(ValueError, match="out of range for IPv4"):
        impl.pseudo_header_sum(bytes(4), bytes(4), 0x10000, 17)
    with pytest.raises(ValueError, match="out of range for IPv6"):
        impl.pseudo_header_sum(bytes(16), bytes(16), -1, 58)
    with pytest.raises(ValueError, match="next_header"):
        impl.pseudo_header_sum(bytes(16), bytes(16), 8, 256)


@pytest.mark.parametrize("bad", [-1, 0x10000])
def test_16_bit_arguments_are_range_checked(impl: ModuleType, bad: int) -> None:
    with pytest.raises(ValueError, match="initial"):
        impl.internet_checksum(b"ab", bad)
    with pytest.raises(ValueError, match="checksum"):
        impl.checksum_update16(bad, 0, 0)
    with pytest.raises(ValueError, match="new"):
        impl.checksum_update16(0, 0, bad)
    with pytest.raises(ValueError, match="checksum"):
        impl.checksum_update_bytes(bad, b"ab", b"cd")


def test_rejects_non_integers_and_non_buffers(impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        impl.internet_checksum(b"ab", 1.0)
    with pytest.raises(TypeError):
        impl.internet_checksum("ab")
    with pytest.raises(ValueError):
        impl.internet_checksum(array.array("H", [1, 2]))  # not a byte buffer


def test_public_module_exports(impl: ModuleType) -> None:
    assert sorted(fastproxy.checksum.__all__) == PUBLIC
    for name in PUBLIC:
        assert callable(getattr(impl, name))
