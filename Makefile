# skill-credits — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv from PATH, else the copy pip installs (`make install` puts it there).
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1
# The images scripts/build-images.sh builds from Debian packages, with no registry.
LOCAL_IMAGES := skill-credits-local
# testcontainers on those images: no Ryuk (the reaper's image is a registry's; the fixtures
# remove their containers themselves) and the published ports reached on this machine's loopback
# (a /.dockerenv file would otherwise make it guess it runs inside a container).
CONTAINERS_ENV := TEST_SERVERS=containers \
	TEST_POSTGRES_IMAGE=$(LOCAL_IMAGES)/postgres:15 TEST_REDIS_IMAGE=$(LOCAL_IMAGES)/redis:7 \
	TESTCONTAINERS_RYUK_DISABLED=true TESTCONTAINERS_CONNECTION_MODE=docker_host TC_HOST=127.0.0.1

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-16s\033[0m %s\n", $$1, $$2}'

.PHONY: uv
uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv

.PHONY: install
install: uv ## Install the locked dependencies, test tools included, into .venv
	$(UV) sync --frozen

# What running needs, no test tools (--inexact: keeps any already installed).
.PHONY: install-runtime
install-runtime: uv
	$(UV) sync --frozen --no-dev --inexact

.PHONY: migrate
migrate: install-runtime ## Create the database if missing and upgrade the schema
	$(UV) run --no-sync skill-credits migrate

.PHONY: run
run: migrate ## Install what running needs, migrate, serve on http://127.0.0.1:8000 (HOST, PORT, WORKERS)
	$(UV) run --no-sync skill-credits serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

.PHONY: test
test: install ## Run the whole test suite against real PostgreSQL and Redis (TEST_SERVERS=containers: in containers)
	$(UV) run pytest

# Citus, where no registry carries it: built from its source (a .tar.gz or a tree) unless installed.
CITUS_SRC ?=
# The suites that run on a cluster too (docs/citus.md says which do not, and why).
CITUS_TESTS := $(addprefix tests/integration/,test_citus.py test_ledger.py test_ledger_model.py \
	test_batches.py test_holds.py test_events.py test_inputs.py test_grants.py test_limits.py \
	test_cache.py test_roles.py test_db.py test_usage.py test_skills.py test_admin_pages.py \
	test_operations.py test_grants_sql.py test_recharges.py)

.PHONY: citus
citus: ## Build Citus from CITUS_SRC (unless installed), start a coordinator and two workers on 9700-9702
	scripts/citus-cluster.sh start $(CITUS_SRC)

.PHONY: test-citus
test-citus: install citus ## The integration suite on that Citus cluster (TEST_SERVERS=citus; docs/citus.md)
	TEST_SERVERS=citus $(UV) run pytest $(CITUS_TESTS)

.PHONY: images
images: ## Build PostgreSQL, Redis and Python images from Debian packages (root; reuses built ones)
	scripts/build-images.sh

.PHONY: test-containers
test-containers: install images ## The whole suite with PostgreSQL and Redis in containers of those images
	$(CONTAINERS_ENV) $(UV) run pytest

.PHONY: compose-smoke
compose-smoke: images ## compose.yaml on those images: build, up, /readyz, credit, charge, down
	POSTGRES_IMAGE=$(LOCAL_IMAGES)/postgres:15 REDIS_IMAGE=$(LOCAL_IMAGES)/redis:7 \
	PYTHON_IMAGE=$(LOCAL_IMAGES)/python:3.11 scripts/compose-smoke.sh

.PHONY: compose-smoke-citus
compose-smoke-citus: images ## compose.yaml's citus profile the same way: its Citus image built from CITUS_SRC, else the official one
	$(if $(CITUS_SRC),CITUS_SRC=$(CITUS_SRC) scripts/build-images.sh)
	REDIS_IMAGE=$(LOCAL_IMAGES)/redis:7 PYTHON_IMAGE=$(LOCAL_IMAGES)/python:3.11 \
	$(if $(CITUS_SRC),CITUS_IMAGE=$(LOCAL_IMAGES)/citus:$(patsubst citus-%.tar.gz,%,$(notdir $(CITUS_SRC)))-pg15) \
	scripts/compose-smoke.sh citus

.PHONY: bench
bench: install ## Benchmarks (wrk, ~55 min): BENCHMARKS.md, docs/bench-throughput.png, usage on a 10M-row log
	@command -v wrk >/dev/null 2>&1 || { echo "installing wrk"; apt-get install -y -qq wrk; }
	$(UV) sync --frozen --group bench
	$(UV) run --group bench python bench/run.py
	$(UV) run --group bench python bench/usage.py

.PHONY: lint
lint: install ## Ruff
	$(UV) run ruff check src tests migrations

.PHONY: fmt
fmt: install ## Format with ruff
	$(UV) run ruff format src tests migrations
