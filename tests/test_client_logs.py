"""Log set-up: readable lines, JSON lines with extra fields, -v for debug."""

from __future__ import annotations

import io
import json
import logging

from fastproxy.logs import configure_logging


def test_human_format_and_level() -> None:
    stream = io.StringIO()
    configure_logging("human", False, stream)
    log = logging.getLogger("fastproxy.test")
    log.debug("hidden")
    log.info("edge listening on %s", "127.0.0.1:4433")
    text = stream.getvalue()
    assert "hidden" not in text
    assert "INFO    fastproxy.test: edge listening on 127.0.0.1:4433" in text


def test_json_lines_with_extra_and_debug() -> None:
    stream = io.StringIO()
    configure_logging("json", True, stream)
    log = logging.getLogger("fastproxy.test")
    log.debug("client connected", extra={"client": "100.96.0.2"})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{"))
    assert first["level"] == "debug" and first["logger"] == "fastproxy.test"
    assert first["message"] == "client connected" and first["client"] == "100.96.0.2"
    assert first["ts"].endswith("+00:00")
    assert second["level"] == "error" and "RuntimeError: boom" in second["exception"]
    configure_logging()  # back to the default for other tests
