# shellcheck shell=bash
# Shared by scripts/run.sh, scripts/test.sh and scripts/e2e.sh: install what is
# missing, and start/stop throwaway Redis (standalone and cluster) and
# PostgreSQL servers in a project-local folder. Safe to run again.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.local/bin:$HOME/.cargo/bin:$PATH"

# Each step with the time since the script started (`$SECONDS`).
log() { printf '==> [%d:%02d] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# on_exit FUNCTION: run FUNCTION when the script ends, however it ends. An
# interrupt (Ctrl-C) or a kill ends the script: a trap that only cleans up on
# INT or TERM lets bash resume the script after it (a killed `make test` would
# start its servers again and carry on). Bash runs a trap only once the
# foreground command returns, so long steps run through `in_background`.
# scripts/check-traps.sh tests this, and that the old form fails it.
on_exit() {
  trap "$1" EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# in_background CMD...: run CMD as a child and wait for it: `wait` returns at
# once when a signal arrives, so INT or TERM ends the script without waiting
# for CMD; the child is killed with the rest of the script's jobs.
in_background() {
  "$@" &
  local pid=$!
  wait "$pid"
}

# kill_jobs: end the script's background children (an interrupted step's).
kill_jobs() {
  local pids
  pids=$(jobs -pr)
  [ -n "$pids" ] && kill $pids 2>/dev/null
  return 0
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* by hand"
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# A cold build needs room where cargo writes (about 5 GB for `make test`,
# Cargo.toml → [profile.dev]). A full disk shows up late and obscurely — the
# linker dies with "signal 7 [Bus error]" — so say it up front, and again
# (disk_report) when a step fails.
cargo_target_dir() { echo "${CARGO_TARGET_DIR:-$ROOT/target}"; }
free_gb() { # path -> whole GB free on its filesystem
  local dir=$1
  while [ ! -d "$dir" ]; do dir=$(dirname "$dir"); done
  df -Pk "$dir" | awk 'NR == 2 { print int($4 / 1048576) }'
}
check_disk() { # GB a cold build needs
  local dir free
  dir=$(cargo_target_dir)
  free=$(free_gb "$dir")
  if [ "$free" -lt "$1" ]; then
    log "warning: $free GB free for $dir; a cold build needs about $1 GB (a full disk fails the linker with a Bus error)"
  fi
}
disk_report() {
  log "free disk: $(free_gb "$(cargo_target_dir)") GB for $(cargo_target_dir), $(free_gb "$ROOT") GB for $ROOT"
}

pg_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"; return 0
  fi
  return 1
}

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    apt_install redis-server
  fi
}

ensure_postgres() {
  if ! pg_bindir >/dev/null; then apt_install postgresql; fi
  command -v psql >/dev/null 2>&1 || apt_install postgresql-client
}

ensure_python() {
  if ! command -v python3 >/dev/null 2>&1; then apt_install python3 python3-pip; fi
  if ! python3 -m pip --version >/dev/null 2>&1; then apt_install python3-pip; fi
}

ensure_cargo_lambda() {
  if cargo lambda --version >/dev/null 2>&1; then return 0; fi
  ensure_python
  log "pip install cargo-lambda"
  python3 -m pip install --quiet cargo-lambda \
    || python3 -m pip install --quiet --user --break-system-packages cargo-lambda
  hash -r
  cargo lambda --version >/dev/null 2>&1 || die "cargo-lambda did not install"
}

# PyYAML reads template.yaml for the local schedules (scripts/schedules.py).
ensure_pyyaml() {
  if python3 -c 'import yaml' >/dev/null 2>&1; then return 0; fi
  ensure_python
  log "pip install pyyaml (the local scheduler reads template.yaml)"
  python3 -m pip install --quiet pyyaml \
    || python3 -m pip install --quiet --user --break-system-packages pyyaml
  python3 -c 'import yaml' >/dev/null 2>&1 || die "PyYAML did not install"
}

ensure_moto_server() {
  if ! command -v moto_server >/dev/null 2>&1 || ! python3 -c 'import moto.server, flask' >/dev/null 2>&1; then
    ensure_python
    log "pip install moto[server] (a local CloudWatch-compatible endpoint for tests)"
    python3 -m pip install --quiet 'moto[server]' \
      || python3 -m pip install --quiet --user --break-system-packages 'moto[server]'
    hash -r
  fi
}

ensure_schemathesis() {
  if ! command -v schemathesis >/dev/null 2>&1; then
    ensure_python
    log "pip install schemathesis (property-based API tests against openapi.yaml)"
    python3 -m pip install --quiet 'schemathesis>=4.1,<5' \
      || python3 -m pip install --quiet --user --break-system-packages 'schemathesis>=4.1,<5'
    hash -r
  fi
}

ensure_openapi_validator() {
  if ! command -v openapi-spec-validator >/dev/null 2>&1; then
    ensure_python
    log "pip install openapi-spec-validator (the reference validator for openapi.yaml)"
    python3 -m pip install --quiet 'openapi-spec-validator>=0.7,<0.9' \
      || python3 -m pip install --quiet --user --break-system-packages 'openapi-spec-validator>=0.7,<0.9'
    hash -r
  fi
}

ensure_sam_translator() {
  if ! python3 -c 'import samtranslator' >/dev/null 2>&1; then
    ensure_python
    log "pip install aws-sam-translator (the deployment contract test translates template.yaml offline)"
    python3 -m pip install --quiet 'aws-sam-translator>=1.90,<2' \
      || python3 -m pip install --quiet --user --break-system-packages 'aws-sam-translator>=1.90,<2'
  fi
}

ensure_python_websockets() {
  if ! python3 -c 'import websockets' >/dev/null 2>&1; then
    ensure_python
    log "pip install websockets (the WebSocket client of the real-time e2e test)"
    python3 -m pip install --quiet 'websockets>=13,<16' \
      || python3 -m pip install --quiet --user --break-system-packages 'websockets>=13,<16'
  fi
}

start_moto() { # dir port
  mkdir -p "$1"
  moto_server -H 127.0.0.1 -p "$2" >"$1/moto.log" 2>&1 &
  echo $! >"$1/moto.pid"
  local i
  for i in $(seq 1 100); do
    port_in_use "$2" && return 0
    sleep 0.1
  done
  die "moto_server did not start (see $1/moto.log)"
}

stop_moto() { # dir
  [ -f "$1/moto.pid" ] && kill "$(cat "$1/moto.pid")" 2>/dev/null
  rm -f "$1/moto.pid"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A port P such that P and P+10000 (Redis Cluster's bus port) are both free
# and P <= 55535, as redis-server requires in cluster mode.
free_cluster_port() {
  python3 - <<'PY'
import random, socket
for _ in range(200):
    p = random.randint(20000, 45000)
    socks = []
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); socks.append(s)
        print(p); break
    except OSError:
        pass
    finally:
        for s in socks: s.close()
PY
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_redis() { # port
  local i
  for i in $(seq 1 200); do
    if [ "$(redis-cli -h 127.0.0.1 -p "$1" PING 2>/dev/null)" = PONG ]; then return 0; fi
    sleep 0.05
  done
  die "redis-server on port $1 did not start"
}

start_redis() { # dir port [extra args...]
  local dir=$1 port=$2; shift 2
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid" --daemonize yes "$@" >/dev/null
  wait_redis "$port"
}

stop_redis() { # dir
  local pidfile="$1/redis.pid"
  if [ -f "$pidfile" ]; then
    local pid i; pid=$(cat "$pidfile")
    kill -CONT "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    rm -f "$pidfile"
  fi
}

start_cluster() { # dir -> prints comma-separated URLs
  local dir=$1 ports=() port i addrs=() urls=()
  for i in 0 1 2 3 4 5; do
    port=$(free_cluster_port)
    start_redis "$dir/node$i" "$port" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000
    ports+=("$port"); addrs+=("127.0.0.1:$port"); urls+=("redis://127.0.0.1:$port")
  done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 \
    || die "redis-cli --cluster create failed (see $dir/create.log)"
  for i in $(seq 1 300); do
    local ok=1 replicas=0
    for port in "${ports[@]}"; do
      redis-cli -h 127.0.0.1 -p "$port" CLUSTER INFO 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
      # cluster_state:ok comes before the replicas have attached.
      if redis-cli -h 127.0.0.1 -p "$port" INFO replication 2>/dev/null | grep -q 'master_link_status:up'; then
        replicas=$((replicas + 1))
      fi
    done
    [ "$replicas" = 3 ] || ok=0
    if [ "$ok" = 1 ]; then (IFS=,; echo "${urls[*]}"); return 0; fi
    sleep 0.1
  done
  die "the local Redis Cluster did not reach cluster_state:ok"
}

stop_cluster() { # dir
  local node
  for node in "$1"/node*; do [ -d "$node" ] && stop_redis "$node"; done
}

# PostgreSQL refuses to run as root; as root we run it as the `postgres` user.
pg_run() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() { # dir port
  local dir=$1 port=$2 bindir
  bindir=$(pg_bindir) || die "PostgreSQL is not installed"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || as_root useradd --system --no-create-home postgres
  fi
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$dir"
    # The postgres user must reach the folder; where a parent is closed to
    # it, fall back to a private folder under /tmp.
    if ! runuser -u postgres -- test -w "$dir"; then
      local alt; alt=$(mktemp -d /tmp/paycache-pg.XXXXXX); chown postgres "$alt"
      log "postgres cannot write $dir; using $alt"
      ln -sfn "$alt" "$dir.alt"; dir=$alt
    fi
  fi
  if [ ! -s "$dir/PG_VERSION" ]; then
    pg_run "$bindir/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 --no-sync >"$dir.initdb.log" 2>&1 \
      || { cat "$dir.initdb.log" >&2; die "initdb failed"; }
  fi
  if pg_run "$bindir/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    log "PostgreSQL already running in $dir"
  else
    pg_run "$bindir/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null \
      || { tail -20 "$dir/server.log" >&2; die "PostgreSQL did not start"; }
  fi
  echo "$dir"
}

stop_postgres() { # dir
  local bindir
  bindir=$(pg_bindir) || return 0
  [ -s "$1/PG_VERSION" ] && pg_run "$bindir/pg_ctl" -D "$1" -m fast -w stop >/dev/null 2>&1 || true
}

# PgBouncer (Debian's package) in front of a PostgreSQL: the local
# stand-in for RDS Proxy. Transaction pooling, its defaults for startup
# parameters (a connection that sends `options` is refused, as RDS Proxy
# refuses it) and for prepared statements (none kept across transactions:
# 1.18 has no max_prepared_statements), and a server pool smaller than the
# clients that share it.
ensure_pgbouncer() {
  command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || apt_install pgbouncer
}

# The reference web client's browser test: Debian's Chromium and its
# ChromeDriver, driven by Selenium (PyPI).
ensure_chromium() {
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    apt_install chromium chromium-driver
  fi
  if ! python3 -c 'import selenium' >/dev/null 2>&1; then
    ensure_python
    log "pip install selenium (drives Chromium in the web client's test)"
    python3 -m pip install --quiet 'selenium>=4.20,<5' \
      || python3 -m pip install --quiet --user --break-system-packages 'selenium>=4.20,<5'
  fi
}

pgbouncer_bin() { command -v pgbouncer 2>/dev/null || echo /usr/sbin/pgbouncer; }

# start_pgbouncer dir port pg_port pool_size auth_type [user password]...
# auth_type `trust` (the user must still be listed; its password is not
# asked) or `scram-sha-256` (the password given here, which PgBouncer also
# uses to log in to PostgreSQL). Every database name is passed through
# (`* =`), so a test's own database needs no entry.
start_pgbouncer() {
  local dir=$1 port=$2 pg_port=$3 pool=$4 auth=$5; shift 5
  mkdir -p "$dir"
  : > "$dir/users.txt"
  while [ $# -ge 2 ]; do printf '"%s" "%s"\n' "$1" "$2" >> "$dir/users.txt"; shift 2; done
  cat > "$dir/pgbouncer.ini" <<INI
[databases]
* = host=127.0.0.1 port=$pg_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = $auth
auth_file = $dir/users.txt
pool_mode = transaction
default_pool_size = $pool
max_client_conn = 2000
query_wait_timeout = 30
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
admin_users = postgres
stats_users = postgres
INI
  chmod 600 "$dir/users.txt"
  if [ "$(id -u)" = 0 ]; then chown -R postgres "$dir"; fi
  pg_run "$(pgbouncer_bin)" -d "$dir/pgbouncer.ini" >"$dir/start.log" 2>&1 \
    || { cat "$dir/start.log" "$dir/pgbouncer.log" >&2 2>/dev/null; die "PgBouncer did not start"; }
  local i
  for i in $(seq 1 100); do port_in_use "$port" && return 0; sleep 0.05; done
  tail -20 "$dir/pgbouncer.log" >&2 2>/dev/null
  die "PgBouncer did not listen on $port"
}

stop_pgbouncer() { # dir
  local pidfile="$1/pgbouncer.pid"
  if [ -f "$pidfile" ]; then
    local pid i; pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    rm -f "$pidfile"
  fi
}

# The servers the tests talk to, under `dir`: standalone Redis, a 3+3
# Redis Cluster, PostgreSQL with PgBouncer in front (2 server connections
# per database, fewer than a test's execution environments open), and the
# local AWS (moto_server). Exports the PAYCACHE_TEST_* variables the test
# harness reads and the AWS SDK's endpoint and throwaway credentials.
# `make test` and `make mutants` both start them this way.
# Also sets PG_PORT and PG_DIR (PostgreSQL's own port and data folder) and
# PGB_PORT (PgBouncer's).
start_test_servers() { # dir
  local dir=$1 redis_port moto_port
  mkdir -p "$dir"
  redis_port=$(free_port)
  start_redis "$dir/redis" "$redis_port"
  PAYCACHE_TEST_CLUSTER_URLS=$(start_cluster "$dir/cluster")
  PG_PORT=$(free_port)
  PG_DIR=$(start_postgres "$dir/pg" "$PG_PORT")
  echo "$PG_DIR" > "$dir/pg.dir"
  PGB_PORT=$(free_port)
  start_pgbouncer "$dir/pgbouncer" "$PGB_PORT" "$PG_PORT" 2 trust postgres ""
  moto_port=$(free_port)
  start_moto "$dir/moto" "$moto_port"
  export PAYCACHE_TEST_CLUSTER_URLS
  export PAYCACHE_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"
  export PAYCACHE_TEST_PG="host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres"
  export PAYCACHE_TEST_PG_POOLER="host=127.0.0.1 port=$PGB_PORT user=postgres"
  export AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port" AWS_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
  unset AWS_PROFILE AWS_SESSION_TOKEN
}

stop_test_servers() { # dir
  stop_redis "$1/redis"; stop_cluster "$1/cluster"; stop_moto "$1/moto"
  stop_pgbouncer "$1/pgbouncer"
  [ -s "$1/pg.dir" ] && stop_postgres "$(cat "$1/pg.dir")"
  return 0
}

# cargo-mutants (crates.io) for `make mutants`.
ensure_cargo_mutants() {
  if cargo mutants --version >/dev/null 2>&1; then return 0; fi
  log "cargo install cargo-mutants (mutation testing; a few minutes, once)"
  cargo install --locked cargo-mutants
  cargo mutants --version >/dev/null 2>&1 || die "cargo-mutants did not install"
}
