# Quick start on a fresh Debian machine, as root:
#   make demo   installs everything, then runs the demo (scripts/demo.sh)
#   make test   installs everything, then runs every check: ruff, mypy, pytest
# CI runs `bash .ci/run`, which is `CI=true make test`.

# The checkout's own virtualenv, created by `make install` (scripts/install-deps.sh says from what).
PYTHON ?= $(CURDIR)/.venv/bin/python
PYTEST_ARGS ?=
# Per-test limit (pytest-timeout, installed by make install); a hung test fails and its cleanup runs.
TEST_TIMEOUT ?= 300
TIMEOUT_ARGS = $(shell $(PYTHON) -c "import pytest_timeout" 2>/dev/null && echo --timeout=$(TEST_TIMEOUT))

.PHONY: help install lint pytest test demo bench clean-netns

help:
	@echo "make install      Debian packages (strongSwan, tcpdump, iperf3, ...) and pip install -e '.[test]' into .venv"
	@echo "make lint         ruff check, ruff format --check, mypy"
	@echo "make pytest       the test suite only (PYTEST_ARGS=... to pass options)"
	@echo "make test         install + lint + pytest (what CI runs, with CI=true)"
	@echo "make demo         install + the demo: two namespace hosts and a tunnel from the database"
	@echo "make bench        install + benchmarks against strongSwan (docs/performance.md)"
	@echo "make clean-netns  delete iketest-* namespaces left by an interrupted run"

install:
	@PYTHON="$(PYTHON)" bash scripts/install-deps.sh

# Every linter runs even when an earlier one complains, so one run shows all findings.
lint:
	@rc=0; \
	echo "== ruff check"; $(PYTHON) -m ruff check . || rc=1; \
	echo "== ruff format --check"; $(PYTHON) -m ruff format --check . || rc=1; \
	echo "== mypy (src, strict)"; $(PYTHON) -m mypy || rc=1; \
	echo "== mypy (tests/harness, scripts, strict)"; MYPYPATH=tests $(PYTHON) -m mypy --strict tests/harness scripts/demo.py || rc=1; \
	exit $$rc

# pytest exits 5 when it collected nothing; that is reported, not treated as a failure.
pytest:
	@rc=0; $(PYTHON) -m pytest -q --durations=10 $(TIMEOUT_ARGS) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "0 passed, 0 failed (pytest collected no tests)"; rc=0; fi; \
	exit $$rc

# Lint and pytest both run even if the first fails, so one CI run reports everything.
test: install
	@rc=0; \
	$(MAKE) --no-print-directory lint || { rc=1; echo "== lint FAILED"; }; \
	$(MAKE) --no-print-directory pytest || { rc=1; echo "== pytest FAILED"; }; \
	if [ $$rc -ne 0 ]; then echo "== make test: FAILED (see above)"; fi; \
	exit $$rc

demo: install
	@PYTHON="$(PYTHON)" bash scripts/demo.sh

bench: install
	$(PYTHON) bench/run.py

clean-netns:
	@for ns in $$(ip netns list | awk '/^iketest-/ {print $$1}'); do echo "deleting $$ns"; \
	  for p in $$(ip netns pids $$ns); do kill -9 $$p 2>/dev/null || true; done; ip netns del $$ns; done
