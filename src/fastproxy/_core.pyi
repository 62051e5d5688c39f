"""Type stubs for the compiled core, fastproxy._core (the twin, fastproxy._purepy, has the same API)."""

from __future__ import annotations

from _typeshed import ReadableBuffer, WriteableBuffer

# ---- checksum ----
# ---- end checksum ----

# ---- packet ----
# ---- end packet ----

# ---- flowtable ----
# ---- end flowtable ----

# ---- batchio ----
# ---- end batchio ----

# ---- datagram ----
# ---- end datagram ----
