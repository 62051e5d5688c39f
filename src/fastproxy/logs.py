"""Logging for the fastproxy commands: readable lines by default, JSON lines with
``--log-format json`` (one object per record: time, level, logger, message, and any
``extra=`` fields), debug with ``-v``.

Commands call ``add_logging_arguments(parser)`` and then ``configure_logging(args.log_format,
args.verbose)`` once, early.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

__all__ = ["LOG_FORMATS", "JsonFormatter", "add_logging_arguments", "configure_logging", "format_address"]

LOG_FORMATS = ("human", "json")

# Attributes every LogRecord has; anything else came from ``extra=`` and is logged too.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def format_address(address: Any) -> str:
    """A socket address as people write it: ``127.0.0.1:49026``, ``[::1]:49026`` (an IPv4-mapped
    IPv6 address as its IPv4 form); anything that is not a (host, port, ...) tuple as ``str``."""
    if not isinstance(address, (tuple, list)) or len(address) < 2:
        return str(address)
    host, port = str(address[0]), address[1]
    if host.startswith("::ffff:") and "." in host:  # a dual-stack socket's view of an IPv4 peer
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, the ``extra`` fields, and ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log-format {human,json}`` and ``-v/--verbose`` (defaults None, for the config merge)."""
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=None,
                        help="log lines for people (default) or JSON lines for machines")
    parser.add_argument("-v", "--verbose", action="store_true", default=None, help="debug logging")


def configure_logging(log_format: str | None = "human", verbose: bool | None = False,
                      stream: TextIO | None = None) -> None:
    """Send fastproxy's logs (and asyncio's) to ``stream`` (stderr) in the chosen format;
    replaces any handler set before, so calling it again is safe."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                                               datefmt="%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
