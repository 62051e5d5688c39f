"""``python -m fastproxy`` is the same as the ``fastproxy`` command."""

from .cli import main

raise SystemExit(main())
