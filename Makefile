# The two set-up commands of the README. Both are idempotent: they (re)use .venv.
PYTHON ?= python3.11
VENV   ?= .venv
PIP     = $(VENV)/bin/pip
PLUGINS = -e plugins/certcompress-torchvision -e plugins/certcompress-smp -e plugins/certcompress-example

.PHONY: install demo test lint bench

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch/torchvision are pinned for this machine by constraints.txt; pyproject accepts a range.
install: $(VENV)/bin/python
	$(PIP) install -q -c constraints.txt -e ".[test]" $(PLUGINS)

demo: install
	$(VENV)/bin/certcompress demo

lint: install
	$(VENV)/bin/ruff check certcompress plugins tests benchmarks examples
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -n 2 --durations=15

bench: install
	$(VENV)/bin/python benchmarks/bench_core.py
