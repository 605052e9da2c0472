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

build: ## build tether and devstack into bin/
	$(GO) build -o bin/tether ./cmd/tether
	$(GO) build -o bin/devstack ./cmd/devstack

run: build bin/spicedb ## run Tether on a local Postgres + SpiceDB (data kept in .dev/)
	bin/devstack --dir .dev -- bash -c '\
	  set -e; bin/tether migrate up; bin/tether migrate status; \
	  echo; echo "Tether:      $${TETHER_PUBLIC_URL:-http://$${TETHER_HTTP_ADDR:-127.0.0.1:8080}}"; \
	  echo "Readiness:   $${TETHER_PUBLIC_URL:-http://$${TETHER_HTTP_ADDR:-127.0.0.1:8080}}/readyz"; \
	  echo "API spec:    $${TETHER_PUBLIC_URL:-http://$${TETHER_HTTP_ADDR:-127.0.0.1:8080}}/api/data/spec.json"; \
	  echo "Admin token (user dev-admin):"; bin/tether token --sub dev-admin --admin; echo; \
	  exec bin/tether serve'

test: build bin/spicedb ## run all tests (race detector) on a throwaway Postgres + SpiceDB
	bin/devstack --test -- $(GO) test $(TEST_FLAGS) ./...

generate: ## regenerate sqlc code
	$(GO) run github.com/sqlc-dev/sqlc/cmd/sqlc@$(SQLC_VERSION) generate

verify: ## fail if generated code is stale, code is unformatted or vet complains
	$(GO) run github.com/sqlc-dev/sqlc/cmd/sqlc@$(SQLC_VERSION) diff
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) mod tidy -diff

.PHONY: help build run test generate verify
