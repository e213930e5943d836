# The two commands of the README: `make sinusoid` (the main job) and `make test`.
# Each creates the virtualenv and installs the ranges of setup.cfg on first use.
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= workdir/sinusoid
BIN := $(VENV)/bin

.PHONY: sinusoid test test-quick lint install bench

# The package with its test extra (the ranges are in setup.cfg). `make sinusoid` needs only
# the package; the test tools come along so that every target shares one install.
$(VENV)/.installed: requirements.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

# PyTorch (CPU) for the speed benchmark's baseline and its equivalence test.
$(VENV)/.bench: requirements-bench.txt $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -r requirements-bench.txt
	touch $@

install: $(VENV)/.installed

sinusoid: $(VENV)/.installed
	$(BIN)/python -m experiments.main --config experiments/configs/sinusoid.py --workdir $(WORKDIR)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.bench
	$(BIN)/python -m experiments.bench.speed

test: lint $(VENV)/.bench
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=10

# The inner loop while working: every test but those marked slow (pyproject.toml).
test-quick: $(VENV)/.bench
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=10 -m "not slow"
