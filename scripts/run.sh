#!/usr/bin/env bash
# `make run`: install what is missing, start Redis and PostgreSQL (behind
# PgBouncer, as RDS Proxy stands in front of it in AWS) under .stack/run
# (unless REDIS_URL / DATABASE_URL are set: then those are used),
# apply migrations, load the deterministic seed data, build every function,
# and serve every HTTP route on http://127.0.0.1:${PORT:-9000} through
# `cargo lambda watch`, with ${CONCURRENCY:-8} instances of each function.
# No API Gateway runs locally, so the functions verify bearer tokens
# themselves, with a development key made for this stack (HS256, in
# .stack/run/dev-signing-secret); `paycache-dev login` and `service-token`
# sign with the same key. It prints a user's and a service's token at start.
# A local WebSocket gateway (shared/ws-gateway) stands in for API Gateway's
# WebSocket API on ws://127.0.0.1:${WS_PORT:-9001}/?token=<JWT>: it runs
# $connect through the `authorizer` and `ws-connections` functions (served
# by `cargo lambda watch`), serves the @connections management API (signed
# requests only, with the stack's AWS credentials; no test controls), and
# keeps `ws-sender` running (as the deployed schedule does) so that what
# the functions publish reaches open sockets.
# The reference web client (shared/web-client) is served on
# http://localhost:${WEB_PORT:-3000}, another origin than the API: the front
# door answers CORS for CORS_ALLOWED_ORIGIN (that origin by default) as API
# Gateway answers it for the template's CorsAllowedOrigin.
# Ctrl-C stops what it started.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

PORT=${PORT:-9000}
WS_PORT=${WS_PORT:-9001}
CONCURRENCY=${CONCURRENCY:-8}
MAX_INFLIGHT=${MAX_INFLIGHT:-64}   # at most 100: see the front door below
QUEUE_TIMEOUT=${QUEUE_TIMEOUT:-10}
STACK="$ROOT/.stack/run"
mkdir -p "$STACK"

ensure_cargo_lambda
ensure_pyyaml
check_disk 5
STARTED_REDIS=0 STARTED_PG="" STARTED_MOTO=0
WATCH_PID="" GATEWAY_PID="" SCHEDULES_PID="" WEB_PID=""
cleanup() {
  set +e
  if [ -n "$WEB_PID" ]; then kill "$WEB_PID" 2>/dev/null; wait "$WEB_PID" 2>/dev/null; fi
  if [ -n "$SCHEDULES_PID" ]; then kill "$SCHEDULES_PID" 2>/dev/null; wait "$SCHEDULES_PID" 2>/dev/null; fi
  if [ -n "$GATEWAY_PID" ]; then kill "$GATEWAY_PID" 2>/dev/null; wait "$GATEWAY_PID" 2>/dev/null; fi
  if [ -n "$WATCH_PID" ]; then kill "$WATCH_PID" 2>/dev/null; wait "$WATCH_PID" 2>/dev/null; fi
  [ "$STARTED_REDIS" = 1 ] && { log "stopping Redis"; stop_redis "$STACK/redis"; }
  [ -n "$STARTED_PG" ] && { log "stopping PgBouncer and PostgreSQL"; stop_pgbouncer "$STACK/pgbouncer"; stop_postgres "$STARTED_PG"; }
  [ "$STARTED_MOTO" = 1 ] && stop_moto "$STACK/cloudwatch"
}
on_exit cleanup

if [ -z "${REDIS_URL:-}" ]; then
  ensure_redis
  REDIS_PORT=${REDIS_PORT:-6390}
  stop_redis "$STACK/redis" # a leftover of an interrupted run
  if port_in_use "$REDIS_PORT"; then REDIS_PORT=$(free_port); fi
  log "starting Redis on 127.0.0.1:$REDIS_PORT (data in $STACK/redis)"
  start_redis "$STACK/redis" "$REDIS_PORT"
  STARTED_REDIS=1
  export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
else
  log "using REDIS_URL from the environment"
fi

if [ -z "${DATABASE_URL:-}" ]; then
  ensure_postgres
  PG_PORT=${PG_PORT:-5439}
  if [ -s "$STACK/pg/postmaster.pid" ] || [ -s "$STACK/pg.alt/postmaster.pid" ]; then
    stop_postgres "$STACK/pg"; [ -L "$STACK/pg.alt" ] && stop_postgres "$(readlink "$STACK/pg.alt")"
  fi
  if port_in_use "$PG_PORT"; then PG_PORT=$(free_port); fi
  log "starting PostgreSQL on 127.0.0.1:$PG_PORT (data in $STACK/pg)"
  STARTED_PG=$(start_postgres "$STACK/pg" "$PG_PORT")
  pg_run psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -tc \
    "SELECT 1 FROM pg_database WHERE datname = 'paycache'" | grep -q 1 \
    || pg_run psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "CREATE DATABASE paycache" >/dev/null
  # The deployed topology: the functions reach PostgreSQL through a
  # transaction pooler (RDS Proxy in AWS, PgBouncer here: transaction mode,
  # 4 server connections for every instance of every function).
  ensure_pgbouncer
  stop_pgbouncer "$STACK/pgbouncer" # a leftover of an interrupted run
  PGB_PORT=${PGB_PORT:-6439}
  if port_in_use "$PGB_PORT"; then PGB_PORT=$(free_port); fi
  log "starting PgBouncer on 127.0.0.1:$PGB_PORT in front of it (transaction pooling, 4 server connections)"
  start_pgbouncer "$STACK/pgbouncer" "$PGB_PORT" "$PG_PORT" 4 trust postgres ""
  export DATABASE_URL="postgres://postgres@127.0.0.1:$PGB_PORT/paycache"
else
  log "using DATABASE_URL from the environment"
fi

# What a person waits for is said before it starts, and cargo's own
# progress shows (a cold build takes minutes on a small machine).
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
log "building the development tool, paycache-dev (cargo's progress follows)"
cargo build -p paycache-dev
DEV="$TARGET/debug/paycache-dev"
log "checking Redis and PostgreSQL"
"$DEV" check || die "fix the connection above (make run uses REDIS_URL and DATABASE_URL when set)"
log "applying migrations and loading seed data"
"$DEV" migrate-and-seed

# The local development key (never deployed: deployed, API Gateway's JWT
# authorizer verifies tokens against the issuer's JWKS).
if [ ! -s "$STACK/dev-signing-secret" ]; then
  (umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$STACK/dev-signing-secret")
fi
export AUTH_ISSUER="${AUTH_ISSUER:-https://paycache.local}"
export AUTH_AUDIENCE="${AUTH_AUDIENCE:-paycache-web,ledger,support-console,limits-gateway}"
if [ -z "${AUTH_JWKS:-}" ] && [ -z "${AUTH_JWKS_FILE:-}" ]; then AUTH_JWKS='{"keys": []}'; fi
export AUTH_JWKS
AUTH_HS256_SECRET="$(cat "$STACK/dev-signing-secret")"
export AUTH_HS256_SECRET

if port_in_use "$WS_PORT"; then WS_PORT=$(free_port); fi
port_in_use "$PORT" && die "port $PORT is in use (PORT= picks another)"
LAMBDA_PORT=$(free_port)
WEB_PORT=${WEB_PORT:-3000}
if port_in_use "$WEB_PORT"; then WEB_PORT=$(free_port); fi
CORS_ALLOWED_ORIGIN=${CORS_ALLOWED_ORIGIN:-http://localhost:$WEB_PORT}
# ws-sender posts to the local gateway through the AWS SDK, which signs its
# requests (SigV4); the gateway checks every signature against the same
# credentials, as IAM does deployed, so nobody without them can post into a
# socket. Made for this stack when none are set (nothing here reaches AWS).
export WS_MANAGEMENT_ENDPOINT="http://127.0.0.1:$WS_PORT"
export WS_SENDER_RUN_SECS="${WS_SENDER_RUN_SECS:-20}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
if [ -z "${AWS_ACCESS_KEY_ID:-}" ] || [ -z "${AWS_SECRET_ACCESS_KEY:-}" ]; then
  if [ ! -s "$STACK/dev-aws-credentials" ]; then
    (umask 077; python3 -c 'import secrets; print("LOCAL" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))' \
      >"$STACK/dev-aws-credentials")
  fi
  read -r AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY <"$STACK/dev-aws-credentials"
  export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
fi

# The scheduled metrics-emitter publishes with PutMetricData, as deployed:
# locally to a CloudWatch stand-in (moto_server) unless an endpoint is set.
if [ -z "${AWS_ENDPOINT_URL_CLOUDWATCH:-}${AWS_ENDPOINT_URL:-}" ]; then
  ensure_moto_server
  stop_moto "$STACK/cloudwatch" # a leftover of an interrupted run
  CLOUDWATCH_PORT=$(free_port)
  log "starting a local CloudWatch (moto_server) on 127.0.0.1:$CLOUDWATCH_PORT for metrics-emitter"
  start_moto "$STACK/cloudwatch" "$CLOUDWATCH_PORT"
  STARTED_MOTO=1
  export AWS_ENDPOINT_URL_CLOUDWATCH="http://127.0.0.1:$CLOUDWATCH_PORT"
fi

# The functions' metric lines (EMF JSON, one per invocation) go to a file
# instead of the terminal, where they would interleave with this script's
# output and the functions' logs.
export PAYCACHE_METRICS_FILE="$STACK/metrics.emf"
ENV_FILE="$STACK/functions.env"
{
  echo "REDIS_URL='$REDIS_URL'"
  echo "DATABASE_URL='$DATABASE_URL'"
  # Pass through every other documented variable that is set (values are
  # single-quoted: RATE_LIMIT_POLICIES is JSON).
  while IFS='=' read -r name value; do
    printf "%s='%s'\n" "$name" "$value"
  done < <(env | grep -E '^(REDIS_|CACHE_|DATABASE_|BALANCE_|AUDIT_|RATE_LIMIT_|AUTH_|WS_|PAYCACHE_METRICS_FILE=|AWS_REGION=|AWS_ACCESS_KEY_ID=|AWS_SECRET_ACCESS_KEY=|AWS_ENDPOINT_URL|RUST_LOG=)' | grep -vE '^(REDIS_URL|DATABASE_URL)=' || true)
} >"$ENV_FILE"
chmod 600 "$ENV_FILE"

# Every function is built before anything is served: the first request is
# fast, and a compile error stops here with the error.
log "building every function and the WebSocket gateway (cargo's progress follows)"
cargo build --bins

USER_TOKEN=$("$DEV" login --user 2)
LEDGER_TOKEN=$("$DEV" service-token --client ledger --scope wallets.balance.write)
B="http://127.0.0.1:$PORT"
cat >&2 <<BANNER
==> serving on $B
    GET  $B/health                                (no token: the status only)
    GET  $B/health/nodes                          (services with health.read: every node)
    GET  $B/users/{user_id}/profile               (the user's own; or profiles.read.any)
    GET  $B/wallets/{wallet_id}/balance           (the owner's; or wallets.read.any)
    PUT  $B/wallets/{wallet_id}/balance           (services with wallets.balance.write)
    POST $B/rate-limit/check                      (services with ratelimit.check)
    POST $B/sessions/logout                       (this sign-in; {"scope": "all"}: every sign-in)
    WebSocket: ws://127.0.0.1:$WS_PORT/?token=<access token>    ({"action": "ping"}; balance, transaction,
               notification and announcement messages arrive on it)

    Signed in as seed user 2 (owner of wallets 00000000-0000-4000-9000-000000000008 and ...0009):
    export TOKEN=$USER_TOKEN
    curl -i -H "Authorization: Bearer \$TOKEN" $B/users/00000000-0000-4000-8000-000000000002/profile

    The ledger service (client credentials, wallets.balance.write):
    export LEDGER=$LEDGER_TOKEN

    Watch real-time messages (python3 -m pip install websockets), then write a balance
    (expected_version: the wallet's current version, 1 on a fresh stack; a 409 names it):
    python3 -m websockets "ws://127.0.0.1:$WS_PORT/?token=\$TOKEN"
    curl -X PUT -H "Authorization: Bearer \$LEDGER" -H 'Content-Type: application/json' \\
      -d '{"balance": "12.34", "currency": "USD", "expected_version": 1}' \\
      $B/wallets/00000000-0000-4000-9000-000000000008/balance

    More tokens (in another shell, from the repository):
    set -a; . $ENV_FILE; set +a
    cargo run -q -p paycache-dev -- login --user <n> [--permission profiles.read.any]
    cargo run -q -p paycache-dev -- service-token --client ledger --scope wallets.balance.write

    The functions' metric lines (CloudWatch EMF, one per invocation): tail -f $PAYCACHE_METRICS_FILE

    The reference web client, signed in as seed user 2 (the development sign-in link; CORS
    is answered for $CORS_ALLOWED_ORIGIN as API Gateway will answer it):
    http://localhost:$WEB_PORT/?wallet=00000000-0000-4000-9000-000000000008#dev_token=$USER_TOKEN
BANNER
# `cargo lambda watch` listens on a private port behind the front door on
# $PORT (in paycache-ws-gateway), which keeps at most MAX_INFLIGHT
# invocations outstanding there and queues the rest (503 with Retry-After
# after QUEUE_TIMEOUT seconds): cargo lambda watch 1.9.2 stops answering
# for good once one function has 100 invocations waiting (its per-function
# queue is pushed into under the lock its instances need to take from it).
cargo lambda watch --quiet -A 127.0.0.1 -P "$LAMBDA_PORT" --concurrency "$CONCURRENCY" --env-file "$ENV_FILE" &
WATCH_PID=$!
log "waiting for cargo lambda watch to listen on $LAMBDA_PORT"
for _ in $(seq 1 600); do
  port_in_use "$LAMBDA_PORT" && break
  kill -0 "$WATCH_PID" 2>/dev/null || die "cargo lambda watch exited"
  sleep 0.5
done
"$TARGET/debug/paycache-ws-gateway" --port "$WS_PORT" --lambda "http://127.0.0.1:$LAMBDA_PORT" \
  --front-port "$PORT" --max-inflight "$MAX_INFLIGHT" --queue-timeout "$QUEUE_TIMEOUT" \
  --cors-origin "$CORS_ALLOWED_ORIGIN" --keep-running ws-sender &
GATEWAY_PID=$!
# The web client: a copy of shared/web-client with this stack's addresses.
rm -rf "$STACK/web" && cp -r "$ROOT/shared/web-client" "$STACK/web"
cat >"$STACK/web/config.js" <<CONFIG
window.PAYCACHE_CONFIG = {api: "$B", ws: "ws://127.0.0.1:$WS_PORT", wallet: "00000000-0000-4000-9000-000000000008", auth: null};
CONFIG
python3 -m http.server --bind 127.0.0.1 --directory "$STACK/web" "$WEB_PORT" >"$STACK/web.log" 2>&1 &
WEB_PID=$!
log "web client on http://localhost:$WEB_PORT/ (the sign-in link is above)"
log "WebSocket gateway on ws://127.0.0.1:$WS_PORT/?token=<access token>"
# The template's schedules (EventBridge Scheduler deployed), read from
# template.yaml: audit-flush and metrics-emitter every minute, cache-warmer
# every 5 minutes; ws-sender is kept running by the gateway. One line per
# run.
log "running the template's schedules (scripts/schedules.py):"
python3 "$ROOT/scripts/schedules.py" "$ROOT/template.yaml" "$B" --kept-running ws-sender &
SCHEDULES_PID=$!
wait -n "$WATCH_PID" "$GATEWAY_PID" "$SCHEDULES_PID" "$WEB_PID"
