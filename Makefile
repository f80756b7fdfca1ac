# The two set-up-included entry points: `make demo` and `make test`.
# Each installs what it needs (idempotently) and then runs.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench clean

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/vfsmount demo

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m benchmarks all

clean:
	rm -rf $(VENV) *.egg-info build
