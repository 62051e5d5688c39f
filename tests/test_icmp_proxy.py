"""Sans-I/O tests of IcmpProxy with fake backends; scapy is the oracle for packet bytes.

Most tests run on both paths: ``per_packet`` (the ping-socket / Windows kind of
backend) and ``batched`` (the raw / Darwin kind, through the core's EchoNat).
"""

from __future__ import annotations

import errno

import pytest
from scapy.layers.inet import ICMP, IP, IPerror, ICMPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
)

from fastproxy._impl import core
from fastproxy.icmp import IcmpProxy, ReceivedPacket
from fastproxy.icmp.backends._wire import wrap_icmp_message

from .icmp_fakes import FakeBackend, FakeBatchedBackend, addr

CLIENT = {4: "198.51.100.7", 6: "2001:db8:c::7"}
CLIENT2 = {4: "198.51.100.8", 6: "2001:db8:c::8"}
TARGET = {4: "203.0.113.9", 6: "2001:db8:9::9"}
ROUTER = {4: "192.0.2.254", 6: "2001:db8:1::fe"}
CONNECTOR = {4: "192.0.2.1", 6: "2001:db8:1::1"}
ALLOWED = ["203.0.113.0/24", "2001:db8:9::/48"]
VERSIONS = [4, 6]


def echo_request(version: int, src: str, dst: str, echo_id: int = 0x1234, seq: int = 1, ttl: int = 64,
                 payload: bytes = b"fastproxy-payload") -> bytes:
    if version == 4:
        return bytes(IP(src=src, dst=dst, ttl=ttl) / ICMP(type=8, id=echo_id, seq=seq) / payload)
    return bytes(IPv6(src=src, dst=dst, hlim=ttl) / ICMPv6EchoRequest(id=echo_id, seq=seq, data=payload))


def checksums_ok(packet: bytes) -> bool:
    """scapy recomputes every checksum it is not given: right if rebuilding changes nothing."""
    rebuilt = (IP if packet[0] >> 4 == 4 else IPv6)(packet)
    for layer in rebuilt.iterpayloads():
        for field in ("chksum", "cksum"):
            if field in layer.fields:
                del layer.fields[field]
    return bytes(rebuilt) == packet


@pytest.fixture(params=["per_packet", "batched"])
def kind(request: pytest.FixtureRequest) -> str:
    """Which kind of backend the proxy drives."""
    return request.param


def make_proxy(kind: str = "per_packet", **options) -> tuple[IcmpProxy, FakeBackend | FakeBatchedBackend]:
    backend = FakeBackend() if kind == "per_packet" else FakeBatchedBackend()
    options.setdefault("icmpv4_source", CONNECTOR[4])
    options.setdefault("icmpv6_source", CONNECTOR[6])
    return IcmpProxy(ALLOWED, backend, **options), backend


def reply_from_target(version: int, flow, seq: int = 1, payload: bytes = b"fastproxy-payload", src=None) -> bytes:
    """The echo reply as the backend hands it over: to the connector, with the assigned id."""
    return bytes(core.build_echo(addr(src or TARGET[version]), addr(CONNECTOR[version]), flow.echo_id, seq,
                                 payload, ttl=61, reply=True))


@pytest.mark.parametrize("version", VERSIONS)
def test_echo_round_trip_restores_client_view(version: int, kind: str) -> None:
    proxy, backend = make_proxy(kind)
    request = echo_request(version, CLIENT[version], TARGET[version], ttl=5)
    assert proxy.handle_client_packets(1, [request], now=0.0) == []
    (flow, message, ttl), = backend.sent
    assert ttl == 4  # TTL - 1 goes on the wire
    assert flow.dst == addr(TARGET[version]) and proxy.flows()[0].client_echo_id == 0x1234
    assert proxy.flows()[0].echo_id == flow.echo_id
    assert int.from_bytes(message[4:6], "big") == flow.echo_id
    assert message[8:] == b"fastproxy-payload"
    if version == 4:  # the v4 ICMP checksum is ours to get right
        assert checksums_ok(bytes(IP(src=CONNECTOR[4], dst=TARGET[4]) / ICMP(message)))
    backend.incoming.append(ReceivedPacket(reply_from_target(version, flow), None))
    (conn_id, packet), = proxy.poll_backend(now=1.0)
    assert conn_id == 1
    parsed = IP(bytes(packet)) if version == 4 else IPv6(bytes(packet))
    assert parsed.src == TARGET[version] and parsed.dst == CLIENT[version]
    icmp = parsed[ICMP] if version == 4 else parsed[ICMPv6EchoReply]
    assert icmp.id == 0x1234 and icmp.seq == 1
    assert checksums_ok(bytes(packet))
    assert proxy.metrics.packets_in == 1 and proxy.metrics.packets_out == 1
    assert proxy.metrics.flows_active == 1 and proxy.metrics.flows_total == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_ttl_one_answers_time_exceeded_from_connector(version: int, kind: str) -> None:
    proxy, backend = make_proxy(kind)
    request = echo_request(version, CLIENT[version], TARGET[version], ttl=1)
    (conn_id, packet), = proxy.handle_client_packets(3, [request], now=0.0)
    assert conn_id == 3 and backend.sent == []
    assert checksums_ok(bytes(packet))
    if version == 4:
        parsed = IP(bytes(packet))
        assert (parsed.src, parsed.dst, parsed[ICMP].type, parsed[ICMP].code) == (CONNECTOR[4], CLIENT[4], 11, 0)
        assert bytes(parsed[ICMP].payload) == request  # whole original fits in 576 bytes
    else:
        parsed = IPv6(bytes(packet))
        assert (parsed.src, parsed.dst) == (CONNECTOR[6], CLIENT[6])
        assert isinstance(parsed.payload, ICMPv6TimeExceeded)
        assert bytes(parsed[ICMPv6TimeExceeded].payload) == request
    assert proxy.metrics.time_exceeded_sent == 1


def test_time_exceeded_rate_limited_per_client(kind: str) -> None:
    proxy, _ = make_proxy(kind, time_exceeded_rate=1.0, time_exceeded_burst=3)
    request = echo_request(4, CLIENT[4], TARGET[4], ttl=1)
    other = echo_request(4, CLIENT2[4], TARGET[4], ttl=1)
    assert len(proxy.handle_client_packets(1, [request] * 5, now=0.0)) == 3
    assert proxy.metrics.drops["time_exceeded_rate_limited"] == 2
    assert len(proxy.handle_client_packets(1, [other], now=0.0)) == 1  # another client has its own bucket
    assert len(proxy.handle_client_packets(1, [request] * 2, now=1.0)) == 1  # one token a second
    assert proxy.metrics.drops["time_exceeded_rate_limited"] == 3


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("answer", [False, True])
def test_policy_refusals(version: int, answer: bool, kind: str) -> None:
    proxy, backend = make_proxy(kind, answer_prohibited=answer)
    outside = {4: "192.0.2.99", 6: "2001:db8:ff::1"}[version]
    refused_dst = echo_request(version, CLIENT[version], outside)
    reply_type = bytes(core.build_echo(addr(CLIENT[version]), addr(TARGET[version]), 1, 1, b"x", reply=True))
    out = proxy.handle_client_packets(1, [refused_dst, reply_type], now=0.0)
    assert backend.sent == [] and proxy.flow_count == 0
    assert proxy.metrics.drops["destination_not_allowed"] == 1
    assert proxy.metrics.drops["not_echo_request"] == 1
    if not answer:
        assert out == []
        return
    assert len(out) == 2
    for _conn, packet in out:
        assert checksums_ok(bytes(packet))
        if version == 4:
            parsed = IP(bytes(packet))
            assert (parsed[ICMP].type, parsed[ICMP].code, parsed.dst) == (3, 13, CLIENT[4])
        else:
            parsed = IPv6(bytes(packet))
            assert isinstance(parsed.payload, ICMPv6DestUnreach) and parsed.payload.code == 1
            assert parsed.dst == CLIENT[6]


def test_icmp_errors_from_clients_are_never_answered(kind: str) -> None:
    proxy, _ = make_proxy(kind, answer_prohibited=True)
    error = bytes(core.build_time_exceeded(addr(CLIENT[4]), echo_request(4, TARGET[4], CLIENT[4])))
    assert proxy.handle_client_packets(1, [error], now=0.0) == []
    assert proxy.metrics.drops["not_echo_request"] == 1


def test_malformed_packets_dropped_by_reason(kind: str) -> None:
    proxy, backend = make_proxy(kind)
    good = bytearray(echo_request(4, CLIENT[4], TARGET[4]))
    bad_icmp = bytearray(good)
    bad_icmp[-1] ^= 0xFF
    bad_ip = bytearray(good)
    bad_ip[10] ^= 0xFF
    out = proxy.handle_client_packets(1, [b"", good[:10], bad_icmp, bad_ip, b"\x70" + bytes(40)], now=0.0)
    assert out == [] and backend.sent == []
    drops = {reason: count for reason, count in proxy.metrics.drops.items() if count}
    assert drops == {"empty": 1, "truncated_ip_header": 1, "bad_icmp_checksum": 1, "bad_ip_checksum": 1,
                     "bad_version": 1}
    assert proxy.metrics.packets_in == 5


def test_flow_limits_global_and_per_connection(kind: str) -> None:
    proxy, backend = make_proxy(kind, max_flows=4, max_flows_per_connection=2)
    requests = [echo_request(4, CLIENT[4], TARGET[4], echo_id=i) for i in range(3)]
    proxy.handle_client_packets(1, requests, now=0.0)
    assert proxy.metrics.drops["flow_limit_connection"] == 1 and len(backend.sent) == 2
    proxy.handle_client_packets(2, requests, now=0.0)
    proxy.handle_client_packets(3, requests, now=0.0)
    assert proxy.metrics.drops["flow_limit_global"] >= 1
    assert proxy.flow_count <= 4 and proxy.metrics.flows_active == proxy.flow_count
    if kind == "per_packet":
        assert proxy.flow_count == len(backend.open)
    # existing flows keep working at the bound
    before = len(backend.sent)
    proxy.handle_client_packets(1, requests[:1], now=0.0)
    assert len(backend.sent) == before + 1


@pytest.mark.parametrize("version", VERSIONS)
def test_same_echo_id_from_many_clients_never_crosses(version: int, kind: str) -> None:
    proxy, backend = make_proxy(kind)
    clients = [(conn, src) for conn in (1, 2) for src in (CLIENT[version], CLIENT2[version])]
    for conn, src in clients:
        proxy.handle_client_packets(conn, [echo_request(version, src, TARGET[version], echo_id=7)], now=0.0)
    flows = [flow for flow, _message, _ttl in backend.sent]
    assert len({flow.echo_id for flow in flows}) == 4
    for flow in reversed(flows):
        backend.incoming.append(ReceivedPacket(reply_from_target(version, flow), None))
    out = proxy.poll_backend(now=0.5)
    seen = []
    for conn_id, packet in out:
        parsed = IP(bytes(packet)) if version == 4 else IPv6(bytes(packet))
        icmp = parsed[ICMP] if version == 4 else parsed[ICMPv6EchoReply]
        assert icmp.id == 7
        seen.append((conn_id, parsed.dst))
    assert sorted(seen) == sorted(clients)


@pytest.mark.parametrize("version", VERSIONS)
def test_bad_replies_dropped_and_counted(version: int) -> None:
    proxy, backend = make_proxy()
    proxy.handle_client_packets(1, [echo_request(version, CLIENT[version], TARGET[version])], now=0.0)
    flow = backend.sent[0][0]
    good = reply_from_target(version, flow)
    unknown = bytes(core.build_echo(addr(TARGET[version]), addr(CONNECTOR[version]), flow.echo_id ^ 0x5555, 1,
                                    b"x", reply=True))
    spoofed_src = reply_from_target(version, flow, src={4: "203.0.113.66", 6: "2001:db8:9::66"}[version])
    corrupt = bytearray(good)
    corrupt[-1] ^= 0x01
    backend.incoming += [ReceivedPacket(unknown, None), ReceivedPacket(spoofed_src, None),
                         ReceivedPacket(bytes(corrupt), None), ReceivedPacket(spoofed_src, flow)]
    assert proxy.poll_backend(now=0.1) == []
    drops = proxy.metrics.drops
    assert drops["reply_unknown_flow"] == 2  # an unknown id; a reply from a source no flow points at
    assert drops["reply_bad_checksum"] == 1
    assert drops["reply_spoofed"] == 1  # the backend's socket says which flow; the source disagrees
    backend.incoming.append(ReceivedPacket(good, flow))
    assert len(proxy.poll_backend(now=0.2)) == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_router_errors_translated_for_the_client(version: int, kind: str) -> None:
    proxy, backend = make_proxy(kind)
    request = echo_request(version, CLIENT[version], TARGET[version], ttl=3, seq=9)
    proxy.handle_client_packets(4, [request], now=0.0)
    flow, message, ttl = backend.sent[0]
    on_wire = wrap_icmp_message(addr(CONNECTOR[version]), flow.dst, 1, message)  # as r2 received it
    if version == 6:
        on_wire = bytearray(core.build_echo(addr(CONNECTOR[6]), flow.dst, flow.echo_id, 9, b"fastproxy-payload", ttl=1))
    error = bytes(core.build_time_exceeded(addr(ROUTER[version]), on_wire))
    backend.incoming.append(ReceivedPacket(error, None))
    (conn_id, packet), = proxy.poll_backend(now=0.1)
    assert conn_id == 4 and checksums_ok(bytes(packet))
    if version == 4:
        parsed = IP(bytes(packet))
        assert (parsed.src, parsed.dst, parsed[ICMP].type) == (ROUTER[4], CLIENT[4], 11)
        quoted = parsed[IPerror]
        assert (quoted.src, quoted.dst, quoted[ICMPerror].id, quoted[ICMPerror].seq) == (CLIENT[4], TARGET[4], 0x1234, 9)
    else:
        parsed = IPv6(bytes(packet))
        assert (parsed.src, parsed.dst) == (ROUTER[6], CLIENT[6])
        quoted = parsed[IPerror6]
        assert (quoted.src, quoted.dst) == (CLIENT[6], TARGET[6])
        assert int.from_bytes(bytes(quoted.payload)[4:6], "big") == 0x1234


@pytest.mark.parametrize("version", VERSIONS)
def test_errors_drained_while_sending_are_answered_with_the_flush(version: int) -> None:
    """A router's Time Exceeded the backend took off the network during a flush (the ping-socket
    backend does, to clear the error it left pending) reaches the client from that very call:
    no descriptor may wake the reader for it again."""
    proxy, backend = make_proxy()
    proxy.handle_client_packets(4, [echo_request(version, CLIENT[version], TARGET[version], ttl=3, seq=9)], now=0.0)
    flow, _message, _ttl = backend.sent[0]
    on_wire = core.build_echo(addr(CONNECTOR[version]), flow.dst, flow.echo_id, 9, b"fastproxy-payload", ttl=1)
    backend.drained.append(ReceivedPacket(bytes(core.build_time_exceeded(addr(ROUTER[version]), on_wire)), flow))
    answers = proxy.handle_client_packets(4, [echo_request(version, CLIENT[version], TARGET[version], ttl=4, seq=10)],
                                          now=0.1)
    (conn_id, packet), = answers
    assert conn_id == 4 and checksums_ok(bytes(packet))
    parsed = IP(bytes(packet)) if version == 4 else IPv6(bytes(packet))
    assert (parsed.src, parsed.dst) == (ROUTER[version], CLIENT[version])
    quoted_icmp = bytes((parsed[IPerror] if version == 4 else parsed[IPerror6]).payload)
    assert (int.from_bytes(quoted_icmp[4:6], "big"), int.from_bytes(quoted_icmp[6:8], "big")) == (0x1234, 9)
    assert len(backend.sent) == 2 and proxy.poll_backend(now=0.2) == []  # answered once


def test_idle_expiry_frees_flows_and_backend_state(kind: str) -> None:
    proxy, backend = make_proxy(kind, idle_timeout=2.0)
    proxy.handle_client_packets(1, [echo_request(4, CLIENT[4], TARGET[4], echo_id=i) for i in range(3)], now=0.0)
    proxy.handle_client_packets(1, [echo_request(4, CLIENT[4], TARGET[4], echo_id=0)], now=1.5)
    stale = next(flow for flow in proxy.flows() if flow.client_echo_id == 1)
    assert proxy.expire(now=1.0) == 0
    assert proxy.expire(now=3.0) == 2  # id 0 was used at 1.5
    assert proxy.flow_count == 1 and proxy.metrics.flows_active == 1
    if kind == "per_packet":
        assert len(backend.closed) == 2 and stale in backend.closed
    backend.incoming.append(ReceivedPacket(reply_from_target(4, stale), None))
    assert proxy.poll_backend(now=3.1) == [] and proxy.metrics.drops["reply_unknown_flow"] == 1
    assert proxy.expire(now=10.0) == 1 and proxy.flow_count == 0
    if kind == "per_packet":
        assert backend.open == set()


def test_close_connection_frees_only_its_flows(kind: str) -> None:
    proxy, backend = make_proxy(kind)
    proxy.handle_client_packets(1, [echo_request(4, CLIENT[4], TARGET[4], echo_id=i) for i in range(3)], now=0.0)
    proxy.handle_client_packets(2, [echo_request(4, CLIENT[4], TARGET[4], echo_id=0)], now=0.0)
    assert proxy.close_connection(1) == 3
    assert [flow.conn_id for flow in proxy.flows()] == [2]
    if kind == "per_packet":
        assert len(backend.open) == 1 and next(iter(backend.open)).conn_id == 2
    assert proxy.metrics.flows_active == 1 and proxy.flow_count == 1
    assert proxy.close_connection(1) == 0


@pytest.mark.parametrize(("err", "v4", "v6"), [(errno.ENETUNREACH, (3, 0), (1, 0)), (errno.EHOSTUNREACH, (3, 1), (1, 3))])
@pytest.mark.parametrize("version", VERSIONS)
def test_local_send_failure_answers_unreachable(version: int, err: int, v4, v6, kind: str) -> None:
    proxy, backend = make_proxy(kind)
    backend.fail_next = [(0, err, 0)]
    (conn_id, packet), = proxy.handle_client_packets(1, [echo_request(version, CLIENT[version], TARGET[version])], now=0.0)
    parsed = IP(bytes(packet)) if version == 4 else IPv6(bytes(packet))
    icmp = bytes(parsed.payload)
    assert (icmp[0], icmp[1]) == (v4 if version == 4 else v6)
    assert parsed.src == CONNECTOR[version] and parsed.dst == CLIENT[version]
    assert checksums_ok(bytes(packet)) and proxy.metrics.drops["backend_send_failed"] == 1


def test_local_send_failure_too_big_answers_with_mtu(kind: str) -> None:
    proxy, backend = make_proxy(kind)
    backend.fail_next = [(0, errno.EMSGSIZE, 1280)]
    (_conn, packet), = proxy.handle_client_packets(1, [echo_request(4, CLIENT[4], TARGET[4])], now=0.0)
    parsed = IP(bytes(packet))
    assert (parsed[ICMP].type, parsed[ICMP].code, parsed[ICMP].nexthopmtu) == (3, 4, 1280)


def test_metrics_snapshot_names_every_drop_reason(kind: str) -> None:
    proxy, _ = make_proxy(kind)
    snapshot = proxy.metrics.snapshot()
    for reason in core.PACKET_MALFORMED_REASONS + ("reply_spoofed", "flow_limit_global", "echo_ids_exhausted"):
        assert f"icmp_drops_{reason}" in snapshot
    assert snapshot["icmp_flows_active"] == 0


def test_batched_reply_drops_counted_by_reason() -> None:
    proxy, backend = make_proxy("batched")
    proxy.handle_client_packets(1, [echo_request(4, CLIENT[4], TARGET[4])], now=0.0)
    flow = backend.sent[0][0]
    good = reply_from_target(4, flow)
    unknown = bytes(core.build_echo(addr(TARGET[4]), addr(CONNECTOR[4]), flow.echo_id ^ 0x5555, 1, b"x", reply=True))
    spoofed_src = reply_from_target(4, flow, src="203.0.113.66")
    corrupt = bytearray(good)
    corrupt[-1] ^= 0x01
    backend.incoming += [ReceivedPacket(p, None) for p in (unknown, spoofed_src, bytes(corrupt), good)]
    (conn_id, packet), = proxy.poll_backend(now=0.1)
    assert conn_id == 1 and IP(bytes(packet)).dst == CLIENT[4]
    drops = {reason: count for reason, count in proxy.metrics.drops.items() if count}
    assert drops == {"reply_unknown_flow": 2, "reply_bad_checksum": 1}  # a spoofed source matches no flow
    assert proxy.metrics.replies_in == 4 and proxy.metrics.packets_out == 1


def test_batched_chunks_and_send_failures_answer_the_right_packet() -> None:
    proxy, backend = make_proxy("batched", answer_prohibited=True)  # the fake's batches have 8 slots
    packets = []
    for i in range(20):
        version = 6 if i % 3 == 0 else 4
        dst = TARGET[version] if i != 5 else {4: "192.0.2.99", 6: "2001:db8:ff::1"}[version]  # 5: refused
        packets.append(echo_request(version, CLIENT[version], dst, echo_id=100 + i, seq=i))
    # Second chunk (packets 8-15): v4 slots hold 8, 10, 11, 13, 14; slot 2 is packet 11.
    original_send = backend.send_batch
    calls = []

    def send_batch(family, batch, count):
        calls.append((family, count))
        if len(calls) == 3 and family == 4:
            backend.fail_next = [(2, errno.EHOSTUNREACH, 0)]
        return original_send(family, batch, count)

    backend.send_batch = send_batch
    out = proxy.handle_client_packets(7, packets, now=0.0)
    assert calls == [(4, 4), (6, 3), (4, 5), (6, 3), (4, 3), (6, 1)]
    assert len(backend.sent) == 18 and proxy.metrics.forwarded == 19 and proxy.metrics.packets_in == 20
    assert proxy.flow_count == 19 and {flow.client_echo_id for flow in proxy.flows()} == {100 + i for i in range(20)} - {105}
    assert len(out) == 2
    prohibited, unreachable = (IP(bytes(packet)) for _conn, packet in out)  # refusals come before send failures
    assert (prohibited[ICMP].type, prohibited[ICMP].code, prohibited[IPerror].dst) == (3, 13, "192.0.2.99")
    assert (unreachable[ICMP].type, unreachable[ICMP].code) == (3, 1)  # EHOSTUNREACH
    assert (unreachable[ICMPerror].seq, unreachable[ICMPerror].id) == (11, 111)  # quoting packet 11, as the client sent it
    assert proxy.metrics.drops["backend_send_failed"] == 1 and proxy.metrics.drops["destination_not_allowed"] == 1
