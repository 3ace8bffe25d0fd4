# Two commands for a fresh machine (Python 3.11 and pip):
#   make demo   install into .venv, then train + evaluate on the synthetic benchmark (~10 min on 2 cores)
#   make test   install into .venv with the test extras, then run the test suite (under 10 min on 2 cores)
# and, for the notebooks and benchmark scripts end to end (about 7 min on 2 cores): make test-e2e
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# test processes (pytest-xdist; work stealing keeps both busy to the end); 2 fits a 2-core machine, 0: one process
TEST_WORKERS ?= 2
# which tests (a pytest -m expression): the end-to-end ones have their own target; MARKS= runs every test
MARKS ?= not e2e
STAMP   = $(VENV)/.installed

.PHONY: demo test test-e2e install clean-venv

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
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=10 -m "$(MARKS)" $(PYTEST_ARGS)

test-e2e:
	$(MAKE) test MARKS=e2e

clean-venv:
	rm -rf $(VENV)
