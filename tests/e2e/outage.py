#!/usr/bin/env python3
"""A Redis outage, as under `make run` (the functions under `cargo lambda
watch`, tokens from `paycache-dev`, the local scheduler and ws-sender
running): a user signed in before the outage keeps reading (PostgreSQL
answers the session check and the read), a token signed out before it is
refused (401). Then (issue 28) Redis comes back as it was — cut off, not
emptied — and what was signed out during the outage stays signed out: the
other device's token and a service token are refused at every request from
the first, the other device's socket (opened before) is closed and gets no
frame, and nothing is left pending — with no hand-made invocation. Stops
the stack's Redis at the end: run last.

Usage: outage.py <watch port> <gateway port>. The environment is the
functions' (e2e.sh sources e2e.env) plus E2E_REDIS_PORT, E2E_REDIS_DIR,
REDISCLI_AUTH and E2E_PSQL. Prints one line per step, the latency of the
signed-in reads once the circuit breaker is open, when the sign-out was in
force everywhere after Redis returned, and closes with 'outage: N passed, M
failed'; exits non-zero on any failure."""
import asyncio
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

import websockets
from common import Steps, dev, request

PORT, GW = sys.argv[1], sys.argv[2]
B = f"http://127.0.0.1:{PORT}"
# Seed user 9 (seed/local.sql).
ME = "00000000-0000-4000-8000-000000000009"

step = Steps()


def profile(token):
    t0 = time.perf_counter()
    s, h, b = request("GET", f"{B}/users/{ME}/profile", token)
    return s, h, b, (time.perf_counter() - t0) * 1000


def redis_cli(*args):
    return subprocess.run(["redis-cli", "-p", os.environ["E2E_REDIS_PORT"], *args],
                          capture_output=True, text=True, timeout=30)


def cut_redis():
    """Cut off, data kept (a partition, an unresponsive node): saved, then
    stopped — connections are refused until it is back."""
    saved = redis_cli("SAVE")
    redis_cli("SHUTDOWN", "NOSAVE")
    return "OK" in saved.stdout


def restore_redis():
    """Started again on its port and directory, with what it saved."""
    d, port = os.environ["E2E_REDIS_DIR"], os.environ["E2E_REDIS_PORT"]
    subprocess.run(["redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", d, "--logfile", f"{d}/redis.log",
                    "--pidfile", f"{d}/redis.pid", "--daemonize", "yes",
                    "--requirepass", os.environ["REDISCLI_AUTH"]], check=True, timeout=30)
    for _ in range(200):
        if redis_cli("PING").stdout.strip() == "PONG":
            return True
        time.sleep(0.05)
    return False


def psql(sql):
    out = subprocess.run(shlex.split(os.environ["E2E_PSQL"]) + ["-tAc", sql],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


async def frames_until_closed(ws, seconds):
    frames, end = [], time.time() + seconds
    while time.time() < end:
        try:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), timeout=end - time.time())))
        except asyncio.TimeoutError:
            return frames, False
        except websockets.ConnectionClosed:
            return frames, True
    return frames, False


async def signed_out_during_the_outage_stays_signed_out():
    # Seed user 14's own profile and USD wallet (4n + 0 = 56 = 0x38).
    me, wallet = "00000000-0000-4000-8000-00000000000e", "00000000-0000-4000-9000-000000000038"
    this_device, other_device = dev("login", "--user", "14"), dev("login", "--user", "14")
    service = dev("service-token", "--client", "support-console", "--scope", "wallets.read.any")
    ledger = dev("service-token", "--client", "ledger", "--scope", "wallets.balance.write",
                 "--scope", "wallets.read.any")
    ws = await websockets.connect(f"ws://127.0.0.1:{GW}/?token={other_device}")
    before = (request("GET", f"{B}/users/{me}/profile", other_device)[0],
              request("GET", f"{B}/wallets/{wallet}/balance", service)[0])
    step("before the outage: the other device and the service are served", before == (200, 200), before)

    step("Redis is cut off (its data kept)", cut_redis())
    out = [request("POST", f"{B}/sessions/logout", this_device, {"scope": "all"})[0],
           request("POST", f"{B}/sessions/logout", service)[0]]
    step("during the outage: sign out everywhere, and the service signs out (200, 200)",
         out == [200, 200], out)
    pending = psql("SELECT count(*) FROM sessions WHERE cache_pending")
    step("during the outage: the sign-outs are recorded in PostgreSQL, pending for Redis",
         pending != "0", pending)
    step("Redis is back, as it was", restore_redis())
    back = time.monotonic()

    # From the first request after Redis returned: never admitted.
    seen, swept_after = [], None
    while time.monotonic() - back < 10:
        seen.append(request("GET", f"{B}/users/{me}/profile", other_device)[0])
        seen.append(request("GET", f"{B}/wallets/{wallet}/balance", service)[0])
        if swept_after is None and psql(
                "SELECT (SELECT count(*) FROM sessions WHERE cache_pending)"
                " + (SELECT count(*) FROM revoked_tokens WHERE cache_pending)") == "0":
            swept_after = time.monotonic() - back
        time.sleep(0.2)
    step(f"after the outage: {len(seen)} requests with the other device's and the service's tokens "
         "in 10 s: all 401", set(seen) == {401}, sorted(set(seen)))
    step("after the outage: nothing left pending, with no hand-made invocation",
         swept_after is not None, "still pending after 10 s")
    if swept_after is not None:
        print(f"outage: every sign-out made during it applied to Redis {swept_after:.1f} s "
              "after Redis returned", flush=True)
    s, _ = request("GET", f"{B}/wallets/{wallet}/balance", ledger)[:2]
    put = None
    if s == 200:
        b = request("GET", f"{B}/wallets/{wallet}/balance", ledger)[2]
        put = request("PUT", f"{B}/wallets/{wallet}/balance", ledger,
                      {"balance": "77.00", "currency": b["currency"],
                       "expected_version": b["version"]})[0]
    frames, closed = await frames_until_closed(ws, 15)
    balance = [f for f in frames if f.get("type") == "balance_update"]
    step("after the outage: the other device's socket is closed and gets no balance frame",
         put == 200 and closed and not balance, f"put={put} closed={closed} {balance}")


def main():
    asyncio.run(signed_out_during_the_outage_stays_signed_out())
    signed_in = dev("login", "--user", "9")
    signed_out = dev("login", "--user", "9")
    s, _, b, _ = profile(signed_in)
    step("before the outage: the signed-in user reads (200)", s == 200, f"{s} {b}")
    s, _, b = request("POST", f"{B}/sessions/logout", signed_out)
    step("before the outage: the other sign-in signs out (200)", s == 200, f"{s} {b}")

    redis_cli("SHUTDOWN", "NOSAVE")
    down = redis_cli("PING")
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
