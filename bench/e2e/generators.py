"""The C load generators of bench/e2e (bench/c/icmp_flood.c, bench/c/udp_flood.c): compiling
them, and running them with their JSON summaries and raw round-trip times parsed.

``python -m bench.e2e.generators DIR`` compiles both into DIR (the bench bootstrap does that).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["GENERATORS", "SOURCE_DIR", "CompileError", "compile_generators", "parse_summary", "read_rtts"]

SOURCE_DIR = Path(__file__).resolve().parent.parent / "c"
GENERATORS = ("icmp_flood", "udp_flood")


class CompileError(RuntimeError):
    """A generator did not compile; the message carries the compiler's output."""


def compile_generators(directory: str | Path) -> dict[str, Path]:
    """Compile every generator with ``gcc -O2`` into ``directory`` (again only when its source is
    newer than the binary) and return ``{name: executable}``."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise CompileError("no C compiler: install gcc (apt-get install gcc)")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    executables: dict[str, Path] = {}
    for name in GENERATORS:
        source, exe = SOURCE_DIR / f"{name}.c", out / name
        if not exe.exists() or exe.stat().st_mtime < source.stat().st_mtime:
            result = subprocess.run([compiler, "-O2", "-Wall", "-Wextra", "-o", str(exe), str(source)],
                                    capture_output=True, text=True)
            if result.returncode:
                raise CompileError(f"{compiler} could not compile {source}:\n{result.stderr}")
        executables[name] = exe
    return executables


def parse_summary(stdout: str) -> dict[str, float]:
    """The JSON summary line a generator prints last (ValueError if there is none)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]
    raise ValueError(f"no JSON summary in the generator's output: {stdout!r}")


def read_rtts(path: str | Path) -> list[int]:
    """The round-trip times (ns) a generator wrote with ``-o``, in arrival order."""
    import array

    data = array.array("I")
    raw = Path(path).read_bytes()
    data.frombytes(raw[: len(raw) - len(raw) % data.itemsize])
    if sys.byteorder != "little":
        data.byteswap()
    return data.tolist()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m bench.e2e.generators DIRECTORY")
    for name, exe in compile_generators(sys.argv[1]).items():
        print(f"bench-e2e: compiled {name} -> {exe}")
