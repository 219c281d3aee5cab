# Certifica: make run (start on embedded defaults), make test (the suite CI runs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: install
	$(BIN)/certifica -c config.toml serve

test: install
	$(BIN)/ruff check relay certifier addendum tests
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check relay certifier addendum tests
	$(BIN)/mypy relay certifier addendum

clean:
	rm -rf $(VENV) var .pytest_cache
