#!/usr/bin/env bash
# `make test` runs this: a kill (TERM) or an interrupt (INT) of a script that
# uses lib.sh's on_exit ends it — its cleanup runs once and nothing after the
# interrupted step runs — even while a long step runs through in_background.
# The old form (`trap cleanup EXIT INT TERM`, which cleans up and then lets
# bash resume the script) must fail the same check.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# $1: how the script sets its traps; $2: the signal. Prints what happened.
probe() {
  local setup=$1 sig=$2 out="$dir/out.$RANDOM"
  : >"$out"
  # Job control on: a background job of a script without it ignores SIGINT.
  set -m
  bash -c "
    source '$ROOT/scripts/lib.sh'
    set +e  # what follows the interrupted step decides, not errexit
    cleanup() { kill_jobs; echo cleanup >>'$out'; }
    $setup
    echo started >>'$out'
    in_background sleep 30
    echo resumed >>'$out'
    sleep 1
  " >/dev/null 2>&1 &
  local pid=$!
  set +m
  for _ in $(seq 100); do grep -q started "$out" && break; sleep 0.05; done
  sleep 0.2
  kill -"$sig" "$pid"
  local waited=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 0.1; waited=$((waited + 1))
    [ "$waited" -gt 100 ] && { kill -KILL "$pid"; echo "still-running"; break; }
  done
  wait "$pid" 2>/dev/null
  tr '\n' ' ' <"$out"
}

# A signal ignored when a shell starts cannot be trapped (bash's manual),
# and a background job of a non-interactive shell starts with SIGINT ignored
# (CI may run us so): then only TERM can be checked.
signals="TERM INT"
if bash -c 'trap -p INT' | grep -q "''"; then
  echo "check-traps: SIGINT is ignored in this environment; checking TERM only"
  signals="TERM"
fi

fails=0
for sig in $signals; do
  got=$(probe 'on_exit cleanup' "$sig")
  if [ "$got" != "started cleanup " ]; then
    echo "check-traps: on_exit, $sig: expected 'started cleanup', got '$got'" >&2
    fails=1
  fi
done
# The broken variant: the same check must catch a script that resumes after
# a kill. (On INT bash itself ends a script whose `wait` was interrupted, so
# the old form shows its fault on TERM, the signal `kill` sends.)
got=$(probe 'trap cleanup EXIT INT TERM' TERM)
if [ "$got" = "started cleanup " ]; then
  echo "check-traps: the check did not catch the resuming trap ('$got')" >&2
  fails=1
fi
[ "$fails" = 0 ] && echo "check-traps: $signals end the script (and the resuming form is caught)"
exit "$fails"
