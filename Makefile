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
	$(BIN)/ruff check relay certifier addendum tests bench
	$(BIN)/mypy relay certifier addendum
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check relay certifier addendum tests
	$(BIN)/mypy relay certifier addendum

clean:
	rm -rf $(VENV) var .pytest_cache

# make bench [QUICK=1] [PROFILE=1]: the gateway against Postfix on this machine
# (bench/README.md). Installs Postfix for smtp-source/smtp-sink, unconfigured.
bench: install
	@if [ ! -x /usr/sbin/smtp-source ] && ! command -v smtp-source >/dev/null 2>&1; then \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | $$SUDO debconf-set-selections; \
	  $$SUDO apt-get update -qq; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null; \
	fi
	$(if $(PROFILE),$(BIN)/pip install --quiet 'py-spy==0.4.3')
	$(BIN)/python bench/run.py $(if $(QUICK),--quick) $(if $(PROFILE),--profile)
