"""The source-NAT flow table for ICMP echo (compiled core, or its twin with FASTPROXY_NO_EXTENSIONS=1)."""

from __future__ import annotations

from fastproxy._impl import core

FLOW_KEY_SIZE: int = core.FLOW_KEY_SIZE
FLOW_TABLE_MAX_CAPACITY: int = core.FLOW_TABLE_MAX_CAPACITY
FLOW_TABLE_MAX_IDLE_TIMEOUT: float = core.FLOW_TABLE_MAX_IDLE_TIMEOUT
FlowTable = core.FlowTable
pack_flow_key = core.pack_flow_key

__all__ = [
    "FLOW_KEY_SIZE",
    "FLOW_TABLE_MAX_CAPACITY",
    "FLOW_TABLE_MAX_IDLE_TIMEOUT",
    "FlowTable",
    "pack_flow_key",
]
