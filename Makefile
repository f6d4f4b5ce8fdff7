# `make demo` and `make test` work on a fresh machine: each builds .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
PYTEST_ARGS ?=

.PHONY: demo test bench bytecode clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Bytecode for vod's own modules, as `pip install` writes it for an installed package. An editable install
# has none, and where PYTHONDONTWRITEBYTECODE is set (as on our machines) every process would compile vod's
# modules from source at each start (~35 ms of a client's ~190 ms start-up). Stale files are rewritten.
bytecode: $(STAMP)
	$(PY) -m compileall -q vod

demo: $(STAMP) bytecode
	-@scripts/ensure-system-deps ffmpeg
	$(VENV)/bin/vod demo

# pytest exits 5 when it collects no test; make treats that as the failure it is.
test: $(STAMP) bytecode
	-@scripts/ensure-system-deps ffmpeg
	$(PY) -m pytest $(PYTEST_ARGS)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

# The whole benchmark suite (under 30 minutes); regenerates docs/BENCHMARKS.md and docs/bench/*.png.
# One benchmark alone: $(PY) bench/NAME.py --help; re-render only: $(PY) bench/suite.py --report-only
bench: $(BENCH_STAMP) bytecode
	-@scripts/ensure-system-deps ffmpeg nginx aria2:aria2c
	$(PY) bench/suite.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
