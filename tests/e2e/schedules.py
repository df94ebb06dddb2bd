#!/usr/bin/env python3
"""The scheduled functions run on the template's schedules without a
hand-made invocation (issue 28): `scripts/schedules.py` — what `make run`
starts — invokes them through the front door. A balance write's audit event
reaches PostgreSQL's audit_log by the scheduled audit-flush alone. The
broken form first: with no scheduler running, the same event is still not
in audit_log after the same wait, which the same query sees. The scheduler
is left running for the rest of the end-to-end run (the outage step relies
on it).

Usage: schedules.py <front door port> <scheduler log>. The environment is
the functions' plus E2E_PSQL (a psql command line for the run's database).
Runs the scheduler 12 times faster than the template (audit-flush every
5 s). Prints one line per step and closes with 'schedules: N passed, M
failed'; exits non-zero on any failure."""
import os
import shlex
import subprocess
import sys
import time

from common import ROOT, Steps, dev, request

PORT, LOG = sys.argv[1], sys.argv[2]
B = f"http://127.0.0.1:{PORT}"
# Seed user 4's USD wallet (seed/local.sql: 4n + 0).
WALLET = "00000000-0000-4000-9000-000000000010"
SPEEDUP = 12

step = Steps()


def psql(sql):
    out = subprocess.run(shlex.split(os.environ["E2E_PSQL"]) + ["-tAc", sql],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def audited(event_id):
    return psql(f"SELECT count(*) FROM audit_log WHERE event_id = '{event_id}'") == "1"


def write(ledger, minor):
    s, _, b = request("GET", f"{B}/wallets/{WALLET}/balance", ledger)
    assert s == 200, (s, b)
    body = {"balance": f"{minor / 100:.2f}", "currency": b["currency"],
            "expected_version": b["version"]}
    s, _, b = request("PUT", f"{B}/wallets/{WALLET}/balance", ledger, body)
    assert s == 200, (s, b)
    return psql(f"SELECT audit_event_id FROM balance_outbox WHERE wallet_id = '{WALLET}' "
                f"AND version = {b['version']}")


def wait_for(event_id, seconds):
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if audited(event_id):
            return time.monotonic() - t0
        time.sleep(0.25)
    return None


def main():
    ledger = dev("service-token", "--client", "ledger", "--scope", "wallets.balance.write",
                 "--scope", "wallets.read.any")
    wait = 3 * 60 / SPEEDUP
    # The broken form: nothing runs the schedules.
    early = write(ledger, 4_100)
    step(f"without the scheduler, the audit event is not in PostgreSQL after {wait:.0f} s",
         wait_for(early, wait) is None)
    with open(LOG, "a") as log:
        scheduler = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "scripts", "schedules.py"),
             os.path.join(ROOT, "template.yaml"), B, "--kept-running", "ws-sender",
             "--speedup", str(SPEEDUP)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    with open(os.path.join(os.path.dirname(LOG), "schedules.pid"), "w") as f:
        f.write(str(scheduler.pid))
    took = wait_for(early, wait)
    step("with the scheduler, that event reaches audit_log (scheduled audit-flush)",
         took is not None, f"not within {wait:.0f} s")
    later = write(ledger, 4_200)
    took = wait_for(later, wait)
    step("a later event too, without a hand-made invocation", took is not None,
         f"not within {wait:.0f} s")
    if took is not None:
        print(f"schedules: an audit event in PostgreSQL {took:.1f} s after its write "
              f"(audit-flush every {60 / SPEEDUP:g} s here, every 60 s under make run)", flush=True)
    with open(LOG) as f:
        runs = [l for l in f if l.startswith("==> schedule: audit-flush")]
    step("the scheduler says one line per run", len(runs) >= 1 and "HTTP 200" in runs[0],
         runs[:2])
    sys.exit(0 if step.summary("schedules") else 1)


if __name__ == "__main__":
    main()
