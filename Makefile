# dc-pipeline. `make run` = set up, materialize the demo once, serve the UI with the daemon.
#              `make test` = the whole test suite.
SHELL := /bin/bash
PY := .venv/bin/python
# DC_* settings come from dc_pipeline.settings: exported variables first, then .env, then defaults.
export DAGSTER_HOME ?= $(CURDIR)/data/dagster_home
export GX_ANALYTICS_ENABLED := false
export TQDM_DISABLE := 1
PORT ?= 3000

.PHONY: run materialize test lint install demo-data clean-data

.venv/.installed: pyproject.toml requirements.lock
	@test -x $(PY) || python3.11 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[test]'
	@touch $@

install: .venv/.installed

demo-data: install
	$(PY) -m dc_pipeline.cli demo-data

## Headless: ingest every complete batch and refresh everything downstream, no UI.
materialize: demo-data
	$(PY) -m dc_pipeline.cli materialize

## Main command: materialize once, then serve the UI and the daemon (sensors, schedules) on $(PORT).
## `dc-pipeline ui` starts `dagster dev` with the resolved settings, so exported variables win over .env.
run: materialize
	$(PY) -m dc_pipeline.cli ui --host 0.0.0.0 --port $(PORT)

test: install
	.venv/bin/pytest -q

## Lint, format check and definitions validation (what .ci/run runs before the tests).
lint: install
	.venv/bin/ruff check dc_pipeline dc_pipeline_tests benchmarks
	.venv/bin/ruff format --check dc_pipeline dc_pipeline_tests benchmarks
	.venv/bin/dagster definitions validate -m dc_pipeline.definitions

clean-data:
	rm -rf data/landing data/demo data/objects data/artifacts data/reports data/warehouse.duckdb* \
	  $$(ls -d data/dagster_home/* 2>/dev/null | grep -v dagster.yaml)
