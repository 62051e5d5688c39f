#!/usr/bin/env bash
# Bring a bare machine to the point where fastproxy runs (default) or its tests
# run (--test): Debian packages, a .venv, pip packages, the compiled core.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1
venv=${VENV:-.venv}

say() { printf 'bootstrap: %s\n' "$*"; }

# Debian packages: the tools the end-to-end tests drive (ip, ping, traceroute, mtr, dig, nft, openssl).
# dig comes from bind9-dnsutils (Debian 11+; `dnsutils` is only its transitional name).
if [ "$want_test" = 1 ]; then
  missing=()
  command -v ip >/dev/null || missing+=(iproute2)
  command -v ping >/dev/null || missing+=(iputils-ping)
  command -v traceroute >/dev/null || missing+=(traceroute)
  command -v mtr >/dev/null || missing+=(mtr-tiny)
  command -v dig >/dev/null || missing+=(bind9-dnsutils)
  command -v nft >/dev/null || missing+=(nftables)  # tests/test_faults.py and test_bench_e2e_smoke.py: loss, blackouts
  command -v openssl >/dev/null || missing+=(openssl)  # makes certificates as users do
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      say "installing Debian packages: ${missing[*]}"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
      say "missing ${missing[*]}; install them (as root: apt-get install ${missing[*]}); privileged tests need them"
    fi
  fi
fi

# A Python >= 3.10 that can make a venv (Debian ships ensurepip apart, in python3-venv),
# and what compiling the core needs: a C compiler and that Python's headers (python3-dev).
find_python() {
  for cand in python3 python3.13 python3.12 python3.11 python3.10; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      echo "$cand"; return 0
    fi
  done
  return 0
}
can_build() {
  { command -v gcc >/dev/null || command -v cc >/dev/null; } &&
    "$py" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null
}
py=${PYTHON:-$(find_python)}
if [ -z "$py" ] || ! can_build; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing python3, python3-venv, python3-dev and gcc from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-dev gcc >/dev/null
    py=${py:-$(find_python)}
  fi
  if [ -z "$py" ] || ! can_build; then
    say "need a Python >= 3.10 with venv and its headers, and a C compiler: install python3, python3-venv, python3-dev and gcc"; exit 1
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv with $($py --version)"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi

extra=""
[ "$want_test" = 1 ] && extra="[test,dev,fuzz]"
say "installing fastproxy$extra (compiles the core)"
"$venv/bin/python" -m pip install -q -e ".$extra"
"$venv/bin/python" -c 'import fastproxy._core' || { say "the compiled core did not build"; exit 1; }
