# Sluice: two commands matter.
#   make run   - private Postgres (unless DATABASE_URL is set), migrate, run API + worker
#   make test  - everything CI runs
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
PG := scripts/pg.sh
# The private cluster's URL unless the caller brings a database.
DB_URL = $(if $(DATABASE_URL),$(DATABASE_URL),$(shell $(PG) start))

.PHONY: help run test lint fmt migrate db db-stop build release bench soak toolchain

help:
	@echo "make run      - start a private Postgres (if DATABASE_URL is unset), migrate, run API + worker"
	@echo "make test     - fmt check, clippy -D warnings, all tests against a private Postgres"
	@echo "make migrate  - apply migrations"
	@echo "make lint     - fmt check and clippy"
	@echo "make bench    - benchmarks (prints figures beside targets)"
	@echo "make db       - start the private Postgres and print its URL; make db-stop stops it"

toolchain:
	@scripts/ensure-tools.sh

db:
	@$(PG) start

db-stop:
	@$(PG) stop

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release --workspace

fmt:
	$(CARGO) fmt --all

lint: toolchain
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

migrate: release
	DATABASE_URL='$(DB_URL)' target/release/sluicectl migrate

test: lint
	@url='$(DB_URL)'; echo "using database $$url"; \
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

run: release
	@url='$(DB_URL)'; \
	DATABASE_URL="$$url" target/release/sluicectl migrate && \
	DATABASE_URL="$$url" scripts/run-local.sh

bench: release
	@url='$(DB_URL)'; DATABASE_URL="$$url" scripts/bench.sh

soak: release
	@url='$(DB_URL)'; DATABASE_URL="$$url" scripts/soak.sh
