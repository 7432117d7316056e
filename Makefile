# Sluice: two commands matter.
#   make run   - private Postgres (unless DATABASE_URL is set), migrate, run API + worker
#   make test  - everything CI runs
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
PG := scripts/pg.sh
# Sets the shell variable `url` in a recipe: $(DATABASE_URL) when the caller brings a
# database, else the private cluster's, started on demand. When the cluster cannot start,
# the recipe stops right there (pg.sh has said why in one line) instead of running on with
# an empty DATABASE_URL.
define db_url
url='$(DATABASE_URL)'; \
if [ -z "$$url" ]; then \
  url=$$($(PG) start) || { echo "make: stopping: no database (scripts/pg.sh start failed)" >&2; exit 1; }; \
fi
endef

.PHONY: help run test lint fmt migrate db db-up db-stop build release bench soak toolchain unused-deps

help:
	@echo "make run      - start a private Postgres (if DATABASE_URL is unset), migrate, run API + worker"
	@echo "make test     - fmt check, clippy -D warnings, all tests against a private Postgres"
	@echo "make migrate  - apply migrations"
	@echo "make lint     - fmt check and clippy"
	@echo "make unused-deps - cargo machete (installs it first if needed)"
	@echo "make bench    - benchmarks (prints figures beside targets)"
	@echo "make db       - start the private Postgres and print its URL; make db-stop stops it"

toolchain:
	@scripts/ensure-tools.sh

db:
	@$(PG) start

db-stop:
	@$(PG) stop

# Starts the database first, so `make test` stops in seconds rather than after clippy.
db-up:
	@$(db_url); echo "using database $$url"

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release --workspace

fmt:
	$(CARGO) fmt --all

lint: toolchain
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Not part of `lint`: installing cargo-machete from crates.io compiles it (minutes on a
# small machine), which would add that to every CI run. Run it when dependencies change.
unused-deps:
	@command -v cargo-machete >/dev/null || $(CARGO) install --locked cargo-machete
	cargo machete

migrate: release
	@$(db_url); DATABASE_URL="$$url" target/release/sluicectl migrate

test: db-up lint
	@$(db_url); \
	DATABASE_URL="$$url" $(CARGO) test --workspace --all-targets 2>&1 | tee .test-output.log; \
	status=$${PIPESTATUS[0]}; [ $$status -eq 0 ] || exit $$status; \
	checks=0; \
	for check in scripts/test.d/*.sh; do \
	  [ -e "$$check" ] || continue; echo "== $$check"; \
	  DATABASE_URL="$$url" bash "$$check" || exit 1; \
	  checks=$$((checks + 1)); \
	done; \
	passed=$$(grep -Eo 'test result: ok\. [0-9]+ passed' .test-output.log | awk '{s+=$$4} END {print s+0}'); \
	echo "cargo tests: $$passed passed; checks in scripts/test.d: $$checks passed"; \
	echo "summary: $$((passed + checks)) passed, 0 failed"

run: db-up release
	@$(db_url); \
	DATABASE_URL="$$url" target/release/sluicectl migrate && \
	DATABASE_URL="$$url" scripts/run-local.sh

bench: db-up release
	@$(db_url); DATABASE_URL="$$url" scripts/bench.sh

soak: db-up release
	@$(db_url); DATABASE_URL="$$url" scripts/soak.sh
