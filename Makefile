# The two commands: `make test` and `make demo`. Both set up what they need first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build of torch lies on these machines' disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: install test lint demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	# The dashboard's chart library: a pinned npm tarball, integrity-checked (app/console/static/ASSETS.md).
	$(BIN)/python -m app.console.assets
	touch $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy app functions release monitoring handlers schemas
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/house

test: install
	$(BIN)/python -m pytest -q

# `make demo SERVE=1` leaves the stack running and prints the dashboard's URL.
demo: install
	$(BIN)/python -m app.demo $(if $(SERVE),--serve,)

clean:
	rm -rf $(VENV) .release demo-bucket .mypy_cache .ruff_cache .pytest_cache
