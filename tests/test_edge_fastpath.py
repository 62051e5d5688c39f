"""The edge's batched ICMP fast path (EdgeIcmpRoutes, on the compiled core and the twin):
EdgeRouter with it gives, datagram for datagram and counter for counter, what EdgeRouter's
Python path alone gives, on random batches (malformed ones included) and random changes of
routes, policies and clients."""

from __future__ import annotations

import ipaddress
import os
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6

from fastproxy.datagram import encode_icmp, encode_udp_payload, encode_udp_registration
from fastproxy.tunnel import router as router_module
from fastproxy.tunnel.control import Announce, Hello, Welcome
from fastproxy.tunnel.router import EdgeConfig, EdgeRouter

from .conftest import IMPLEMENTATIONS, load_impl

net = ipaddress.ip_network
CLIENTS = (1, 2)
CONNECTORS = (10, 11, 12)
# Nested and shared prefixes: 10.0.0.0/8 by two connectors (rendezvous), 10.1.0.0/16 by one.
ANNOUNCES = {10: ("10.0.0.0/8", "2001:db8::/32"), 11: ("10.0.0.0/8", "10.1.0.0/16"), 12: ("10.1.2.0/24", "2001:db8:1::/48")}
POLICIES = {"open": None, "narrow": (net("10.1.0.0/16"), net("2001:db8::/33")), "v4only": (net("10.0.0.0/8"),)}
DESTINATIONS4 = ("10.1.2.3", "10.1.9.9", "10.200.0.1", "10.0.0.7", "192.0.2.1", "100.96.0.2", "100.96.0.3")
DESTINATIONS6 = ("2001:db8::1", "2001:db8:1::5", "2001:db8:8000::1", "2001:db9::1", "fd00:fa57::2", "fd00:fa57::3")


def echo4(src: str, dst: str, ttl: int, reply: bool = False) -> bytes:
    return encode_icmp(bytes(IP(src=src, dst=dst, ttl=ttl) / ICMP(type=0 if reply else 8, id=7, seq=1) / b"ping"))


def echo6(src: str, dst: str, hlim: int, reply: bool = False) -> bytes:
    message = ICMPv6EchoReply(id=7, seq=1) if reply else ICMPv6EchoRequest(id=7, seq=1)
    return encode_icmp(bytes(IPv6(src=src, dst=dst, hlim=hlim) / message / b"ping"))


# Built once (scapy is slow); hypothesis picks among them and mutates them.
SOURCES4 = ("100.96.0.2", "100.96.0.3", "100.96.0.99")  # clients 1 and 2 get .2 and .3; .99 is spoofed
SOURCES6 = ("fd00:fa57::2", "fd00:fa57::3", "fd00:fa57::99")
TEMPLATES = [echo4(s, d, t) for s in SOURCES4 for d in DESTINATIONS4 for t in (0, 1, 2, 64)]
TEMPLATES += [echo6(s, d, t) for s in SOURCES6 for d in DESTINATIONS6 for t in (0, 1, 2, 64)]
REPLIES = [echo4(d, s, 60, reply=True) for s in SOURCES4 for d in DESTINATIONS4[:4]]
REPLIES += [echo6(d, s, 60, reply=True) for s in SOURCES6 for d in DESTINATIONS6[:3]]
REQUEST_IDS = [bytes([i]) * 16 for i in range(4)]
UDP = [encode_udp_registration(rid, ipaddress.ip_address(d).packed, 53, 30) for rid in REQUEST_IDS
       for d in ("10.1.2.3", "2001:db8::1", "192.0.2.1")] + [encode_udp_payload(rid, b"x") for rid in REQUEST_IDS]


@st.composite
def datagram(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    """A datagram from ``pool``, mostly as built, else cut short, with a byte changed,
    with bytes added, or random bytes (with or without the ICMP type byte)."""
    base = draw(st.sampled_from(pool + UDP))
    how = draw(st.sampled_from(["as_is"] * 6 + ["truncate", "flip", "extend", "random", "random_icmp", "empty"]))
    if how == "truncate":
        return base[: draw(st.integers(0, len(base)))]
    if how == "flip":
        at = draw(st.integers(0, len(base) - 1))
        return base[:at] + bytes([draw(st.integers(0, 255))]) + base[at + 1:]
    if how == "extend":
        return base + draw(st.binary(min_size=1, max_size=4))
    if how == "random":
        return draw(st.binary(max_size=60))
    if how == "random_icmp":
        return b"\x02" + draw(st.binary(max_size=60))
    return b"" if how == "empty" else base


def operation() -> st.SearchStrategy[tuple]:
    """One step: a batch from a client or a connector, or a change of the tables."""
    return st.one_of(
        st.tuples(st.just("client"), st.sampled_from(CLIENTS), st.lists(datagram(TEMPLATES), max_size=12)),
        st.tuples(st.just("connector"), st.sampled_from(CONNECTORS), st.lists(datagram(REPLIES), max_size=12)),
        st.tuples(st.just("remove"), st.sampled_from(CLIENTS + CONNECTORS)),
        st.tuples(st.just("join"), st.sampled_from(CLIENTS + CONNECTORS)),
        st.tuples(st.just("policy"), st.sampled_from(sorted(POLICIES))),
    )


def config(policy: str) -> EdgeConfig:
    return EdgeConfig(client_tokens={"c": POLICIES[policy]}, connector_tokens=("k",))


def join(router: EdgeRouter, conn_id: int) -> None:
    if conn_id in CLIENTS:
        if not router.is_client(conn_id):
            assert isinstance(router.authenticate(conn_id, Hello("client", "c")), Welcome)
    else:
        assert isinstance(router.authenticate(conn_id, Hello("connector", "k")), Welcome)
        router.announce(conn_id, Announce(tuple(net(p) for p in ANNOUNCES[conn_id])))


def apply(router: EdgeRouter, step: tuple) -> object:
    kind = step[0]
    if kind in ("client", "connector"):
        return router.route(step[1], list(step[2]), now=100.0)
    if kind == "remove":
        router.remove(step[1])
    elif kind == "join":
        join(router, step[1])
    else:
        router.reconfigure(config(step[1]))
    return None


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The router's fast path from the compiled core or from the twin."""
    module = load_impl(request.param)
    monkeypatch.setattr(router_module, "EdgeIcmpRoutes", module.EdgeIcmpRoutes)
    return module


def routers(policy: str = "open") -> tuple[EdgeRouter, EdgeRouter]:
    fast, slow = EdgeRouter(config(policy)), EdgeRouter(config(policy), icmp_fast_path=False)
    for router in (fast, slow):
        for conn_id in CLIENTS + CONNECTORS:
            join(router, conn_id)
    return fast, slow


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=st.sampled_from(sorted(POLICIES)), steps=st.lists(operation(), min_size=1, max_size=12))
def test_fast_path_gives_what_the_python_path_gives(impl: ModuleType, policy: str, steps: list[tuple]) -> None:
    fast, slow = routers(policy)
    assert fast._fast is not None and isinstance(fast._fast, impl.EdgeIcmpRoutes)
    for step in steps:
        assert apply(fast, step) == apply(slow, step), step
        assert fast.drops == slow.drops and fast.routed == slow.routed, step


def test_common_case_takes_no_python_path(impl: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Echo requests to a routed destination and their replies are forwarded by the fast
    path alone (the Python path would fail here), TTL decremented, grouped by connector."""
    fast, slow = routers()
    batch = [echo4("100.96.0.2", d, 64) for d in ("10.1.2.3", "10.1.9.9", "10.0.0.7")] + [echo6("fd00:fa57::2", "2001:db8::1", 9)]
    replies = [echo4("10.1.2.3", "100.96.0.2", 60, reply=True), echo6("2001:db8::1", "fd00:fa57::3", 60, reply=True)]
    expected, expected_back = slow.route(1, batch), slow.route(12, replies)

    def python_path(*_: object) -> None:
        raise AssertionError("the Python path was taken")

    monkeypatch.setattr(fast, "_from_client", python_path)
    monkeypatch.setattr(fast, "_from_connector", python_path)
    out = fast.route(1, batch)
    assert out == expected
    assert fast.route(12, replies) == expected_back == {1: [replies[0]], 2: [replies[1]]}
    assert fast.routed == {"icmp_to_connector": 4, "icmp_to_client": 2}
    assert sum(len(v) for v in out.values()) == 4
    forwarded, original = out[12][0], batch[0]
    assert (original[9], forwarded[9]) == (64, 63)  # the TTL (IP header from byte 1)
    assert forwarded[:9] == original[:9] and forwarded[10:11] == original[10:11] and forwarded[13:] == original[13:]
    # The v4 header checksum was updated: the header still sums to 0xFFFF.
    total = sum(int.from_bytes(forwarded[i:i + 2], "big") for i in range(1, 21, 2))
    assert (total & 0xFFFF) + (total >> 16) == 0xFFFF
    # 10.1.9.9 (/16: 11), 10.0.0.7 (/8: 10 or 11), 2001:db8::1 (10).
    assert len(out[12]) == 1 and len(out[10]) + len(out.get(11, [])) == 3


def test_tables_follow_the_router(impl: ModuleType) -> None:
    """A connector that leaves, a client that leaves, a narrower policy: the fast path
    stops forwarding what the router no longer would."""
    fast, _ = routers()
    packet = echo4("100.96.0.2", "10.1.2.3", 64)
    assert list(fast.route(1, [packet])) == [12]
    fast.remove(12)
    assert list(fast.route(1, [packet])) == [11]  # the /16 now
    fast.reconfigure(config("v4only"))
    assert fast.route(1, [echo6("fd00:fa57::2", "2001:db8::1", 64)]).keys() == {1}  # answered: policy
    assert fast.drops["policy_denied"] == 1
    fast.remove(1)
    assert fast.route(11, [echo4("10.1.2.3", "100.96.0.2", 60, reply=True)]) == {}
    assert fast.drops["unknown_client_address"] == 1


@given(client=st.integers(0, 2**64 - 1), owner=st.integers(0, 2**64 - 1),
       destination=st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16))
def test_rendezvous_score_is_the_same_in_both(client: int, owner: int, destination: bytes) -> None:
    compiled, twin = (load_impl(name).rendezvous_score for name in IMPLEMENTATIONS)
    assert compiled(client, destination, owner) == twin(client, destination, owner)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_bad_tables_are_refused(name: str) -> None:
    routes = load_impl(name).EdgeIcmpRoutes()
    with pytest.raises(ValueError, match="4- or 16-byte"):
        routes.set_routes([(b"\x0a\x00\x00", 8, [1])])
    with pytest.raises(ValueError, match="4- or 16-byte"):
        routes.set_routes([(b"\x0a\x00\x00\x00", 33, [1])])
    with pytest.raises(ValueError, match="IPv4 address is 4 bytes"):
        routes.set_client(1, b"\x01\x02", None, None)
    with pytest.raises(OverflowError):
        load_impl(name).rendezvous_score(-1, b"\x00" * 4, 1)
    assert routes.from_client(1, [os.urandom(30)], 0, {}) == 0  # an unknown client: all left
