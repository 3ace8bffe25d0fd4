# Two commands for a fresh machine (Python 3.11 and pip):
#   make demo   install into .venv, then train + evaluate on the synthetic benchmark (~10 min on 2 cores)
#   make test   install into .venv with the test extras, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# test processes (pytest-xdist; work stealing keeps both busy to the end); 2 fits a 2-core machine, 0: one process
TEST_WORKERS ?= 2
STAMP   = $(VENV)/.installed

.PHONY: demo test install clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/kfacemtl demo --out runs/demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=10 $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
