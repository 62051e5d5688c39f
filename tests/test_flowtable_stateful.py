"""FlowTable against a dict model (hypothesis stateful testing), on both implementations."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fastproxy.errors import FlowTableFull
from tests.conftest import IMPLEMENTATIONS, load_impl

CAPACITY = 16
PER_CONNECTION = 6
TIMEOUT_MS = 1000

SRCS = {
    4: [ipaddress.IPv4Address(f"10.0.0.{i}").packed for i in range(1, 4)],
    6: [ipaddress.IPv6Address(f"2001:db8::{i}").packed for i in range(1, 4)],
}
DSTS = {
    4: [ipaddress.IPv4Address(f"198.51.100.{i}").packed for i in range(1, 3)],
    6: [ipaddress.IPv6Address(f"2001:db8:1::{i}").packed for i in range(1, 3)],
}
keys = st.builds(
    lambda fam, conn, s, d, echo: (conn, SRCS[fam][s], DSTS[fam][d], echo),
    st.sampled_from([4, 6]),
    st.integers(0, 3),
    st.integers(0, 2),
    st.integers(0, 1),
    st.integers(0, 2),
)
steps = st.integers(0, 3)  # quarter seconds: exact in milliseconds


def make_machine(impl_name: str) -> type[RuleBasedStateMachine]:
    class FlowTableMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            impl = load_impl(impl_name)
            self.t = impl.FlowTable(CAPACITY, max_per_connection=PER_CONNECTION, idle_timeout=TIMEOUT_MS / 1000)
            self.model: dict[tuple[int, bytes, bytes, int], list[int]] = {}  # key -> [assigned, last ms]
            self.ms = 0
            self.t.expire(0.0)  # starts the table's clock at 0

        def advance(self, quarters: int) -> float:
            self.ms += 250 * quarters
            return self.ms / 1000

        def count(self, conn: int) -> int:
            return sum(1 for k in self.model if k[0] == conn)

        @rule(key=keys, quarters=steps)
        def acquire(self, key, quarters) -> None:
            now = self.advance(quarters)
            conn, src, dst, echo = key
            if key in self.model:
                assert self.t.acquire(*key, now) == self.model[key][0]
                self.model[key][1] = self.ms
            elif len(self.model) >= CAPACITY:
                with pytest.raises(FlowTableFull, match="global"):
                    self.t.acquire(*key, now)
            elif self.count(conn) >= PER_CONNECTION:
                with pytest.raises(FlowTableFull, match="connection"):
                    self.t.acquire(*key, now)
            else:
                taken = {a for k, (a, _) in self.model.items() if k[2] == dst}
                assigned = self.t.acquire(*key, now)
                assert assigned not in taken
                if echo not in taken:
                    assert assigned == echo
                self.model[key] = [assigned, self.ms]

        @rule(key=keys)
        def remove(self, key) -> None:
            assert self.t.remove(*key) == (key in self.model)
            self.model.pop(key, None)

        @rule(conn=st.integers(0, 3))
        def remove_connection(self, conn) -> None:
            assert self.t.remove_connection(conn) == self.count(conn)
            self.model = {k: v for k, v in self.model.items() if k[0] != conn}

        @rule(quarters=steps, max_scan=st.sampled_from([0, 0, 1, 3, 7]))
        def expire(self, quarters, max_scan) -> None:
            now = self.advance(quarters)
            stale = {(*k, v[0]) for k, v in self.model.items() if self.ms - v[1] > TIMEOUT_MS}
            removed = self.t.expire(now, max_scan)
            assert len(removed) == len(set(removed))
            assert set(removed) <= stale
            if max_scan == 0:
                assert set(removed) == stale
            for conn, src, dst, echo, _ in removed:
                del self.model[(conn, src, dst, echo)]

        @precondition(lambda self: self.model)
        @rule(data=st.data(), refresh=st.booleans(), quarters=steps)
        def reverse(self, data, refresh, quarters) -> None:
            key = data.draw(st.sampled_from(sorted(self.model)))
            assigned = self.model[key][0]
            now = self.advance(quarters) if refresh else None
            assert self.t.reverse(key[2], assigned, now) == (key[0], key[1], key[3])
            if refresh:
                self.model[key][1] = self.ms

        @rule(dst=st.sampled_from(DSTS[4] + DSTS[6]), assigned=st.integers(0, 65535))
        def reverse_any(self, dst, assigned) -> None:
            match = [k for k, v in self.model.items() if k[2] == dst and v[0] == assigned]
            expected = (match[0][0], match[0][1], match[0][3]) if match else None
            assert self.t.reverse(dst, assigned) == expected

        @invariant()
        def agrees_with_model(self) -> None:
            assert len(self.t) == len(self.model)
            for conn in range(4):
                assert self.t.count_for_connection(conn) == self.count(conn)
            for key, (assigned, _) in self.model.items():
                assert self.t.lookup(*key) == assigned

    FlowTableMachine.__name__ = f"FlowTableMachine_{impl_name}"
    return FlowTableMachine


for _name in IMPLEMENTATIONS:
    _machine = make_machine(_name)
    _machine.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
    globals()[f"TestFlowTableModel_{_name}"] = _machine.TestCase
