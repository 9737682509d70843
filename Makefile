# On a fresh machine (Python 3.11+, Java 17+, Maven):
#   make run    broker up, topics applied, worker running (Ctrl-C stops the worker)
#   make check  the fast inner loop: lint, type-check and the tests that need no broker
#   make test   lint, type-check and the whole test suite against a real local broker
#   make demo   broker, topics, a worker and simulated shoppers: watch the engine learn (5 min)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run check test demo kafka-down clean

$(BIN)/recoloop: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/recoloop

run: install
	$(BIN)/recoloop kafka up
	$(BIN)/recoloop topics apply
	$(BIN)/recoloop worker

check: install
	deploy/prometheus/ensure-prometheus.sh
	$(BIN)/ruff check app tests bench
	$(BIN)/mypy app
	$(BIN)/pytest -q -n 2 -m "not integration and not slow and not fault and not outage"

test: install
	deploy/prometheus/ensure-prometheus.sh
	$(BIN)/ruff check app tests bench
	$(BIN)/mypy app
	$(BIN)/pytest -n 4 --dist worksteal

demo: install
	$(BIN)/recoloop demo

kafka-down: install
	$(BIN)/recoloop kafka down

clean:
	rm -rf $(VENV) var
