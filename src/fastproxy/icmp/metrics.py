"""Counters of the ICMP proxy, named so an operator can search for them."""

from __future__ import annotations

from fastproxy._impl import core

#: Drop reasons of the proxy itself (the packet core's MalformedPacket reasons come on top).
ICMP_DROP_REASONS: tuple[str, ...] = (
    "not_echo_request",
    "destination_not_allowed",
    "flow_limit_global",
    "flow_limit_connection",
    "echo_ids_exhausted",
    "time_exceeded_rate_limited",
    "answer_rate_limited",
    "backend_open_failed",
    "backend_send_failed",
    "packet_too_large",
    "reply_unknown_flow",
    "reply_bad_checksum",
    "reply_malformed",
    "reply_truncated",
    "reply_spoofed",
    "reply_not_echo_or_error",
)


class IcmpMetrics:
    """Counters and gauges of one IcmpProxy (a metrics sink; export with :meth:`snapshot`).

    Counters: ``packets_in`` (from clients), ``packets_out`` (to clients),
    ``forwarded`` (sent towards destinations), ``replies_in`` (from the backend),
    ``time_exceeded_sent``, ``unreachable_sent``, ``flows_total``; gauge
    ``flows_active``; and ``drops[reason]`` for every reason in ``drop_reasons``
    (each MalformedPacket reason of the packet core, then :data:`ICMP_DROP_REASONS`).
    """

    __slots__ = (
        "packets_in",
        "packets_out",
        "forwarded",
        "replies_in",
        "time_exceeded_sent",
        "unreachable_sent",
        "flows_total",
        "flows_active",
        "drops",
    )

    COUNTERS = (
        "packets_in",
        "packets_out",
        "forwarded",
        "replies_in",
        "time_exceeded_sent",
        "unreachable_sent",
        "flows_total",
        "flows_active",
    )

    def __init__(self) -> None:
        self.packets_in = 0
        self.packets_out = 0
        self.forwarded = 0
        self.replies_in = 0
        self.time_exceeded_sent = 0
        self.unreachable_sent = 0
        self.flows_total = 0
        self.flows_active = 0
        self.drops: dict[str, int] = dict.fromkeys(self.drop_reasons(), 0)

    @staticmethod
    def drop_reasons() -> tuple[str, ...]:
        """Every drop reason this sink counts, malformed-packet reasons first."""
        return tuple(core.PACKET_MALFORMED_REASONS) + ICMP_DROP_REASONS

    def drop(self, reason: str, count: int = 1) -> None:
        """Count ``count`` packets dropped for ``reason``."""
        self.drops[reason] = self.drops.get(reason, 0) + count

    def snapshot(self) -> dict[str, int]:
        """All values as ``icmp_<name>`` and ``icmp_drops_<reason>`` (stable names for export)."""
        values = {f"icmp_{name}": getattr(self, name) for name in self.COUNTERS}
        values.update({f"icmp_drops_{reason}": count for reason, count in self.drops.items()})
        return values
