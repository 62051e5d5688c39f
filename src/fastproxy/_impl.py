"""Choose the compiled core (fastproxy._core) or its pure-Python twin.

Set ``FASTPROXY_NO_EXTENSIONS=1`` to force the twin (for debugging, and on
platforms without a compiler). The twin has the same API and passes the same
tests; it is only slower.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

NO_EXTENSIONS: bool = os.environ.get("FASTPROXY_NO_EXTENSIONS", "") not in ("", "0")

core: ModuleType
COMPILED: bool

if NO_EXTENSIONS:
    from . import _purepy as core

    COMPILED = False
else:
    try:
        from . import _core as core  # type: ignore[no-redef]

        COMPILED = True
    except ImportError as exc:  # no wheel for this platform and no compiler
        logging.getLogger("fastproxy").warning(
            "compiled core unavailable (%s); using the pure-Python twin, which is much slower", exc
        )
        from . import _purepy as core  # type: ignore[no-redef]

        COMPILED = False

__all__ = ["COMPILED", "NO_EXTENSIONS", "core"]
