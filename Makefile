# dc-pipeline. `make run` = set up, materialize the demo once, serve the UI with the daemon.
#              `make test` = the whole test suite.
SHELL := /bin/bash
PY := .venv/bin/python
export DAGSTER_HOME := $(CURDIR)/data/dagster_home
export DC_DATA_DIR ?= $(CURDIR)/data
export DC_WAREHOUSE ?= $(DC_DATA_DIR)/warehouse.duckdb
export GX_ANALYTICS_ENABLED := false
export TQDM_DISABLE := 1
PORT ?= 3000

.PHONY: run materialize test install demo-data clean-data

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
run: materialize
	.venv/bin/dagster dev -m dc_pipeline.definitions -h 0.0.0.0 -p $(PORT)

test: install
	.venv/bin/pytest -q

clean-data:
	rm -rf data/landing data/demo data/objects data/artifacts data/reports data/warehouse.duckdb* \
	  $$(ls -d data/dagster_home/* 2>/dev/null | grep -v dagster.yaml)
