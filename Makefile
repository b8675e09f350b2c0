# toolclash — `make help` lists the targets. `make run` and `make test` install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := postgresql postgresql-contrib pgbouncer redis-server clickhouse-server prometheus \
  prometheus-postgres-exporter prometheus-redis-exporter prometheus-pgbouncer-exporter chromium chromium-driver \
  docker-compose iproute2 iptables
# `make run`: every agent kind through a one-minute ramp 5 -> 10 -> 25 -> 50 -> 100 agents
# (override: make run STAGE_SECONDS=30 ARGS="--strategy serializable").
STAGES ?= 5,10,25,50,100
STAGE_SECONDS ?= 12
WORKERS ?= 4
ARGS ?=
LOCUSTFILE ?= locustfiles/mixed.py

.PHONY: help setup apt venv run observe distributed ui test bench chaos lint clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: apt venv ## install server packages (apt) and the virtualenv; a no-op when present

apt: ## apt-get install the server packages that are missing
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "make setup: run as root to apt-get install$$missing" >&2; exit 2; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(STAMP) ## build .venv from the pinned requirements

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
	  { echo "installing python3-venv"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $@

run: setup ## the main job: every agent kind through a 1-minute ramp on the embedded stack, checks, verdict
	$(VENV)/bin/locust -f $(LOCUSTFILE) --headless --stages $(STAGES) --stage-seconds $(STAGE_SECONDS) \
	  --stop-timeout 5 $(ARGS)

observe: setup ## `make run` scraped by a private Prometheus in .stack/ that stays up afterwards (URL printed)
	$(PY) -m toolclash.stack up $(foreach s,postgres auth_postgres pgbouncer clickhouse redis prometheus,--service $(s))
	@eval "$$($(PY) -m toolclash.stack env)"; $(VENV)/bin/locust -f $(LOCUSTFILE) --headless --stages $(STAGES) \
	  --stage-seconds $(STAGE_SECONDS) --stop-timeout 5 --metrics-linger-s 10 $(ARGS); code=$$?; \
	  echo "Prometheus: $$PROMETHEUS_URL (alerts: $$PROMETHEUS_URL/alerts; stop: $(PY) -m toolclash.stack down)"; \
	  exit $$code

distributed: setup ## the full ramp with a master and WORKERS worker processes on this machine (default 4)
	$(VENV)/bin/locust -f $(LOCUSTFILE) --headless --processes $(WORKERS) --master-bind-host 127.0.0.1 \
	  --stages $(STAGES) --stage-seconds 30 --stop-timeout 5 $(ARGS)

ui: setup ## open Locust's web UI on http://127.0.0.1:8089 (embedded stack)
	$(VENV)/bin/locust -f $(LOCUSTFILE) --class-picker --web-host 127.0.0.1 $(ARGS)

test: setup ## run the whole test suite against real servers
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup ## speed figures as ratios against pgbench in the same run (not part of test)
	$(PY) -m bench $(ARGS)

chaos: setup ## the long fault matrix: every fault kind x scenario x correct/known-bad (minutes; not in test or CI)
	$(PY) -m pytest -q chaos $(PYTEST_ARGS)

lint: setup ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean: ## remove the virtualenv, caches and reports
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache reports .stack
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
