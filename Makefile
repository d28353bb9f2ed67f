# Two commands on a fresh machine (see README): `make reproduce` and `make test`.
# Each creates the virtual environment on first use and reuses it while pyproject.toml is unchanged.
PYTHON ?= python3.11
VENV := .venv
INSTALLED := $(VENV)/.installed
ARGS ?=

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test,ray,slurm]'
	touch $@

.PHONY: reproduce test
reproduce: $(INSTALLED)
	$(VENV)/bin/overparam reproduce $(ARGS)

test: $(INSTALLED)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/python -m pytest
