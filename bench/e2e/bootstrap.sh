#!/usr/bin/env bash
# What `make bench-e2e` needs beyond `scripts/bootstrap.sh --test`: the peers it measures
# against and the real load tools from Debian (wireguard-go, wg, openvpn, iperf2, nft), numpy
# and matplotlib in the venv (the `bench` extra), and the C load generators in bench/c/
# compiled with gcc -O2 into build/bench-e2e/. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${VENV:-.venv}
say() { printf 'bench-e2e bootstrap: %s\n' "$*"; }

missing=()
command -v wireguard-go >/dev/null || missing+=(wireguard-go)
command -v wg >/dev/null || missing+=(wireguard-tools)
command -v openvpn >/dev/null || missing+=(openvpn)
command -v iperf >/dev/null || missing+=(iperf)
command -v nft >/dev/null || missing+=(nftables)
command -v ping >/dev/null || missing+=(iputils-ping)
command -v gcc >/dev/null || missing+=(gcc)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    say "missing ${missing[*]}; install them as root: apt-get install ${missing[*]}"; exit 1
  fi
fi

"$venv/bin/python" -c 'import numpy, matplotlib' 2>/dev/null || {
  say "installing the bench extra (numpy, matplotlib, aioquic) into $venv"
  "$venv/bin/python" -m pip install -q -e ".[bench]"
}
"$venv/bin/python" -m bench.e2e.generators build/bench-e2e
