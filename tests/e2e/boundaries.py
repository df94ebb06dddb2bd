#!/usr/bin/env python3
"""The session-boundary attacks of issue 19, tried as an attacker would
through the stack `make run` serves (the functions under `cargo lambda
watch`, the local WebSocket gateway, tokens from `paycache-dev`): each must
now be refused.

Usage: boundaries.py <watch port> <gateway port> <plain gateway port>. The
gateway at <gateway port> keeps ws-sender running (as `make run`'s does);
the one at <plain gateway port> is started exactly as `make run` starts it
(no test controls). The environment is the functions' (e2e.sh sources
e2e.env) plus E2E_REDIS_PORT and REDISCLI_AUTH for counting connections.
Prints one line per attack and closes with 'boundaries: N passed, M
failed'; exits non-zero on any failure."""
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

import websockets
from common import ROOT, Steps, dev, request

PORT, GW, PLAIN = sys.argv[1], sys.argv[2], sys.argv[3]
B = f"http://127.0.0.1:{PORT}"
WS = f"ws://127.0.0.1:{GW}/"

# Seed user 7 owns wallets ...001c (USD) and ...001d (EUR) (seed/local.sql).
USER_N = 7
ME = "00000000-0000-4000-8000-000000000007"
MY_WALLET = "00000000-0000-4000-9000-00000000001c"
VICTIM_N, VICTIM = 8, "00000000-0000-4000-8000-000000000008"

step = Steps()


def http(method, path, token=None, body=None):
    return request(method, f"{B}{path}", token, body)


def login(n=USER_N, *extra):
    return dev("login", "--user", str(n), *extra)


def profile(token, user=ME):
    return http("GET", f"/users/{user}/profile", token)[0]


def redis_connections_received():
    out = subprocess.run(["redis-cli", "-p", os.environ["E2E_REDIS_PORT"], "INFO", "stats"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    for line in out.splitlines():
        if line.startswith("total_connections_received:"):
            return int(line.split(":", 1)[1])
    raise AssertionError("no total_connections_received in INFO stats")


def invoke_file(function, event):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(event, f)
    out = subprocess.run(["cargo", "lambda", "invoke", function, "--invoke-address", "127.0.0.1",
                          "--invoke-port", PORT, "--data-file", f.name, "--output-format", "json"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    os.unlink(f.name)
    if out.returncode != 0:
        raise AssertionError(f"cargo lambda invoke failed: {out.stderr.strip()[-400:]}")
    return json.loads(out.stdout)


async def frames_for(ws, seconds):
    """Frames received within `seconds`, and whether the socket was closed."""
    frames, closed = [], False
    end = time.time() + seconds
    while time.time() < end:
        try:
            raw = await asyncio.wait_for(ws.recv(), timeout=max(0.05, end - time.time()))
            frames.append(json.loads(raw))
        except asyncio.TimeoutError:
            break
        except websockets.ConnectionClosed:
            closed = True
            break
    return frames, closed


def ledger_put(ledger, wallet):
    s, _, b = http("GET", f"/wallets/{wallet}/balance", ledger)
    version = b["version"]
    s, _, b = http("PUT", f"/wallets/{wallet}/balance", ledger,
                   {"balance": "10.00", "currency": b["currency"], "expected_version": version})
    return s, b


async def signing_out_everywhere():
    # 1. Device A signs out everywhere: device B's token from another
    # sign-in is refused for the profile and the wallet.
    a, b = login(), login()
    assert profile(b) == 200
    # 2. B's socket, opened before the sign-out, is closed and receives
    # no balance frame after it.
    ws = await websockets.connect(f"{WS}?token={b}")
    s, _, body = http("POST", "/sessions/logout", a, {"scope": "all"})
    step("sign out everywhere answers 200", s == 200 and body.get("scope") == "all", f"{s} {body}")
    step("attack 1: device B's token after A signed out everywhere: 401 (profile and wallet)",
         profile(b) == 401 and http("GET", f"/wallets/{MY_WALLET}/balance", b)[0] == 401)
    frames, closed = await frames_for(ws, 10)
    ledger = dev("service-token", "--client", "ledger", "--scope", "wallets.balance.write",
                 "--scope", "wallets.read.any")
    put_status, _ = ledger_put(ledger, MY_WALLET)
    later, _ = await frames_for(ws, 3) if not closed else ([], True)
    balance_frames = [f for f in frames + later if f.get("type") == "balance_update"]
    step("attack 2: the socket opened before the sign-out is closed and gets no balance frame",
         closed and put_status == 200 and not balance_frames, f"closed={closed} {balance_frames}")
    try:
        await websockets.connect(f"{WS}?token={b}")
        refused = False
    except websockets.InvalidStatus as e:
        refused = e.response.status_code in (401, 403)
    step("attack 2: and it cannot connect again ($connect 403)", refused)


def refusals_cost_nothing():
    # 3. 119 requests with a revoked token: all 401, and the owner's own
    # token is then served (not 429: refusals consumed nothing).
    revoked = login()
    assert http("POST", "/sessions/logout", revoked)[0] == 200
    statuses = [profile(revoked) for _ in range(119)]
    owner = login()
    s = profile(owner)
    step("attack 3: 119 requests with a revoked token: all 401, the owner still 200",
         set(statuses) == {401} and s == 200, f"{set(statuses)} then {s}")
    # 4. A revoked service token, 1.5 s past its exp (inside the leeway).
    short = dev("service-token", "--client", "support-console", "--scope", "wallets.read.any",
                "--expires-in", "3")
    t0 = time.time()
    ok = http("GET", f"/wallets/{MY_WALLET}/balance", short)[0]
    out = http("POST", "/sessions/logout", short)[0]
    time.sleep(max(0, t0 + 3 + 1.5 - time.time()))
    again = http("GET", f"/wallets/{MY_WALLET}/balance", short)[0]
    step("attack 4: a revoked service token 1.5 s after its exp: 401",
         ok == 200 and out == 200 and again == 401, f"{ok} {out} {again}")


def logouts_by_a_revoked_token():
    # 5. A revoked token sends 30 "sign out everywhere": all refused, and
    # the victim's refresh token at the user pool is not revoked by them.
    import boto3
    idp = boto3.client("cognito-idp", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                       region_name=os.environ.get("AWS_REGION", "us-east-1"))
    pool = os.environ["COGNITO_USER_POOL_ID"]
    client = idp.create_user_pool_client(
        UserPoolId=pool, ClientName="boundaries",
        ExplicitAuthFlows=["ALLOW_ADMIN_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
    )["UserPoolClient"]["ClientId"]
    password = "Boundaries-password-1"
    idp.admin_create_user(UserPoolId=pool, Username=VICTIM, MessageAction="SUPPRESS",
                          TemporaryPassword=password)
    idp.admin_set_user_password(UserPoolId=pool, Username=VICTIM, Password=password, Permanent=True)
    refresh = idp.admin_initiate_auth(UserPoolId=pool, ClientId=client, AuthFlow="ADMIN_USER_PASSWORD_AUTH",
                                      AuthParameters={"USERNAME": VICTIM, "PASSWORD": password}
                                      )["AuthenticationResult"]["RefreshToken"]
    stolen = login(VICTIM_N)
    assert http("POST", "/sessions/logout", stolen)[0] == 200  # the victim ends that sign-in
    statuses = [http("POST", "/sessions/logout", stolen, {"scope": "all"})[0] for _ in range(30)]
    try:
        idp.admin_initiate_auth(UserPoolId=pool, ClientId=client, AuthFlow="REFRESH_TOKEN_AUTH",
                                AuthParameters={"REFRESH_TOKEN": refresh})
        still = True
    except idp.exceptions.NotAuthorizedException:
        still = False
    step("attack 5: 30 sign-outs with a revoked token: all 401, the victim stays signed in at the pool",
         set(statuses) == {401} and still, f"{set(statuses)} refresh works: {still}")
    # Per principal, sign-outs are limited: the sixth in a minute is 429.
    statuses = [http("POST", "/sessions/logout", login(VICTIM_N))[0] for _ in range(6)]
    step("sign-outs are rate-limited per principal (sessions.logout)",
         statuses[:4] == [200] * 4 and 429 in statuses, f"{statuses}")


def services_and_budgets():
    # 6. A service consulting a route's own policy for a user: refused
    # (422); the user's own balance reads are unaffected.
    limits = dev("service-token", "--client", "limits-gateway", "--scope", "ratelimit.check")
    s, _, b = http("POST", "/rate-limit/check", limits,
                   {"user_id": ME, "endpoint": "wallets.balance.read", "cost": 100})
    own = login()
    mine = [http("GET", f"/wallets/{MY_WALLET}/balance", own)[0] for _ in range(3)]
    step("attack 6: limits-gateway spending a user's wallets.balance.read: 422, the user's reads 200",
         s == 422 and mine == [200] * 3, f"{s} {b} {mine}")


def anonymous_health():
    # 7. Anonymous health: the status only, and no new Redis connection
    # per call (after each instance's first).
    for _ in range(8):
        http("GET", "/health")
    before = redis_connections_received()
    answers = [http("GET", "/health") for _ in range(10)]
    # Each count is read over a new redis-cli connection: the second one
    # is not the functions'.
    opened = redis_connections_received() - before - 1
    bodies = {json.dumps(b, sort_keys=True) for _, _, b in answers}
    step("attack 7: 10 anonymous GET /health: the status only, no new Redis connection",
         bodies == {'{"status": "healthy"}'} and opened == 0, f"{bodies} opened={opened}")
    s, _, _ = http("GET", "/health/nodes")
    step("node details need a principal (401 without a token)", s == 401, f"{s}")


async def forged_announcement():
    # 8. A SystemAnnouncement from another source reaches no socket.
    token = login()
    ws = await websockets.connect(f"{WS}?token={token}")
    answer = invoke_file("cache-invalidator", {
        "version": "0", "id": "forged", "detail-type": "SystemAnnouncement", "source": "attacker.app",
        "account": "000000000000", "time": "2026-12-04T00:00:00Z", "region": "us-east-1",
        "resources": [], "detail": {"message": "Your account is locked: sign in at evil.example"}})
    frames, _ = await frames_for(ws, 3)
    step("attack 8: a SystemAnnouncement from another source is rejected and reaches no socket",
         answer.get("status") == "rejected" and not frames, f"{answer} {frames}")
    await ws.close()


def status_of(method, url, body=None):
    """The HTTP status alone (the answer may not be JSON)."""
    import urllib.error
    import urllib.request
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


async def gateway_controls():
    # 9. The gateway `make run` starts: no test controls; the management
    # API refuses unsigned calls (a forged balance_update into a socket).
    token = login()
    ws = await websockets.connect(f"ws://127.0.0.1:{PLAIN}/?token={token}")
    stats = status_of("GET", f"http://127.0.0.1:{PLAIN}/_gateway/stats")
    forged = status_of("POST", f"http://127.0.0.1:{PLAIN}/@connections/anyconnection1=",
                       {"type": "balance_update", "balance": "1000000.00"})
    also = status_of("POST", f"http://127.0.0.1:{GW}/@connections/anyconnection1=",
                     {"type": "balance_update", "balance": "1000000.00"})
    frames, _ = await frames_for(ws, 1)
    step("attack 9: the gateway's stats do not exist without test controls; unsigned posts are 403",
         stats not in (200, 204) and forged == 403 and also == 403 and not frames,
         f"stats={stats} forged={forged} {also} {frames}")
    await ws.close()


async def connect_or_status(url):
    """An open socket, or the status its `$connect` was refused with."""
    try:
        return await websockets.connect(url), None
    except websockets.InvalidStatus as e:
        return None, e.response.status_code


async def sockets_per_sign_in():
    # 10. One sign-in opens 20 sockets: 8 accepted
    # (WS_MAX_CONNECTIONS_PER_SESSION), the rest refused 429; two more
    # sign-ins of the same user reach the user's 16, then 429 again.
    token = login(10)
    opened, refused = [], []
    for _ in range(20):
        ws, status = await connect_or_status(f"{WS}?token={token}")
        (opened.append(ws) if ws else refused.append(status))
    step("attack 10: 20 sockets of one sign-in: 8 accepted, 12 refused with 429",
         len(opened) == 8 and refused == [429] * 12, f"{len(opened)} open, refused {set(refused)}")
    more, refused = [], []
    for t in (login(10), login(10)):
        for _ in range(6):
            ws, status = await connect_or_status(f"{WS}?token={t}")
            (more.append(ws) if ws else refused.append(status))
    step("attack 10: the user's other sign-ins reach 16 sockets in all, then 429",
         len(opened) + len(more) == 16 and refused == [429] * 4,
         f"{len(opened) + len(more)} open, refused {refused}")
    for ws in opened + more:
        await ws.close()


async def pings_per_connection():
    # 11. A socket sends 30 pings at once: the 11th in a minute
    # (WS_PINGS_PER_MINUTE) closes it, after a last frame saying why; the
    # pings after it are never invoked (the socket is gone).
    ws = await websockets.connect(f"{WS}?token={login(11)}")
    sent = 0
    try:
        for _ in range(30):
            await ws.send(json.dumps({"action": "ping"}))
            sent += 1
            await asyncio.sleep(0.02)
    except websockets.ConnectionClosed:
        pass
    frames, closed = await frames_for(ws, 15)
    closing = [f for f in frames if f.get("type") == "closing"]
    step("attack 11: 30 pings at once: the socket is told why (too_many_pings) and closed with 1000",
         closed and len(closing) == 1 and closing[0].get("reason") == "too_many_pings"
         and closing[0].get("channel") == "connection" and ws.close_code == 1000,
         f"closed={closed} code={ws.close_code} {frames}")


async def until_quiet(ws, idle, limit):
    """Frames until none came for `idle` seconds (at most `limit`)."""
    frames, end = [], time.time() + limit
    while time.time() < end:
        try:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), timeout=idle)))
        except (asyncio.TimeoutError, websockets.ConnectionClosed):
            break
    return frames


def storm_writes(wallet, n, clients):
    """n ledger writes of `wallet` (spread over `clients`: each service has
    its own write budget); the last version."""
    tokens = [dev("service-token", "--client", c, "--scope", "wallets.balance.write",
                  "--scope", "wallets.read.any") for c in clients]
    version = None
    for i in range(n):
        s, b = ledger_put(tokens[i % len(tokens)], wallet)
        assert s == 200, (s, b)
        version = b["version"]
    return version


async def frame_latency(ws, writer, wallet):
    """Seconds from a write's 200 to its frame on `ws`."""
    s, b = ledger_put(writer, wallet)
    assert s == 200, (s, b)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        try:
            raw = await asyncio.wait_for(ws.recv(), timeout=30)
        except asyncio.TimeoutError:
            break
        f = json.loads(raw)
        if f.get("type") == "balance_update" and f.get("version") == b["version"]:
            return time.monotonic() - t0
    return None


async def reconnect_storm():
    # 12. One user's reconnects do not hold back another user's frames:
    # user 12 reconnects 8 sockets, each resuming a wallet 100 versions
    # back (800 catch-up posts, 5 ms each at the gateway); user 13's
    # balance frame, written meanwhile, arrives within the catch-ups'
    # slice of a batch (WS_CATCH_UP_SLICE_MS, 250 ms) and a post.
    storm_wallet, other_wallet = "00000000-0000-4000-9000-000000000030", "00000000-0000-4000-9000-000000000034"
    last = storm_writes(storm_wallet, 110, ["storm-ledger-1", "storm-ledger-2"])
    writer = dev("service-token", "--client", "storm-ledger-3", "--scope", "wallets.balance.write",
                 "--scope", "wallets.read.any")
    other = await websockets.connect(f"{WS}?token={login(13)}")
    quiet = await frame_latency(other, writer, other_wallet)
    status_of("POST", f"http://127.0.0.1:{GW}/_gateway/latency?ms=5")
    token = login(12)
    back = [await websockets.connect(f"{WS}?token={token}&resume={storm_wallet}:{last - 100}")
            for _ in range(8)]
    stormy = await frame_latency(other, writer, other_wallet)
    status_of("POST", f"http://127.0.0.1:{GW}/_gateway/latency?ms=0")
    print(f"latency of another user's frame: {quiet * 1000:.0f} ms quiet, "
          f"{(stormy or 0) * 1000:.0f} ms during 8 reconnects' catch-ups (800 posts)", flush=True)
    step("attack 12: another user's frame during 8 reconnects' catch-ups arrives within 2 s",
         stormy is not None and stormy < 2.0, f"{stormy}")
    missed = []
    for ws in back:
        got = await until_quiet(ws, 3, 60)
        missed.append([f["version"] for f in got if f.get("type") == "balance_update"])
    want = list(range(last - 99, last + 1))
    step("attack 12: and every reconnecting socket receives the 100 versions it missed, in order",
         all(m == want for m in missed), f"{[len(m) for m in missed]}")
    for ws in back + [other]:
        await ws.close()


async def main():
    await sockets_per_sign_in()
    await pings_per_connection()
    await reconnect_storm()
    await signing_out_everywhere()
    refusals_cost_nothing()
    logouts_by_a_revoked_token()
    services_and_budgets()
    anonymous_health()
    await forged_announcement()
    await gateway_controls()
    sys.exit(0 if step.summary("boundaries") else 1)


if __name__ == "__main__":
    asyncio.run(main())
