#!/usr/bin/env python3
"""The Lua scripts' decisive comparisons, inverted one at a time: each
must fail the tests named beside it. cargo-mutants does not read Lua, so
this is the same idea by hand: the table below is the mutants, the
integration binary the judge (`make mutants SHARD=lua` runs it against
the servers `scripts/mutants.sh` starts).

For each row the script's file is edited in place (the scripts are
compiled into the crate with `include_str!`, so the next build carries
the mutant), the named tests run, and the file is restored — also on an
interrupt. A mutant is caught when the tests fail, missed when they pass,
unviable when the build fails. Prints one line per mutant and a summary;
exits 2 when a mutant was missed (as cargo-mutants does).

Usage: lua-mutants.py [--list] [--only SUBSTRING] [--out DIR]"""
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = "shared/paycache/src/"

# (script, what the comparison decides, original, mutant, test filters)
MUTANTS = [
    ("domain/audit/append.lua", "a full buffer refuses the append",
     "if n >= tonumber(ARGV[1]) then", "if n < tonumber(ARGV[1]) then",
     ["audit::a_full_buffer_refuses_instead_of_dropping"]),
    ("domain/audit/claim.lua", "only the lock holder claims a batch",
     "if redis.call('GET', KEYS[3]) ~= ARGV[1] then", "if redis.call('GET', KEYS[3]) == ARGV[1] then",
     ["audit::ten_thousand_events"]),
    ("domain/audit/ack.lua", "only the lock holder acknowledges",
     "if redis.call('GET', KEYS[2]) ~= ARGV[1] then", "if redis.call('GET', KEYS[2]) == ARGV[1] then",
     ["audit::ten_thousand_events"]),
    ("domain/balance/apply.lua", "a cached balance never moves backwards",
     "if v > published then", "if v < published then",
     ["balance::readers_never_see_an_older_version", "balance::pubsub_delivers_every_version_in_order"]),
    ("domain/balance/apply.lua", "no row older than the highest version published is cached",
     "version > cached and version >= published then", "version > cached and version >= 0 then",
     ["balance::a_slow_writer_never_caches", "balance::readers_never_see_an_older_version"]),
    ("domain/balance/apply.lua", "a writer leaves only a fence that holds its token",
     "if leaving ~= '' and t == leaving then", "if leaving ~= '' and not member then",
     ["balance::fence_protocol", "balance::a_slow_writer_never_caches"]),
    ("domain/balance/fence.lua", "the fence keeps the writers already inside",
     "inside = tokens .. ',' .. ARGV[3]", "inside = ARGV[3]",
     ["balance::fence_protocol", "balance::readers_never_see_an_older_version"]),
    ("domain/balance/invalidate.lua", "an invalidation keeps a writer's fence",
     "string.sub(lease, 1, 2) ~= 'w:'", "string.sub(lease, 1, 2) == 'w:'",
     ["balance::an_invalidation_keeps_a_writers_fence", "balance::", "invalidation::"]),
    ("domain/delivery/checkpoint.lua", "a checkpoint moves only for its own entry",
     "if not p[1] or p[1][2] ~= ARGV[2] then", "if not p[1] or p[1][2] == ARGV[2] then",
     ["realtime::an_announcement"]),
    ("domain/delivery/lease.lua", "a partition is taken only when free",
     "if holder and holder ~= ARGV[1] then", "if holder and holder == ARGV[1] then",
     ["realtime::senders_share_the_partitions", "realtime::two_senders_keep_each_connections_order"]),
    ("domain/delivery/lease.lua", "only the holder renews or releases",
     "if holder ~= ARGV[1] then\n  return 0", "if holder == ARGV[1] then\n  return 0",
     ["realtime::senders_share_the_partitions"]),
    ("domain/delivery/log_read.lua", "a kick reads from the cursor, a catch-up from its version",
     "if after == '' then", "if after ~= '' then",
     ["realtime::a_reconnect", "realtime::every_balance_version"]),
    ("domain/delivery/wallet_log.rs", "the delivered cursor only moves forwards",
     "if tonumber(ARGV[1]) > d then", "if tonumber(ARGV[1]) < d then",
     ["realtime::every_balance_version", "realtime::queue_entries_out_of_order"]),
    ("domain/fraud/device_seen.lua", "a device known for this user is not new",
     "if doc.user_id == ARGV[1] then", "if doc.user_id ~= ARGV[1] then",
     ["auth::fraud_signals"]),
    ("domain/fraud/risk_check.lua", "a score at the threshold is risky",
     "if score and score >= tonumber(ARGV[1]) then", "if score and score < tonumber(ARGV[1]) then",
     ["auth::fraud_signals"]),
    ("domain/realtime/connect.lua", "a sign-in's connections stop at its limit",
     "if mine >= tonumber(ARGV[5]) then", "if mine > tonumber(ARGV[5]) then",
     ["websocket::connections_past_the_limits_are_refused"]),
    ("domain/realtime/connect.lua", "a user's connections stop at their limit",
     "if all >= tonumber(ARGV[6]) then", "if all > tonumber(ARGV[6]) then",
     ["websocket::connections_past_the_limits_are_refused"]),
    ("domain/realtime/live.lua", "an expired token's connection does not receive",
     "if sid and tonumber(exp) > now and v and v ~= 'ended' then",
     "if sid and tonumber(exp) < now and v and v ~= 'ended' then",
     ["realtime::a_socket_lives_no_longer_than_its_sign_in"]),
    ("domain/realtime/live.lua", "an ended session's connection does not receive",
     "and v and v ~= 'ended' then", "and v and v == 'ended' then",
     ["realtime::a_socket_lives_no_longer_than_its_sign_in", "realtime::every_balance_version"]),
    ("domain/realtime/page.lua", "a page starts after the cursor",
     "if ARGV[1] ~= '' then", "if ARGV[1] == '' then",
     ["realtime::an_announcement"]),
    ("domain/realtime/ping.lua", "pings past the limit are refused",
     "if pings > tonumber(ARGV[5]) then", "if pings < tonumber(ARGV[5]) then",
     ["websocket::pings_past_the_limit_close_the_connection"]),
    ("domain/realtime/ping.lua", "a ping keeps a connection only while its token lives",
     "if sid and tonumber(exp) > tonumber(ARGV[3]) then", "if sid and tonumber(exp) < tonumber(ARGV[3]) then",
     ["websocket::a_connection_lives_no_longer_than_its_sign_in"]),
    ("domain/sessions/end.lua", "\"everywhere\" ends every session of the user",
     "if ARGV[2] == 'all' then", "if ARGV[2] ~= 'all' then",
     ["boundaries::signing_out_ends_this_sign_in_or_every_sign_in"]),
    ("domain/sessions/sign_in.lua", "the user's session index drops only ended sessions",
     "if not v or v == 'ended' then", "if not v or v ~= 'ended' then",
     ["boundaries::signing_out_ends_this_sign_in_or_every_sign_in", "signin::",
      "outage::a_sign_in_during_an_outage"]),
    ("domain/sessions/touch.lua", "an activity sync notes a live session and never revives an ended one",
     "string.sub(v, 1, 1) == '{'", "string.sub(v, 1, 1) ~= '{'",
     ["boundaries::an_activity_sync_does_not_revive_a_signed_out_session",
      "auth::sessions_slide_and_logout_revokes_until_expiry", "outage::activity_reaches_postgres"]),
    ("patterns/cache_aside/get_or_lease.lua", "a writer's fence holds readers off",
     "if holder and string.sub(holder, 1, 2) == 'w:' then", "if holder and string.sub(holder, 1, 2) ~= 'w:' then",
     ["balance::readers_never_see_an_older_version", "balance::fence_protocol"]),
    ("patterns/cache_aside/store_if_leased.lua", "only the lease holder stores",
     "if redis.call('GET', KEYS[2]) ~= ARGV[3] then", "if redis.call('GET', KEYS[2]) == ARGV[3] then",
     ["cache_aside::invalidation_beats_an_in_flight_load", "cache_aside::stampede_loads_once"]),
    ("patterns/cache_aside/release_lease.lua", "only the lease holder releases",
     "if redis.call('GET', KEYS[1]) == ARGV[1] then", "if redis.call('GET', KEYS[1]) ~= ARGV[1] then",
     ["cache_aside::a_failed_load_gives_its_lease_back", "cache_aside::"]),
    ("patterns/ratelimit/fixed_window.lua", "the limit is exact",
     "if count + cost > limit then", "if count + cost >= limit then",
     ["rate_limit::exact_limits_under_concurrency", "rate_limit::cost_and_burst"]),
    ("patterns/ratelimit/sliding_log.lua", "the limit is exact",
     "if count + cost > limit then", "if count + cost >= limit then",
     ["rate_limit::exact_limits_under_concurrency", "rate_limit::cost_and_burst"]),
    ("patterns/ratelimit/sliding_window.lua", "the limit is exact",
     "if estimate + cost > limit then", "if estimate + cost >= limit then",
     ["rate_limit::exact_limits_under_concurrency", "rate_limit::cost_and_burst"]),
    ("patterns/ratelimit/gcra.lua", "a request before its slot is refused",
     "if now < allow_at then", "if now > allow_at then",
     ["rate_limit::exact_limits_under_concurrency", "rate_limit::cost_and_burst"]),
    ("patterns/ratelimit/refund.lua", "a refund undoes only the window it was charged in",
     "if tonumber(h[1]) ~= charged or tonumber(h[2]) == nil then",
     "if tonumber(h[1]) == charged or tonumber(h[2]) == nil then",
     ["rate_limit::refunds_stay_in_the_window", "boundaries::a_refusal_costs_its_owner_nothing"]),
]


def run_tests(filters, log, timeout=None):
    """The tests' exit code; None when they ran past `timeout` seconds."""
    cmd = ["cargo", "test", "-p", "paycache-tests", "--test", "integration", "--", *filters]
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None


def main():
    args = sys.argv[1:]
    only = args[args.index("--only") + 1] if "--only" in args else None
    out = args[args.index("--out") + 1] if "--out" in args else os.path.join(ROOT, ".stack", "mutants", "lua")
    rows = [m for m in MUTANTS if not only or only in m[0]]
    if "--list" in args:
        for script, why, old, new, tests in rows:
            print(f"{script}: {why}: `{old}` -> `{new}` ({' '.join(tests)})")
        return 0
    os.makedirs(out, exist_ok=True)
    # The baseline: the unmutated scripts pass every test named below (a
    # suite that fails anyway would count every mutant as caught). It
    # builds first, so that its time is the tests'; that sets the timeout.
    every = sorted({t for row in rows for t in row[4]})
    base_log = os.path.join(out, "baseline.log")
    run_tests(["--list"], base_log)
    started = time.time()
    if run_tests(every, base_log) != 0:
        raise SystemExit(f"the baseline fails: no mutant can be judged (see {base_log})")
    if "test result: ok" not in open(base_log).read():
        raise SystemExit(f"the baseline ran no test (see {base_log})")
    timeout = max(120, 5 * (time.time() - started))
    print(f"baseline passed in {round(time.time() - started)} s; a mutant times out after {round(timeout)} s", flush=True)
    results = []
    for i, (script, why, old, new, tests) in enumerate(rows):
        path = os.path.join(ROOT, SRC, script)
        original = open(path).read()
        if original.count(old) != 1:
            raise SystemExit(f"{script}: `{old}` must occur exactly once (found {original.count(old)})")
        restore = lambda *_: open(path, "w").write(original)
        signal.signal(signal.SIGINT, lambda *a: (restore(), sys.exit(130)))
        signal.signal(signal.SIGTERM, lambda *a: (restore(), sys.exit(143)))
        started = time.time()
        try:
            open(path, "w").write(original.replace(old, new))
            log = os.path.join(out, f"{i:02d}-{os.path.basename(script)}.log")
            rc = run_tests(tests, log, timeout)
        finally:
            restore()
        text = open(log).read()
        if rc is None:
            outcome = "timeout"
        elif rc == 0:
            outcome = "MISSED"
        elif "error[E" in text or "could not compile" in text:
            outcome = "unviable"
        else:
            outcome = "caught"
        results.append({"script": script, "decides": why, "mutant": new, "tests": tests,
                        "outcome": outcome, "seconds": round(time.time() - started)})
        print(f"{outcome:8} {script}: {why} ({round(time.time() - started)} s)", flush=True)
    with open(os.path.join(out, "outcomes.json"), "w") as f:
        json.dump(results, f, indent=1)
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("caught", "MISSED", "unviable", "timeout")}
    print(f"lua mutants: {counts['caught']} caught, {counts['MISSED']} missed, {counts['unviable']} unviable, "
          f"{counts['timeout']} timed out", flush=True)
    return 2 if counts["MISSED"] else 0


if __name__ == "__main__":
    sys.exit(main())
