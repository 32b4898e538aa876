# coordsweep: `make sweep` runs the demo sweep, `make test` runs the tests.
# Both create .venv when missing and install everything, the pinned CPU torch wheel first so
# that pip never pulls a multi-GB CUDA build on a CPU machine. GPU users: see README.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.coordsweep-installed
PYTEST_ARGS ?=

.PHONY: install postgres test test-all sweep cost bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]" --config-settings editable_mode=compat
	touch $(STAMP)

# PostgreSQL for the multi-worker storage tests (they start a throwaway cluster on 127.0.0.1
# as the postgres user); Debian keeps initdb in /usr/lib/postgresql/<version>/bin.
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql)

test: $(STAMP) postgres
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: $(STAMP) postgres
	$(PY) -m pytest -q --runslow $(PYTEST_ARGS)

# The demo: baselines + one-factor-at-a-time CA ablation on the embedded synthetic data,
# 2 paired seeds, 2 workers; ends by printing the answers and the report's path. Running it
# again continues (and reuses) the same study in multirun/demo.
sweep: $(STAMP)
	$(PY) run.py -m search_space=demo $(ARGS)

cost: $(STAMP)
	$(PY) -m analysis.cost $(ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
