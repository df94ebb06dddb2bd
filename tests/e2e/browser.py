#!/usr/bin/env python3
"""The reference web client (shared/web-client) in a real browser: headless
Chromium (Debian's chromium and chromium-driver), driven by Selenium,
loads the page from another origin than the API (http://localhost:<web
port> against http://127.0.0.1:<front door port>) and goes through a
user's journey: the profile (a preflighted request), a balance written by
the ledger arriving over the WebSocket, a lost socket whose reconnect
misses no version, and sign-out of this device and of every device — the
socket closed by the server, the API answering 401.

The front door answers CORS as API Gateway will (shared/ws-gateway/src/
cors.rs): first its answers are compared with the template's
CorsConfiguration. Two broken variants go through the same checks and must
fail them: the page against a front door that allows another origin (no
profile), and a page that reconnects without naming what it saw (a gap).

Usage: browser.py <front door port> <gateway port> <wrong-origin front
door port> <web port> <output dir>. The environment is the e2e run's
(paycache-dev mints the tokens; E2E_LEDGER_TOKEN writes balances).
Screenshots are kept in the output dir."""
import base64
import functools
import hashlib
import http.server
import json
import os
import shutil
import sys
import threading
import time
import urllib.parse
import urllib.request

import yaml
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from common import ROOT, Steps, dev, request

FRONT, GW, WRONG_FRONT, WEB_PORT = (int(a) for a in sys.argv[1:5])
OUT = sys.argv[5]
API = f"http://127.0.0.1:{FRONT}"
ORIGIN = f"http://localhost:{WEB_PORT}"
# A seed user no other e2e step signs in or out (owns wallets 44 and 45).
USER_N = 11
USER = f"00000000-0000-4000-8000-{USER_N:012x}"
WALLET = f"00000000-0000-4000-9000-{4 * USER_N:012x}"
LEDGER = os.environ["E2E_LEDGER_TOKEN"]
WAIT = 60
step = Steps()


def keep_senders_running(stop):
    """ws-sender runs back to back, two at a time, for the whole test (as
    the deployed schedule overlaps its runs): the gateway's own loop may be
    waiting on a run the real-time test killed (cargo lambda watch keeps
    the dead instance), and a second run takes over when one is stuck."""
    event = {"version": "0", "id": "e2e-browser", "detail-type": "Scheduled Event",
             "source": "payments.operations", "account": "000000000000",
             "time": "2026-11-26T00:00:00Z", "region": "us-east-1", "resources": [],
             "detail": {"run_secs": 15}}

    def loop(delay):
        time.sleep(delay)
        while not stop.is_set():
            try:
                request("POST", f"{API}/2015-03-31/functions/ws-sender/invocations", None, event)
            except Exception:
                time.sleep(1)
    for delay in (0, 7):
        threading.Thread(target=loop, args=(delay,), daemon=True).start()


def template_cors():
    class Loader(yaml.SafeLoader):
        pass
    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    with open(os.path.join(ROOT, "template.yaml")) as f:
        t = yaml.load(f, Loader=Loader)
    return t["Resources"]["HttpApi"]["Properties"]["CorsConfiguration"]


def raw(method, path, headers):
    req = urllib.request.Request(API + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}


def serve_pages(hosted):
    """The page on its own origin: the client's files, with a config.js
    for this run, at / (this stack's front door) and at /wrong/ (a front
    door that allows another origin)."""
    root = os.path.join(OUT, "web")
    shutil.rmtree(root, ignore_errors=True)
    auth = {"domain": hosted.url, "client_id": HostedUi.CLIENT, "redirect_uri": f"{ORIGIN}/hosted/",
            "logout_uri": f"{ORIGIN}/hosted/", "scope": "openid email"}
    for sub, api, auth in (("", API, None), ("wrong", f"http://127.0.0.1:{WRONG_FRONT}", None),
                           ("hosted", API, auth)):
        d = os.path.join(root, sub)
        shutil.copytree(os.path.join(ROOT, "shared", "web-client"), d, dirs_exist_ok=True)
        with open(os.path.join(d, "config.js"), "w") as f:
            f.write("window.PAYCACHE_CONFIG = " + json.dumps({
                "api": api, "ws": f"ws://127.0.0.1:{GW}", "wallet": WALLET, "auth": auth,
                # Long enough that the writes made while the socket is
                # down land before the page reconnects.
                "reconnect_ms": 3000, "close_wait_ms": 30000}) + ";\n")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", WEB_PORT), functools.partial(Quiet, directory=root))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class HostedUi:
    """A stand-in for the Cognito hosted UI's authorization-code endpoints
    (/oauth2/authorize, /oauth2/token, /logout), strict where Cognito is:
    the token endpoint gives a token only for the code it issued, to the
    same client and redirect URI, with a verifier whose S256 digest is the
    challenge the authorization request carried. `wrong_state` answers the
    authorization with another state (the broken variant)."""

    CLIENT = "web-client-test"

    def __init__(self):
        self.codes, self.seen, self.wrong_state = {}, [], False
        ui = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                q = dict(urllib.parse.parse_qsl(url.query))
                ui.seen.append((url.path, q))
                if url.path == "/oauth2/authorize":
                    if (q.get("response_type") != "code" or q.get("client_id") != ui.CLIENT
                            or q.get("code_challenge_method") != "S256" or not q.get("code_challenge")
                            or not q.get("state") or not q.get("redirect_uri")):
                        return self.send(400, b"bad authorization request")
                    code = base64.urlsafe_b64encode(os.urandom(18)).decode()
                    ui.codes[code] = q
                    state = "forged" if ui.wrong_state else q["state"]
                    back = q["redirect_uri"] + "?" + urllib.parse.urlencode({"code": code, "state": state})
                    return self.send(302, headers=[("Location", back)])
                if url.path == "/logout" and q.get("client_id") == ui.CLIENT and q.get("logout_uri"):
                    return self.send(302, headers=[("Location", q["logout_uri"])])
                self.send(404)

            def do_POST(self):
                form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
                ui.seen.append(("/oauth2/token", form))
                cors = [("Access-Control-Allow-Origin", ORIGIN), ("Content-Type", "application/json")]
                asked = ui.codes.pop(form.get("code", ""), None)
                digest = base64.urlsafe_b64encode(
                    hashlib.sha256(form.get("code_verifier", "").encode()).digest()).decode().rstrip("=")
                if (self.path != "/oauth2/token" or form.get("grant_type") != "authorization_code" or asked is None
                        or form.get("client_id") != ui.CLIENT or form.get("redirect_uri") != asked["redirect_uri"]
                        or digest != asked["code_challenge"]):
                    return self.send(400, b'{"error": "invalid_grant"}', cors)
                token = dev("login", "--user", str(USER_N))
                self.send(200, json.dumps({"access_token": token, "token_type": "Bearer",
                                           "expires_in": 3600}).encode(), cors)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1100",
              "--disable-gpu", "--no-first-run"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    d = webdriver.Chrome(service=service, options=opts)
    d.set_script_timeout(120)
    return d


def state(d):
    return d.execute_script("return JSON.parse(JSON.stringify(window.paycache || null))")


def wait(d, pred, what, timeout=WAIT):
    end = time.time() + timeout
    s = None
    while time.time() < end:
        s = state(d)
        if s is not None and pred(s):
            return s
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; page state {json.dumps(s)[:1500]}")


def load(d, url):
    """A new page load (a URL differing only in its fragment would not
    load the page again)."""
    d.get("about:blank")
    d.get(url)


def text(d, id_):
    return d.find_element(By.ID, id_).text


def gateway_connections():
    with urllib.request.urlopen(f"http://127.0.0.1:{GW}/_gateway/stats", timeout=60) as r:
        return set(json.load(r)["connections"])


def put(version, amount):
    s, _, b = request("PUT", f"{API}/wallets/{WALLET}/balance", LEDGER,
                      {"balance": amount, "currency": "USD", "expected_version": version})
    if s != 200:
        raise AssertionError(f"the ledger's write failed: {s} {b}")
    return b["version"]


def balance_version(token):
    s, _, b = request("GET", f"{API}/wallets/{WALLET}/balance", token)
    if s != 200:
        raise AssertionError(f"the owner's balance read failed: {s} {b}")
    return b["version"]


def fetch_in_page(d, token):
    """The API's answer to a read with `token`, from the page's origin."""
    return d.execute_async_script(
        """const [api, path, token, done] = arguments;
        fetch(api + path, {headers: {Authorization: 'Bearer ' + token}})
          .then(r => done(r.status), e => done(String(e)));""",
        API, f"/users/{USER}/profile", token)


def contiguous(versions):
    return all(b == a + 1 for a, b in zip(versions, versions[1:]))


def lost_socket(d, writes):
    """Drops the page's socket at the gateway (no $disconnect, as a network
    loss), writes `writes` versions while it is down, then one more after
    it reconnected; the page's versions and gaps."""
    before = state(d)
    (conn,) = gateway_connections() - OTHERS
    req = urllib.request.Request(f"http://127.0.0.1:{GW}/_gateway/forget/{conn}", method="POST")
    urllib.request.urlopen(req, timeout=60).close()
    wait(d, lambda s: s["socket"] != "open", "the page to see its socket lost", 30)
    v = before["version"]
    missed = []
    for k in range(writes):
        v = put(v, f"{20 + len(before['versions']) + k}.00")
        missed.append(v)
    wait(d, lambda s: s["connects"] > before["connects"] and s["socket"] == "open",
         "the page to reconnect")
    newer = put(v, f"{90 + len(before['versions'])}.00")
    s = wait(d, lambda s: s["version"] == newer, f"version {newer} on the page")
    return before, missed, newer, s


def main():
    os.makedirs(OUT, exist_ok=True)
    cors = template_cors()

    # 1. The front door answers CORS as the template configures API Gateway.
    s, h = raw("OPTIONS", f"/users/{USER}/profile", {
        "Origin": ORIGIN, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    split = lambda v: sorted(x.strip().lower() for x in (v or "").split(",") if x.strip())
    step("a preflight from the page's origin is answered as the template's CorsConfiguration says",
         s == 204 and h.get("access-control-allow-origin") == ORIGIN
         and split(h.get("access-control-allow-headers")) == sorted(x.lower() for x in cors["AllowHeaders"])
         and split(h.get("access-control-allow-methods")) == sorted(x.lower() for x in cors["AllowMethods"])
         and h.get("access-control-max-age") == str(cors["MaxAge"]), f"{s} {h} vs {cors}")
    s, h = raw("GET", "/health", {"Origin": ORIGIN})
    step("an answer carries the template's exposed headers and allow-origin, nothing of cargo lambda watch's",
         s == 200 and h.get("access-control-allow-origin") == ORIGIN
         and split(h.get("access-control-expose-headers")) == sorted(x.lower() for x in cors["ExposeHeaders"])
         and not {k for k in h if k.startswith("access-control-")} - {
             "access-control-allow-origin", "access-control-expose-headers"}, h)
    s, h = raw("OPTIONS", "/health", {"Origin": "http://localhost:1", "Access-Control-Request-Method": "GET"})
    step("a preflight from another origin gets no CORS headers",
         s == 204 and not any(k.startswith("access-control-") for k in h), f"{s} {h}")

    stop = threading.Event()
    keep_senders_running(stop)
    hosted = HostedUi()
    server = serve_pages(hosted)
    d = browser()
    token = dev("login", "--user", str(USER_N))
    try:
        # 2. Broken variant: a front door that allows another origin. The
        # same page, the same check (the profile shown) must fail.
        load(d, f"{ORIGIN}/wrong/#dev_token={token}")
        s = wait(d, lambda s: s["problems"], "the refused profile read")
        shown = d.find_element(By.ID, "profile-panel").is_displayed()
        step("broken variant: against a front door allowing another origin, the browser refuses the profile read",
             not shown and "profile could not be read (0" in s["problems"][0], s["problems"])

        # 3. Signed in on the page's origin: profile, balance, live socket.
        global OTHERS
        OTHERS = gateway_connections()
        load(d, f"{ORIGIN}/#dev_token={token}")
        s = wait(d, lambda s: s["socket"] == "open", "the page's socket to open")
        expected = request("GET", f"{API}/users/{USER}/profile", token)[2]
        step("the page on another origin reads the profile (a preflighted request) and the balance",
             text(d, "profile-name") == expected["display_name"] and text(d, "profile-email") == expected["email"]
             and s["versions"] == [balance_version(token)] and text(d, "version") == str(s["version"])
             and "paycache" in text(d, "profile-cache"),
             (text(d, "profile-name"), expected, s))
        v = put(s["version"], "12.34")
        s = wait(d, lambda s: s["version"] == v, f"version {v} on the page")
        step("a balance written by the ledger reaches the page over the WebSocket",
             text(d, "balance") == "12.34" and text(d, "currency") == "USD" and s["versions"][-1] == v,
             (text(d, "balance"), s))
        d.save_screenshot(os.path.join(OUT, "1-signed-in.png"))

        # 4. The socket is lost; the page reconnects naming what it saw.
        before, missed, newer, s = lost_socket(d, 3)
        got = s["versions"][len(before["versions"]):]
        step("after a lost socket the page reconnects and misses no version: the missed ones in order, then new ones",
             got == missed + [newer] and s["gaps"] == 0 and contiguous(s["versions"]) and s["reconnects"] >= 1,
             (missed, newer, s))
        d.save_screenshot(os.path.join(OUT, "2-after-reconnect.png"))

        # Broken variant: the same page reconnecting without naming what it
        # saw (its WebSocket URL stripped of resume=): the same check fails.
        d.execute_script("""
            const Real = window.WebSocket;
            window.WebSocket = function (url) {
              const u = new URL(url); u.searchParams.delete('resume'); return new Real(u.toString());
            };
            window.WebSocket.CLOSED = Real.CLOSED;""")
        before, missed, newer, s = lost_socket(d, 3)
        got = s["versions"][len(before["versions"]):]
        step("broken variant: a reconnect without resume misses versions, and the same check catches it",
             got != missed + [newer] and (s["gaps"] > 0 or not contiguous(s["versions"])), (missed, newer, got, s))

        # 5. Sign out of this device: the server closes the socket, the API
        # answers 401 to this sign-in and 200 to another device's.
        other = dev("login", "--user", str(USER_N))
        load(d, f"{ORIGIN}/#dev_token={token}")
        wait(d, lambda s: s["socket"] == "open", "the page's socket to open again")
        d.find_element(By.ID, "signout").click()
        s = wait(d, lambda s: s["signedOut"] and s["socket"] == "closed", "the socket to close after sign-out", 40)
        step("signing out of this device: the server closes the page's socket, the API answers 401 (from the page too)",
             not s["closes"][-1]["local"] and fetch_in_page(d, token) == 401
             and request("GET", f"{API}/users/{USER}/profile", token)[0] == 401
             and text(d, "status").startswith("Signed out of this device"), s)
        step("another device's sign-in still holds",
             request("GET", f"{API}/users/{USER}/profile", other)[0] == 200)
        d.save_screenshot(os.path.join(OUT, "3-signed-out.png"))

        # 6. Sign out everywhere from a new sign-in.
        third = dev("login", "--user", str(USER_N))
        load(d, f"{ORIGIN}/#dev_token={third}")
        wait(d, lambda s: s["socket"] == "open" and not s["signedOut"], "the new sign-in's socket")
        d.find_element(By.ID, "signout-all").click()
        s = wait(d, lambda s: s["signedOut"] and s["socket"] == "closed", "the socket to close after sign-out", 40)
        step("signing out everywhere: the socket closed by the server, this and the other device's sign-in answer 401",
             not s["closes"][-1]["local"] and fetch_in_page(d, third) == 401
             and request("GET", f"{API}/users/{USER}/profile", other)[0] == 401, s)
        d.save_screenshot(os.path.join(OUT, "4-signed-out-everywhere.png"))

        # 7. Deployed sign-in: the hosted UI's authorization code with PKCE
        # (a stand-in as strict as Cognito about the code, the client, the
        # redirect URI and the verifier), then sign-out through /logout.
        load(d, f"{ORIGIN}/hosted/?wallet={WALLET}")
        d.find_element(By.ID, "signin").click()
        s = wait(d, lambda s: s["socket"] == "open", "the hosted-UI sign-in's socket")
        exchanged = [q for p, q in hosted.seen if p == "/oauth2/token"]
        step("hosted UI sign-in: the code is exchanged with its PKCE verifier, the page signed in and live",
             len(exchanged) == 1 and text(d, "profile-name") == expected["display_name"]
             and "code=" not in d.current_url, (hosted.seen, d.current_url, s))
        d.find_element(By.ID, "signout").click()
        wait(d, lambda s: any(p == "/logout" for p, _ in hosted.seen) and s is not None and not s["token"]
             and s["socket"] == "closed" and d.current_url.startswith(f"{ORIGIN}/hosted/"),
             "the hosted UI's /logout and the way back", 40)
        step("hosted UI sign-out: the API's sign-out, then the hosted UI's /logout back to the page",
             [q.get("logout_uri") for p, q in hosted.seen if p == "/logout"] == [f"{ORIGIN}/hosted/"])
        # Broken variant: an answer carrying another state is refused.
        hosted.wrong_state = True
        d.find_element(By.ID, "signin").click()
        s = wait(d, lambda s: s["problems"], "the refused sign-in")
        step("broken variant: a sign-in answer with another state is refused, no code exchanged",
             "state does not match" in s["problems"][0] and s["token"] is None
             and len([p for p, _ in hosted.seen if p == "/oauth2/token"]) == 1, (s, hosted.seen))
    except Exception:
        d.save_screenshot(os.path.join(OUT, "failure.png"))
        for entry in d.get_log("browser")[-30:]:
            print(f"console: {entry.get('level')} {entry.get('message')}", flush=True)
        raise
    finally:
        stop.set()
        d.quit()
        server.shutdown()
        hosted.server.shutdown()
    print(f"screenshots: {OUT}", flush=True)
    return step.summary("browser")


OTHERS = set()

if __name__ == "__main__":
    sys.exit(0 if main() else 1)
