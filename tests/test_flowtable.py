"""FlowTable semantics, on the compiled core and on the pure-Python twin."""

from __future__ import annotations

import array
import ipaddress
import math
import struct
from types import ModuleType

import pytest

from fastproxy.errors import EchoIdExhausted, FlowTableFull

from .conftest import load_impl

DAY = 86400.0


def v4(i: int) -> bytes:
    return ipaddress.IPv4Address(0x0A000000 + i).packed


def v6(i: int) -> bytes:
    return ipaddress.IPv6Address(0x20010DB8 << 96 | i).packed


DST4 = ipaddress.IPv4Address("198.51.100.7").packed
DST6 = ipaddress.IPv6Address("2001:db8:ffff::7").packed


def test_acquire_is_idempotent_and_keeps_the_clients_id(impl: ModuleType) -> None:
    t = impl.FlowTable(16)
    assert t.acquire(1, v4(1), DST4, 4242, 0.0) == 4242
    assert t.acquire(1, v4(1), DST4, 4242, 1.0) == 4242
    assert len(t) == 1
    assert t.lookup(1, v4(1), DST4, 4242) == 4242
    assert t.lookup(1, v4(1), DST4, 4243) is None
    assert t.lookup(2, v4(1), DST4, 4242) is None


@pytest.mark.parametrize("addr", [v4, v6], ids=["v4", "v6"])
def test_many_clients_with_one_echo_id_get_distinct_ids_that_reverse_back(impl: ModuleType, addr) -> None:
    dst = DST4 if addr is v4 else DST6
    t = impl.FlowTable(1024)
    clients = [(conn, addr(src)) for conn in range(8) for src in range(40)]
    assigned = {c: t.acquire(c[0], c[1], dst, 7, 0.0) for c in clients}
    assert len(set(assigned.values())) == len(clients)  # unique towards one destination
    assert assigned[(0, addr(0))] == 7  # the first one keeps its own id
    for (conn, src), a in assigned.items():
        assert t.reverse(dst, a) == (conn, src, 7)
        assert t.lookup(conn, src, dst, 7) == a
    assert len(t) == len(clients)


def test_same_client_id_towards_different_destinations_may_coincide(impl: ModuleType) -> None:
    t = impl.FlowTable(16)
    a = t.acquire(1, v4(1), v4(100), 9, 0.0)
    b = t.acquire(1, v4(1), v4(101), 9, 0.0)
    assert a == b == 9
    assert t.reverse(v4(100), 9) == (1, v4(1), 9)
    assert t.reverse(v4(101), 9) == (1, v4(1), 9)


def test_families_are_distinct_keys(impl: ModuleType) -> None:
    t = impl.FlowTable(16)
    # the v6 addresses carry the v4 bytes first and zeros after: still other keys
    src6, dst6 = v4(1) + bytes(12), DST4 + bytes(12)
    assert t.acquire(1, v4(1), DST4, 5, 0.0) == 5
    assert t.acquire(1, src6, dst6, 5, 0.0) == 5
    assert len(t) == 2
    assert t.reverse(DST4, 5) == (1, v4(1), 5)
    assert t.reverse(dst6, 5) == (1, src6, 5)
    assert t.remove(1, src6, dst6, 5)
    assert t.lookup(1, v4(1), DST4, 5) == 5
    assert t.lookup(1, src6, dst6, 5) is None


def test_expiry_with_refresh_by_acquire_and_reverse(impl: ModuleType) -> None:
    t = impl.FlowTable(16, idle_timeout=0.5)
    assert t.idle_timeout == 0.5
    a = t.acquire(1, v4(1), DST4, 1, 10.0)
    b = t.acquire(1, v4(2), DST4, 2, 10.0)
    c = t.acquire(1, v6(3), DST6, 3, 10.0)
    assert t.expire(10.5) == []  # idle exactly the timeout: kept
    t.acquire(1, v4(1), DST4, 1, 10.4)  # refresh
    assert t.reverse(DST6, c, now=10.45) == (1, v6(3), 3)  # refresh by a reply
    assert t.reverse(DST4, b) == (1, v4(2), 2)  # no now: no refresh
    assert t.expire(10.6) == [(1, v4(2), DST4, 2, b)]
    assert t.lookup(1, v4(2), DST4, 2) is None and t.reverse(DST4, b) is None
    assert len(t) == 2
    assert sorted(t.expire(11.0)) == [(1, v4(1), DST4, 1, a), (1, v6(3), DST6, 3, c)]
    assert len(t) == 0 and t.count_for_connection(1) == 0


def test_incremental_sweep_bounds_work_and_resumes(impl: ModuleType) -> None:
    t = impl.FlowTable(128, idle_timeout=1.0)
    for i in range(100):
        t.acquire(i % 3, v4(i), DST4, i, 0.0)
    t.acquire(0, v4(500), DST4, 500, 5.0)  # fresh one, written in slot 100
    seen = []
    for _ in range(11):
        step = t.expire(5.0, max_scan=10)
        assert len(step) <= 10
        seen += step
    assert sorted(f[3] for f in seen) == list(range(100))
    assert len(t) == 1 and t.lookup(0, v4(500), DST4, 500) == 500
    assert t.expire(5.0, max_scan=10) == []


def test_remove_and_remove_connection(impl: ModuleType) -> None:
    t = impl.FlowTable(64)
    for i in range(30):
        t.acquire(i % 3, v4(i), DST4, 1, 0.0)
    assert [t.count_for_connection(c) for c in range(4)] == [10, 10, 10, 0]
    assert t.remove(0, v4(0), DST4, 1)
    assert not t.remove(0, v4(0), DST4, 1)
    assert t.count_for_connection(0) == 9
    assert t.remove_connection(1) == 10
    assert t.remove_connection(1) == 0
    assert t.count_for_connection(1) == 0 and len(t) == 19
    for i in range(30):
        expected = i % 3 == 2 or (i % 3 == 0 and i != 0)
        assert (t.lookup(i % 3, v4(i), DST4, 1) is not None) == expected
    # freed slots are reused and the ids towards DST4 stay unique
    ids = [t.acquire(7, v4(100 + i), DST4, 1, 0.0) for i in range(11)]
    assert len(t) == 30
    live = [t.lookup(i % 3, v4(i), DST4, 1) for i in range(30)]
    assert len({*ids, *(x for x in live if x is not None)}) == 30


def test_per_connection_limit(impl: ModuleType) -> None:
    t = impl.FlowTable(64, max_per_connection=3)
    for i in range(3):
        t.acquire(1, v4(i), DST4, 1, 0.0)
    with pytest.raises(FlowTableFull) as exc:
        t.acquire(1, v4(9), DST4, 1, 0.0)
    assert (exc.value.scope, exc.value.limit) == ("connection", 3)
    assert t.acquire(1, v4(0), DST4, 1, 0.0) == 1  # existing flow still served
    assert t.acquire(2, v4(9), DST4, 1, 0.0) is not None  # other connections unaffected
    assert t.remove(1, v4(0), DST4, 1)
    t.acquire(1, v4(9), DST4, 1, 0.0)
    assert t.count_for_connection(1) == 3 and len(t) == 4


def test_global_full_refuses_new_flows_and_keeps_old_ones(impl: ModuleType) -> None:
    t = impl.FlowTable(8)
    ids = [t.acquire(i, v4(i), DST4, i, 0.0) for i in range(8)]
    with pytest.raises(FlowTableFull) as exc:
        t.acquire(99, v4(99), DST4, 99, 0.0)
    assert (exc.value.scope, exc.value.limit) == ("global", 8)
    assert len(t) == 8
    assert [t.lookup(i, v4(i), DST4, i) for i in range(8)] == ids
    assert t.acquire(3, v4(3), DST4, 3, 1.0) == 3
    t.remove(0, v4(0), DST4, 0)
    assert t.acquire(99, v4(99), DST4, 99, 0.0) == 99


def test_echo_ids_exhausted_towards_one_destination(impl: ModuleType) -> None:
    t = impl.FlowTable(131072)
    for echo in range(65536):
        assert t.acquire(1, v4(1), DST4, echo, 0.0) == echo
    for _ in range(2):  # the second try is answered from the memo
        with pytest.raises(EchoIdExhausted) as exc:
            t.acquire(2, v4(2), DST4, 5, 0.0)
        assert exc.value.destination == "198.51.100.7"
    assert len(t) == 65536
    assert t.acquire(2, v4(2), v4(77), 5, 0.0) == 5  # other destinations are fine
    assert t.remove(1, v4(1), DST4, 40000)
    assert t.acquire(2, v4(2), DST4, 5, 0.0) == 40000
    assert t.reverse(DST4, 40000) == (2, v4(2), 5)


def test_time_never_wraps_over_months_of_uptime(impl: ModuleType) -> None:
    t = impl.FlowTable(16, idle_timeout=60.0)
    start = 1000.0
    t.acquire(1, v4(1), DST4, 1, start)
    t.acquire(1, v4(2), DST4, 2, start)
    for day in range(1, 200):  # refresh one flow daily for 200 days (past 2**32 ms)
        now = start + day * DAY
        t.acquire(1, v4(1), DST4, 1, now)
        assert [f[3] for f in t.expire(now)] == ([2] if day == 1 else [])
    now = start + 199 * DAY
    assert t.expire(now + 60.0) == []
    assert [f[3] for f in t.expire(now + 60.001 + 0.001)] == [1]


def test_longest_idle_timeout_expires_after_rebase(impl: ModuleType) -> None:
    t = impl.FlowTable(16, idle_timeout=impl.FLOW_TABLE_MAX_IDLE_TIMEOUT)
    t.acquire(1, v4(1), DST4, 1, 0.0)
    t.acquire(1, v4(2), DST4, 2, 0.0)
    assert t.expire(12 * DAY) == []
    t.acquire(1, v4(2), DST4, 2, 20 * DAY)
    assert [f[3] for f in t.expire(30 * DAY)] == [1]
    assert [f[3] for f in t.expire(40 * DAY)] == [2]


def test_lookup_batch_matches_lookup(impl: ModuleType) -> None:
    t = impl.FlowTable(256)
    keys = []
    for i in range(100):
        addr, dst = (v4, DST4) if i % 2 else (v6, DST6)
        if i % 3:
            t.acquire(i, addr(i), dst, i % 5, 0.0)
        keys.append((i, addr(i), dst, i % 5))
    packed = b"".join(impl.pack_flow_key(*k) for k in keys)
    assert len(packed) == 100 * impl.FLOW_KEY_SIZE == 4000
    out = array.array("I", [0]) * 100
    hits = t.lookup_batch(packed, out)
    expected = [t.lookup(*k) for k in keys]
    assert list(out) == [0xFFFFFFFF if e is None else e for e in expected]
    assert hits == sum(e is not None for e in expected) == 66
    raw = bytearray(400)
    assert t.lookup_batch(memoryview(packed), raw) == hits and bytes(raw) == out.tobytes()


def test_lookup_batch_record_layout_and_bad_records(impl: ModuleType) -> None:
    t = impl.FlowTable(16)
    t.acquire(0x01020304, v4(1), DST4, 0x0506, 0.0)
    rec = bytearray(impl.pack_flow_key(0x01020304, v4(1), DST4, 0x0506))
    assert rec[:6] == struct.pack("=IH", 0x01020304, 0x0506)
    assert rec[6:8] == b"\x04\x00" and rec[8:12] == v4(1) and rec[24:28] == DST4
    assert rec[12:24] == bytes(12) and rec[28:40] == bytes(12)
    bad_family = bytearray(rec)
    bad_family[6] = 5
    out = bytearray(8)
    assert t.lookup_batch(bytes(rec) + bytes(bad_family), out) == 1
    assert list(array.array("I", bytes(out))) == [0x0506, 0xFFFFFFFF]
    assert t.lookup_batch(b"", bytearray()) == 0
    with pytest.raises(ValueError):
        t.lookup_batch(bytes(rec) + b"x", bytearray(8))
    with pytest.raises(ValueError):
        t.lookup_batch(bytes(rec) * 2, bytearray(7))
    with pytest.raises(BufferError):
        t.lookup_batch(bytes(rec), bytes(4))


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.acquire(1, v4(1), DST6, 1, 0.0),  # mixed families
        lambda t: t.acquire(1, b"\x01\x02\x03", b"\x01\x02\x03", 1, 0.0),
        lambda t: t.acquire(1, v4(1), DST4, 65536, 0.0),
        lambda t: t.acquire(1, v4(1), DST4, -1, 0.0),
        lambda t: t.acquire(2**32, v4(1), DST4, 1, 0.0),
        lambda t: t.acquire(-1, v4(1), DST4, 1, 0.0),
        lambda t: t.acquire(1, v4(1), DST4, 1, math.nan),
        lambda t: t.acquire(1, v4(1), DST4, 1, math.inf),
        lambda t: t.lookup(1, v6(1), DST4, 1),
        lambda t: t.remove(1, b"", b"", 1),
        lambda t: t.reverse(b"\x01\x02", 1),
        lambda t: t.reverse(DST4, 70000),
        lambda t: t.expire(0.0, max_scan=-1),
        lambda t: t.count_for_connection(-5),
        lambda t: t.remove_connection(2**32),
        lambda t: t.lookup_batch(b"\x00" * 39, bytearray(4)),
    ],
)
def test_bad_arguments_raise_value_error(impl: ModuleType, call) -> None:
    t = impl.FlowTable(16)
    with pytest.raises(ValueError):
        call(t)
    assert len(t) == 0


@pytest.mark.parametrize("capacity", [0, 3, 100, -4, 2**31])
def test_capacity_must_be_a_power_of_two(impl: ModuleType, capacity: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        impl.FlowTable(capacity)


@pytest.mark.parametrize("timeout", [0.0, -1.0, math.nan, 13 * DAY])
def test_idle_timeout_must_be_positive_and_bounded(impl: ModuleType, timeout: float) -> None:
    with pytest.raises(ValueError, match="idle_timeout"):
        impl.FlowTable(16, idle_timeout=timeout)


def test_properties_and_pack_flow_key_validation(impl: ModuleType) -> None:
    t = impl.FlowTable(2**10, max_per_connection=5, idle_timeout=2.5)
    assert (t.capacity, t.idle_timeout, len(t)) == (1024, 2.5, 0)
    assert t.memory_bytes > 0
    with pytest.raises(ValueError):
        impl.pack_flow_key(1, v4(1), DST6, 1)
    with pytest.raises(ValueError):
        impl.pack_flow_key(1, v4(1), DST4, 1 << 16)


def test_compiled_memory_is_at_most_64_bytes_per_flow() -> None:
    core = load_impl("compiled")  # skips locally when not built, fails in CI
    t = core.FlowTable(2**16)
    assert t.memory_bytes <= 64 * 2**16 + 4096
    assert t.memory_bytes >= 48 * 2**16  # the slab alone


def test_public_module_reexports_the_selected_core() -> None:
    import fastproxy.flowtable as ft
    from fastproxy._impl import core

    assert ft.FlowTable is core.FlowTable
    assert set(ft.__all__) <= set(dir(core))
