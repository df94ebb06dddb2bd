#!/usr/bin/env python3
"""Real-time delivery end to end, as under `make run`: the functions under
`cargo lambda watch`, the local WebSocket gateway (paycache-ws-gateway) in
front of `authorizer` and `ws-connections`, `ws-sender` kept running by the
gateway, and real WebSocket clients (the `websockets` package).

Usage: realtime.py <watch port> <gateway port>. The environment is the
functions' (e2e.sh sources e2e.env). Prints one line per step, the measured
latency from each write's 200 to the frame's arrival (p50/p99), and closes
with 'realtime: N passed, M failed'; exits non-zero on any failure."""
import asyncio
import json
import os
import sys
import threading
import time

import websockets
from common import Steps, dev, request

PORT, GW = sys.argv[1], sys.argv[2]
WS = f"ws://127.0.0.1:{GW}/"
GATEWAY = f"http://127.0.0.1:{GW}"

# Seed user 5 owns wallets ...014 (USD), ...015 (EUR), ...016 (GBP); its
# USD wallet paid transaction ...00f to wallet ...058 (user 22).
USER_N = 5
ME = "00000000-0000-4000-8000-000000000005"
WALLETS = {"00000000-0000-4000-9000-000000000014": "USD",
           "00000000-0000-4000-9000-000000000015": "EUR"}
TXN = "00000000-0000-4000-a000-00000000000f"
TXN_SENDER, TXN_RECEIVER = "00000000-0000-4000-9000-000000000014", "00000000-0000-4000-9000-000000000058"
WRITES_PER_WALLET = 100
WAIT = 20.0

step = Steps()


def http(method, url, token=None, body=None):
    status, _, answer = request(method, url, token, body)
    return status, answer


def invoke(function, event):
    status, answer = http("POST", f"http://127.0.0.1:{PORT}/2015-03-31/functions/{function}/invocations",
                          body=event)
    if status != 200:
        raise AssertionError(f"{function}: HTTP {status} {answer}")
    return answer


def event(detail_type, detail):
    return {"version": "0", "id": "e2e", "detail-type": detail_type, "source": "payments.operations",
            "account": "000000000000", "time": "2026-11-26T00:00:00Z", "region": "us-east-1",
            "resources": [], "detail": detail}


def stats():
    return http("GET", f"{GATEWAY}/_gateway/stats")[1]


class Client:
    """A WebSocket connection that records every frame and when it came."""

    def __init__(self, ws, cid):
        self.ws, self.id, self.frames = ws, cid, []
        self.task = asyncio.create_task(self.read())

    async def read(self):
        try:
            async for raw in self.ws:
                self.frames.append((time.time(), json.loads(raw)))
        except websockets.ConnectionClosed:
            pass

    async def wait_for(self, pred, timeout=WAIT):
        end = time.time() + timeout
        while time.time() < end:
            for _, f in self.frames:
                if pred(f):
                    return f
            await asyncio.sleep(0.02)
        return None

    async def close(self):
        await self.ws.close()
        await self.task


async def connect(token):
    before = set(stats()["connections"])
    ws = await websockets.connect(f"{WS}?token={token}", max_size=2 ** 20)
    new = set(stats()["connections"]) - before
    return Client(ws, new.pop() if len(new) == 1 else None)


def writer(wallet, currency, tokens, start, t200, tsent, errors):
    version = start
    for k in range(WRITES_PER_WALLET):
        token = tokens[k % len(tokens)]
        body = {"balance": f"{100 + k}.{k % 100:02d}", "currency": currency, "expected_version": version}
        sent = time.time()
        status, answer = http("PUT", f"http://127.0.0.1:{PORT}/wallets/{wallet}/balance", token, body)
        if status != 200:
            errors.append(f"{wallet} write {k}: HTTP {status} {answer}")
            return
        version = answer["version"]
        t200[(wallet, version)] = time.time()
        tsent[(wallet, version)] = sent


def pid_with_local_port(port):
    """The process that owns the TCP connection from 127.0.0.1:`port` to the
    gateway (from /proc: the socket's inode, then the process holding it).
    Both ends are matched: a local port number alone also matched another
    program's socket on the machine (a CI run killed nothing, having found
    RabbitMQ's beam.smp)."""
    local = f"0100007F:{port:04X}"
    remote = f"0100007F:{int(GW):04X}"
    inodes = set()
    try:
        rows = open("/proc/net/tcp").read().splitlines()[1:]
    except OSError:
        rows = []
    for row in rows:
        cols = row.split()
        if cols[1] == local and cols[2] == remote:
            inodes.add(cols[9])
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return int(pid)
        except OSError:
            continue
    return None


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values)) - 1))]


async def main():
    token = dev("login", "--user", str(USER_N))
    ledgers = [dev("service-token", "--client", f"realtime-ledger-{i}", "--scope", "wallets.balance.write")
               for i in range(1, 5)]

    # No token, or a bad one: $connect is refused before any socket opens.
    for name, url in [("no token", WS), ("bad token", f"{WS}?token=not.a.jwt")]:
        try:
            ws = await websockets.connect(url)
            await ws.close()
            step(f"connect with {name} is refused", False, "accepted")
        except websockets.InvalidStatus as e:
            step(f"connect with {name} is refused", e.response.status_code in (401, 403),
                 e.response.status_code)

    a, b = await connect(token), await connect(token)
    step("signed in, two connections open", a.id and b.id and a.id != b.id, (a.id, b.id))
    await a.ws.send(json.dumps({"action": "ping"}))

    starts = {}
    for wallet in WALLETS:
        status, body = http("GET", f"http://127.0.0.1:{PORT}/wallets/{wallet}/balance", token)
        starts[wallet] = body["version"] if status == 200 else None
    step("own wallets read", all(v is not None for v in starts.values()), starts)

    # 200 writes: the two wallets written at the same time, each by two
    # ledger clients in turn (each stays under its rate limit).
    t200, tsent, errors = {}, {}, []
    threads = [threading.Thread(target=writer, args=(w, c, ledgers[2 * i:2 * i + 2], starts[w], t200, tsent, errors))
               for i, (w, c) in enumerate(WALLETS.items())]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        await asyncio.sleep(0.05)
    step("200 balance writes answered 200", not errors and len(t200) == 2 * WRITES_PER_WALLET,
         errors[:3] or len(t200))

    latencies, from_sent = [], []
    for name, client in [("first", a), ("second", b)]:
        end = time.time() + WAIT
        while time.time() < end:
            got = {(f["wallet_id"], f["version"]) for _, f in client.frames if f.get("type") == "balance_update"}
            if all(k in got for k in t200):
                break
            await asyncio.sleep(0.05)
        for wallet in WALLETS:
            seen, order = set(), []
            for at, f in client.frames:
                if f.get("type") == "balance_update" and f.get("wallet_id") == wallet and f["id"] not in seen:
                    seen.add(f["id"])
                    order.append(f["version"])
                    if (wallet, f["version"]) in t200:
                        latencies.append((at - t200[(wallet, f["version"])]) * 1000)
                        from_sent.append((at - tsent[(wallet, f["version"])]) * 1000)
            want = list(range(starts[wallet] + 1, starts[wallet] + WRITES_PER_WALLET + 1))
            step(f"{name} connection: every version of {wallet[-3:]} in order", order == want,
                 f"got {len(order)}: {order[:5]}…{order[-5:]}")
        frame = next((f for _, f in client.frames if f.get("type") == "balance_update"), {})
        step(f"{name} connection: frames carry id and channel",
             frame.get("id", "").startswith("balance:") and frame.get("channel", "").startswith("balance:"), frame)
    if latencies:
        p50, p99 = pct(latencies, 50), pct(latencies, 99)
        # A measurement, not an assertion (a shared, noisy machine): the
        # docs/realtime.md reports it against the 250 ms target.
        print(f"latency write 200 → frame: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms "
              f"over {len(latencies)} deliveries ({len(t200)} writes × 2 connections); "
              f"PUT sent → frame: p50 {pct(from_sent, 50):.1f} ms, p99 {pct(from_sent, 99):.1f} ms", flush=True)

    # A transaction completes: its status reaches both connections.
    invoke("cache-invalidator", event("TransactionCompleted", {
        "transaction_id": TXN, "sender_wallet_id": TXN_SENDER, "receiver_wallet_id": TXN_RECEIVER}))
    for name, client in [("first", a), ("second", b)]:
        f = await client.wait_for(lambda f: f.get("channel") == f"transactions:{TXN}")
        step(f"transaction status reaches the {name} connection",
             f is not None and f["type"] == "status_update" and f["status"] and f["id"], f)

    # An announcement reaches every connection, another user's too.
    other = await connect(dev("login", "--user", "7"))
    invoke("cache-invalidator", event("SystemAnnouncement", {"message": "maintenance at 03:00 UTC"}))
    got = [await c.wait_for(lambda f: f.get("type") == "announcement") for c in (a, b, other)]
    step("an announcement reaches every connection",
         all(g and g["message"] == "maintenance at 03:00 UTC" for g in got) and len({g["id"] for g in got if g}) == 1,
         got)
    invoke("cache-invalidator", event("SystemAnnouncement", {"message": "x" * 40000}))
    got = [await c.wait_for(lambda f: f.get("type") == "message_too_large") for c in (a, b, other)]
    step("a 40 KB announcement arrives as message_too_large",
         all(g and g["original_type"] == "announcement" and g["bytes"] > 32768 for g in got), got)
    await other.close()

    # ws-sender killed between fetching an entry and sending it: the
    # gateway holds the post, the process is killed (SIGKILL), the held post
    # is dropped undelivered; the next run takes the entry over after
    # WS_REDELIVER_AFTER_MS and the message arrives.
    user8 = "00000000-0000-4000-8000-000000000008"
    k = await connect(dev("login", "--user", "8"))
    http("POST", f"{GATEWAY}/_gateway/hold/{k.id}")
    invoke("cache-invalidator", event("UserProfileUpdated", {"user_id": user8}))
    end = time.time() + WAIT
    while stats()["held"] < 1 and time.time() < end:
        await asyncio.sleep(0.05)
    step("the sender fetched the entry and is posting (held)", stats()["held"] >= 1, stats())
    # Kill exactly the process whose post is held (SIGKILL: no cleanup).
    pid = next((p for p in map(pid_with_local_port, stats()["held_ports"]) if p), None)
    comm = open(f"/proc/{pid}/comm").read().strip() if pid else None
    killed = False
    if comm == "ws-sender":
        os.kill(pid, 9)
        killed = True
    await asyncio.sleep(0.3)
    http("POST", f"{GATEWAY}/_gateway/release/{k.id}")
    step("the ws-sender process holding the entry is killed mid-send", killed and not k.frames,
         (pid, comm, k.frames))
    # The next scheduled run (here invoked directly; the gateway's own loop
    # also starts one after its run timeout).
    threading.Thread(target=invoke, args=("ws-sender", event("Scheduled Event", {"run_secs": 10})),
                     daemon=True).start()
    f = await k.wait_for(lambda f: f.get("type") == "profile_updated" and f.get("user_id") == user8)
    step("the killed sender's message arrives (taken over, at least once)", f is not None, k.frames)
    await k.close()

    # A connection API Gateway lost without $disconnect: the first post
    # finds it gone (410) and prunes it; the next notification costs no
    # call for it.
    lost = await connect(token)
    http("POST", f"{GATEWAY}/_gateway/forget/{lost.id}")
    calls = []
    for i in range(2):
        before = stats()["management_calls"]
        invoke("cache-invalidator", event("UserProfileUpdated", {"user_id": ME}))
        for c in (a, b):
            await c.wait_for(lambda f, n=i: f.get("type") == "profile_updated"
                             and sum(1 for _, g in c.frames if g.get("type") == "profile_updated") > n)
        await asyncio.sleep(0.2)
        calls.append(stats()["management_calls"] - before)
    step("a gone connection is pruned after the first send finds it gone", calls == [3, 2], calls)

    # Closing runs $disconnect; with nobody connected, nothing is posted.
    await a.close()
    await b.close()
    await asyncio.sleep(0.5)
    before = stats()["management_calls"]
    invoke("cache-invalidator", event("UserProfileUpdated", {"user_id": ME}))
    sentinel = await connect(dev("login", "--user", "7"))
    invoke("cache-invalidator", event("SystemAnnouncement", {"message": "sentinel"}))
    ok = await sentinel.wait_for(lambda f: f.get("message") == "sentinel")
    step("nobody connected: no management calls (then one for the sentinel)",
         ok is not None and stats()["management_calls"] - before == 1, stats()["management_calls"] - before)
    await sentinel.close()

    # Reconnecting without a gap: versions written while the client was
    # away arrive on reconnect (resume=<wallet>:<last version seen>), in
    # order, before new ones.
    wallet = next(iter(WALLETS))
    # A sender is running for the whole step (after the kill above, the
    # gateway's own loop starts its next run only at its run timeout).
    threading.Thread(target=invoke, args=("ws-sender", event("Scheduled Event", {"run_secs": 25})),
                     daemon=True).start()
    c = await connect(token)
    status, body = http("GET", f"http://127.0.0.1:{PORT}/wallets/{wallet}/balance", token)
    version = body["version"]

    def put(v, k):
        status, answer = http("PUT", f"http://127.0.0.1:{PORT}/wallets/{wallet}/balance", ledgers[k % 4],
                              {"balance": f"{500 + k}.00", "currency": WALLETS[wallet], "expected_version": v})
        return answer["version"] if status == 200 else None

    seen = put(version, 0)
    got = await c.wait_for(lambda f: f.get("type") == "balance_update" and f.get("version") == seen)
    await c.close()
    missed = []
    v = seen
    for k in range(1, 4):
        v = put(v, k)
        missed.append(v)
    # A second run for the reconnect: on a busy machine the first one's 25 s
    # can end before this point (seen: the reconnect then received nothing
    # at all, missed versions or new). Two senders share the partitions.
    threading.Thread(target=invoke, args=("ws-sender", event("Scheduled Event", {"run_secs": 25})),
                     daemon=True).start()
    back = await connect(f"{token}&resume={wallet}:{seen}")
    newer = put(v, 4)
    await back.wait_for(lambda f: f.get("type") == "balance_update" and f.get("version") == newer)
    order, ids = [], set()
    for _, f in back.frames:
        if f.get("type") == "balance_update" and f["id"] not in ids:
            ids.add(f["id"])
            order.append(f["version"])
    step("a reconnect (resume) receives the versions it missed, in order, then new ones",
         got is not None and order == missed + [newer],
         (seen, "first frame arrived" if got else "first frame never arrived", missed, newer, order))
    await back.close()

    return step.summary("realtime")


if __name__ == "__main__":
    sys.exit(0 if asyncio.run(main()) else 1)
