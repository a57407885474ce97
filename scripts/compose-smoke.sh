#!/usr/bin/env bash
# compose.yaml for real: build the app image with the Dockerfile, start it with PostgreSQL and
# Redis, wait for /readyz, read the admin key the first start prints in the app's log, create a
# skill, make a service key, credit a user, charge, check the balance; then tear everything down,
# volumes included, whatever happened.
#
# The images are compose.yaml's defaults unless POSTGRES_IMAGE / REDIS_IMAGE / PYTHON_IMAGE say
# otherwise (CI: the local ones scripts/build-images.sh makes). APP_PORT defaults to a free port.
#
# `scripts/compose-smoke.sh citus`: the same on the citus profile (app-citus on a coordinator and
# two workers; CITUS_IMAGE replaces the official image), and the schema must be distributed, the
# user's rows on a worker.
set -euo pipefail
cd "$(dirname "$0")/.."

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  echo "neither 'docker compose' nor docker-compose is installed" >&2
  exit 1
fi
project="skill-credits-smoke-$$"
compose+=(-p "$project" -f compose.yaml)
app=app
if [ "${1:-}" = citus ]; then
  compose+=(--profile citus)
  app=app-citus
fi
export APP_PORT="${APP_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
base="http://127.0.0.1:$APP_PORT"

down() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "compose smoke failed; the services' logs:" >&2
    "${compose[@]}" logs --no-color --tail 60 >&2 || true
  fi
  "${compose[@]}" down -v --remove-orphans --rmi local >/dev/null 2>&1 || true
  exit $rc
}
trap down EXIT

fail() { echo "compose smoke: $*" >&2; exit 1; }

# call METHOD PATH KEY [BODY]: prints the body; fails unless the status is 2xx.
call() {
  local out status
  out="$(mktemp)"
  status="$(curl -sS -o "$out" -w '%{http_code}' -X "$1" "$base$2" -H "Authorization: Bearer $3" \
    -H 'Content-Type: application/json' ${4:+--data "$4"})"
  case "$status" in 2??) cat "$out"; rm -f "$out" ;; *) cat "$out" >&2; rm -f "$out"; fail "$1 $2 answered $status" ;; esac
}
field() { python3 -c "import json, sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }

echo "compose up (project $project, app on 127.0.0.1:$APP_PORT)"
"${compose[@]}" up -d --build "$app" >/dev/null 2>&1 || { "${compose[@]}" up -d --build "$app"; exit 1; }

for _ in $(seq 1 90); do
  curl -fsS "$base/readyz" >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS "$base/readyz" >/dev/null || fail "/readyz did not answer within 90 s"
echo "/readyz answers"

admin="$("${compose[@]}" logs --no-color "$app" | grep -A1 'No admin key existed' | grep -o 'sck_[A-Za-z0-9_-]*' | head -1 || true)"
[ -n "$admin" ] || fail "no admin key in the app's log"

skill="SMOKE_$$"
call POST /v1/admin/skills "$admin" "{\"name\": \"$skill\", \"display_name\": \"Smoke\", \"cost\": 7}" >/dev/null
service="$("${compose[@]}" exec -T "$app" skill-credits keys create --role service --name "smoke-$$" | grep -o 'sck_[A-Za-z0-9_-]*')"
[ -n "$service" ] || fail "keys create printed no key"
call POST /v1/users/smoke_user/credits "$service" '{"amount": 50, "type": "PURCHASE"}' >/dev/null
after="$(call POST /v1/charges "$service" "{\"user_id\": \"smoke_user\", \"skill\": \"$skill\"}" | field balance_after)"
[ "$after" = 43 ] || fail "the charge left $after credits, not 43"
credits="$(call GET /v1/users/smoke_user "$service" | field credits)"
[ "$credits" = 43 ] || fail "the user has $credits credits, not 43"
if [ "$app" = app-citus ]; then
  coordinator() {
    "${compose[@]}" exec -T citus-coordinator psql -U postgres -d skill_credits -tAc "$1"
  }
  workers="$(coordinator "SELECT count(*) FROM pg_dist_node WHERE groupid > 0")"
  [ "$workers" = 2 ] || fail "the coordinator has $workers workers, not 2"
  kind="$(coordinator "SELECT citus_table_type FROM citus_tables WHERE table_name = 'users'::regclass")"
  [ "$kind" = distributed ] || fail "users is '$kind', not distributed"
  node="$(coordinator "SELECT nodename FROM citus_shards WHERE table_name = 'users'::regclass
                        AND shardid = get_shard_id_for_distribution_column('users', 'smoke_user')")"
  case "$node" in citus-worker*) ;; *) fail "smoke_user's rows are on '$node', not a worker" ;; esac
  echo "compose smoke (citus): users distributed over 2 workers, smoke_user's rows on $node"
fi
echo "compose smoke: readyz, admin key from the log, skill, service key, credit, charge: all good"
