#!/usr/bin/env bash
# The body of `make run`, run by bin/devstack (which provides Postgres and
# SpiceDB through TETHER_* variables): migrate, write the CLI's environment
# to .dev/env, start the dev OAuth2 provider and Tether, register the
# provider "dev" with a demo pool (once), print how to use it.
set -euo pipefail

dev_dir=${TETHER_DEV_DIR:-.dev}
export TETHER_HTTP_ADDR=${TETHER_HTTP_ADDR:-127.0.0.1:8080}
export TETHER_PUBLIC_URL=${TETHER_PUBLIC_URL:-http://$TETHER_HTTP_ADDR}
export TETHER_DEV_MODE=${TETHER_DEV_MODE:-true}
export TETHER_DEVPROVIDER_ADDR=${TETHER_DEVPROVIDER_ADDR:-localhost:5556}
export TETHER_DEVPROVIDER_REDIRECT_URI=$TETHER_PUBLIC_URL/api/data/oauth2/callback
export TETHER_DEVPROVIDER_CLIENT_SECRET=${TETHER_DEVPROVIDER_CLIENT_SECRET:-tether-dev-secret}

# What bin/tether needs to reach these services: `source .dev/env`.
cli_vars=(TETHER_DATABASE_URL TETHER_SPICEDB_ENDPOINT TETHER_SPICEDB_TOKEN TETHER_SPICEDB_INSECURE
  TETHER_ENCRYPTION_KEYS TETHER_AUTH_HMAC_SECRET TETHER_HTTP_ADDR TETHER_PUBLIC_URL)
(
  umask 077 # it holds the dev secrets
  {
    echo "# Written by make run: the environment bin/tether needs to reach its services."
    echo "# Use it in another terminal: source $dev_dir/env && bin/tether status"
    for v in "${cli_vars[@]}"; do printf 'export %s=%q\n' "$v" "${!v}"; done
  } > "$dev_dir/env"
  chmod 600 "$dev_dir/env"
)

bin/tether migrate up
bin/tether migrate status

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

bin/devprovider > "$dev_dir/devprovider.log" 2>&1 &
devprovider=$!
pids+=("$devprovider")
bin/tether serve &
serve=$!
pids+=("$serve")

# Wait for Tether; stop at once, saying why, if it or the provider died.
for _ in $(seq 1 100); do
  curl -fsS "$TETHER_PUBLIC_URL/healthz" >/dev/null 2>&1 && break
  kill -0 "$serve" 2>/dev/null || { echo "make run: tether serve exited (is $TETHER_HTTP_ADDR in use? see above)" >&2; exit 1; }
  kill -0 "$devprovider" 2>/dev/null || { echo "make run: the dev provider exited (is $TETHER_DEVPROVIDER_ADDR in use?):" >&2; cat "$dev_dir/devprovider.log" >&2; exit 1; }
  sleep 0.1
done

# Register the dev provider and its demo pool the first time only.
admin=$(bin/tether token --sub dev-admin --admin)
api() { curl -fsS -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' "$@"; }
providers=$(api "$TETHER_PUBLIC_URL/api/data/oauth2/providers")
if ! grep -q '"id":"dev"' <<<"$providers"; then
  api -o /dev/null -X POST "$TETHER_PUBLIC_URL/api/data/oauth2/providers" -d "{
    \"id\": \"dev\", \"kind\": \"generic_oidc\", \"display_name\": \"Dev provider (test-user@localhost / verysecure)\",
    \"client_id\": \"tether-dev\", \"client_secret\": \"$TETHER_DEVPROVIDER_CLIENT_SECRET\",
    \"scope\": \"openid profile offline_access\", \"issuer_url\": \"http://$TETHER_DEVPROVIDER_ADDR/\"}"
  api -o /dev/null -X POST "$TETHER_PUBLIC_URL/api/data/resource_pools" -d '{"name": "demo-gpu", "remote": {"provider_id": "dev"}}'
fi

cat <<MSG

  Tether is running.
    Page:          $TETHER_PUBLIC_URL/ui/    (dev sign-in; connect "Dev provider", log in as test-user@localhost / verysecure)
    API spec:      $TETHER_PUBLIC_URL/api/data/spec.json
    River UI:      $TETHER_PUBLIC_URL/riverui/  (sign in as an administrator)
    Dev provider:  http://$TETHER_DEVPROVIDER_ADDR/
    Postgres:      ${TETHER_DATABASE_URL}
    SpiceDB:       ${TETHER_SPICEDB_ENDPOINT} (preshared key in $dev_dir/env)
    Admin token (sub dev-admin):
      $admin

  The CLI against these services, in another terminal:
      source $dev_dir/env && bin/tether status
    ($dev_dir/env sets ${cli_vars[*]})

  Ctrl-C stops everything; rm -rf $dev_dir starts afresh.
MSG
wait -n "${pids[@]}"
