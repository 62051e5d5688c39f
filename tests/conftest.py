"""Shared fixtures: both core implementations, and the privileged-test rule.

``impl`` runs a test once against the compiled core (fastproxy._core) and once
against the pure-Python twin (fastproxy._purepy). When ``CI`` is set, a missing
compiled core, or a privileged test that would skip, fails instead.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

IN_CI = os.environ.get("CI", "") not in ("", "0", "false")
SOAK = os.environ.get("FASTPROXY_SOAK", "") not in ("", "0")


def _load(name: str) -> ModuleType:
    if name == "compiled":
        try:
            return importlib.import_module("fastproxy._core")
        except ImportError as exc:
            if IN_CI:
                pytest.fail(f"compiled core missing in CI: {exc}")
            pytest.skip(f"compiled core not built: {exc}")
    return importlib.import_module("fastproxy._purepy")


@pytest.fixture(params=["compiled", "twin"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The core implementation under test: compiled extension, then pure-Python twin."""
    return _load(request.param)


IMPLEMENTATIONS = ["compiled", "twin"]


def load_impl(name: str) -> ModuleType:
    """Module for ``name`` in IMPLEMENTATIONS (for tests that parametrize themselves)."""
    return _load(name)


def require_root(why: str) -> None:
    """Skip (locally) or fail (in CI) unless running as root."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail(f"privileged test cannot run without root in CI: {why}")
        pytest.skip(f"needs root: {why}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """In CI, a privileged test that skipped for any reason counts as failed."""
    outcome = yield
    report = outcome.get_result()
    # An expected failure (xfail) is reported as skipped too; it ran, so it is not one.
    if (IN_CI and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("privileged") is not None):
        report.outcome = "failed"
        report.longrepr = f"privileged test skipped in CI (must run as root): {report.longrepr}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked soak (minutes long) are deselected, not skipped, unless FASTPROXY_SOAK=1."""
    if SOAK:
        return
    soak = [item for item in items if item.get_closest_marker("soak") is not None]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]
