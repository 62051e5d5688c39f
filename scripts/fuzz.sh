#!/usr/bin/env bash
# The long fuzz run (`make fuzz`): every target of tests/fuzz/targets.py under atheris,
# on a copy of the compiled core built with clang, ASan + UBSan (FASTPROXY_SANITIZE=1)
# and libFuzzer's coverage hooks, so both the core's C and the twin's Python guide it.
#
#   scripts/fuzz.sh [TARGET...]       default: all targets
#   FUZZ_RUNS=1000000  executions per target (libFuzzer -runs)
#   FUZZ_TIME=3600     seconds per target at most (-max_total_time)
#   FUZZ_JOBS=1        parallel fuzzing processes per target (libFuzzer -fork)
#
# New corpus entries go to build/fuzz/corpus/TARGET (the committed seeds in
# tests/fuzz/corpus/TARGET are only read); a crash or sanitizer report stops that target
# and leaves its input in build/fuzz/crashes/ (commit it under tests/fuzz/crashes/TARGET
# once fixed: the test suite replays it). Runs under nice -n 19.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${VENV:-.venv}/bin/python
runs=${FUZZ_RUNS:-1000000}
time_limit=${FUZZ_TIME:-3600}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(datagram control packet nat bridge config)

say() { printf 'fuzz: %s\n' "$*"; }

if ! command -v clang >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing clang from Debian (the sanitized core is built with it, for libFuzzer's coverage hooks)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends clang libclang-rt-dev >/dev/null
  else
    say "needs clang (apt-get install clang)"; exit 1
  fi
fi
"$py" -c 'import atheris' 2>/dev/null || "$py" -m pip install -q -e ".[fuzz]"

# The sanitized core, in a copy of the sources so that .venv keeps its normal build.
# clang, not gcc: gcc's libasan defines the coverage callbacks as weak stubs that would
# swallow atheris's counters; atheris's asan_with_fuzzer.so is clang's ASan runtime.
core=build/fuzz/core
mkdir -p "$core"
cp -r src setup.py "$core"/
rm -f "$core"/src/fastproxy/*.so "$core"/src/fastproxy/*.pyd  # the normal build, copied with src/
say "building the ASan + UBSan core in $core (clang)"
(cd "$core" && CC=clang LDSHARED="clang -shared" CFLAGS="-fsanitize=fuzzer-no-link" \
  FASTPROXY_SANITIZE=1 nice -n 19 "$OLDPWD/$py" setup.py -q build_ext --build-lib src --build-temp tmp >/dev/null)

nm -D "$core"/src/fastproxy/_core.*.so | grep -q __asan_report || { say "the core in $core is not sanitized"; exit 1; }
runtime=$("$py" -c 'import atheris, os; print(os.path.join(atheris.path(), "asan_with_fuzzer.so"))')
status=0
for target in "${targets[@]}"; do
  mkdir -p "build/fuzz/corpus/$target" build/fuzz/crashes
  say "$target: up to $runs executions or $time_limit s"
  started=$(date +%s)
  # PYTHONMALLOC=malloc: every Python object its own malloc block, so ASan sees an
  # overread of a bytes object's buffer (pymalloc's arenas would hide it). control and
  # config reach no native code of ours (pure-Python decoders, tomllib): they run without
  # the sanitizer runtime, about ten times faster.
  # (the sanitized core needs the runtime, so they import the normal one from src/).
  preload=$runtime pymalloc=malloc path="$core/src:."
  case $target in control|config) preload="" pymalloc="" path="src:." ;; esac
  if ! LD_PRELOAD="$preload" PYTHONMALLOC="$pymalloc" \
      ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:handle_abort=1" \
      UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" PYTHONPATH="$path" \
      nice -n 19 "$py" -m tests.fuzz.run "$target" -runs="$runs" -max_total_time="$time_limit" \
      -rss_limit_mb=4096 -artifact_prefix="build/fuzz/crashes/$target-" -print_final_stats=1 \
      ${FUZZ_JOBS:+-fork=$FUZZ_JOBS} \
      ${FUZZ_DICT:-$( [ -f "tests/fuzz/$target.dict" ] && echo "-dict=tests/fuzz/$target.dict")} \
      "build/fuzz/corpus/$target" "tests/fuzz/corpus/$target" 2>"build/fuzz/$target.log"; then
    say "$target: FAILED after $(( $(date +%s) - started )) s; see build/fuzz/$target.log and build/fuzz/crashes/"
    status=1
    continue
  fi
  done_line=$(grep -E '^Done [0-9]+ runs' "build/fuzz/$target.log" | tail -1)
  say "$target: $done_line ($(( $(date +%s) - started )) s wall); corpus $(ls "build/fuzz/corpus/$target" | wc -l) new files"
done
exit $status
