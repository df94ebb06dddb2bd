#!/usr/bin/env bash
# End-to-end test, called by scripts/test.sh with its servers running:
# loads the seed data into a fresh database, serves the functions with
# `cargo lambda watch` (as `make run` does) and sends every events/ file
# with `cargo lambda invoke`, plus HTTP requests through the router.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
: "${PG_PORT:?}" "${PAYCACHE_TEST_REDIS_URL:?}"

STACK="$ROOT/.stack/test"
DB=e2e_$$
psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "CREATE DATABASE $DB" >/dev/null
export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/$DB"
cargo run --quiet -p paycache-dev -- migrate-and-seed

WATCH_PORT=$(free_port)
ENV_FILE="$STACK/e2e.env"
cat >"$ENV_FILE" <<ENV
REDIS_URL=$PAYCACHE_TEST_REDIS_URL
DATABASE_URL=$DATABASE_URL
CACHE_KEY_PREFIX=e2e-$$
RUST_LOG=info
WARM_USERS=50
AUTH_ISSUER=https://auth.paycache.test
AUTH_AUDIENCE=paycache-api
AUTH_JWKS_FILE=$ROOT/tests/fixtures/jwks.json
AWS_ENDPOINT_URL=${AWS_ENDPOINT_URL:-}
AWS_REGION=${AWS_REGION:-us-east-1}
AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-}
AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-}
RATE_LIMIT_POLICIES='[{"name":"transfers.create","algorithm":"gcra","limit":5,"window_secs":3600,"burst":5,"fail":"closed"}]'
ENV
cargo lambda watch --quiet --ignore-changes -A 127.0.0.1 -P "$WATCH_PORT" --env-file "$ENV_FILE" \
  >"$STACK/watch.log" 2>&1 &
E2E_PID=$!
trap 'kill $E2E_PID 2>/dev/null || true; wait $E2E_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  port_in_use "$WATCH_PORT" && break
  kill -0 "$E2E_PID" 2>/dev/null || { cat "$STACK/watch.log" >&2; die "cargo lambda watch exited"; }
  sleep 0.5
done
port_in_use "$WATCH_PORT" || die "cargo lambda watch did not listen on $WATCH_PORT"
if ! python3 "$ROOT/tests/e2e/run.py" "$WATCH_PORT" | tee "$STACK/e2e-cases.log"; then
  tail -50 "$STACK/watch.log" >&2; exit 1
fi

log "hostile input through the router"
if ! python3 "$ROOT/tests/e2e/hostile.py" "$WATCH_PORT" | tee "$STACK/e2e-hostile.log"; then
  tail -50 "$STACK/watch.log" >&2; exit 1
fi

# schemathesis generates requests from openapi.yaml (positive and negative)
# and checks every answer against it: no 5xx, no undocumented status,
# content type, header or body. See tests/e2e/schemathesis.toml for what is
# configured and why. The seed is fixed so that CI runs the same cases every
# time (a failure found by a random run belongs in an issue, not in a
# flaky CI); PAYCACHE_SCHEMATHESIS_SEED and PAYCACHE_SCHEMATHESIS_EXAMPLES
# run other or more cases.
log "schemathesis against openapi.yaml"
if ! SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH="$ROOT/tests/e2e" \
  schemathesis --config-file "$ROOT/tests/e2e/schemathesis.toml" run "$ROOT/openapi.yaml" \
  --url "http://127.0.0.1:$WATCH_PORT" --workers 1 --request-timeout 300 --no-color \
  --seed "${PAYCACHE_SCHEMATHESIS_SEED:-20261126}" --max-examples "${PAYCACHE_SCHEMATHESIS_EXAMPLES:-60}" \
  >"$STACK/schemathesis.log" 2>&1; then
  cat "$STACK/schemathesis.log" >&2; tail -50 "$STACK/watch.log" >&2
  die "schemathesis found failures"
fi
grep -E "generated|Seed" "$STACK/schemathesis.log" | tail -2
st_cases=$(grep -oE "[0-9]+ generated" "$STACK/schemathesis.log" | tail -1)
echo "$(tail -n 1 "$STACK/e2e-cases.log"); $(tail -n 1 "$STACK/e2e-hostile.log"); schemathesis: ${st_cases:-?}, no failures"
