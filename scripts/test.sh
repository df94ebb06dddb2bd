#!/usr/bin/env bash
# `make test`: install what is missing, start throwaway servers (standalone
# Redis, a 3+3 Redis Cluster, PostgreSQL) under .stack/test, run every test,
# stop the servers. Nothing here uses servers that happen to be running.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_redis
ensure_postgres
ensure_cargo_lambda
ensure_moto_server
ensure_schemathesis

STACK="$ROOT/.stack/test"
cleanup() {
  set +e
  [ -n "${E2E_PID:-}" ] && kill "$E2E_PID" 2>/dev/null
  stop_redis "$STACK/redis"
  stop_cluster "$STACK/cluster"
  stop_moto "$STACK/moto"
  [ -n "${PG_DIR:-}" ] && stop_postgres "$PG_DIR"
}
trap cleanup EXIT INT TERM
# Leftovers of an interrupted run.
if [ -d "$STACK" ]; then
  stop_redis "$STACK/redis"; stop_cluster "$STACK/cluster"; stop_moto "$STACK/moto"
  [ -d "$STACK/pg" ] && stop_postgres "$STACK/pg"
  [ -L "$STACK/pg.alt" ] && stop_postgres "$(readlink "$STACK/pg.alt")"
  rm -rf "$STACK"
fi
mkdir -p "$STACK"

log "starting Redis, Redis Cluster and PostgreSQL under $STACK"
REDIS_PORT=$(free_port)
start_redis "$STACK/redis" "$REDIS_PORT"
CLUSTER_URLS=$(start_cluster "$STACK/cluster")
PG_PORT=$(free_port)
PG_DIR=$(start_postgres "$STACK/pg" "$PG_PORT")
MOTO_PORT=$(free_port)
start_moto "$STACK/moto" "$MOTO_PORT"

export PAYCACHE_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export PAYCACHE_TEST_CLUSTER_URLS="$CLUSTER_URLS"
export PAYCACHE_TEST_PG="host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres"
# The AWS SDK talks to the local moto_server, with throwaway credentials.
export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT" AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
unset AWS_PROFILE AWS_SESSION_TOKEN

log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "cargo test"
cargo test --workspace --all-targets 2>&1 | tee "$STACK/test-output.log"
log "end-to-end: cargo lambda watch + cargo lambda invoke"
PG_PORT=$PG_PORT bash "$ROOT/scripts/e2e.sh" 2>&1 | tee "$STACK/e2e-output.log"

# Secrets never reach logs or errors: none of the tests' secret values may
# appear in anything the tests or the functions printed.
log "secrets in output"
leaked=0
while IFS= read -r secret; do
  case "$secret" in ''|'#'*) continue ;; esac
  if grep -rqF -- "$secret" "$STACK/test-output.log" "$STACK/e2e-output.log" "$STACK/watch.log"; then
    echo "secret leaked into the output: ${secret:0:4}…" >&2
    leaked=1
  fi
done <"$ROOT/tests/secrets.txt"
[ "$leaked" = 0 ] || die "a test secret appeared in the output"
echo "secrets: none of $(grep -cv '^\(#\|$\)' "$ROOT/tests/secrets.txt") leaked"
tail -n 1 "$STACK/e2e-output.log"
