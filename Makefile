# `make demo` and `make test` work on a fresh machine: each builds .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	-@scripts/ensure-system-deps ffmpeg
	$(VENV)/bin/vod demo

# pytest exits 5 when it collects no test; make treats that as the failure it is.
test: $(STAMP)
	-@scripts/ensure-system-deps ffmpeg
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/media_read.py
	$(PY) bench/failover.py
	$(PY) bench/strategy.py
	$(PY) bench/playback.py
	$(PY) bench/recovery.py
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
