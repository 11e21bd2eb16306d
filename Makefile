# The two set-up commands of the README: `make demo` and `make check`.
# Both build .venv from pyproject.toml first; nothing is installed outside it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo check lint test bench bench-latency bench-backlog schema clean

$(BIN)/tailhook: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/tailhook
	$(BIN)/tailhook demo

lint: $(BIN)/tailhook
	$(BIN)/ruff check agent tests benchmarks
	$(BIN)/ruff format --check agent tests benchmarks
	$(BIN)/mypy

test: $(BIN)/tailhook
	$(BIN)/python -m pytest -q

check: lint test

# schemas/config.schema.json is generated from the table of keys (agent/config/keys.py);
# a test fails until it is regenerated after a key changes.
schema: $(BIN)/tailhook
	$(BIN)/python -m agent.config schemas/config.schema.json

# Issue 11's measurements (README "Performance"); each exits non-zero on a missed target.
# bench: the 475- and 800-byte cases against the in-process floor (a few minutes).
bench: $(BIN)/tailhook
	$(BIN)/python benchmarks/throughput.py

bench-latency: $(BIN)/tailhook
	$(BIN)/python benchmarks/latency.py

bench-backlog: $(BIN)/tailhook
	$(BIN)/python benchmarks/backlog_memory.py

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
