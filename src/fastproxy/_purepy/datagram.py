"""Pure-Python twin of fastproxy._core: datagram."""

from __future__ import annotations

__all__: list[str] = []
