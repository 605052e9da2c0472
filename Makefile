# Tether — `make run` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
SPICEDB_VERSION := v1.56.2
SQLC_VERSION    := v1.31.1
HELM_VERSION    := v3.22.0
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

HELM_CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/tether/helm-$(HELM_VERSION)
HELM       := $(HELM_CACHE)/helm
CHART      := deploy/helm/tether
# The Kubernetes version the chart is rendered for (helm template's default is older than the chart's floor).
KUBE_VERSION := 1.31.0

$(HELM):
	@mkdir -p $(HELM_CACHE)
	GOBIN=$(HELM_CACHE) $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

chart: $(HELM) ## lint and render the Helm chart (default and production values), check the renderings; bad values must fail
	@cmp -s deploy/prometheus/tether-alerts.yml $(CHART)/files/tether-alerts.yml || \
	  { echo "chart: $(CHART)/files/tether-alerts.yml differs from deploy/prometheus/tether-alerts.yml: copy it"; exit 1; }
	$(HELM) lint --strict --kube-version $(KUBE_VERSION) $(CHART)
	$(HELM) lint --strict --kube-version $(KUBE_VERSION) $(CHART) -f $(CHART)/ci/production-values.yaml
	@mkdir -p .chart
	$(HELM) template tether $(CHART) --kube-version $(KUBE_VERSION) > .chart/default.yaml
	$(HELM) template tether $(CHART) --kube-version $(KUBE_VERSION) -f $(CHART)/ci/production-values.yaml > .chart/production.yaml
	$(GO) run ./cmd/chartcheck -default .chart/default.yaml -production .chart/production.yaml
	@for bad in 'secrets.existingSecret=' 'secrets.keys.databaseURL=' 'config.authIssuer=https://idp.example,config.authAudience=t,secrets.keys.authHMACSecret=hmac' \
	            'config.authIssuer=https://idp.example' 'config.extra.TETHER_SPICEDB_TOKEN=x'; do \
	  if $(HELM) template tether $(CHART) --kube-version $(KUBE_VERSION) --set "$$bad" >/dev/null 2>&1; then echo "chart: rendered with bad values ($$bad)"; exit 1; fi; \
	done; echo "chart: bad values refused"

IMAGE ?= localhost/tether:dev
image: ## build the container image with podman: static tether + this machine's CA bundle, FROM scratch (IMAGE=name:tag)
	@command -v podman >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman >/dev/null; } || \
	  { echo "install podman (apt-get install podman)"; exit 1; }
	rm -rf .image && mkdir -p .image
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o .image/tether ./cmd/tether
	@! ldd .image/tether >/dev/null 2>&1 || { echo "image: .image/tether is not static"; exit 1; }
	cp /etc/ssl/certs/ca-certificates.crt .image/
	podman build --quiet -f Containerfile -t $(IMAGE) .image
	@test "$$(podman image inspect --format '{{.Config.User}} {{.Config.Entrypoint}}' $(IMAGE))" = "65532:65532 [/tether]" || \
	  { echo "image: want user 65532:65532 and entrypoint /tether"; exit 1; }
	@echo "image: $(IMAGE) built ($$(podman image inspect --format '{{.Size}}' $(IMAGE)) bytes)"

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

.PHONY: help build deps run test screenshots fuzz bench soak alerts generate verify chart image
