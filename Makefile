# Two entry points, both usable on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ENV_FILE ?= dev.env

.PHONY: run test lint types unit bench screenshots clean catalogs

# `make run` installs what running needs (the "fast" extra: uvloop); `make test` adds the test
# and lint toolchain. Each stamp is remade when pyproject.toml changes.
$(BIN)/.installed-run: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[fast]'
	touch $@

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,fast]'
	touch $@ $(BIN)/.installed-run

# A development env file with a random webhook secret, made once and never overwritten.
$(ENV_FILE):
	umask 077 && printf 'SMTP_WHITELIST_WEBHOOK_SECRET=%s\n' \
		"$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(48))')" > $(ENV_FILE)
	@echo "made $(ENV_FILE) with a random SMTP_WHITELIST_WEBHOOK_SECRET (edit it to change settings)"

# Against the configured Redis; where nothing listens on it (on this machine), a private
# redis-server with its data under run/redis, stopped with the server (scripts/run).
run: $(BIN)/.installed-run $(ENV_FILE)
	@echo "settings: $(abspath $(ENV_FILE)) (SMTP_WHITELIST_* in the environment override it)"
	BIN=$(BIN) ENV_FILE=$(ENV_FILE) RUN_DIR=run scripts/run

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(BIN)/.installed
	$(BIN)/mypy

unit: $(BIN)/.installed
	$(BIN)/pytest

test: lint types unit

# The self-service page's screenshots in docs/screenshots/ (shown in the README), taken anew by
# the real-browser tests; `make test` takes them too, but into a temporary folder.
screenshots: $(BIN)/.installed
	SCREENSHOT_DIR=$(abspath docs/screenshots) $(BIN)/pytest -q tests/test_page_browser.py

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks.run

# The page's message catalogs: extract the templates' texts, merge them into each .po (edit the
# .po to translate), compile the .mo that ships (committed, so an install needs no build step).
PAGE_LOCALE := webhook/page/locale
catalogs: $(BIN)/.installed
	$(BIN)/pybabel extract -F webhook/page/babel.cfg --no-location --omit-header -o $(PAGE_LOCALE)/messages.pot .
	$(BIN)/pybabel update -i $(PAGE_LOCALE)/messages.pot -d $(PAGE_LOCALE) -D messages --no-fuzzy-matching --width=100 --ignore-obsolete
	$(BIN)/pybabel compile -d $(PAGE_LOCALE) -D messages --statistics

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
