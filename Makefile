# abaw — the table of contents. `make help` lists the targets; each stage resumes where it stopped.
#   DATA=/path/to/affwild2  run on a real release (default: the generated demo release)
#   CONFIG=configs/x.yaml   run config (default: demo.yaml without DATA, default.yaml with it)
#   ARGS="train.lr=1e-4"    extra key=value overrides for the stage

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ABAW := $(VENV)/bin/abaw
STAMP := $(VENV)/.installed
DATA ?=
CONFIG ?= $(if $(DATA),configs/default.yaml,configs/demo.yaml)
ARGS ?=
K ?= 5
COMMON := -c $(CONFIG) $(if $(DATA),--data $(DATA),)

.DEFAULT_GOAL := help
.PHONY: help install data features train folds predict tune ablate submit demo test lint bench clean-demo

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install abaw with its dev extras

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

data: $(STAMP) ## index the release (writes the demo release first when DATA is unset)
	$(if $(DATA),,$(ABAW) synth $(COMMON))
	$(ABAW) data $(COMMON) $(ARGS)

features: data ## extract cached visual and audio features
	$(ABAW) features $(COMMON) $(ARGS)

train: features ## train the configured fusion model
	$(ABAW) train $(COMMON) $(ARGS)

folds: features ## train K folds over train+val by source video (K=5), for an ensemble
	for f in $$(seq 0 $$(($(K)-1))); do $(ABAW) train $(COMMON) train.folds=$(K) train.fold=$$f $(ARGS) || exit 1; done

predict: train ## predict a split with the configured run (ARGS="--runs DIR... --split val")
	$(ABAW) predict $(COMMON) $(ARGS)

tune: features ## run (or continue) the Optuna study; report with ARGS=--report
	$(ABAW) tune $(COMMON) $(ARGS)

ablate: $(STAMP) ## variants x seeds x complementarity levels, one table (FLAGS="--seeds 5 --levels clean strong")
	$(ABAW) ablate $(COMMON) $(ARGS) $(call flags,ablate)

submit: train ## predict the test set, write, validate and package a submission
	$(ABAW) submit $(COMMON) $(ARGS)

demo: $(STAMP) ## the whole pipeline on the generated release, scored like a leaderboard
	$(MAKE) --no-print-directory submit DATA= CONFIG=configs/demo.yaml

test: $(STAMP) ## run the test suite (CPU, hermetic)
	$(PY) -m pytest

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check abaw tests bench

bench: $(STAMP) ## benchmarks: ratios measured side by side in one run
	$(PY) -m bench

clean-demo: ## delete the generated demo release and its cache
	rm -rf cache/demo
