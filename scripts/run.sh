#!/usr/bin/env bash
# The body of `make run`, run by bin/devstack (which provides Postgres and
# SpiceDB through TETHER_* variables): migrate, start the dev OAuth2 provider
# and Tether, register the provider "dev" with a demo pool, print how to use it.
set -euo pipefail

export TETHER_HTTP_ADDR=${TETHER_HTTP_ADDR:-127.0.0.1:8080}
export TETHER_PUBLIC_URL=${TETHER_PUBLIC_URL:-http://$TETHER_HTTP_ADDR}
export TETHER_DEV_MODE=${TETHER_DEV_MODE:-true}
export TETHER_DEVPROVIDER_ADDR=${TETHER_DEVPROVIDER_ADDR:-localhost:5556}
export TETHER_DEVPROVIDER_REDIRECT_URI=$TETHER_PUBLIC_URL/api/data/oauth2/callback
export TETHER_DEVPROVIDER_CLIENT_SECRET=${TETHER_DEVPROVIDER_CLIENT_SECRET:-tether-dev-secret}

bin/tether migrate up
bin/tether migrate status

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

bin/devprovider > .dev/devprovider.log 2>&1 &
pids+=($!)
bin/tether serve &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fsS "$TETHER_PUBLIC_URL/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

admin=$(bin/tether token --sub dev-admin --admin)
api() { curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' "$@"; }
code=$(api -X POST "$TETHER_PUBLIC_URL/api/data/oauth2/providers" -d "{
  \"id\": \"dev\", \"kind\": \"generic_oidc\", \"display_name\": \"Dev provider (test-user@localhost / verysecure)\",
  \"client_id\": \"tether-dev\", \"client_secret\": \"$TETHER_DEVPROVIDER_CLIENT_SECRET\",
  \"scope\": \"openid offline_access\", \"issuer_url\": \"http://$TETHER_DEVPROVIDER_ADDR/\"}")
if [ "$code" = 201 ]; then
  api -X POST "$TETHER_PUBLIC_URL/api/data/resource_pools" -d '{"name": "demo-gpu", "remote": {"provider_id": "dev"}}' >/dev/null
fi

cat <<MSG

  Tether is running.
    Page:       $TETHER_PUBLIC_URL/ui/      (dev sign-in; connect "Dev provider", log in as test-user@localhost / verysecure)
    Readiness:  $TETHER_PUBLIC_URL/readyz
    API spec:   $TETHER_PUBLIC_URL/api/data/spec.json
    Admin token (sub dev-admin):
      $admin

  Ctrl-C stops everything.
MSG
wait -n "${pids[@]}"
