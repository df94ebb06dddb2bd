#!/usr/bin/env python3
"""End-to-end: send every case of cases.json to the functions running under
`cargo lambda watch` and check status codes, headers and bodies.

Usage: run.py <watch port>. Prints one line per case and closes with
'e2e: N passed, M failed'; exits non-zero on any failure."""
import glob
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PORT = sys.argv[1]


def invoke_raw(function, event):
    out = subprocess.run(
        ["cargo", "lambda", "invoke", function, "--invoke-address", "127.0.0.1",
         "--invoke-port", PORT, "--data-file", os.path.join(ROOT, event), "--output-format", "json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    if out.returncode != 0:
        raise AssertionError(f"cargo lambda invoke failed: {out.stderr.strip()[-400:]}")
    return json.loads(out.stdout)


def lookup(value, dotted):
    for part in dotted.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict):
            value = value.get(part)
        else:
            return None
    return value


def invoke(function, event):
    resp = invoke_raw(function, event)
    headers = {k.lower(): v for k, v in (resp.get("headers") or {}).items()}
    body = resp.get("body") or ""
    if resp.get("isBase64Encoded"):
        raise AssertionError("JSON bodies must not be base64-encoded")
    return resp["statusCode"], headers, body


def http(method, path, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", method=method, data=data,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()


def check(case):
    problems = []
    if case.get("fails"):
        # The function must answer with an error (a trigger refusing a sign-in).
        try:
            out = invoke_raw(case["invoke"], case["event"])
        except AssertionError:
            return
        raise AssertionError(f"expected the invocation to fail, got {json.dumps(out)[:300]}")
    if "output" in case or "present" in case:
        out = invoke_raw(case["invoke"], case["event"])
        for k, v in case.get("output", {}).items():
            if lookup(out, k) != v:
                problems.append(f"output.{k}: {lookup(out, k)!r}, expected {v!r} (output {json.dumps(out)[:300]})")
        for k in case.get("present", []):
            if not lookup(out, k):
                problems.append(f"output.{k} is missing (output {json.dumps(out)[:300]})")
        if problems:
            raise AssertionError("; ".join(problems))
        return
    if "invoke" in case:
        status, headers, body = invoke(case["invoke"], case["event"])
    else:
        # Header values may name the tokens e2e.sh minted: ${E2E_LEDGER_TOKEN}.
        send_headers = {k: os.path.expandvars(v) for k, v in (case.get("send_headers") or {}).items()}
        status, headers, body = http(case["http"], case["path"], case.get("send"), send_headers)
    if status != case["status"]:
        problems.append(f"status {status}, expected {case['status']} (body {body[:300]})")
    for k, v in case.get("headers", {}).items():
        if headers.get(k) != v:
            problems.append(f"header {k}: {headers.get(k)!r}, expected {v!r}")
    if "body" in case:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
            problems.append(f"body is not JSON: {body[:200]!r}")
        if isinstance(parsed, dict):
            for k, v in case["body"].items():
                if lookup(parsed, k) != v:
                    problems.append(f"body.{k}: {lookup(parsed, k)!r}, expected {v!r}")
        elif parsed is not None:
            problems.append(f"body is JSON but not an object: {body[:200]!r}")
    if problems:
        raise AssertionError("; ".join(problems))


# What this suite is known to hold. A run with fewer cases or events than
# this checked less than it says: an emptied cases.json or events/ must
# fail, not pass as "0 passed". Raise these when adding cases.
MIN_CASES = 64
MIN_EVENTS = 51


def main():
    spec = json.load(open(os.path.join(ROOT, "tests/e2e/cases.json")))
    cases = spec["cases"]
    passed = failed = 0
    events = glob.glob(os.path.join(ROOT, "events/*.json"))
    if len(cases) < MIN_CASES or len(events) < MIN_EVENTS:
        print(f"FAIL e2e: {len(cases)} cases and {len(events)} events, expected at least "
              f"{MIN_CASES} and {MIN_EVENTS}")
        failed += 1
    used = {c["event"] for c in cases if "event" in c}
    for event in sorted(events):
        rel = os.path.relpath(event, ROOT)
        if rel not in used:
            print(f"FAIL {rel}: no e2e case sends this event")
            failed += 1
    for case in cases:
        try:
            check(case)
            print(f"ok   {case['name']}")
            passed += 1
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"FAIL {case['name']}: {e}")
            failed += 1
    print(f"e2e: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
