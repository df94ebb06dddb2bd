#!/usr/bin/env bash
# `make bench`: criterion benchmarks against their own throwaway servers
# (redis-server for each benchmark, PostgreSQL for the warming one).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
ensure_redis
ensure_postgres
STACK="$ROOT/.stack/bench"
cleanup() { set +e; stop_redis "$STACK/redis"; [ -n "${PG_DIR:-}" ] && stop_postgres "$PG_DIR"; }
trap cleanup EXIT INT TERM
rm -rf "$STACK"; mkdir -p "$STACK"
REDIS_PORT=$(free_port)
start_redis "$STACK/redis" "$REDIS_PORT"
PG_PORT=$(free_port)
PG_DIR=$(start_postgres "$STACK/pg" "$PG_PORT")
export PAYCACHE_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export PAYCACHE_TEST_PG="host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres"
# The function budgets (benches/functions.rs) run the release binaries and
# the floor (examples/floor.rs).
cargo build --release --bins --examples
export PAYCACHE_BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
cargo bench -p paycache "$@"
