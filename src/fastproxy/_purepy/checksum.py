"""Pure-Python twin of fastproxy._core: checksum."""

from __future__ import annotations

__all__: list[str] = []
