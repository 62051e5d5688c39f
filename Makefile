# The two set-up commands of the README; each bootstraps everything it needs.
#   make run    the main job: fastproxy demo (edge, connector and client on loopback)
#   make test   the whole test suite
#   make bench  the benchmarks (opt-in; bounded), figures go to bench/RESULTS.md
#   make bench-e2e  the deployed path end to end against the kernel, wireguard-go and OpenVPN
#               (root; about 10 minutes, BENCH_E2E_ARGS=--quick about 2; bench/e2e/)
#   make fuzz   the long fuzz run: 10^6 executions per decoder on the ASan + UBSan core
#               (scripts/fuzz.sh; FUZZ_RUNS, FUZZ_TIME per target), figures in bench/RELIABILITY.md
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_E2E_ARGS ?=

.PHONY: run test bench bench-e2e fuzz clean

run:
	./scripts/bootstrap.sh
	$(PY) -m fastproxy demo

test:
	./scripts/bootstrap.sh --test
	$(PY) -m pytest $(PYTEST_ARGS)

bench:
	./scripts/bootstrap.sh --test
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m pytest bench -o python_files='bench_*.py' --benchmark-only $(PYTEST_ARGS)

bench-e2e:
	./scripts/bootstrap.sh --test
	./bench/e2e/bootstrap.sh
	$(PY) -m bench.e2e $(BENCH_E2E_ARGS)

fuzz:
	./scripts/bootstrap.sh --test
	./scripts/fuzz.sh $(FUZZ_TARGETS)

clean:
	rm -rf build $(VENV) src/fastproxy/_core.c src/fastproxy/*.so src/*.egg-info
