PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml setup.py test-constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c test-constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/foundry-telemetry demo

test: $(STAMP)
	$(BIN)/ruff check telemetry tests bench migrations dashboards setup.py
	$(BIN)/pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/ledger.py
	$(BIN)/python bench/reconcile.py

clean:
	rm -rf $(VENV) foundry-usage.db report.html
