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

# The report test renders in Debian's Chromium; installed here (as root) when it is missing.
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

.PHONY: reproduce test chromium
reproduce: $(INSTALLED)
	$(VENV)/bin/overparam reproduce $(ARGS)

test: $(INSTALLED) chromium
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python -m pytest
