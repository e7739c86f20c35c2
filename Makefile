# Two commands do everything on a fresh machine: `make eval` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
OUT    ?= reports/latest
ARGS   ?=

.PHONY: setup eval test lint clean worker enqueue redis notebooks

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,notebook]'
	touch $(STAMP)

setup: $(STAMP)

## The main job: score the bundled prompt(s) on a labelled dataset (DATASET=path OUT=dir PROMPTS="a.toml b.toml")
eval: $(STAMP)
	$(BIN)/harness eval $(PROMPTS) $(if $(DATASET),--dataset "$(DATASET)") --out $(OUT) $(ARGS)

## The whole test suite (starts its own redis-server and model server on free ports)
test: $(STAMP)
	$(BIN)/ruff check harness tests
	$(BIN)/pytest -q

## Worker mode: `make worker` (ARGS="--burst"), `make enqueue DATASET=path [PROMPT=file RUN_ID=id]`
worker: $(STAMP)
	$(BIN)/harness worker $(ARGS)

enqueue: $(STAMP)
	@test -n "$(DATASET)" || (echo "usage: make enqueue DATASET=path [PROMPT=file.toml] [RUN_ID=id]"; exit 2)
	$(BIN)/harness enqueue "$(DATASET)" $(if $(PROMPT),--prompt $(PROMPT)) $(if $(RUN_ID),--run-id $(RUN_ID)) $(ARGS)

redis: $(STAMP)
	$(BIN)/harness redis

## JupyterLab on the notebooks (prompt lab, evaluate and compare, batch to workers)
notebooks: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

lint: $(STAMP)
	$(BIN)/ruff check .

## Benchmarks: each figure a ratio to a baseline measured in the same run (a few minutes); ARGS=--quick for a smoke run
.PHONY: bench
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,notebook,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/bench.py $(ARGS)

## Reliability drills: injected model faults, SIGKILLed workers, a Redis restart, hostile input (local only, a few minutes)
.PHONY: drills
drills: $(STAMP)
	$(BIN)/python bench/drills.py

clean:
	rm -rf reports .harness test-output .pytest_cache
