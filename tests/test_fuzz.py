"""Hostile input for every decoder (tests/fuzz/targets.py): the committed corpus and crash
reproducers replayed, random bytes from hypothesis, and a short coverage-guided atheris
run per target. Each target checks the compiled core against the pure-Python twin on
every input. The long run (10^6 executions per target on the ASan + UBSan core) is
``make fuzz`` (scripts/fuzz.sh); its figures are in bench/RELIABILITY.md."""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import IN_CI, load_impl

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "tests" / "fuzz"
TARGET_NAMES = ["datagram", "control", "packet", "nat", "bridge", "config"]
# atheris ships wheels for Linux x86-64 only; there, a source checkout's CI (make test,
# whose bootstrap installs the fuzz extra) must have it. Wheel tests (cibuildwheel, or
# tests/test_packaging.py reproducing them) copy tests/ without src/ and the test extra only.
ATHERIS_EXPECTED = sys.platform == "linux" and platform.machine() == "x86_64" and (ROOT / "src" / "fastproxy").is_dir()
SHORT_RUN_SECONDS = 3


def _targets() -> dict:
    load_impl("compiled")  # skips, or fails in CI, without the compiled core
    from tests.fuzz.targets import TARGETS

    return TARGETS


def test_every_target_is_listed_and_has_seeds() -> None:
    assert sorted(_targets()) == sorted(TARGET_NAMES)
    for name in TARGET_NAMES:
        seeds = list((FUZZ / "corpus" / name).iterdir())
        assert 5 <= len(seeds) <= 100, (name, len(seeds))


def test_seed_files_match_the_generator(tmp_path: Path) -> None:
    """tests/fuzz/seeds.py writes exactly what is committed (the seeds stay reproducible)."""
    from tests.fuzz.seeds import write

    write(tmp_path)
    for name in TARGET_NAMES:
        generated = {p.name for p in (tmp_path / name).iterdir()}
        committed = {p.name for p in (FUZZ / "corpus" / name).iterdir()}
        assert generated <= committed, (name, generated - committed)


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_corpus_and_crash_reproducers_replay_clean(name: str) -> None:
    target = _targets()[name]
    files = [*(FUZZ / "corpus" / name).iterdir(), *((FUZZ / "crashes" / name).glob("*"))]
    for path in files:
        target(path.read_bytes())  # AssertionError (with the input) or another exception fails


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_random_bytes(name: str) -> None:
    """Portable and without atheris: hypothesis bytes, and mutations of the seeds."""
    target = _targets()[name]
    seeds = [p.read_bytes() for p in sorted((FUZZ / "corpus" / name).iterdir())]

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, 4))):
            if data and draw(st.booleans()):
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
            else:
                cut = draw(st.integers(0, len(data)))
                data = data[:cut] + draw(st.binary(max_size=8)) + data[cut + draw(st.integers(0, 4)):]
        return bytes(data)

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.one_of(st.binary(max_size=300), mutated()))
    def run(data: bytes) -> None:
        target(data)

    run()


def _have_atheris() -> bool:
    return importlib.util.find_spec("atheris") is not None


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_short_atheris_run(name: str, tmp_path: Path) -> None:
    """A few seconds of coverage-guided fuzzing per target: no crash, and coverage is seen
    (the instrumentation works, so the long run is really guided)."""
    _targets()
    if not _have_atheris():
        if IN_CI and ATHERIS_EXPECTED:
            pytest.fail("atheris missing in CI on Linux x86-64: install the fuzz extra (scripts/bootstrap.sh --test)")
        pytest.skip("atheris is not installed (pip install -e '.[fuzz]'; wheels for Linux x86-64 only)")
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ / "corpus" / name, corpus)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    env.pop("LD_PRELOAD", None)
    result = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", name, f"-max_total_time={SHORT_RUN_SECONDS}", "-timeout=10",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    output = result.stderr
    assert result.returncode == 0, output[-4000:]
    done = re.search(r"^Done (\d+) runs in", output, re.M)
    assert done and int(done.group(1)) > 0, output[-2000:]
    coverage = [int(n) for n in re.findall(r" cov: (\d+)", output)]
    assert coverage and max(coverage) > 50, output[-2000:]
    print(f"{name}: {done.group(1)} runs in {SHORT_RUN_SECONDS} s, cov {max(coverage)}")
