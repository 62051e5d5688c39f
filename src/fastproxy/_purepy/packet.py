"""Pure-Python twin of fastproxy._core: packet."""

from __future__ import annotations

__all__: list[str] = []
