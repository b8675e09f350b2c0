# toolclash — `make help` lists the targets. `make run` and `make test` install what they need (run: servers and
# runtime packages only; test: browser, docker-compose and development tools too), each step saying what and how long.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
UV_VERSION := 0.13.9
APT_RUN := postgresql postgresql-contrib pgbouncer redis-server clickhouse-server prometheus \
  prometheus-postgres-exporter prometheus-redis-exporter prometheus-pgbouncer-exporter
APT_TEST := chromium chromium-driver docker-compose iproute2 iptables
# `make run`: every agent kind through a one-minute ramp 5 -> 10 -> 25 -> 50 -> 100 agents
# (override: make run STAGE_SECONDS=30 ARGS="--strategy serializable").
STAGES ?= 5,10,25,50,100
STAGE_SECONDS ?= 12
WORKERS ?= 4
ARGS ?=
TEST_WORKERS ?= 2
LOCUSTFILE ?= locustfiles/mixed.py
# each setup step says what it does and how long it took
NOW = date +%s.%N
SINCE = awk -v a="$$t0" -v b="$$($(NOW))" 'BEGIN{printf "%.1f s", b-a}'

.PHONY: help setup setup-run apt-run apt-test venv-run venv run observe distributed ui test docs bench isolation chaos \
  lint clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup-run: apt-run venv-run ## what `make run` needs: server packages (apt) and the runtime virtualenv

setup: setup-run apt-test venv ## everything, test tools included (Chromium, docker-compose, pytest, mkdocs…)

# apt-get install the packages of $(1) that are missing, saying which and how long it took
define apt_install
	@t0=$$($(NOW)); missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "setup: $(2): $(words $(1)) Debian packages present ($$($(SINCE)))"; exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "setup: run as root to apt-get install$$missing" >&2; exit 2; fi; \
	echo "setup: $(2): apt-get install$$missing"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing \
	  >/dev/null && echo "setup: $(2): installed$$missing in $$($(SINCE))"
endef

apt-run: ## apt-get install the server packages that are missing
	$(call apt_install,$(APT_RUN),servers)

apt-test: ## apt-get install what only the tests use (Chromium, docker-compose, iproute2)
	$(call apt_install,$(APT_TEST),test tools)

venv-run: $(VENV)/.installed-run ## .venv with the runtime pins (requirements.txt)

venv: $(STAMP) ## .venv with every pin, test tools included (requirements-dev.txt)

$(VENV)/bin/python:
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
	  { echo "setup: apt-get install python3-venv"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }
	@t0=$$($(NOW)); $(PYTHON) -m venv $(VENV) && echo "setup: created $(VENV) in $$($(SINCE))"

# uv installs the pinned packages several times faster than pip (parallel downloads, one resolution)
$(VENV)/bin/uv: | $(VENV)/bin/python
	@t0=$$($(NOW)); $(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION) && \
	echo "setup: uv $(UV_VERSION) installed into $(VENV) in $$($(SINCE))"

$(VENV)/.installed-run: requirements.txt | $(VENV)/bin/uv
	@t0=$$($(NOW)); echo "setup: install requirements.txt ($$(grep -c '==' requirements.txt) pinned packages)"; \
	$(VENV)/bin/uv pip install --python $(PY) -q -r requirements.txt && touch $@ && \
	echo "setup: runtime packages installed in $$($(SINCE))"

$(STAMP): requirements.txt requirements-dev.txt $(VENV)/.installed-run
	@t0=$$($(NOW)); echo "setup: install requirements-dev.txt (test and documentation tools)"; \
	$(VENV)/bin/uv pip install --python $(PY) -q -r requirements-dev.txt && touch $@ && \
	echo "setup: development packages installed in $$($(SINCE))"

run: setup-run ## the main job: every agent kind through a 1-minute ramp on the embedded stack, checks, verdict
	$(VENV)/bin/locust -f $(LOCUSTFILE) --headless --stages $(STAGES) --stage-seconds $(STAGE_SECONDS) \
	  --stop-timeout 5 $(ARGS)

observe: setup-run ## `make run` scraped by a private Prometheus in .stack/ that stays up afterwards (URL printed)
	$(PY) -m toolclash.stack up $(foreach s,postgres auth_postgres pgbouncer clickhouse redis prometheus,--service $(s))
	@eval "$$($(PY) -m toolclash.stack env)"; $(VENV)/bin/locust -f $(LOCUSTFILE) --headless --stages $(STAGES) \
	  --stage-seconds $(STAGE_SECONDS) --stop-timeout 5 --metrics-linger-s 10 $(ARGS); code=$$?; \
	  echo "Prometheus: $$PROMETHEUS_URL (alerts: $$PROMETHEUS_URL/alerts; stop: $(PY) -m toolclash.stack down)"; \
	  exit $$code

distributed: setup-run ## the full ramp with a master and WORKERS worker processes on this machine (default 4)
	$(VENV)/bin/locust -f $(LOCUSTFILE) --headless --processes $(WORKERS) --master-bind-host 127.0.0.1 \
	  --stages $(STAGES) --stage-seconds 30 --stop-timeout 5 $(ARGS)

ui: setup-run ## open Locust's web UI on http://127.0.0.1:8089 (embedded stack)
	$(VENV)/bin/locust -f $(LOCUSTFILE) --class-picker --web-host 127.0.0.1 $(ARGS)

test: setup ## run the whole test suite against real servers (the documentation's strict build included)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

docs: venv ## build the documentation into site/ (mkdocs, strict: a broken link fails)
	$(PY) -m mkdocs build --strict

bench: setup ## speed figures as ratios against pgbench in the same run (not part of test)
	$(PY) -m bench $(ARGS)

isolation: setup ## the Hermitage matrix under load: 3 workloads x 3 levels; table to reports/ and docs/isolation.md
	TOOLCLASH_ISOLATION_MATRIX=full $(PY) -m pytest -q -s tests/test_isolation.py $(PYTEST_ARGS)

chaos: setup ## the long fault matrix: every fault kind x scenario x correct/known-bad (minutes; not in test or CI)
	$(PY) -m pytest -q chaos $(PYTEST_ARGS)

lint: setup ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean: ## remove the virtualenv, caches and reports
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache reports .stack site
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
