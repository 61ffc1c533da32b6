# `make run` (set up, then `dvc repro` on the embedded default dataset), `make test` (set up,
# then the fast tests) and `make test-all` (every test: what CI runs).
VENV   := .venv
PY     := $(VENV)/bin/python
# torch and torchvision go in first, from TORCH, so pip does not pull another build; the lock
# leaves them out with the GPU runtime they bring (nvidia-*, cuda-*, triton), which belongs to the
# build. torchvision is what timm (the pretrained backbones) needs. This build (CUDA 13) also runs
# on the CPU; override TORCH for another.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
TORCH_BUILD := ^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+)==
LOCK   := requirements/project.txt
LS_LOCK := requirements/labelstudio.txt
export TORCH
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup run test test-all bench clean labelstudio bench-labelstudio lock

setup: $(VENV)/.installed

# The venv is exactly requirements/project.txt (plus TORCH): made anew whenever the lock or
# pyproject changes, the lock installed with --no-deps, so nothing resolves at install time.
$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv --clear $(VENV)
	$(PY) -m pip install -q "$$(grep '^pip==' $(LOCK))"
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

run: setup
	dvc repro
	@echo
	@$(PY) -m pipeline summary

# the fast tier (unit and small integration tests, a few minutes) while you work ...
test: setup
	$(PY) -m pytest -q -m "not slow"

# ... and everything: dvc repro end to end, the Label Studio server, Ray, DDP, Chromium (CI runs this)
test-all: setup labelstudio
	$(PY) -m pytest -q

# Label Studio (the server) lives in its own venv: its pins clash with ours. The server
# tests and `python -m pipeline label serve` run it from there.
LABEL_STUDIO ?= label-studio==1.23.2 sentry-sdk<3
labelstudio: .venv-ls/.installed

.venv-ls/.installed: $(LS_LOCK)
	python3 -m venv --clear .venv-ls
	.venv-ls/bin/python -m pip install -q --no-deps -r $(LS_LOCK)
	touch $@

# Regenerate both locks on purpose (a dependency added to pyproject, a release wanted): each venv
# is built unpinned in build/lock/ and frozen. Review the diff, run `make test-all`, commit.
lock:
	rm -rf build/lock && mkdir -p build/lock
	python3 -m venv build/lock/project
	build/lock/project/bin/python -m pip install -q --upgrade pip
	build/lock/project/bin/python -m pip install -q $(TORCH)
	build/lock/project/bin/python -m pip install -q -e ".[test]"
	# torchattacks: the test-only reference for the attacks; its torchvision pin is not needed
	build/lock/project/bin/python -m pip install -q --no-deps "torchattacks==3.5.1"
	{ sed -n '/^#/p' $(LOCK); build/lock/project/bin/python -m pip freeze --all --exclude-editable \
	  | grep -Ev '$(TORCH_BUILD)'; } > build/lock/project.txt && mv build/lock/project.txt $(LOCK)
	python3 -m venv build/lock/ls
	build/lock/ls/bin/python -m pip install -q --upgrade pip
	build/lock/ls/bin/python -m pip install -q $(foreach p,$(LABEL_STUDIO),"$(p)")
	{ sed -n '/^#/p' $(LS_LOCK); build/lock/ls/bin/python -m pip freeze --all; } > build/lock/ls.txt \
	  && mv build/lock/ls.txt $(LS_LOCK)
	rm -rf build/lock
	git diff --stat -- requirements

# push 10,000 tasks to / pull 10,000 annotated tasks from a local server, timed
bench-labelstudio: setup labelstudio
	$(PY) bench/bench_labelstudio.py

bench: setup
	$(PY) bench/bench_ingest.py
	$(PY) bench/bench_augment.py
	bash bench/bench_repro.sh

clean:
	rm -rf data models .pipeline
