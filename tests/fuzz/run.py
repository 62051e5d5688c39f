"""Coverage-guided fuzzing of one target of tests/fuzz/targets.py with atheris (libFuzzer).

    python -m tests.fuzz.run TARGET [libFuzzer flags...] [CORPUS_DIR...]

Everything after TARGET goes to libFuzzer (``-runs=N``, ``-max_total_time=S``,
``-dict=FILE``, corpus directories; see ``-help=1``). The pure-Python code is
instrumented (fastproxy, the twin, tomllib, ipaddress), so the twin's branches guide the
fuzzer through the same decisions the compiled core makes, and every input is checked
on both. ``make fuzz`` runs each target this way on the core built with
FASTPROXY_SANITIZE=1 (ASan + UBSan, LD_PRELOAD'ed runtime): a sanitizer report aborts
the run like a crash does. The first line printed says which core was loaded and
whether the ASan runtime is in the process.
"""

from __future__ import annotations

import ctypes
import sys


def _asan_loaded() -> bool:
    try:
        ctypes.CDLL(None).__asan_init  # noqa: B018
    except AttributeError:
        return False
    return True


def main(argv: list[str]) -> None:
    """Run the fuzzer for ``argv[1]``; never returns (libFuzzer exits)."""
    import atheris

    if len(argv) < 2 or argv[1].startswith("-"):
        raise SystemExit("usage: python -m tests.fuzz.run TARGET [libFuzzer flags] [CORPUS_DIR...]")
    name = argv[1]
    with atheris.instrument_imports(include=["fastproxy", "tomllib", "ipaddress", "tests.fuzz"]):
        from tests.fuzz import targets
    if name not in targets.TARGETS:
        raise SystemExit(f"unknown target {name!r}; one of {', '.join(targets.TARGETS)}")
    target = targets.TARGETS[name]
    print(f"fuzz target {name}: compiled core {targets.COMPILED.__file__}, ASan runtime "
          f"{'loaded' if _asan_loaded() else 'absent'}", file=sys.stderr, flush=True)
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
