// The paycache reference web client: a static page, no build step, no
// dependencies. It signs in (the Cognito hosted UI with PKCE deployed; the
// development sign-in link under `make run`), shows the profile and one
// wallet's balance, keeps the balance current over the WebSocket (resuming
// after a reconnect, so no version is missed), and signs out of this device
// or every device. Configuration: config.js (window.PAYCACHE_CONFIG); see
// docs/web-client.md.
"use strict";

(() => {
  const config = Object.assign(
    {
      api: "http://127.0.0.1:9000",
      ws: "ws://127.0.0.1:9001",
      wallet: "",
      // Deployed: {domain, client_id, redirect_uri, logout_uri, scope}
      // (the stack's HostedUiDomain, WebClientId, CallbackUrls and
      // LogoutUrls outputs). Absent: the development sign-in link.
      auth: null,
      reconnect_ms: 1000,
      reconnect_max_ms: 30000,
      ping_ms: 5 * 60 * 1000,
      // How long sign-out waits for the server to close the socket.
      close_wait_ms: 15000,
    },
    window.PAYCACHE_CONFIG || {},
  );
  const TOKEN_KEY = "paycache.token";
  const PKCE_KEY = "paycache.pkce";
  const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
  // The wallet may come from the address (?wallet=); the API and WebSocket
  // endpoints never do: a link must not be able to send the token elsewhere.
  const query = new URLSearchParams(location.search);
  const wanted = (query.get("wallet") || config.wallet || "").toLowerCase();

  // Everything the page knows, readable from the console (and by the
  // browser test).
  const S = {
    token: null,
    user: null,
    wallet: UUID.test(wanted) ? wanted : null,
    balance: null,
    currency: null,
    version: 0,
    // Every version shown, in the order shown.
    versions: [],
    // Versions that arrived past one not seen (a missed update).
    gaps: 0,
    resyncs: 0,
    socket: "closed",
    connects: 0,
    reconnects: 0,
    closes: [],
    signedOut: false,
    closedLocally: false,
    problems: [],
  };
  window.paycache = S;
  const seen = { ids: new Set(), order: [] };
  let ws = null;
  let retry = null;
  let backoff = config.reconnect_ms;
  let resyncing = false;

  const $ = (id) => document.getElementById(id);
  const text = (id, value) => {
    $(id).textContent = value == null ? "" : String(value);
  };

  function log(message) {
    const line = `${new Date().toISOString().slice(11, 23)} ${message}\n`;
    const el = $("log");
    el.textContent = (line + el.textContent).slice(0, 20000);
  }

  function problem(what, r) {
    const detail = r && r.json && r.json.detail ? `: ${r.json.detail}` : "";
    const msg = `${what} (${r ? r.status : "no answer"}${detail})`;
    S.problems.push(msg);
    log(msg);
  }

  function setStatus(message, state) {
    text("status", message);
    $("status").dataset.state = state;
  }

  function setSocket(state) {
    S.socket = state;
    text("socket", state);
    $("socket").dataset.state = state;
  }

  const b64url = (bytes) =>
    btoa(String.fromCharCode(...new Uint8Array(bytes)))
      .replace(/\+/g, "-")
      .replace(/\//g, "_")
      .replace(/=+$/, "");

  // The token's claims, for the user id in paths only: the API verifies it.
  function claims(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part + "===".slice((part.length + 3) % 4)));
    } catch {
      return null;
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${S.token}` };
    const init = { method, headers, mode: "cors", credentials: "omit", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(config.api.replace(/\/+$/, "") + path, init);
    } catch (e) {
      // A CORS refusal or a network failure: the browser says no more.
      return { status: 0, json: null, headers: new Headers(), error: String(e) };
    }
    let json = null;
    try {
      json = await resp.json();
    } catch {
      json = null;
    }
    return { status: resp.status, json, headers: resp.headers };
  }

  // ---- sign-in -----------------------------------------------------------

  async function signInHostedUi() {
    const a = config.auth;
    const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
    const challenge = b64url(
      await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)),
    );
    const state = b64url(crypto.getRandomValues(new Uint8Array(16)));
    sessionStorage.setItem(PKCE_KEY, JSON.stringify({ verifier, state, wallet: S.wallet }));
    const params = new URLSearchParams({
      response_type: "code",
      client_id: a.client_id,
      redirect_uri: a.redirect_uri,
      scope: a.scope || "openid email",
      state,
      code_challenge: challenge,
      code_challenge_method: "S256",
    });
    location.assign(`${a.domain.replace(/\/+$/, "")}/oauth2/authorize?${params}`);
  }

  // The hosted UI sent the browser back with ?code=&state=: exchange the
  // code (with the verifier only this tab holds) for tokens.
  async function finishHostedUi(code, state) {
    const a = config.auth;
    const saved = JSON.parse(sessionStorage.getItem(PKCE_KEY) || "null");
    sessionStorage.removeItem(PKCE_KEY);
    const clean = new URL(location.href);
    clean.search = "";
    if (saved && saved.wallet) clean.searchParams.set("wallet", saved.wallet);
    history.replaceState(null, "", clean);
    if (!saved || saved.state !== state) {
      problem("sign-in refused: its state does not match this tab's");
      return null;
    }
    if (saved.wallet && !S.wallet) S.wallet = saved.wallet;
    let resp;
    try {
      resp = await fetch(`${a.domain.replace(/\/+$/, "")}/oauth2/token`, {
        method: "POST",
        headers: { "Content-Type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({
          grant_type: "authorization_code",
          client_id: a.client_id,
          code,
          redirect_uri: a.redirect_uri,
          code_verifier: saved.verifier,
        }),
      });
    } catch (e) {
      problem(`sign-in failed: ${e}`);
      return null;
    }
    const body = await resp.json().catch(() => null);
    if (!resp.ok || !body || typeof body.access_token !== "string") {
      problem("sign-in failed at the token endpoint", { status: resp.status, json: body });
      return null;
    }
    return body.access_token;
  }

  async function obtainToken() {
    if (config.auth) {
      const code = query.get("code");
      const state = query.get("state");
      if (code && state) return finishHostedUi(code, state);
    } else if (location.hash.startsWith("#dev_token=")) {
      // The development sign-in link (`make run` prints it): the token is
      // in the fragment, which the browser never sends to a server.
      const token = decodeURIComponent(location.hash.slice("#dev_token=".length));
      history.replaceState(null, "", location.pathname + location.search);
      return token;
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  // ---- profile and balance ------------------------------------------------

  async function loadProfile() {
    const r = await api("GET", `/users/${S.user}/profile`);
    if (r.status === 401) return endedByServer();
    if (r.status !== 200) return problem("the profile could not be read", r);
    text("profile-name", r.json.display_name);
    text("profile-email", r.json.email);
    text("profile-id", r.json.user_id);
    text("profile-cache", r.headers.get("cache-status") || "(no Cache-Status)");
    $("profile-panel").hidden = false;
    return true;
  }

  function show() {
    text("balance", S.balance);
    text("currency", S.currency);
    text("version", S.version);
  }

  // Applies a version of the balance: an older or repeated one changes
  // nothing; one past the next expected is counted as a gap (a missed
  // update), except right after a resync, which says one is coming.
  function apply(version, balance, currency, via) {
    if (!Number.isSafeInteger(version) || version <= S.version) return;
    if (via === "socket" && S.version && version > S.version + 1 && !resyncing) {
      S.gaps += 1;
      log(`gap: version ${version} after ${S.version}`);
    }
    resyncing = false;
    S.version = version;
    S.balance = balance;
    S.currency = currency;
    S.versions.push(version);
    show();
    log(`balance ${balance} ${currency} (version ${version}, ${via})`);
  }

  async function loadBalance() {
    const r = await api("GET", `/wallets/${S.wallet}/balance`);
    if (r.status === 401) return endedByServer();
    if (r.status !== 200) return problem("the balance could not be read", r);
    text("wallet-id", r.json.wallet_id);
    $("wallet-panel").hidden = false;
    apply(r.json.version, r.json.balance, r.json.currency, "http");
    return true;
  }

  // ---- the WebSocket -------------------------------------------------------

  function onFrame(data) {
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      return;
    }
    if (!f || typeof f !== "object") return;
    // A client drops a repeated id (CONTRACT: real-time messages).
    if (typeof f.id === "string") {
      if (seen.ids.has(f.id)) return;
      seen.ids.add(f.id);
      seen.order.push(f.id);
      if (seen.order.length > 2000) seen.ids.delete(seen.order.shift());
    }
    const mine = f.wallet_id === S.wallet || f.channel === `balance:${S.wallet}`;
    if (f.type === "balance_update" && mine) {
      apply(f.version, f.balance, f.currency, "socket");
    } else if (f.type === "resync" && mine) {
      // Older than the server keeps: read the balance over HTTP.
      S.resyncs += 1;
      resyncing = true;
      log(`resync after version ${f.after_version}`);
      loadBalance();
    } else if (f.type === "closing") {
      log(`the server is closing the connection: ${f.reason}`);
    } else if (f.type) {
      log(`${f.type} on ${f.channel}`);
    }
  }

  function connect() {
    if (S.signedOut || !S.token) return;
    const url = new URL(config.ws);
    url.searchParams.set("token", S.token);
    // What this page last saw: the server sends what came after, in order,
    // before anything new (docs/realtime.md, Reconnecting without a gap).
    if (S.version) url.searchParams.set("resume", `${S.wallet}:${S.version}`);
    const socket = new WebSocket(url.toString());
    ws = socket;
    setSocket("connecting");
    let opened = false;
    let pinger = null;
    socket.onopen = () => {
      opened = true;
      backoff = config.reconnect_ms;
      S.connects += 1;
      setSocket("open");
      pinger = setInterval(() => socket.send(JSON.stringify({ action: "ping" })), config.ping_ms);
    };
    socket.onmessage = (ev) => onFrame(ev.data);
    socket.onclose = async (ev) => {
      clearInterval(pinger);
      S.closes.push({ code: ev.code, reason: ev.reason, opened, local: S.closedLocally });
      if (ws !== socket) return;
      ws = null;
      setSocket("closed");
      if (S.signedOut) return;
      // Closed by the server or the network. If the sign-in ended, the
      // API says so; otherwise reconnect, resuming where the page stopped.
      const r = await api("GET", `/users/${S.user}/profile`);
      if (r.status === 401) return endedByServer();
      log(`connection lost (${ev.code}); reconnecting in ${backoff} ms`);
      retry = setTimeout(() => {
        S.reconnects += 1;
        text("reconnects", S.reconnects);
        connect();
      }, backoff);
      backoff = Math.min(backoff * 2, config.reconnect_max_ms);
    };
  }

  // ---- sign-out -------------------------------------------------------------

  function forget() {
    S.signedOut = true;
    clearTimeout(retry);
    sessionStorage.removeItem(TOKEN_KEY);
    $("signout").disabled = true;
    $("signout-all").disabled = true;
  }

  // The API answered 401: this sign-in is over (signed out elsewhere, or
  // expired).
  function endedByServer() {
    if (S.signedOut) return;
    forget();
    S.token = null;
    setStatus("Signed out: this sign-in has ended. Sign in again.", "signed-out");
    if (ws) {
      S.closedLocally = true;
      ws.close(1000);
    }
    log("the API refused the token: signed out");
  }

  async function signOut(everywhere) {
    const r = await api("POST", "/sessions/logout", everywhere ? { scope: "all" } : undefined);
    if (r.status === 401) return endedByServer();
    if (r.status !== 200) return problem("sign-out failed; try again", r);
    forget();
    S.token = null;
    setStatus(everywhere ? "Signed out everywhere." : "Signed out of this device.", "signed-out");
    log(`signed out (${r.json && r.json.scope})`);
    // The server closes this sign-in's sockets; close it here only if it
    // has not within close_wait_ms.
    const socket = ws;
    if (socket) {
      setTimeout(() => {
        if (socket.readyState !== WebSocket.CLOSED) {
          S.closedLocally = true;
          socket.close(1000);
        }
      }, config.close_wait_ms);
    }
    if (config.auth) {
      // The hosted UI's own session ends only at its /logout; without
      // it the next sign-in is silent.
      const a = config.auth;
      const params = new URLSearchParams({ client_id: a.client_id, logout_uri: a.logout_uri });
      setTimeout(() => location.assign(`${a.domain.replace(/\/+$/, "")}/logout?${params}`), 0);
    }
  }

  // ---- start ----------------------------------------------------------------

  async function start() {
    $("signin").addEventListener("click", () => signInHostedUi());
    $("signout").addEventListener("click", () => signOut(false));
    $("signout-all").addEventListener("click", () => signOut(true));
    $("signin").hidden = !config.auth;
    $("dev-hint").hidden = Boolean(config.auth);
    const token = await obtainToken();
    const c = token && claims(token);
    if (!c || typeof c.sub !== "string" || !UUID.test(c.sub)) {
      sessionStorage.removeItem(TOKEN_KEY);
      return;
    }
    if (typeof c.exp === "number" && c.exp * 1000 < Date.now()) {
      sessionStorage.removeItem(TOKEN_KEY);
      setStatus("The sign-in has expired. Sign in again.", "signed-out");
      return;
    }
    S.token = token;
    S.user = c.sub;
    sessionStorage.setItem(TOKEN_KEY, token);
    setStatus(`Signed in as ${c.sub}.`, "open");
    $("signin").hidden = true;
    $("dev-hint").hidden = true;
    $("signout-panel").hidden = false;
    if ((await loadProfile()) !== true) return;
    if (!S.wallet) {
      log("no wallet chosen (?wallet=<wallet id>)");
      return;
    }
    if ((await loadBalance()) !== true) return;
    connect();
  }

  start();
})();
