# Tether — `make run` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
SPICEDB_VERSION := v1.56.2
SQLC_VERSION    := v1.31.1
GO              ?= go
TEST_FLAGS      ?= -race -count=1 -timeout 20m

.DEFAULT_GOAL := help

help: ## list targets
	@grep -hE '^[a-z/.-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

SPICEDB_CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/tether/spicedb-$(SPICEDB_VERSION)

bin/spicedb: ## build the pinned SpiceDB into bin/ (once per machine, ~5 min cold; cached outside the clone)
	@mkdir -p bin $(SPICEDB_CACHE)
	@test -x $(SPICEDB_CACHE)/spicedb || GOBIN=$(SPICEDB_CACHE) $(GO) install github.com/authzed/spicedb/cmd/spicedb@$(SPICEDB_VERSION)
	cp $(SPICEDB_CACHE)/spicedb bin/spicedb

build: ## build tether, devstack and devprovider into bin/
	$(GO) build -o bin/tether ./cmd/tether
	$(GO) build -o bin/devstack ./cmd/devstack
	$(GO) build -o bin/devprovider ./cmd/devprovider

deps: ## install what the tests need and a fresh Debian machine lacks (Postgres server, chromium)
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
	  { echo "install the Postgres server binaries (apt-get install postgresql)"; exit 1; }
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  { echo "install chromium (apt-get install chromium): the browser tests need it"; exit 1; }
	@[ "$$(id -u)" != 0 ] || id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres

run: build bin/spicedb ## run Tether + a dev OAuth2 provider on a local Postgres + SpiceDB (data kept in .dev/)
	bin/devstack --dir .dev -- scripts/run.sh

test: deps build bin/spicedb ## run all tests (race detector) on a throwaway Postgres + SpiceDB
	bin/devstack --test -- $(GO) test $(TEST_FLAGS) ./...

screenshots: deps build bin/spicedb ## retake the page's screenshots in docs/screenshots (the browser tests)
	TETHER_SCREENSHOTS=$(CURDIR)/docs/screenshots bin/devstack --test -- $(GO) test -count=1 -run '^TestBrowser' ./app

FUZZTIME ?= 2m
fuzz: build bin/spicedb ## run every fuzz target for FUZZTIME (default 2m each)
	bin/devstack --test -- bash -c 'set -e; \
	  for target in app:FuzzValidateNextURL app:FuzzDecodeJSON app:FuzzParseState jobs:FuzzSubjectID; do \
	    $(GO) test -run "^$$" -fuzz "^$${target#*:}$$" -fuzztime $(FUZZTIME) -parallel 2 ./$${target%%:*}; \
	  done'

bench: build bin/spicedb ## benchmarks with same-run baselines (BENCH_SCALE=full, BENCH_ONLY=1,2, BENCH_OUT=file.json)
	$(GO) run ./cmd/bench

SOAK_DURATION ?= 5m
soak: build bin/spicedb ## mixed traffic against tether serve for SOAK_DURATION: no 5xx, no drift, flat memory
	SOAK_DURATION=$(SOAK_DURATION) $(GO) run ./cmd/soak

alerts: ## check and unit-test the Prometheus alert rules (promtool)
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || \
	  { echo "install promtool (apt-get install prometheus)"; exit 1; }
	cd deploy/prometheus && promtool check rules tether-alerts.yml && promtool test rules tether-alerts.test.yml

generate: ## regenerate sqlc code
	$(GO) run github.com/sqlc-dev/sqlc/cmd/sqlc@$(SQLC_VERSION) generate

verify: ## fail if generated code is stale, code is unformatted or vet complains
	$(GO) run github.com/sqlc-dev/sqlc/cmd/sqlc@$(SQLC_VERSION) diff
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) mod tidy -diff

.PHONY: help build deps run test screenshots fuzz bench soak alerts generate verify
