# dpipe: `make demo` (set up + run the backfill on a generated archive) and `make test` (set up + every test).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
SAMPLE := data/sample

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "dpipe needs $(PYTHON) (Python 3.11) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m pipelines.generate --output $(SAMPLE) --lines 200000 --days 3
	rm -rf out/demo
	$(PY) -m pipelines.backfill --config templates/jobs/engine.als.yaml \
		--input '$(SAMPLE)/logs/*' --output out/demo

lint: setup
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest

bench: setup
	$(PY) -m bench.backfill

clean:
	rm -rf $(VENV) data out bench/work .pytest_cache .ruff_cache
