# Two commands for a fresh machine: `make run` (the whole pipeline on the bundled sample) and `make test`.
# Both create the virtualenv once (.venv) and reuse it afterwards.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export DAGSTER_HOME ?= $(CURDIR)/dagster_home
DAGSTER_PORT ?= 3000
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export HMPCL_DATA_ROOT ?= $(CURDIR)/data
export HMPCL_MLFLOW_ARTIFACTS ?= $(CURDIR)/mlartifacts

.PHONY: setup run test test-under-load dev mlflow search screenshots bench scale clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[cpu,dev,k8s,bench]'
	touch $@

setup: $(VENV)/.installed
	@mkdir -p $(DAGSTER_HOME) && [ -e $(DAGSTER_HOME)/dagster.yaml ] || ln -s $(CURDIR)/dagster_home/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

## Materialize every asset on the generated sample corpus (prints the model comparison table at the end).
## Training settings: make run ARGS="--set epochs=4"
run: setup
	$(PY) -m pipelines.run_sample $(ARGS)

## Run the test suite (what CI runs).
test: setup
	@bash scripts/ensure_chromium.sh
	$(PY) -m pytest -q

## The suite three times in a row beside two CPU-bound processes: proof that no test depends on timing (~30 min).
test-under-load: setup
	PY=$(PY) bash scripts/test_under_load.sh

## Open the Dagster UI on http://127.0.0.1:3000 (`dg dev`, as Dagster 1.13 recommends; Ctrl-C stops all it started)
dev: setup
	VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dg dev -w workspace.yaml --host 127.0.0.1 --port $(DAGSTER_PORT)

## Open the MLflow UI on http://127.0.0.1:5000
mlflow: setup
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) \
		--default-artifact-root $(HMPCL_MLFLOW_ARTIFACTS) --host 127.0.0.1 --port 5000 --workers 1

## Open the search page on http://127.0.0.1:8000 (the champion's index; needs `make run` first)
search: setup
	$(VENV)/bin/hmpcl serve --host 127.0.0.1 --port 8000

## The README's pictures (docs/img/), taken from the state `make run` left: Dagster, MLflow and the search page.
screenshots: setup
	@bash scripts/ensure_chromium.sh
	$(PY) scripts/docs_screenshots.py

## The benchmark scripts behind the README's figures (each prints a markdown table; run them on an idle machine).
bench: setup
	$(PY) benchmarks/train_throughput.py --batch-size 64 --batches 8 --warmup 2 --images 512 --png-workers 0 -1
	$(PY) benchmarks/embed_bench.py --batch-size 64 --images 512 --png-workers 0 -1
	$(PY) benchmarks/index_bench.py --sizes 100000 1000000 --scales 0.5 0.4 0.3 0.8 --kinds flat ivf hnsw --max-build-s 240
	$(PY) benchmarks/search_page_bench.py --queries 50
	$(PY) benchmarks/loss_bench.py --sizes 256 1024 4096
	$(PY) benchmarks/parse_bench.py --records 200000 --json-load

## The pipeline at growing corpus sizes through the real assets (README "Scale"); SIZES="10000 30000 100000 300000"
## is the README's run (about an hour), the default shows the trend in a few minutes. SCALE_WORK: a folder on a big disk.
SIZES ?= 2000 6000
SCALE_WORK ?= $(CURDIR)/data/scale
scale: setup
	$(PY) benchmarks/scale_bench.py --sizes $(SIZES) --work $(SCALE_WORK)

clean:
	rm -rf data mlflow.db mlartifacts && find dagster_home -mindepth 1 ! -name dagster.yaml -exec rm -rf {} +
