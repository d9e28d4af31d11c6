# abaw — the table of contents. `make help` lists the targets; each stage resumes where it stopped.
#   DATA=/path/to/affwild2  run on a real release (default: the generated demo release)
#   CONFIG=configs/x.yaml   run config (default: demo.yaml without DATA, default.yaml with it)
#   ARGS="train.lr=1e-4"    key=value config overrides, given to EVERY stage of the chain (they must agree)
#   FLAGS="--split val"     stage flags, given only to the stage named as the goal (make tune FLAGS=--report)

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ABAW := $(VENV)/bin/abaw
STAMP := $(VENV)/.installed
DATA ?=
CONFIG ?= $(if $(DATA),configs/default.yaml,configs/demo.yaml)
ARGS ?=
FLAGS ?=
K ?= 5
VIDEO ?=
RUNS ?=
COMMON := -c $(CONFIG) $(if $(DATA),--data $(DATA),)
# $(call flags,<goal>): FLAGS when <goal> is the goal named on the command line (the last one when
# several are), else nothing, so `make predict FLAGS="--split val"` does not hand --split to `abaw data`.
flags = $(if $(filter $(1),$(lastword $(MAKECMDGOALS))),$(FLAGS))
# ARGS holds config overrides only; a flag there would reach every stage and die in the first one.
ARGS_FLAGS := $(strip $(foreach w,$(ARGS),$(if $(findstring =,$(w)),,$(w))))
$(if $(ARGS_FLAGS),$(error ARGS takes key=value config overrides only, found "$(ARGS_FLAGS)"; stage flags go in FLAGS, e.g. make tune FLAGS=--report))

.DEFAULT_GOAL := help
.PHONY: help install data finetune features train folds predict tune ablate submit demo video test lint bench clean-demo

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install abaw with its dev extras

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	# abaw video: BlazeFace model files ship in this wheel; --no-deps (it pins numpy<2, jax; never imported)
	$(PY) -m pip install -q --no-deps mediapipe==0.10.21
	# Real speech for the video tests (Debian's pocketsphinx-testdata, 1.8 MB); skipped where apt is not ours
	@if [ -d /usr/share/pocketsphinx/test/data/librivox ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq pocketsphinx-testdata >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq pocketsphinx-testdata >/dev/null 2>&1)) || \
	  echo "note: pocketsphinx-testdata not installed; the real-footage video test will skip"; \
	else echo "note: install Debian's pocketsphinx-testdata for the real-footage video test"; fi
	@touch $@

data: $(STAMP) ## index the release (writes the demo release first when DATA is unset)
	$(if $(DATA),,$(ABAW) synth $(COMMON))
	$(ABAW) data $(COMMON) $(ARGS) $(call flags,data)

finetune: data ## fine-tune the visual backbone on training face crops (when features.visual.finetuned is set)
	$(ABAW) finetune $(COMMON) $(ARGS) $(call flags,finetune)

features: finetune ## extract cached visual and audio features
	$(ABAW) features $(COMMON) $(ARGS) $(call flags,features)

train: features ## train the configured fusion model
	$(ABAW) train $(COMMON) $(ARGS) $(call flags,train)

folds: $(STAMP) ## the whole chain per fold, K folds over train+val by source video (K=5); FINETUNED=<name> names each fold's fine-tuning <name>-fold<k>
	for f in $$(seq 0 $$(($(K)-1))); do $(MAKE) --no-print-directory train FLAGS="$(FLAGS)" ARGS="$(ARGS) train.folds=$(K) train.fold=$$f$(if $(FINETUNED), features.visual.finetuned=$(FINETUNED)-fold$$f)" || exit 1; done

predict: train ## predict a split with the configured run (make predict FLAGS="--split val")
	$(ABAW) predict $(COMMON) $(ARGS) $(call flags,predict)

tune: features ## run (or continue) the Optuna study (make tune FLAGS=--report: its table and plots)
	$(ABAW) tune $(COMMON) $(ARGS) $(call flags,tune)

ablate: $(STAMP) ## variants x seeds x complementarity levels, one table (FLAGS="--seeds 5 --levels clean strong")
	$(ABAW) ablate $(COMMON) $(ARGS) $(call flags,ablate)

submit: train ## predict the test set, write, validate and package a submission
	$(ABAW) submit $(COMMON) $(ARGS) $(call flags,submit)

# demo.yaml asks for bfloat16; a machine that only emulates it (no AVX512-BF16/AMX, no bf16 GPU; 5-15x
# slower than fp32) gets fp32 instead, stated as overrides because the precision is part of the cache keys.
# Recursive (=): evaluated when the recipe runs, after the install.
DEMO_FP32 = $(if $(filter 1,$(shell $(PY) -c "from abaw.utils import native_bf16 as n; print(int(n('cuda') or n('cpu')))" 2>/dev/null)),,features.visual.precision=32 finetune.precision=32-true)

demo: $(STAMP) ## the whole pipeline on the generated release, scored like a leaderboard
	$(MAKE) --no-print-directory submit DATA= CONFIG=configs/demo.yaml ARGS="$(strip $(ARGS) $(DEMO_FP32))"

video: $(STAMP) ## valence/arousal for any video: make video VIDEO=clip.mp4 RUNS="run1 run2" [FLAGS=--overlay]
	$(if $(and $(VIDEO),$(RUNS)),,$(error make video needs VIDEO=FILE RUNS="RUN...", e.g. make video VIDEO=clip.mp4 RUNS=grjca_hier-official-3f9c0a1e))
	$(ABAW) video $(VIDEO) $(ARGS) $(COMMON) --runs $(RUNS) $(call flags,video)

test: $(STAMP) ## run the test suite (CPU, hermetic)
	$(PY) -m pytest

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check abaw tests bench

bench: $(STAMP) ## benchmarks: ratios measured side by side in one run
	$(PY) -m bench

clean-demo: ## delete the generated demo release and its cache
	rm -rf cache/demo
