#!/usr/bin/env bash
# `make mutants`: mutation testing with cargo-mutants over the cache crate's
# guarantee modules, against throwaway servers like `make test`'s. Each
# mutant is one small edit of `shared/paycache/src` (a function's body
# replaced, an operator swapped); the tests that guard it must fail.
#
#   make mutants SHARD=sessions           one shard of scripts/mutants-shards.tsv
#   make mutants SHARD=all                every shard, one after another (hours)
#   make mutants DIFF=main                the mutants in the lines changed since main
#   make mutants FILES='a.rs b.rs' TESTS='outage:: attacks::'
#   make mutants SHARD=gate LIST=1        list the shard's mutants, run nothing
#
# Results: .stack/mutants/<shard>/mutants.out (caught.txt, missed.txt,
# unviable.txt, timeout.txt, outcomes.json). docs/guarantees.md keeps the
# latest per module. The cargo target directory is its own
# (${MUTANTS_TARGET_DIR:-/var/tmp/paycache-mutants-target}): the first
# mutant of a run rebuilds the workspace's crates, later ones only the
# cache crate and the test binary.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

SHARDS_FILE="$ROOT/scripts/mutants-shards.tsv"
shard="${SHARD:-}"; files="${FILES:-}"; tests="${TESTS:-}"; diff_base="${DIFF:-}"
if [ -z "$shard$files$diff_base" ]; then
  echo "usage: make mutants SHARD=<name>|all | DIFF=<git ref> | FILES='…' TESTS='…' [LIST=1]" >&2
  echo "shards:" >&2
  grep -v '^#' "$SHARDS_FILE" | cut -f1 | sed 's/^/  /' >&2
  exit 2
fi

ensure_redis
ensure_postgres
ensure_moto_server
ensure_cargo_mutants

# One shard's files (-f globs) and test filters, from the table.
shard_field() { awk -F'\t' -v s="$1" -v f="$2" '$1 == s { print $f }' "$SHARDS_FILE"; }

STACK="$ROOT/.stack/mutants"
cleanup() {
  set +e
  kill_jobs
  stop_redis "$STACK/redis"
  stop_cluster "$STACK/cluster"
  stop_moto "$STACK/moto"
  [ -n "${PG_DIR:-}" ] && stop_postgres "$PG_DIR"
}
on_exit cleanup
if [ -d "$STACK/redis" ] || [ -d "$STACK/cluster" ]; then
  stop_redis "$STACK/redis"; stop_cluster "$STACK/cluster"; stop_moto "$STACK/moto"
  [ -d "$STACK/pg" ] && stop_postgres "$STACK/pg"
fi
rm -rf "$STACK/redis" "$STACK/cluster" "$STACK/moto" "$STACK/pg" "$STACK/logs"
mkdir -p "$STACK"

if [ -z "${LIST:-}" ]; then
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
  export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT" AWS_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
  unset AWS_PROFILE AWS_SESSION_TOKEN
  export PAYCACHE_TEST_LOG_DIR="$STACK/logs"
fi
export CARGO_TARGET_DIR="${MUTANTS_TARGET_DIR:-/var/tmp/paycache-mutants-target}"
# Six test threads, as `make test` runs the integration binary.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-6}"

# Runs cargo-mutants on the cache crate: `$1` the output directory, `$2`
# the test filters (space-separated module paths: the integration
# binary's `outage::`, the crate's own `infra::breaker`), `$3` `lib` to run
# the crate's unit tests too, the rest cargo-mutants' selection options.
run() {
  local out="$1" filters="$2" lib="$3"; shift 3
  local -a test_args=(--test integration)
  [ "$lib" = lib ] && test_args+=(--lib)
  mkdir -p "$out"
  local -a list=()
  [ -n "${LIST:-}" ] && list=(--list)
  # The baseline (the unmutated tree) runs first and sets the timeout.
  # shellcheck disable=SC2086
  cargo mutants --package paycache --test-package paycache-tests --test-package paycache \
    --output "$out" "${list[@]}" "$@" \
    -- "${test_args[@]}" -- $filters
}

rc=0
if [ -n "$diff_base" ]; then
  git diff "$diff_base" -- shared/paycache/src > "$STACK/diff.patch"
  log "mutants in the lines changed since $diff_base (tests: ${tests:-every integration test})"
  run "$STACK/diff" "${tests:-}" lib --in-diff "$STACK/diff.patch" || rc=$?
elif [ -n "$files" ]; then
  args=(); for f in $files; do args+=(--file "$f"); done
  log "mutants in $files (tests: ${tests:-every integration test})"
  run "$STACK/files" "${tests:-}" lib "${args[@]}" || rc=$?
else
  if [ "$shard" = all ]; then
    shards=$(grep -v '^#' "$SHARDS_FILE" | cut -f1)
  else
    shards="$shard"
  fi
  for s in $shards; do
    if [ "$s" = lua ]; then
      # The Lua scripts: cargo-mutants does not read them (the file edits
      # the tree in place and restores it, also on an interrupt).
      log "shard lua: each script's decisive comparison, inverted"
      if [ -n "${LIST:-}" ]; then python3 "$ROOT/scripts/lua-mutants.py" --list
      else python3 "$ROOT/scripts/lua-mutants.py" --out "$STACK/lua" || rc=$?; fi
      continue
    fi
    globs=$(shard_field "$s" 2); filters=$(shard_field "$s" 3); lib=$(shard_field "$s" 4)
    [ -n "$globs" ] || die "no shard $s in $SHARDS_FILE"
    args=(); for g in $globs; do args+=(--file "$g"); done
    log "shard $s: $globs (tests: $filters)"
    run "$STACK/$s" "$filters" "$lib" "${args[@]}" || rc=$?
  done
fi
# cargo-mutants exits 2 when a mutant was missed, 3 on a timeout: a
# result to read, not a failure of this script.
case "$rc" in
  0|2|3) log "done: see $STACK/*/mutants.out/{missed,timeout,caught,unviable}.txt" ;;
  *) die "cargo mutants failed ($rc)" ;;
esac
