"""The kill-switch FASTPROXY_NO_EXTENSIONS forces the pure-Python twin."""

from __future__ import annotations

import os
import subprocess
import sys

import fastproxy._purepy as twin

from .conftest import IN_CI


def _selected(env_value: str | None) -> str:
    env = dict(os.environ)
    env.pop("FASTPROXY_NO_EXTENSIONS", None)
    if env_value is not None:
        env["FASTPROXY_NO_EXTENSIONS"] = env_value
    code = "import fastproxy._impl as i; print(i.core.__name__, i.COMPILED)"
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout.split()


def test_kill_switch_forces_twin() -> None:
    assert _selected("1") == ["fastproxy._purepy", "False"]


def test_default_is_compiled_core() -> None:
    try:
        import fastproxy._core  # noqa: F401
    except ImportError:
        assert not IN_CI, "compiled core missing in CI"
        expected = ["fastproxy._purepy", "False"]  # the fallback when the core is not built
    else:
        expected = ["fastproxy._core", "True"]
    assert _selected(None) == expected
    assert _selected("0") == expected


def test_twin_exports_match_compiled_api() -> None:
    try:
        import fastproxy._core as core
    except ImportError:
        assert not IN_CI, "compiled core missing in CI"
        return
    missing = [name for name in twin.__all__ if not hasattr(core, name)]
    assert missing == []
