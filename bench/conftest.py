"""Benchmarks reuse the test fixtures (both implementations)."""

from tests.conftest import IMPLEMENTATIONS, impl, load_impl  # noqa: F401
