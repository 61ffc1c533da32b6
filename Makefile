# Two commands: `make run` (set up, then `dvc repro` on the embedded default dataset)
# and `make test` (set up, then the test suite).
VENV   := .venv
PY     := $(VENV)/bin/python
# This machine's pip serves a CPU build of torch 2.13.0 from a local file; installing it
# before the project keeps pip from pulling a multi-GB CUDA build. Override on a GPU box.
TORCH  ?= torch==2.13.0
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup run test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	# torchattacks: the test-only reference for the attacks; its torchvision pin is not needed
	$(PY) -m pip install -q --no-deps "torchattacks==3.5.1"
	touch $@

run: setup
	dvc repro
	@echo
	dvc metrics show
	@echo
	@echo "metrics: metrics/*.json    plots: plots/ (render them with: dvc plots show)"
	@echo "model:   models/model.pt   data: data/<stage>/manifest.parquet"

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/bench_ingest.py
	bash bench/bench_repro.sh

clean:
	rm -rf data models .pipeline
