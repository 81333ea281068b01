# The two commands a newcomer needs: `make run` and `make test`. See README.md.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8000

.PHONY: run test lint install install-dev services bench constraints clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10 or newer is needed (Django 5.2); set PYTHON=python3.x")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python requirements.txt constraints.txt
	$(BIN)/pip install --quiet -r requirements.txt -c constraints.txt
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt -c constraints.txt
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## run: the whole system on the embedded default (SQLite + in-process broker), admin on $(PORT).
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py demo_data
	@echo
	@echo "  Admin:  http://127.0.0.1:$(PORT)/admin/   login: admin / admin"
	@echo "  Stop with Ctrl-C."
	@echo
	@bash -c 'trap "trap - TERM; kill 0" INT TERM EXIT; \
		$(BIN)/python manage.py outbox_relay & \
		$(BIN)/python manage.py runserver 127.0.0.1:$(PORT) --noreload'

## services: start the local PostgreSQL, Redis and RabbitMQ if they are installed but stopped.
services:
	@bash scripts/services.sh

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	$(BIN)/lint-imports

## test: linters, then the full suite on PostgreSQL, Redis and RabbitMQ.
test: install-dev services lint
	$(BIN)/pytest

## bench: every benchmark figure, as JSON.
bench: install-dev services
	DJANGO_SETTINGS_MODULE=settings.test $(BIN)/python manage.py outbox_bench --json

## constraints: re-pin every transitive dependency from the current venv.
constraints: install-dev
	@(echo "# Every package the requirements pull in, pinned (regenerate with: make constraints)."; \
		$(BIN)/pip freeze --exclude pip) > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache staticfiles test-artifacts
