#!/usr/bin/env bash
# `make test`: install what is missing, start throwaway servers (standalone
# Redis, a 3+3 Redis Cluster, PostgreSQL) under .stack/test, run every test,
# stop the servers. Nothing here uses servers that happen to be running.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_redis
ensure_postgres
ensure_pgbouncer
ensure_chromium
ensure_cargo_lambda
ensure_pyyaml
ensure_moto_server
ensure_schemathesis
ensure_python_websockets
ensure_sam_translator
ensure_openapi_validator
check_disk 8

STACK="$ROOT/.stack/test"
cleanup() {
  local rc=$?
  set +e
  kill_jobs
  [ "$rc" != 0 ] && disk_report
  [ -n "${E2E_PID:-}" ] && kill "$E2E_PID" 2>/dev/null
  stop_redis "$STACK/e2e-redis"
  stop_pgbouncer "$STACK/e2e-pgbouncer"
  stop_test_servers "$STACK"
}
on_exit cleanup
# Leftovers of an interrupted run.
if [ -d "$STACK" ]; then
  stop_redis "$STACK/e2e-redis"; stop_test_servers "$STACK"
  [ -d "$STACK/pg" ] && stop_postgres "$STACK/pg"
  [ -L "$STACK/pg.alt" ] && stop_postgres "$(readlink "$STACK/pg.alt")"
  rm -rf "$STACK"
fi
mkdir -p "$STACK"

log "starting Redis, Redis Cluster, PostgreSQL and PgBouncer under $STACK"
# The AWS SDK talks to the local moto_server, with throwaway credentials.
start_test_servers "$STACK"

log "scripts: an interrupt or a kill ends them"
bash "$ROOT/scripts/check-traps.sh"
log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy (cargo's progress follows; a cold build takes several minutes)"
cargo clippy --workspace --all-targets -- -D warnings
# Everything the tests log goes to files (shared/test-support/src/logs.rs),
# and every test's own output is kept (--nocapture): the secrets check below
# reads all of it. The console gets the summary lines; a failure, its story.
export PAYCACHE_TEST_LOG_DIR="$STACK/logs"
cp "$ROOT/tests/secrets.txt" "$STACK/secrets.run"
# The test targets: every library, integration test, benchmark and example
# — not the 15 binaries, which hold no tests. `--all-targets`, `--tests`
# and `--benches` each build and link a test harness for every binary
# (`--benches` takes every target with `bench = true`, binaries included,
# whatever their `test = false`): 33 executables instead of 18.
TEST_TARGETS=(--lib --test '*' --bench '*' --examples)
log "building the tests (cargo's progress follows)"
cargo test --workspace "${TEST_TARGETS[@]}" --no-run
# Every later build — `cargo run -p paycache-dev` (deployment contract,
# e2e), `cargo lambda watch`'s `cargo run --bin <function>` — selects fewer
# packages than the test build; with one feature set for the whole
# workspace (shared/workspace-hack) it reuses every compiled dependency.
# A dependency compiled again fails here, with what to run.
log "the functions and tools, built one package at a time, reuse the tests' dependencies"
python3 "$ROOT/scripts/check-rebuilds.py" --self-test
cargo build -p paycache-dev --message-format=json-render-diagnostics \
  | python3 "$ROOT/scripts/check-rebuilds.py" "cargo build -p paycache-dev"
cargo build --bin profile-read --message-format=json-render-diagnostics \
  | python3 "$ROOT/scripts/check-rebuilds.py" "cargo build --bin profile-read (as cargo lambda watch builds it)"
cargo build --workspace --bins --message-format=json-render-diagnostics \
  | python3 "$ROOT/scripts/check-rebuilds.py" "cargo build --workspace --bins"
# The broken variants the tests prove the real code against are compiled
# for the test binaries only (paycache's `test-variants` feature, a
# dev-dependency feature of the test crate): no function, tool or `make run`
# build has it. The check first catches the test crate's own build.
log "no broken variant in a shipped build (paycache's test-variants feature)"
python3 "$ROOT/scripts/check-variants.py"
# Six test threads on two cores: most tests wait on servers, timers and
# timeouts, not on the CPU (docs/operations.md → Build time). An
# environment variable, not `--test-threads`: criterion's benchmarks, run
# once each as a smoke test, take no such argument.
# The failover tests wait most of their 90 s on promotions in clusters of
# their own: they run beside everything else (their binary directly — a
# second cargo would wait for the first one's lock), and are waited for
# before the secrets check, which reads their output too.
failover_bin=$(cargo test -p paycache-tests --test failover --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "failover":
        print(m["executable"])')
[ -x "$failover_bin" ] || die "no failover test binary"
log "the failover tests, beside the rest (output in $STACK/failover-output.log)"
RUST_TEST_THREADS=4 "$failover_bin" --nocapture >"$STACK/failover-output.log" 2>&1 &
FAILOVER_PID=$!
log "cargo test (output in $STACK/test-output.log, logs in $PAYCACHE_TEST_LOG_DIR)"
set +e
# Every test target but `failover` (`[!f]*`: the test targets are
# integration, metrics, failover, import_cycles and check).
RUST_TEST_THREADS="${RUST_TEST_THREADS:-6}" \
  in_background cargo test --workspace --lib --test '[!f]*' --bench '*' --examples -- --nocapture \
  >"$STACK/test-output.log" 2>&1
rc=$?
set -e
grep -E '^(test result:|error(\[|:))|^test .* FAILED$' "$STACK/test-output.log" || true
if [ "$rc" != 0 ]; then
  grep -E -B2 -A25 "panicked at|^error(\[|:)" "$STACK/test-output.log" | head -400 >&2
  die "cargo test failed (exit $rc); the whole output is in $STACK/test-output.log"
fi
log "openapi.yaml: the reference validator (openapi-spec-validator)"
openapi-spec-validator "$ROOT/openapi.yaml"
# The validator must catch the defect it was brought in for: a flow mapping
# whose description holds a comma (\"rounded up.\" became a key).
sed 's/description: "Whole seconds, rounded up." }/description: Whole seconds, rounded up. }/' \
  "$ROOT/openapi.yaml" >"$STACK/openapi-broken.yaml"
cmp -s "$ROOT/openapi.yaml" "$STACK/openapi-broken.yaml" && die "the openapi broken variant did not change the document"
if openapi-spec-validator "$STACK/openapi-broken.yaml" >/dev/null 2>&1; then
  die "openapi-spec-validator accepted the broken variant"
fi
log "documentation: links and anchors in README.md and docs/"
python3 "$ROOT/scripts/check-docs.py"
log "deployment contract: template.yaml (SAM-translated) against the code"
python3 "$ROOT/tests/deploy/contract.py" 2>&1 | tee "$STACK/contract-output.log"
[ "${PIPESTATUS[0]}" = 0 ] || die "the deployment contract failed"
log "end-to-end: cargo lambda watch + cargo lambda invoke"
: >"$STACK/e2e-output.log"
tail -n +1 -f "$STACK/e2e-output.log" &
TAIL_PID=$!
set +e
PG_PORT=$PG_PORT PG_DIR=$PG_DIR in_background bash "$ROOT/scripts/e2e.sh" >"$STACK/e2e-output.log" 2>&1
rc=$?
set -e
sleep 0.5; kill "$TAIL_PID" 2>/dev/null || true
[ "$rc" = 0 ] || die "the end-to-end run failed (exit $rc); its output is in $STACK/e2e-output.log"

# Secrets never reach logs or errors: none of the tests' secret values, nor
# the e2e run's (a Redis token and a database password from the local
# Secrets Manager), may appear in anything the tests, the tools or the
# functions printed or logged. First the checker must catch a planted leak.
log "the failover tests"
set +e
wait "$FAILOVER_PID"
rc=$?
set -e
grep -E '^(test result:|error(\[|:))|^test .* FAILED$' "$STACK/failover-output.log" || true
if [ "$rc" != 0 ]; then
  grep -E -B2 -A25 "panicked at" "$STACK/failover-output.log" | head -200 >&2
  die "the failover tests failed (exit $rc); their output is in $STACK/failover-output.log"
fi

log "secrets in output"
cat "$STACK"/logs/*.log >"$STACK/test-logs.log" 2>/dev/null || true
planted="$STACK/planted.log"
{ echo "an ordinary line"; echo "token=$(grep -v '^\(#\|$\)' "$STACK/secrets.run" | tail -n 1) leaked"; } >"$planted"
if bash "$ROOT/scripts/check-secrets.sh" "$STACK/secrets.run" "$planted" >/dev/null 2>&1; then
  die "the secrets check did not catch a planted leak"
fi
: >"$STACK/empty.log"
if bash "$ROOT/scripts/check-secrets.sh" "$STACK/secrets.run" "$STACK/empty.log" >/dev/null 2>&1; then
  die "the secrets check accepted an empty log"
fi
# Every output of the run: the tests' (printed and logged), the e2e's
# (paycache-dev's stderr included), the functions' under cargo lambda watch,
# both gateways', schemathesis's — and any other log the run left.
logs=("$STACK/test-output.log" "$STACK/test-logs.log" "$STACK/e2e-output.log" "$STACK/watch.log"
      "$STACK/gateway.log" "$STACK/gateway-plain.log" "$STACK/schemathesis.log")
for f in "$STACK"/*.log; do
  case " ${logs[*]} $planted $STACK/empty.log " in *" $f "*) continue ;; esac
  [ -s "$f" ] && logs+=("$f")
done
bash "$ROOT/scripts/check-secrets.sh" "$STACK/secrets.run" "${logs[@]}" \
  || die "a secret appeared in the output (or a log is missing)"
tail -n 1 "$STACK/e2e-output.log"
