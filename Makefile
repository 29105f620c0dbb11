# dc-pipeline. `make run` = set up, materialize the demo once, serve the UI with the daemon.
#              `make test` = the whole test suite.
SHELL := /bin/bash
PY := .venv/bin/python
CLUSTER_PY := .venv-cluster/bin/python
# DC_* settings come from dc_pipeline.settings: exported variables first, then .env, then defaults.
export DAGSTER_HOME ?= $(CURDIR)/data/dagster_home
export GX_ANALYTICS_ENABLED := false
export TQDM_DISABLE := 1
PORT ?= 3000
VIEWER_PORT ?= 3001

.PHONY: run materialize test lint install demo-data clean-data screenshots cluster-install cluster-up cluster-down cluster-status cluster-test

# The local cluster (multi-machine mode on loopback): its folder and ports.
CLUSTER_DIR ?= /tmp/dc-pipeline-cluster
CLUSTER_DATA ?= $(CLUSTER_DIR)/data
PG_PORT ?= 5433
REDIS_PORT ?= 6380
S3_PORT ?= 9100
CLUSTER_UI_PORT ?= 3001
CLUSTER_VIEWER_PORT ?= 3002
CLUSTER_ARGS = --dir $(CLUSTER_DIR) --data-dir $(CLUSTER_DATA) --pg-port $(PG_PORT) --redis-port $(REDIS_PORT) \
  --s3-port $(S3_PORT) --ui-port $(CLUSTER_UI_PORT) --viewer-port $(CLUSTER_VIEWER_PORT)

.venv/.installed: pyproject.toml requirements.lock
	@test -x $(PY) || python3.11 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[test]'
	@touch $@

# The multi-machine mode's environment: the same project from requirements-cluster.lock, which differs from
# requirements.lock only in DuckDB (1.5.5: its postgres extension is published on PyPI up to that release). A
# separate environment, so the embedded mode keeps DuckDB 2.0 and the warehouse files it wrote (DuckDB 1.5
# cannot open them). It is an overlay on .venv: a .pth file puts .venv's packages behind its own, so pip
# installs here only what differs (DuckDB and the project itself; with the packages below, about 280 MB) instead of a second copy of
# torch and its CUDA libraries (about 7 GB). The packages whose commands the cluster starts are installed here
# again (without their dependencies) so that those commands run this environment's Python.
CLUSTER_COMMANDS := dagster dagster-webserver dagster-celery celery moto pytest
.venv-cluster/.installed: .venv/.installed pyproject.toml requirements-cluster.lock
	@test -x $(CLUSTER_PY) || python3.11 -m venv .venv-cluster
	echo ../../../../.venv/lib/python3.11/site-packages > .venv-cluster/lib/python3.11/site-packages/zz_dc_pipeline_base.pth
	$(CLUSTER_PY) -m pip install --quiet --upgrade pip
	$(CLUSTER_PY) -m pip install --quiet -c requirements-cluster.lock -e '.[test,cluster]'
	$(CLUSTER_PY) -m pip install --quiet --no-deps --ignore-installed -c requirements-cluster.lock $(CLUSTER_COMMANDS)
	$(CLUSTER_PY) -c 'import duckdb; assert duckdb.__version__ == "1.5.5", duckdb.__version__'
	@touch $@

cluster-install: .venv-cluster/.installed

install: .venv/.installed

demo-data: install
	$(PY) -m dc_pipeline.cli demo-data

## Headless: ingest every complete batch not ingested yet and refresh everything downstream, no UI; then, once,
## a simulated reviewer answers the top of the label-issue queue and that reviews batch is ingested too.
materialize: demo-data
	$(PY) -m dc_pipeline.cli materialize
	$(PY) -m dc_pipeline.cli simulate-review --top 20 --unless-reviewed
	$(PY) -m dc_pipeline.cli materialize

## Main command: materialize once, then serve the UI and the daemon (sensors, schedules) on $(PORT).
## `dc-pipeline ui` starts `dagster dev` with the resolved settings, so exported variables win over .env.
run: materialize
	$(PY) -m dc_pipeline.cli ui --host 0.0.0.0 --port $(PORT) --viewer-port $(VIEWER_PORT)

test: install
	.venv/bin/pytest -q

## Multi-machine mode on this machine: PostgreSQL, Redis, an S3 API server, two Celery workers, the daemon
## and the webserver, all on 127.0.0.1. `source $(CLUSTER_DIR)/cluster.env` gives a shell the cluster's settings.
cluster-up: cluster-install
	.venv-cluster/bin/dc-pipeline cluster up $(CLUSTER_ARGS)

cluster-down: cluster-install
	.venv-cluster/bin/dc-pipeline cluster down $(CLUSTER_ARGS)

cluster-status: cluster-install
	.venv-cluster/bin/dc-pipeline cluster status $(CLUSTER_ARGS)

## The cluster test: starts its own cluster on free ports, runs the demo through it, stops it.
cluster-test: cluster-install
	.venv-cluster/bin/pytest -q -p no:cacheprovider cluster_tests

## The README's screenshots, from a real run in a temporary folder (needs Debian's chromium).
screenshots: install
	$(PY) docs/screenshots.py

## Lint, format check and definitions validation (what .ci/run runs before the tests).
lint: install
	.venv/bin/ruff check dc_pipeline dc_pipeline_tests cluster_tests benchmarks docs
	.venv/bin/ruff format --check dc_pipeline dc_pipeline_tests cluster_tests benchmarks docs
	.venv/bin/dagster definitions validate -m dc_pipeline.definitions

clean-data:
	rm -rf data/landing data/demo data/objects data/artifacts data/reports data/warehouse.duckdb* \
	  $$(ls -d data/dagster_home/* 2>/dev/null | grep -v dagster.yaml)
