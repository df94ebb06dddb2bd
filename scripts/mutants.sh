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
#   make mutants SHARD=breaker RE='denies' only the mutants whose name matches
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
  echo "usage: make mutants SHARD=<name>|all | DIFF=<git ref> | FILES='…' TESTS='…' [RE=<regex>] [LIST=1]" >&2
  echo "shards:" >&2
  grep -v '^#' "$SHARDS_FILE" | cut -f1 | sed 's/^/  /' >&2
  exit 2
fi

ensure_redis
ensure_postgres
ensure_pgbouncer
ensure_moto_server
ensure_cargo_mutants

# One shard's files (-f globs) and test filters, from the table.
shard_field() { awk -F'\t' -v s="$1" -v f="$2" '$1 == s { print $f }' "$SHARDS_FILE"; }

STACK="$ROOT/.stack/mutants"
mkdir -p "$STACK"
# Each run's servers are its own (two runs may overlap: a LIST beside a
# shard, or two checkouts' shards), under servers.<pid>; a run that was
# killed leaves its directory, and the next run stops what it left.
stop_servers() { # dir
  stop_test_servers "$1"
  rm -rf "$1"
}
for left in "$STACK"/servers.*; do
  [ -d "$left" ] || continue
  kill -0 "${left##*.}" 2>/dev/null && continue
  (set +e; stop_servers "$left") || true
done
SERVERS="$STACK/servers.$$"
cleanup() {
  set +e
  kill_jobs
  [ -d "$SERVERS" ] && stop_servers "$SERVERS"
}
on_exit cleanup

if [ -z "${LIST:-}" ]; then
  log "starting Redis, Redis Cluster, PostgreSQL and PgBouncer under $SERVERS"
  start_test_servers "$SERVERS"
  export PAYCACHE_TEST_LOG_DIR="$SERVERS/logs"
fi
export CARGO_TARGET_DIR="${MUTANTS_TARGET_DIR:-/var/tmp/paycache-mutants-target}"
# Six test threads, as `make test` runs the integration binary.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-6}"

# Runs cargo-mutants on the cache crate: `$1` the output directory, `$2`
# the test filters (space-separated module paths: the integration
# binary's `outage::`, the crate's own `infra::breaker`), `$3` `lib` to run
# the crate's unit tests too, the rest cargo-mutants' selection options.
#
# The baseline is ours, not cargo-mutants': cargo-mutants 27 runs its
# baseline on the mutated package alone (`--package=paycache`), which has no
# `integration` target, and builds every test target of each package (three
# test binaries and the examples, each relinked per mutant). Here the
# selected targets are named for every phase (`--cargo-arg`), and the
# unmutated tree must pass the same selection first — a suite that fails
# anyway would count every mutant as caught. Its time sets the timeout.
run() {
  local out="$1" filters="$2" lib="$3"; shift 3
  local -a targets=(--test integration)
  [ "$lib" = lib ] && targets+=(--lib)
  mkdir -p "$out"
  local -a cargo_args=()
  local t; for t in "${targets[@]}"; do cargo_args+=("--cargo-arg=$t"); done
  [ -n "${RE:-}" ] && set -- "$@" --re "$RE"
  if [ -n "${LIST:-}" ]; then
    cargo mutants --package paycache --list "$@"
    return
  fi
  log "baseline: the unmutated tree, the same tests"
  cargo test --package paycache-tests --package paycache "${targets[@]}" --no-run \
    > "$out/baseline.log" 2>&1 \
    || { tail -40 "$out/baseline.log" >&2; die "the baseline does not build (see $out/baseline.log)"; }
  local started=$SECONDS
  # shellcheck disable=SC2086
  cargo test --package paycache-tests --package paycache "${targets[@]}" -- $filters \
    >> "$out/baseline.log" 2>&1 \
    || { tail -40 "$out/baseline.log" >&2; die "the baseline fails: no mutant can be judged (see $out/baseline.log)"; }
  grep -E '^test result:' "$out/baseline.log" | awk '{ n += $4 } END { if (n == 0) exit 1 }' \
    || die "the baseline ran no test: the filters '$filters' select nothing"
  local took=$((SECONDS - started))
  # The test phase's limit: five times the baseline's tests, at least a
  # minute (a mutant that hangs a test costs this much, once).
  local timeout=$((took * 5 > 60 ? took * 5 : 60))
  log "baseline passed: tests ${took}s; a mutant's tests time out after ${timeout}s"
  # shellcheck disable=SC2086
  cargo mutants --package paycache --test-package paycache-tests,paycache \
    --gitignore=true --baseline=skip --timeout "$timeout" --build-timeout 1800 \
    "${cargo_args[@]}" --output "$out" "$@" \
    -- -- $filters
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
