#!/usr/bin/env bash
# `make bench`: criterion benchmarks against their own throwaway servers
# (redis-server for each benchmark, PostgreSQL for the warming one).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
ensure_redis
ensure_postgres
ensure_pgbouncer
ensure_moto_server
STACK="$ROOT/.stack/bench"
cleanup() { set +e; stop_redis "$STACK/redis"; stop_moto "$STACK/moto"; stop_pgbouncer "$STACK/pgbouncer"; [ -n "${PG_DIR:-}" ] && stop_postgres "$PG_DIR"; }
on_exit cleanup
rm -rf "$STACK"; mkdir -p "$STACK"
REDIS_PORT=$(free_port)
start_redis "$STACK/redis" "$REDIS_PORT"
PG_PORT=$(free_port)
PG_DIR=$(start_postgres "$STACK/pg" "$PG_PORT")
# PgBouncer in front, 4 server connections per database: the pooler
# benchmark's 64 execution environments share them.
PGB_PORT=$(free_port)
start_pgbouncer "$STACK/pgbouncer" "$PGB_PORT" "$PG_PORT" 4 trust postgres ""
export PAYCACHE_TEST_PG_POOLER="host=127.0.0.1 port=$PGB_PORT user=postgres"
MOTO_PORT=$(free_port)
start_moto "$STACK/moto" "$MOTO_PORT"
# A local Secrets Manager, for the cold start with secrets fetched at init.
export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT" AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export PAYCACHE_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export PAYCACHE_TEST_PG="host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres"
# The function budgets (benches/functions/) run the release binaries and
# the floor (examples/floor.rs).
cargo build --release --bins --examples
export PAYCACHE_BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
# The functions benchmark starts hundreds of processes and loopback servers.
ulimit -n 65536 2>/dev/null || true
cargo bench -p paycache --features test-variants "$@"
