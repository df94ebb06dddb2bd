#!/usr/bin/env python3
"""A burst through the local stack's front door, as `make run` serves it
(issue 28): 300 requests at once at two routes — `GET /health` and a
signed-in profile read — each answered (200, the route's own 429, or the
front door's 503 problem with Retry-After: never a hang or a dropped
connection), and afterwards normal requests answer normally. Without the
front door, `cargo lambda watch` stops answering for good once one function
has 100 invocations waiting (docs/operations.md → The local stack under a
burst); the cargo test `front_door` runs that broken form against a model of
the router.

Usage: burst.py <front door port>. The environment is the functions' (e2e.sh
sources e2e.env). Prints the answers by status and the burst's duration and
closes with 'burst: N passed, M failed'; exits non-zero on any failure."""
import collections
import concurrent.futures
import sys
import time
import urllib.error
import urllib.request

from common import Steps, dev, request

PORT = sys.argv[1]
B = f"http://127.0.0.1:{PORT}"
# Seed users 5 and 6 (seed/local.sql).
ME = "00000000-0000-4000-8000-000000000005"
OTHER = "00000000-0000-4000-8000-000000000006"
BURST = 300

step = Steps()


def one(url, token):
    headers = {"authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, dict(e.headers)
    except Exception as e:  # a hang (timeout) or a dropped connection
        return f"no answer: {type(e).__name__}", {}


def main():
    token = dev("login", "--user", "5")
    targets = [(f"{B}/health", None), (f"{B}/users/{ME}/profile", token)]
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=BURST) as pool:
        answers = list(pool.map(lambda i: one(*targets[i % 2]), range(BURST)))
    took = time.monotonic() - t0
    counts = collections.Counter(str(s) for s, _ in answers)
    print(f"burst: {BURST} requests at once in {took:.1f} s: {dict(counts)}", flush=True)
    unanswered = [s for s, _ in answers if not isinstance(s, int)]
    step(f"every one of {BURST} concurrent requests is answered", not unanswered,
         f"{len(unanswered)} unanswered: {unanswered[:3]}")
    odd = {s for s, _ in answers if isinstance(s, int) and s not in (200, 429, 503)}
    step("answers are 200, the route's own 429, or the front door's 503", not odd, odd)
    busy = [h for s, h in answers if s == 503]
    if busy:
        step("a 503 says when to retry (Retry-After) in a problem document",
             all(h.get("Retry-After") and h.get("Content-Type") == "application/problem+json"
                 for h in busy), busy[:1])
    else:
        # Nothing to check: the burst fit in the front door's queue (its
        # refusals are the front door's unit tests').
        print("burst: no 503 (the burst fit in the front door's queue)", flush=True)
    # Afterwards: normal answers (another user: user 5 spent their rate
    # limit in the burst).
    after = dev("login", "--user", "6")
    health = [request("GET", f"{B}/health")[0] for _ in range(5)]
    profile = [request("GET", f"{B}/users/{OTHER}/profile", after)[0] for _ in range(5)]
    step("after the burst: 5 of 5 GET /health answer 200", health == [200] * 5, health)
    step("after the burst: 5 of 5 profile reads answer 200", profile == [200] * 5, profile)
    sys.exit(0 if step.summary("burst") else 1)


if __name__ == "__main__":
    main()
