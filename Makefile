# Every target creates .venv on a fresh machine and installs the project into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint layers mutation format bench setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[dev,milvus]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/vr demo

test: $(STAMP)
	$(BIN)/python tools/lint_imports.py
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/python tools/lint_imports.py

# the import-linter contracts of pyproject.toml (docs/architecture.md)
layers: $(STAMP)
	$(BIN)/python tools/lint_imports.py

# mutation testing of the numeric core (hours on 2 cores; survivors: docs/testing.md);
# ONLY=metrics limits it to the targets whose path contains that text
mutation: $(STAMP)
	$(BIN)/python tools/mutation.py --max-children 2 $(if $(ONLY),--only $(ONLY))

format: $(STAMP)
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info
