"""Pure-Python twin of fastproxy._core: batchio."""

from __future__ import annotations

__all__: list[str] = []
