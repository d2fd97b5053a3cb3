# Two entry points: `make demo` (the main job end to end on the built-in synthetic scene) and
# `make test` (ruff + the test suite). Both create .venv and install everything they need.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
DEMO_DIR ?= demo_output

.PHONY: demo test lint install clean

$(BIN)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

install: $(BIN)/.installed

lint: $(BIN)/.installed
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q test

demo: $(BIN)/.installed
	rm -rf $(DEMO_DIR)/synthetic_7scenes
	$(BIN)/posenet-ros synth --layout 7scenes $(DEMO_DIR)/synthetic_7scenes frames_per_sequence=40

clean:
	rm -rf $(VENV) $(DEMO_DIR)
