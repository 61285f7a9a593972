# hmba-db: every target sets itself up (a local .venv from PyPI) and needs only Python 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A second client with DuckDB 1.x, as BI drivers embed: the tests open the catalog with it.
DUCKDB1 := .venv-duckdb1
DUCKDB1_STAMP := $(DUCKDB1)/.installed
DUCKDB1_VERSION := 1.1.3
DATA ?= data
SCALE ?= 0.01
SPECIES ?= Marmoset
WHAT ?= raw,metadata,taxonomy

.PHONY: help demo test test-bi bi-superset bi-evidence bench bench-full bench-sql lint typecheck format synth check db docs clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# TileDB-SOMA (the engine behind CELLxGENE Census), the benchmark's anchor, in its own env: it pins its own deps.
SOMA := .venv-soma
SOMA_STAMP := $(SOMA)/.installed
SOMA_VERSION := 2.3.0

$(SOMA_STAMP):
	$(PYTHON) -m venv $(SOMA)
	$(SOMA)/bin/pip install --quiet tiledbsoma==$(SOMA_VERSION)
	touch $(SOMA_STAMP)

# The DuckDB Node client (embeds DuckDB 1.5, as BI plugins embed their own builds), for the catalog tests.
NODE_STAMP := tests/node/node_modules/.installed

$(NODE_STAMP): tests/node/package.json
	npm install --silent --no-package-lock --no-audit --no-fund --prefix tests/node
	touch $(NODE_STAMP)

$(DUCKDB1_STAMP):
	$(PYTHON) -m venv $(DUCKDB1)
	$(DUCKDB1)/bin/pip install --quiet duckdb==$(DUCKDB1_VERSION)
	touch $(DUCKDB1_STAMP)

# A client with DuckDB 1.5.5 and httpfs from PyPI (DuckDB 2.0 fetches httpfs from DuckDB's own repository at
# run time, which our machines cannot reach): the tests read a published store over HTTP with it.
REMOTE := .venv-remote
REMOTE_STAMP := $(REMOTE)/.installed
REMOTE_DUCKDB := 1.5.5

$(REMOTE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(REMOTE)
	$(REMOTE)/bin/pip install --quiet -e . duckdb==$(REMOTE_DUCKDB) duckdb-extension-httpfs==$(REMOTE_DUCKDB) \
		duckdb-extensions==$(REMOTE_DUCKDB)
	touch $(REMOTE_STAMP)

# Apache Superset in its own environment (its pins clash with ours: SQLAlchemy 1.4, pandas 2.1), for
# `make bi-superset` and the BI tests. Superset 6.1.0's wheel misses three of its needs: flask-caching is
# pinned to 2.4.1 as Superset's own requirements/base.txt pins it (2.5 breaks its metadata cache,
# apache/superset#43860), and rich (its CLI) and cachetools (its engine specs) are not declared.
SUPERSET := .venv-superset
SUPERSET_STAMP := $(SUPERSET)/.installed

$(SUPERSET_STAMP):
	$(PYTHON) -m venv $(SUPERSET)
	$(SUPERSET)/bin/pip install --quiet "apache-superset==6.1.0" "duckdb-engine>=0.17" "flask-caching==2.4.1" \
		rich cachetools
	touch $(SUPERSET_STAMP)

# Evidence (npm) for `make bi-evidence`: its packages in bi/evidence/node_modules. TypeScript is pinned to the
# 5.4.2 that @evidence-dev/evidence 40.1.8 asks as a peer (npm would otherwise take 7.x and refuse).
EVIDENCE_STAMP := bi/evidence/node_modules/.installed

$(EVIDENCE_STAMP): bi/evidence/package.json
	npm install --silent --no-audit --no-fund --prefix bi/evidence
	touch $(EVIDENCE_STAMP)

# chDB (ClickHouse in-process) for `make bench-sql`: the peer engine a user might pick, on the same Parquet
# files, in its own environment (it ships its own ClickHouse build and pins nothing of ours).
CHDB := .venv-chdb
CHDB_STAMP := $(CHDB)/.installed

$(CHDB_STAMP):
	$(PYTHON) -m venv $(CHDB)
	$(CHDB)/bin/pip install --quiet "chdb>=4.4,<4.5"
	touch $(CHDB_STAMP)

# Java 17 for the Spark tests (pyspark comes with the test extras): Debian's JRE when none is installed.
JAVA_STAMP := $(VENV)/.java

$(JAVA_STAMP): $(STAMP)
	@if [ -z "$$JAVA_HOME" ] && ! command -v java >/dev/null 2>&1; then \
		echo "installing Java 17 (openjdk-17-jre-headless) for the Spark tests"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq openjdk-17-jre-headless >/dev/null; \
	fi
	java -version 2>&1 | head -1
	touch $(JAVA_STAMP)

# Chromium for the explorer's browser tests (Playwright drives Debian's build; its own download is not
# reachable here): Debian's chromium and chromium-driver when no Chromium is installed.
CHROMIUM_STAMP := $(VENV)/.chromium

$(CHROMIUM_STAMP): $(STAMP)
	@if ! command -v chromium >/dev/null 2>&1; then \
		echo "installing Chromium (Debian's chromium, chromium-driver) for the explorer's browser tests"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi
	chromium --version 2>/dev/null | head -1
	touch $(CHROMIUM_STAMP)

# wrk (Debian's HTTP load generator) for the server's benchmark: 32 connections over a mix of requests.
WRK_STAMP := $(VENV)/.wrk

$(WRK_STAMP): $(STAMP)
	@if ! command -v wrk >/dev/null 2>&1; then \
		echo "installing wrk (the HTTP load generator) for the server's benchmark"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq wrk >/dev/null; \
	fi
	touch $(WRK_STAMP)

demo: $(STAMP) ## generate a synthetic release, build and verify a store, answer the notebook question
	$(BIN)/hmba-db synth $(DATA)/demo-release --scale 0.005 --force
	$(BIN)/hmba-db check $(DATA)/demo-release --md5
	$(BIN)/hmba-db build $(DATA)/demo-release $(DATA)/demo-store
	$(BIN)/hmba-db verify $(DATA)/demo-store
	$(BIN)/python -m build_db.tools.demo $(DATA)/demo-release $(DATA)/demo-store
	$(BIN)/hmba-db query $(DATA)/demo-store markers --param level=Subclass --param "term=STR D1 MSN" \
		--param n=10 --plot $(DATA)/demo-markers.png

test: $(STAMP) $(DUCKDB1_STAMP) $(NODE_STAMP) $(REMOTE_STAMP) $(JAVA_STAMP) $(CHROMIUM_STAMP) ## run the test suite (fast tests only; slow ones run in bench)
	$(BIN)/pytest -q

test-bi: $(STAMP) $(SUPERSET_STAMP) $(EVIDENCE_STAMP) $(CHROMIUM_STAMP) ## the BI tools' tests: Superset and Evidence on a tiny store, their charts' numbers against the store's, drawn in Chromium
	$(BIN)/pytest -q -m bi

BI_STORE ?= $(DATA)/demo-store

bi-superset: $(STAMP) $(SUPERSET_STAMP) ## Superset on 127.0.0.1:8088 with the HMBA-BG markers dashboard over BI_STORE (default: the demo store, made if missing)
	@test -e $(BI_STORE)/catalog.duckdb || $(MAKE) demo
	$(BIN)/python -m build_db.bi.superset up $(BI_STORE) --home $(DATA)/superset

bi-evidence: $(STAMP) $(EVIDENCE_STAMP) ## Evidence pages (dot plot, markers, cells per level, gene by region) over BI_STORE, built and served on 127.0.0.1:3000; GENES=a,b,c for the panel
	@test -e $(BI_STORE)/catalog.duckdb || $(MAKE) demo
	$(BIN)/python -m build_db.bi.evidence up $(BI_STORE) $(if $(GENES),--genes $(GENES))

bench: $(STAMP) $(DUCKDB1_STAMP) $(NODE_STAMP) $(SOMA_STAMP) $(REMOTE_STAMP) $(JAVA_STAMP) $(WRK_STAMP) $(CHROMIUM_STAMP) ## synth, build and query benchmarks at --scale 0.01 and 0.1, the server, its page and the server under abuse, then the slow tests
	$(BIN)/python -m build_db.tools.bench --out $(DATA)/bench
	$(BIN)/python -m build_db.tools.bench_remote $(DATA)/bench/store-0.01 --spark
	$(BIN)/python -m build_db.tools.bench_serve $(DATA)/bench/store-0.1 --release $(DATA)/bench/release-0.1 \
		--json $(DATA)/bench/serve-0.1.json
	$(BIN)/python -m build_db.tools.bench_explorer $(DATA)/bench/store-0.1 --json $(DATA)/bench/explorer-0.1.json
	$(BIN)/python -m build_db.tools.bench_abuse $(DATA)/bench/store-0.1 --json $(DATA)/bench/abuse-0.1.json
	$(MAKE) bench-sql
	$(BIN)/pytest -q -m slow

# SPECIES given on the command line wins; otherwise Macaque (Human needs ~25 GB of release: check df -h).
FULL_SPECIES := $(if $(filter command line,$(origin SPECIES)),$(SPECIES),Macaque)

bench-full: $(STAMP) $(WRK_STAMP) $(CHROMIUM_STAMP) $(CHDB_STAMP) ## one species at --scale 1 (Macaque, or SPECIES=Human): synth once (~22 min, 11.5 GB), build, query table, the server and its page
	$(BIN)/python -m build_db.tools.bench_full --out $(DATA)/bench-full --species $(FULL_SPECIES)
	$(BIN)/python -m build_db.tools.bench_serve $(DATA)/bench-full/store --release $(DATA)/bench-full/release \
		--json $(DATA)/bench-full/serve.json
	$(BIN)/python -m build_db.tools.bench_explorer $(DATA)/bench-full/store --json $(DATA)/bench-full/explorer.json
	$(BIN)/python -m build_db.tools.bench_sql $(DATA)/bench-full/store --species $(FULL_SPECIES) \
		--release $(DATA)/bench-full/release --json $(DATA)/bench-full/sql.json

SQL_DATA := $(DATA)/bench-sql

bench-sql: $(STAMP) $(CHDB_STAMP) ## ad hoc SQL from either side on Human --scale 0.1 (made once): the views, routed, the floor, chDB, the h5ad
	@test -e $(SQL_DATA)/release/releases/20250630/manifest.json || $(BIN)/hmba-db synth $(SQL_DATA)/release --scale 0.1 --species Human --force --quiet
	@test -e $(SQL_DATA)/store/catalog.duckdb || $(BIN)/hmba-db build $(SQL_DATA)/release $(SQL_DATA)/store --quiet
	$(BIN)/python -m build_db.tools.bench_sql $(SQL_DATA)/store --release $(SQL_DATA)/release --json $(SQL_DATA)/sql.json

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check build_db tests
	$(BIN)/ruff format --check build_db tests

typecheck: $(STAMP) ## mypy on build_db/ (the public API strictly; pyproject.toml says how)
	$(BIN)/mypy

format: $(STAMP) ## apply ruff formatting and fixable lints
	$(BIN)/ruff format build_db tests
	$(BIN)/ruff check --fix build_db tests

synth: $(STAMP) ## write a synthetic release at SCALE (default 0.01, all genes) to DATA/release-SCALE
	$(BIN)/hmba-db synth $(DATA)/release-$(SCALE) --scale $(SCALE) --force

check: $(STAMP) ## check the release written by `make synth`
	$(BIN)/hmba-db check $(DATA)/release-$(SCALE) --md5

db: $(STAMP) ## download SPECIES (default Marmoset) of the real release and build DATA/store from it
	$(BIN)/hmba-db download $(DATA)/real-release --species $(SPECIES) --what $(WHAT)
	$(BIN)/hmba-db check $(DATA)/real-release --species $(SPECIES) --what $(WHAT)
	$(BIN)/hmba-db build $(DATA)/real-release $(DATA)/store --species $(SPECIES)
	$(BIN)/hmba-db info $(DATA)/store

docs: $(STAMP) $(CHROMIUM_STAMP) ## regenerate the manual's generated parts (named-analysis examples, curl examples and the explorer's screenshots from the demo store, the data dictionary)
	@test -f $(DATA)/demo-store/catalog.duckdb || { echo "no $(DATA)/demo-store: run make demo first"; exit 1; }
	$(BIN)/python -m build_db.tools.docs $(DATA)/demo-store
	$(BIN)/python -m build_db.store.schema --write docs/data-dictionary.md

clean: ## remove generated data, caches and the virtualenv
	rm -rf $(DATA) $(VENV) $(DUCKDB1) $(SOMA) $(REMOTE) $(SUPERSET) $(CHDB) tests/node/node_modules bi/evidence/node_modules .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
