# Certifica: make run (start on embedded defaults), make test (the suite CI runs).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Debian packages, installed by the target that needs them when they are missing.
# make install: venv, when $(PYTHON) lacks it (Debian ships it apart from python3).
# make run: nothing (the certificate's fonts ship inside the package, certifier/fonts/).
VENV_PACKAGES := python3-venv
RUN_PACKAGES :=
# make test: swaks, a real SMTP client, and its STARTTLS modules (only recommended by the
# package); poppler-utils for pdfsig and pdftotext, poppler-data for pdftotext's CJK maps;
# openssl for `openssl ts -verify` and s_client; chromium, a real browser opening a tracked mail
# and the verification page; zbar-tools, whose zbarimg reads the QR codes back; softhsm2, a
# PKCS#11 token for the signing key in an HSM, and opensc, whose pkcs11-tool makes the
# timestamp authority's key in it as README "Keys in an HSM" says; systemd for systemd-analyze
# (the unit's security rating and verify) and python3-seccomp, with which tests/unit_sandbox.py
# runs the gateway under the unit's seccomp filters where systemd is not PID 1; logrotate, which
# rotates [log] file under the running gateway with the README's rule; nginx-light, whose
# `nginx -t` checks docs/deploy.md's reverse proxy (on a host where systemd runs, Debian
# starts the nginx service it installs: stop or disable it if port 80 is taken).
TEST_PACKAGES := $(RUN_PACKAGES) swaks libnet-ssleay-perl libio-socket-ssl-perl \
	poppler-utils poppler-data openssl chromium zbar-tools softhsm2 opensc systemd \
	python3-seccomp logrotate nginx-light

# $(call debian_packages,PACKAGES): install those of PACKAGES that dpkg does not list as
# installed; apt-get update only then, sudo only when not root. Not Debian: say what to get.
define debian_packages
@missing=""; \
if command -v dpkg >/dev/null 2>&1; then \
  for p in $(1); do \
    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
  done; \
else \
  echo "make: not a Debian system; make sure the equivalents of these are installed: $(1)" >&2; \
fi; \
if [ -n "$$missing" ]; then \
  echo "make: installing Debian packages:$$missing"; \
  SUDO=""; \
  if [ "$$(id -u)" != 0 ]; then \
    command -v sudo >/dev/null 2>&1 || { echo "make: no sudo; as root, run: apt-get install$$missing" >&2; exit 1; }; \
    SUDO="sudo"; \
  fi; \
  $$SUDO apt-get update -qq && \
  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
fi
endef

.PHONY: install run test lint bench fuzz clean venv-packages run-packages test-packages

install: $(VENV)/.installed

venv-packages:
	$(call debian_packages,$(VENV_PACKAGES))

run-packages:
	$(call debian_packages,$(RUN_PACKAGES))

test-packages:
	$(call debian_packages,$(TEST_PACKAGES))

$(VENV)/.installed: pyproject.toml $(wildcard certifier/locale/*/LC_MESSAGES/*.po)
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || $(MAKE) --no-print-directory venv-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/python -m certifier.catalogs compile
	touch $@

run: install run-packages
	$(BIN)/certifica -c config.toml serve

# The suite runs on TEST_WORKERS pytest-xdist workers (most tests wait on a gateway, not on
# a core); --dist loadfile keeps each test file on one worker, so a module's gateway is
# started once and its tests run in their written order. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 3

test: install test-packages
	$(BIN)/ruff check relay certifier addendum tests bench
	$(BIN)/mypy relay certifier addendum
	$(BIN)/pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

lint: install
	$(BIN)/ruff check relay certifier addendum tests
	$(BIN)/mypy relay certifier addendum

# make fuzz [FUZZ_SECONDS=600] [FUZZ_SEED=N]: mutated SMTP and MIME against the real gateway
# on both ports for that long, then checks it (tests/fuzz_smtp.py; findings in var/fuzz/).
FUZZ_SECONDS ?= 600
fuzz: install
	$(BIN)/python -m tests.fuzz_smtp --seconds $(FUZZ_SECONDS) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED))

clean:
	rm -rf $(VENV) var .pytest_cache

# make bench [QUICK=1] [PROFILE=1]: the gateway against Postfix on this machine
# (bench/README.md), then SMS submitted per second to the test SMSC (bench/sms.py).
# Installs Postfix for smtp-source/smtp-sink, unconfigured.
bench: install
	@if [ ! -x /usr/sbin/smtp-source ] && ! command -v smtp-source >/dev/null 2>&1; then \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | $$SUDO debconf-set-selections; \
	  $$SUDO apt-get update -qq; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null; \
	fi
	$(if $(PROFILE),$(BIN)/pip install --quiet 'py-spy==0.4.3')
	@# The SMS figure is printed even when the Postfix comparison fails; make fails then.
	@status=0; $(BIN)/python bench/run.py $(if $(QUICK),--quick) $(if $(PROFILE),--profile) || status=$$?; \
	echo "SMS: submit_sm per second through the ESME client to the test SMSC (bench/sms.py)"; \
	$(BIN)/python bench/sms.py $(if $(QUICK),--count 1000 --windows 10,--count 5000 --windows 1,10,50) || status=$$?; \
	exit $$status
