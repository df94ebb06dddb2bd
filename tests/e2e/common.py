"""Helpers the end-to-end journeys share: the development tool, an HTTP
call that returns error answers instead of raising, and step counting."""
import json
import os
import subprocess
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def dev(*args):
    """`paycache-dev <args>` from the repository; its standard output."""
    out = subprocess.run(["cargo", "run", "--quiet", "-p", "paycache-dev", "--", *args],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"paycache-dev {args[0]} failed: {out.stderr.strip()[-400:]}")
    return out.stdout.strip()


def request(method, url, token=None, body=None):
    """(status, lower-cased headers, parsed JSON body or None)."""
    headers = {"content-type": "application/json"} if body is not None else {}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, method=method, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            raw = r.read()
            return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(raw) if raw else None


class Steps:
    """Counts and prints passed and failed steps."""

    def __init__(self):
        self.passed = self.failed = 0

    def __call__(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"ok   {name}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL {name}: {detail}", flush=True)

    def summary(self, what):
        print(f"{what}: {self.passed} passed, {self.failed} failed", flush=True)
        return self.failed == 0
