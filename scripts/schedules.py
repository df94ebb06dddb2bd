#!/usr/bin/env python3
"""The local stand-in for EventBridge Scheduler: invokes every scheduled
function of template.yaml on its schedule, so that the laptop behaves like
the deployment (audit events reach PostgreSQL, outbox rows are applied,
outage sign-outs are swept, custom metrics are emitted, caches warmed).

The schedules are read from template.yaml itself (every
AWS::Serverless::Function event of Type ScheduleV2 or Schedule), so the
two cannot drift: a schedule whose State is DISABLED, or depends on a
parameter (`!If`: the extra senders of `Senders`), is not run; a function
the gateway already keeps running (--kept-running: ws-sender, whose
deployed runs last until their deadline and overlap) is not invoked
again. Each run is an invocation through the Invoke API (the front door
of `make run`) with the function's sample scheduled event
(events/<function>-scheduled.json, else {}), as EventBridge Scheduler
invokes it: one line on the console per run, nothing else.

Usage: schedules.py <template.yaml> <invoke base URL> [--kept-running NAME]...
                    [--speedup N] [--list]
--speedup N runs every schedule N times as often (the end-to-end test's
clock; make run uses 1). --list prints the schedules and exits."""
import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form intrinsics (!Ref, !If, !Sub …)
    read as {"!Tag": value}."""


def _intrinsic(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {"!" + suffix: value}


CfnLoader.add_multi_constructor("!", _intrinsic)

UNITS = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600, "day": 86400, "days": 86400}


def period(expression):
    """Seconds between runs of a `rate(N unit)` expression."""
    m = re.fullmatch(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)", expression.strip())
    if not m:
        raise SystemExit(f"schedules: only rate(...) expressions are run locally, not {expression!r}")
    return int(m.group(1)) * UNITS[m.group(2)]


def schedules(template_path):
    """[(function, event name, expression, seconds)] from the template."""
    with open(template_path, encoding="utf-8") as f:
        template = yaml.load(f, Loader=CfnLoader)
    out = []
    for logical, resource in (template.get("Resources") or {}).items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.get("Properties") or {}
        name = os.path.basename(str(props.get("CodeUri", logical)).rstrip("/"))
        for event, spec in (props.get("Events") or {}).items():
            if spec.get("Type") not in ("ScheduleV2", "Schedule"):
                continue
            p = spec.get("Properties") or {}
            state = p.get("State", "ENABLED")
            if p.get("Enabled") is False or state != "ENABLED":
                continue
            expression = p.get("ScheduleExpression")
            out.append((name, event, expression, period(expression)))
    return out


def payload(function):
    path = os.path.join(ROOT, "events", f"{function}-scheduled.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f.read().encode()
    return b"{}"


def invoke(base, function):
    url = f"{base}/2015-03-31/functions/{function}/invocations"
    req = urllib.request.Request(url, method="POST", data=payload(function),
                                 headers={"content-type": "application/json"})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=900) as r:
            body = r.read().decode(errors="replace")
            status = r.status
    except urllib.error.HTTPError as e:
        body, status = e.read().decode(errors="replace"), e.code
    except Exception as e:  # the stack is stopping, or busy
        body, status = f"{type(e).__name__}: {e}", None
    took = (time.monotonic() - t0) * 1000
    try:
        summary = json.loads(body)
        short = summary.get("status") if isinstance(summary, dict) else None
    except ValueError:
        short = None
    what = short or (body.strip().splitlines() or [""])[0][:120]
    print(f"==> schedule: {function} ({'HTTP ' + str(status) if status else 'no answer'}, "
          f"{took:.0f} ms): {what}", flush=True)


def run(function, seconds, base):
    # Like a new schedule: the first run one period after the start.
    next_at = time.monotonic() + seconds
    while True:
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at += seconds
        # Runs overlap when one takes longer than the period, as deployed.
        threading.Thread(target=invoke, args=(base, function), daemon=True).start()


def main(argv):
    args, kept, speedup, listing = [], set(), 1.0, False
    it = iter(argv)
    for a in it:
        if a == "--kept-running":
            kept.add(next(it))
        elif a == "--speedup":
            speedup = float(next(it))
        elif a == "--list":
            listing = True
        else:
            args.append(a)
    if len(args) != 2 or speedup <= 0:
        raise SystemExit(__doc__)
    template, base = args
    found = schedules(template)
    if not found:
        raise SystemExit("schedules: template.yaml has no enabled schedule")
    running = []
    for function, event, expression, seconds in found:
        if function in kept:
            print(f"    {function}: {expression} ({event}) - kept running by the gateway", flush=True)
            continue
        every = seconds / speedup
        print(f"    {function}: {expression} ({event}) - every {every:g} s", flush=True)
        running.append((function, every))
    if listing:
        return
    for function, every in running:
        threading.Thread(target=run, args=(function, every, base.rstrip("/")), daemon=True).start()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:
        pass
