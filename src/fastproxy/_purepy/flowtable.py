"""Pure-Python twin of fastproxy._core: flowtable."""

from __future__ import annotations

__all__: list[str] = []
