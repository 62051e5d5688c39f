"""The connector's ICMP proxy: sans-I/O core, platform backends, asyncio glue."""

from __future__ import annotations

from .backends import (
    BACKEND_NAMES,
    BackendFlow,
    BackendUnavailable,
    BatchedBackend,
    IcmpBackend,
    PerPacketBackend,
    ReceivedPacket,
    SendFailure,
    create_backend,
)
from .metrics import ICMP_DROP_REASONS, IcmpMetrics
from .proxy import ClientPacket, IcmpProxy
from .service import IcmpService

__all__ = [
    "BACKEND_NAMES",
    "ICMP_DROP_REASONS",
    "BackendFlow",
    "BackendUnavailable",
    "BatchedBackend",
    "ClientPacket",
    "IcmpBackend",
    "IcmpMetrics",
    "IcmpProxy",
    "IcmpService",
    "PerPacketBackend",
    "ReceivedPacket",
    "SendFailure",
    "create_backend",
]
