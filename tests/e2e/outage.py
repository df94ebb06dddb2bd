#!/usr/bin/env python3
"""A Redis outage, as under `make run` (the functions under `cargo lambda
watch`, tokens from `paycache-dev`): a user signed in before the outage
keeps reading (PostgreSQL answers the session check and the read), a token
signed out before it is refused (401). Stops the stack's Redis: run last.

Usage: outage.py <watch port>. The environment is the functions' (e2e.sh
sources e2e.env) plus E2E_REDIS_PORT and REDISCLI_AUTH. Prints one line per
step, the latency of the signed-in reads once the circuit breaker is open,
and closes with 'outage: N passed, M failed'; exits non-zero on any
failure."""
import os
import statistics
import subprocess
import sys
import time

from common import Steps, dev, request

PORT = sys.argv[1]
B = f"http://127.0.0.1:{PORT}"
# Seed user 9 (seed/local.sql).
ME = "00000000-0000-4000-8000-000000000009"

step = Steps()


def profile(token):
    t0 = time.perf_counter()
    s, h, b = request("GET", f"{B}/users/{ME}/profile", token)
    return s, h, b, (time.perf_counter() - t0) * 1000


def main():
    signed_in = dev("login", "--user", "9")
    signed_out = dev("login", "--user", "9")
    s, _, b, _ = profile(signed_in)
    step("before the outage: the signed-in user reads (200)", s == 200, f"{s} {b}")
    s, _, b = request("POST", f"{B}/sessions/logout", signed_out)
    step("before the outage: the other sign-in signs out (200)", s == 200, f"{s} {b}")

    subprocess.run(["redis-cli", "-p", os.environ["E2E_REDIS_PORT"], "SHUTDOWN", "NOSAVE"],
                   capture_output=True, timeout=30)
    down = subprocess.run(["redis-cli", "-p", os.environ["E2E_REDIS_PORT"], "PING"],
                          capture_output=True, text=True, timeout=30)
    step("Redis is stopped", down.returncode != 0 or "PONG" not in down.stdout, down.stdout)

    results = [profile(signed_in) for _ in range(30)]
    statuses = [r[0] for r in results]
    cache = {r[1].get("cache-status") for r in results}
    step("during the outage: 30 of 30 signed-in reads answer 200, served from PostgreSQL",
         statuses == [200] * 30 and cache == {"paycache; fwd=uri-miss; detail=redis-unavailable"},
         f"{statuses} {cache}")
    # Once the breaker is open (the first requests meet Redis's timeouts).
    latencies = [r[3] for r in results[5:]]
    median = statistics.median(latencies)
    print(f"latency during the outage (breaker open, reads 6-30): median {median:.1f} ms, "
          f"max {max(latencies):.1f} ms", flush=True)
    step("during the outage: median signed-in read under 50 ms once the breaker is open",
         median < 50, f"{median:.1f} ms")
    s, h, b, _ = profile(signed_out)
    step("during the outage: the token signed out before it is refused (401, invalid_token)",
         s == 401 and h.get("www-authenticate") == 'Bearer error="invalid_token"', f"{s} {h}")
    sys.exit(0 if step.summary("outage") else 1)


if __name__ == "__main__":
    main()
