#!/usr/bin/env bash
# check-secrets.sh SECRETS LOG...
# Secrets never reach logs, errors or metrics. Exits 1 if any value listed
# in SECRETS (one a line; blank lines and # comments skipped) appears in any
# LOG; exits 2 if SECRETS lists nothing, or a LOG is missing or empty — a
# log that does not exist cannot show that nothing leaked. Prints only the
# first four characters of a leaked value.
set -uo pipefail
secrets=${1:?usage: check-secrets.sh SECRETS LOG...}
shift
[ "$#" -gt 0 ] || { echo "check-secrets: no logs to check" >&2; exit 2; }
count=$(grep -cv '^\(#\|$\)' "$secrets" 2>/dev/null || echo 0)
[ "$count" -gt 0 ] || { echo "check-secrets: no secrets listed in $secrets" >&2; exit 2; }
for log in "$@"; do
  [ -s "$log" ] || { echo "check-secrets: $log is missing or empty" >&2; exit 2; }
done
leaked=0
while IFS= read -r secret; do
  case "$secret" in ''|'#'*) continue ;; esac
  for log in "$@"; do
    if grep -qF -- "$secret" "$log"; then
      echo "check-secrets: a secret (${secret:0:4}…) appears in $log" >&2
      leaked=1
    fi
  done
done <"$secrets"
[ "$leaked" = 0 ] || exit 1
echo "secrets: none of $count leaked into $# logs ($(cat "$@" | wc -c) bytes)"
