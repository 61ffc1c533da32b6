# Two commands: `make run` (set up, then `dvc repro` on the embedded default dataset)
# and `make test` (set up, then the test suite).
VENV   := .venv
PY     := $(VENV)/bin/python
# This machine's pip serves a CPU build of torch 2.13.0 from a local file; installing it
# before the project keeps pip from pulling a multi-GB CUDA build. Override on a GPU box.
TORCH  ?= torch==2.13.0
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup run test bench clean labelstudio bench-labelstudio

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
	@$(PY) -m pipeline summary

test: setup labelstudio
	$(PY) -m pytest -q

# Label Studio (the server) lives in its own venv: its pins clash with ours. The server
# tests and `python -m pipeline label serve` run it from there.
LABEL_STUDIO ?= label-studio==1.23.2
labelstudio: .venv-ls/bin/label-studio

.venv-ls/bin/label-studio:
	python3 -m venv .venv-ls
	.venv-ls/bin/python -m pip install -q --upgrade pip
	.venv-ls/bin/python -m pip install -q "$(LABEL_STUDIO)"

# push 10,000 tasks to / pull 10,000 annotated tasks from a local server, timed
bench-labelstudio: setup labelstudio
	$(PY) bench/bench_labelstudio.py

bench: setup
	$(PY) bench/bench_ingest.py
	$(PY) bench/bench_augment.py
	bash bench/bench_repro.sh

clean:
	rm -rf data models .pipeline
