//! The WebSocket connection registry (`ws-connections`) against real Redis
//! (both modes), and the authorizer's WebSocket (policy) answers.
#![allow(clippy::unwrap_used, reason = "tests")]

use paycache::config::RedisMode;
use paycache::events::websocket;
use paycache::keys::{ConnectionId, UserId};
use paycache::realtime;
use paycache_tests::{World, both_modes};
use serde_json::{Value, json};
use std::time::Duration;
use test_support::random_uuid;

fn ws_event(route: &str, conn: &str, by: Option<&Signed>) -> Value {
    // As API Gateway sends it (connectedAt and requestTimeEpoch are always
    // there); the authorizer's context as `auth.rs` writes it.
    let mut ctx = json!({"routeKey": route, "eventType": "CONNECT", "connectionId": conn,
                         "requestId": "ws-req", "domainName": "ws.example.com", "stage": "prod",
                         "connectedAt": 1795608000000_i64, "requestTimeEpoch": 1795608000000_i64});
    if let Some(s) = by {
        ctx["authorizer"] = json!({"user_id": s.user, "principalId": s.user,
                                   "session_id": s.session, "exp": s.exp});
    }
    json!({"requestContext": ctx, "headers": {"User-Agent": "mobile_app_v1.2"}, "isBase64Encoded": false})
}

/// A sign-in as the `$connect` authorizer passes it on.
struct Signed {
    user: String,
    session: String,
    exp: i64,
    signed: paycache_tests::SignedIn,
}

async fn signed_in(w: &World, user: &str, token_lifetime_secs: i64) -> Signed {
    let s = w.sign_in(user, &[]).await;
    Signed {
        user: s.user.clone(),
        session: s.session.clone(),
        exp: time::OffsetDateTime::now_utc().unix_timestamp() + token_lifetime_secs,
        signed: s,
    }
}

async fn ws(w: &World, event: &Value) -> Value {
    websocket(&w.app, event).await
}

/// `by`'s sign-in ends (this one only), as `POST /sessions/logout` ends it.
async fn sign_out(w: &World, by: &Signed) {
    paycache::sessions::end(
        &w.app.sessions,
        &UserId::parse(&by.user).unwrap(),
        &paycache::sessions::Ending::One(paycache::keys::SessionId::parse(&by.session).unwrap()),
        "test",
    )
    .await
    .unwrap();
}

async fn connect_ping_disconnect_and_pruning(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let user = random_uuid();
    let uid = UserId::parse(&user).unwrap();
    let by = signed_in(&w, &user, 3600).await;
    let (a, b) = (
        format!("conn{}", &random_uuid()[..8]),
        format!("conn{}", &random_uuid()[..8]),
    );
    for conn in [&a, &b] {
        let r = ws(&w, &ws_event("$connect", conn, Some(&by))).await;
        assert_eq!(r["statusCode"], 200, "{r}");
    }
    let live = realtime::connections(&w.app.connections, &uid)
        .await
        .unwrap();
    assert_eq!(live.len(), 2);
    let meta = realtime::meta(&w.app.connections, &ConnectionId::parse(&a).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(meta.user_id, uid);
    assert_eq!(meta.client_info.as_deref(), Some("mobile_app_v1.2"));
    assert_eq!(meta.session_id.as_deref(), Some(by.session.as_str()));
    assert_eq!(meta.expires_at, Some(by.exp));
    // Both keys carry the design's 2-hour TTL.
    let mut raw = w.redis.raw().await;
    for key in [
        w.app.keys.ws_connections(&uid).to_string(),
        w.app
            .keys
            .ws_meta(&ConnectionId::parse(&a).unwrap())
            .to_string(),
    ] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!((7_100_000..=7_200_000).contains(&ttl), "{key}: {ttl}");
    }

    // ping refreshes last_ping and both TTLs.
    let meta_key = w
        .app
        .keys
        .ws_meta(&ConnectionId::parse(&a).unwrap())
        .to_string();
    for key in [&meta_key, &w.app.keys.ws_connections(&uid).to_string()] {
        let _: i64 = redis::cmd("PEXPIRE")
            .arg(key)
            .arg(60_000)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let r = ws(&w, &ws_event("ping", &a, Some(&by))).await;
    assert_eq!(r["statusCode"], 200);
    for key in [&meta_key, &w.app.keys.ws_connections(&uid).to_string()] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(ttl > 7_100_000, "{key}: {ttl}");
    }
    let after = realtime::meta(&w.app.connections, &ConnectionId::parse(&a).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(after.last_ping > meta.last_ping);
    assert_eq!(after.connected_at, meta.connected_at);

    // $disconnect removes every entry (and is idempotent).
    for _ in 0..2 {
        let r = ws(&w, &ws_event("$disconnect", &a, Some(&by))).await;
        assert_eq!(r["statusCode"], 200);
    }
    assert!(
        realtime::meta(&w.app.connections, &ConnectionId::parse(&a).unwrap())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        realtime::connections(&w.app.connections, &uid)
            .await
            .unwrap(),
        vec![ConnectionId::parse(&b).unwrap()]
    );
    // Read raw, every registry shard.
    let mut everyone: Vec<String> = Vec::new();
    for shard in 0..realtime::REGISTRY_SHARDS {
        let ids: Vec<String> = redis::cmd("HKEYS")
            .arg(w.app.keys.ws_all(shard))
            .query_async(&mut raw)
            .await
            .unwrap();
        everyone.extend(ids);
    }
    assert_eq!(everyone, vec![b.clone()]);
    // A ping on a connection that is not registered says so.
    assert_eq!(
        ws(&w, &ws_event("ping", &a, Some(&by))).await["statusCode"],
        410
    );
}
both_modes!(connect_ping_disconnect_and_pruning);

/// A connection lives no longer than its sign-in: once the session has
/// ended, or the connecting token has expired, the connection is no
/// longer listed (read raw: the registry's own hash) and `ping` does not
/// keep it — it answers 410, takes it out and queues its close.
/// The broken variant is the previous registry: liveness from the
/// connection's metadata alone, which an ended sign-in does not touch.
async fn a_connection_lives_no_longer_than_its_sign_in(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let user = random_uuid();
    let uid = UserId::parse(&user).unwrap();
    let mut raw = w.redis.raw().await;
    async fn registered_in(
        w: &World,
        uid: &UserId,
        raw: &mut test_support::RawRedis,
    ) -> Vec<String> {
        redis::cmd("HKEYS")
            .arg(w.app.keys.ws_connections(uid).to_string())
            .query_async(raw)
            .await
            .unwrap()
    }
    macro_rules! registered {
        ($raw:expr) => {
            registered_in(&w, &uid, $raw)
        };
    }
    // Ended session: ping takes the connection out and queues its close.
    let by = signed_in(&w, &user, 3600).await;
    let conn = format!("conn{}", &random_uuid()[..8]);
    assert_eq!(
        ws(&w, &ws_event("$connect", &conn, Some(&by))).await["statusCode"],
        200
    );
    assert_eq!(registered!(&mut raw).await, vec![conn.clone()]);
    sign_out(&w, &by).await;
    // The sign-out took it out of the user's registry already…
    assert!(registered!(&mut raw).await.is_empty());
    // …its ping answers 410 and queues the close…
    let r = ws(&w, &ws_event("ping", &conn, Some(&by))).await;
    assert_eq!(r["statusCode"], 410, "{r}");
    assert!(
        realtime::meta(&w.app.connections, &ConnectionId::parse(&conn).unwrap())
            .await
            .unwrap()
            .is_none()
    );
    let queued = raw
        .stream(&w.app.keys.ws_deliveries(w.app.delivery.partition(&conn)))
        .await
        .unwrap();
    assert!(
        queued
            .iter()
            .any(|(_, f)| f.contains(&("k".into(), "close".into()))
                && f.contains(&("c".into(), conn.clone()))),
        "{queued:?}"
    );

    // A session deleted without a sign-out (idled out): the connection is
    // found dead at its next listing and at its ping.
    let by = signed_in(&w, &user, 3600).await;
    let conn = format!("conn{}", &random_uuid()[..8]);
    assert_eq!(
        ws(&w, &ws_event("$connect", &conn, Some(&by))).await["statusCode"],
        200
    );
    w.idle_out(&by.signed).await;
    assert_eq!(registered!(&mut raw).await, vec![conn.clone()]);
    assert!(
        realtime::connections(&w.app.connections, &uid)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(registered!(&mut raw).await.is_empty());

    // An expired token: its connection is dead though its session lives.
    let by = signed_in(&w, &user, -1).await;
    let conn = format!("conn{}", &random_uuid()[..8]);
    assert_eq!(
        ws(&w, &ws_event("$connect", &conn, Some(&by))).await["statusCode"],
        200
    );
    assert_eq!(
        ws(&w, &ws_event("ping", &conn, Some(&by))).await["statusCode"],
        410
    );
    assert!(registered!(&mut raw).await.is_empty());

    // The broken variant: the metadata still says "connected" for every
    // one of them — the old liveness check (metadata exists) would have
    // kept the last two.
    let live_by_meta = realtime::meta(&w.app.connections, &ConnectionId::parse(&conn).unwrap())
        .await
        .unwrap()
        .is_some();
    assert!(!live_by_meta, "the ping removed the metadata too");
}
both_modes!(a_connection_lives_no_longer_than_its_sign_in);

/// A sign-in's context as the authorizer would pass it, for a session that
/// was never created.
fn context(user: String, exp: i64) -> Signed {
    let session = "c2Vzc2lvbg".to_owned();
    Signed {
        signed: paycache_tests::SignedIn {
            user: user.clone(),
            session: session.clone(),
            jti: "j".into(),
        },
        user,
        session,
        exp,
    }
}

async fn refusals(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let by = context(
        random_uuid(),
        time::OffsetDateTime::now_utc().unix_timestamp() + 3600,
    );
    assert_eq!(
        ws(&w, &ws_event("$connect", "conn1", None)).await["statusCode"],
        401
    );
    assert_eq!(
        ws(&w, &ws_event("$connect", "bad:id", Some(&by))).await["statusCode"],
        400
    );
    let not_a_user = context("{not-a-user}".into(), by.exp);
    assert_eq!(
        ws(&w, &ws_event("$connect", "conn1", Some(&not_a_user))).await["statusCode"],
        401
    );
    let mut no_session = ws_event("$connect", "conn1", Some(&not_a_user));
    no_session["requestContext"]["authorizer"] =
        json!({"user_id": random_uuid(), "principalId": "x"});
    assert_eq!(
        ws(&w, &no_session).await["statusCode"],
        401,
        "no session or exp: refused"
    );
    assert_eq!(ws(&w, &json!({})).await["statusCode"], 400);
    assert_eq!(ws(&w, &json!(null)).await["statusCode"], 400);
    let someone = context(random_uuid(), 1);
    assert_eq!(
        ws(&w, &ws_event("sendmessage", "conn1", Some(&someone))).await["statusCode"],
        400
    );
    assert!(w.keys().await.is_empty());
}
both_modes!(refusals);

/// `$connect?resume=`: a malformed value, a wallet named twice or more than
/// 16 wallets are refused (400), a wallet that is not the user's (or does
/// not exist) is 404 — and a refused `$connect` registers nothing and
/// queues no catch-up. The user's own wallet is accepted.
async fn resume_refusals(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let user = test_support::insert_user(&w.db, 1).await;
    let mine = random_uuid();
    test_support::insert_wallet(&w.db, 1, &mine, "USD", 100).await;
    test_support::insert_user(&w.db, 2).await;
    let theirs = random_uuid();
    test_support::insert_wallet(&w.db, 2, &theirs, "USD", 100).await;
    let by = signed_in(&w, &user, 3600).await;
    let uid = UserId::parse(&user).unwrap();
    let many: Vec<String> = (0..17).map(|_| format!("{}:1", random_uuid())).collect();
    let with = |resume: &str| {
        let mut e = ws_event("$connect", "connr1", Some(&by));
        e["queryStringParameters"] = json!({"token": "t", "resume": resume});
        e
    };
    for (resume, status) in [
        ("", 400),
        ("not-a-wallet:1", 400),
        (&mine.clone(), 400),
        (&format!("{mine}:-1"), 400),
        (&format!("{mine}:1.5"), 400),
        (&format!("{mine}:1,{mine}:2"), 400),
        (&many.join(","), 400),
        (&format!("{theirs}:1"), 404),
        (&format!("{}:1", random_uuid()), 404),
        (&format!("{mine}:1,{theirs}:1"), 404),
    ] {
        let r = ws(&w, &with(resume)).await;
        assert_eq!(r["statusCode"], status, "{resume}: {r}");
        assert!(
            realtime::connections(&w.app.connections, &uid)
                .await
                .unwrap()
                .is_empty(),
            "{resume}: nothing registered"
        );
    }
    let mut raw = w.redis.raw().await;
    let mut queued = 0;
    for p in 0..w.app.config.delivery.partitions {
        let n: i64 = redis::cmd("XLEN")
            .arg(w.app.keys.ws_deliveries(p))
            .query_async(&mut raw)
            .await
            .unwrap();
        queued += n;
    }
    assert_eq!(queued, 0, "no catch-up queued");
    let r = ws(&w, &with(&format!("balance:{mine}:1"))).await;
    assert_eq!(r["statusCode"], 200, "{r}");
    let p = w.app.delivery.partition(&mine);
    let entries = raw.stream(&w.app.keys.ws_deliveries(p)).await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].1.contains(&("k".into(), "catchup".into())));
    assert!(entries[0].1.contains(&("a".into(), "1".into())));
    // The resume mark holds the wallet's new frames back until its
    // catch-up is sent — or, if no sender gets to it, for 15 minutes
    // (docs/realtime.md): not a moment that a slow sender could outlast.
    let ttl: i64 = redis::cmd("PTTL")
        .arg(w.app.keys.ws_resume(&uid))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        (14 * 60 * 1000..=15 * 60 * 1000).contains(&ttl),
        "the resume mark lives 15 minutes: {ttl} ms"
    );
}
both_modes!(resume_refusals);

/// A `ping` whose session Redis no longer holds asks PostgreSQL: a live
/// sign-in (its Redis entry evicted, say) keeps its connection and is put
/// back in Redis; one that idled out is closed (410).
async fn a_ping_asks_postgres_when_redis_lost_the_session(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let user = random_uuid();
    let uid = UserId::parse(&user).unwrap();
    let mut raw = w.redis.raw().await;
    for (case, status) in [("evicted", 200), ("idled out", 410)] {
        let by = signed_in(&w, &user, 3600).await;
        let conn = format!("conn{}", &random_uuid()[..8]);
        assert_eq!(
            ws(&w, &ws_event("$connect", &conn, Some(&by))).await["statusCode"],
            200
        );
        let sid = paycache::keys::SessionId::parse(&by.session).unwrap();
        let key = w.app.keys.session(&uid, &sid).to_string();
        if case == "evicted" {
            let _: i64 = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut raw)
                .await
                .unwrap();
        } else {
            w.idle_out(&by.signed).await;
        }
        let r = ws(&w, &ws_event("ping", &conn, Some(&by))).await;
        assert_eq!(r["statusCode"], status, "{case}: {r}");
        let back: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(
            back,
            status == 200,
            "{case}: the session is back in Redis only if live"
        );
    }
}
both_modes!(a_ping_asks_postgres_when_redis_lost_the_session);

/// The `system:announcements` helper reaches a subscriber with the contract's
/// message shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_reach_subscribers() {
    use futures_util::StreamExt;
    let server = test_support::RedisServer::start();
    let url = server.url();
    let w = World::with_redis(test_support::TestRedis::Standalone(server), &[]).await;
    let mut sub = redis::Client::open(url)
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    sub.subscribe(paycache::pubsub::SYSTEM_ANNOUNCEMENTS)
        .await
        .unwrap();
    let mut messages = sub.into_on_message();
    let reached = paycache::pubsub::announce(&w.app.redis, "maintenance at 03:00 UTC")
        .await
        .unwrap();
    assert_eq!(reached, 1);
    let msg = tokio::time::timeout(std::time::Duration::from_secs(5), messages.next())
        .await
        .unwrap()
        .unwrap();
    let m: Value = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
    assert_eq!(m["type"], "announcement");
    assert_eq!(m["message"], "maintenance at 03:00 UTC");
    assert!(m["timestamp"].as_f64().unwrap() > 1.7e9);
}

/// The delivery stream entries that close `conn`, with their fields.
async fn close_entries(w: &World, conn: &str) -> Vec<Vec<(String, String)>> {
    let mut raw = w.redis.raw().await;
    let queued = raw
        .stream(&w.app.keys.ws_deliveries(w.app.delivery.partition(conn)))
        .await
        .unwrap();
    queued
        .into_iter()
        .map(|(_, f)| f)
        .filter(|f| {
            f.contains(&("k".into(), "close".into()))
                && f.iter()
                    .any(|(k, v)| k == "c" && v.split(',').any(|c| c == conn))
        })
        .collect()
}

/// Limits a person never meets and a script always does (issue 28): one
/// sign-in may hold `WS_MAX_CONNECTIONS_PER_SESSION` open connections and
/// one user `WS_MAX_CONNECTIONS_PER_USER`; the next `$connect` is refused
/// (429, the limit named) and leaves nothing behind; closing one makes
/// room. Connections of an expired token do not count. The broken variant
/// — limits a script never meets (1,000) — accepts every connection, which
/// the same check sees.
async fn connections_past_the_limits_are_refused(mode: RedisMode) {
    for broken in [false, true] {
        let limits: &[(&str, &str)] = if broken {
            &[
                ("WS_MAX_CONNECTIONS_PER_SESSION", "1000"),
                ("WS_MAX_CONNECTIONS_PER_USER", "1000"),
            ]
        } else {
            &[
                ("WS_MAX_CONNECTIONS_PER_SESSION", "3"),
                ("WS_MAX_CONNECTIONS_PER_USER", "5"),
            ]
        };
        let w = World::new(mode, limits).await;
        let user = random_uuid();
        let uid = UserId::parse(&user).unwrap();
        let one = signed_in(&w, &user, 3600).await;
        let conn = |i: usize| format!("lim{i}{}", &random_uuid()[..8]);
        let mut statuses = Vec::new();
        let mut opened = Vec::new();
        for i in 0..4 {
            let c = conn(i);
            let r = ws(&w, &ws_event("$connect", &c, Some(&one))).await;
            statuses.push(r["statusCode"].as_u64().unwrap());
            if r["statusCode"] == 200 {
                opened.push(c);
            } else {
                let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
                assert_eq!(body["reason"], "connections_per_session", "{body}");
                // Refused: nothing of it stays in the registry.
                assert!(
                    realtime::meta(&w.app.connections, &ConnectionId::parse(&c).unwrap())
                        .await
                        .unwrap()
                        .is_none()
                );
            }
        }
        if broken {
            assert_eq!(statuses, [200; 4], "the broken variant accepts them all");
            continue;
        }
        assert_eq!(statuses, [200, 200, 200, 429], "per sign-in");
        // A second sign-in of the same user: two more, then the user's
        // limit (5) refuses.
        let two = signed_in(&w, &user, 3600).await;
        let mut second = Vec::new();
        for i in 0..3 {
            let r = ws(&w, &ws_event("$connect", &conn(10 + i), Some(&two))).await;
            second.push(r["statusCode"].as_u64().unwrap());
            if r["statusCode"] == 429 {
                let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
                assert_eq!(body["reason"], "connections_per_user", "{body}");
            }
        }
        assert_eq!(second, [200, 200, 429], "per user");
        assert_eq!(
            realtime::connections(&w.app.connections, &uid)
                .await
                .unwrap()
                .len(),
            5
        );
        // Closing one makes room for one.
        let r = ws(&w, &ws_event("$disconnect", &opened[0], Some(&one))).await;
        assert_eq!(r["statusCode"], 200);
        let r = ws(&w, &ws_event("$connect", &conn(20), Some(&one))).await;
        assert_eq!(r["statusCode"], 200, "{r}");
        // A connection whose token expired does not count: a sign-in whose
        // token has run out cannot hold places.
        let w2 = World::new(mode, limits).await;
        let expired = signed_in(&w2, &user, -1).await;
        for i in 0..3 {
            let r = ws(&w2, &ws_event("$connect", &conn(30 + i), Some(&expired))).await;
            assert_eq!(r["statusCode"], 200, "{r}");
        }
        let fresh = Signed {
            exp: time::OffsetDateTime::now_utc().unix_timestamp() + 3600,
            ..expired
        };
        let r = ws(&w2, &ws_event("$connect", &conn(40), Some(&fresh))).await;
        assert_eq!(
            r["statusCode"], 200,
            "expired connections are not counted: {r}"
        );
    }
}
both_modes!(connections_past_the_limits_are_refused);

/// A connection that pings more often than `WS_PINGS_PER_MINUTE` is
/// closed: the ping past the limit answers 429, the connection leaves the
/// registry, and its close is queued with the reason the client is told
/// in a last frame (`too_many_pings`). The pings before it are answered
/// 200. The broken variant — a limit a script never meets — keeps
/// answering 200, which the same check sees.
async fn pings_past_the_limit_close_the_connection(mode: RedisMode) {
    for broken in [false, true] {
        let limit = if broken { "10000" } else { "5" };
        let w = World::new(mode, &[("WS_PINGS_PER_MINUTE", limit)]).await;
        let user = random_uuid();
        let uid = UserId::parse(&user).unwrap();
        let by = signed_in(&w, &user, 3600).await;
        let conn = format!("pings{}", &random_uuid()[..8]);
        let r = ws(&w, &ws_event("$connect", &conn, Some(&by))).await;
        assert_eq!(r["statusCode"], 200, "{r}");
        let mut statuses = Vec::new();
        for _ in 0..7 {
            statuses.push(
                ws(&w, &ws_event("ping", &conn, Some(&by))).await["statusCode"]
                    .as_u64()
                    .unwrap(),
            );
        }
        let listed = realtime::connections(&w.app.connections, &uid)
            .await
            .unwrap();
        let closes = close_entries(&w, &conn).await;
        if broken {
            assert_eq!(statuses, [200; 7], "the broken variant keeps it");
            assert_eq!(listed.len(), 1);
            assert!(closes.is_empty());
            continue;
        }
        // The sixth closes it; the seventh finds it gone.
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 410]);
        assert!(listed.is_empty(), "out of the registry");
        assert_eq!(closes.len(), 1, "{closes:?}");
        assert!(
            closes[0].contains(&("r".into(), "too_many_pings".into())),
            "{closes:?}"
        );
    }
}
both_modes!(pings_past_the_limit_close_the_connection);

/// An announcement walks `ws_all` a page at a time; a page shorter than
/// asked for is the shard's last (no further round trip), a full one names
/// where the next starts.
async fn a_short_page_is_the_shards_last(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let user = random_uuid();
    let by = signed_in(&w, &user, 3600).await;
    let conn = format!("conn{}", &random_uuid()[..8]);
    assert_eq!(
        ws(&w, &ws_event("$connect", &conn, Some(&by))).await["statusCode"],
        200
    );
    let id = ConnectionId::parse(&conn).unwrap();
    let shard = paycache::keys::shard_of(&id);
    let (next, live, dead) = realtime::everyone_page(&w.app.connections, shard, "", 10)
        .await
        .unwrap();
    assert_eq!((next, live, dead.len()), (None, vec![id.clone()], 0));
    let (next, live, _) = realtime::everyone_page(&w.app.connections, shard, "", 1)
        .await
        .unwrap();
    assert_eq!((next.as_deref(), live), (Some(conn.as_str()), vec![id]));
    let (next, live, _) = realtime::everyone_page(&w.app.connections, shard, &conn, 1)
        .await
        .unwrap();
    assert_eq!((next, live.len()), (None, 0));
}
both_modes!(a_short_page_is_the_shards_last);

/// The registry answers a `ping` as the gate answers a request: an
/// execution environment that saw Redis fail answers none until it has
/// told Redis of the sign-outs made meanwhile — Redis, back from a pause,
/// still holds the session signed out during it as live. Through
/// PgBouncer, as deployed.
async fn a_ping_after_an_outage_waits_for_its_sign_outs(mode: RedisMode) {
    use crate::outage::{Outage, SHORT, begin, end, own_redis};
    let mut w = World::with_redis_pooled(own_redis(mode), &SHORT).await;
    let user = random_uuid();
    let by = signed_in(&w, &user, 3600).await;
    let conn = format!("conn{}", &random_uuid()[..8]);
    assert_eq!(
        ws(&w, &ws_event("$connect", &conn, Some(&by))).await["statusCode"],
        200
    );
    let other = w.another_environment();
    let ping = |app: paycache::App| {
        let event = ws_event("ping", &conn, Some(&by));
        async move { websocket(&app, &event).await["statusCode"].clone() }
    };
    assert_eq!(ping(other.clone()).await, 200);
    begin(&mut w.redis, Outage::Paused);
    // The other environment sees Redis fail…
    assert_eq!(ping(other.clone()).await, 503);
    // …and this one signs the session out: PostgreSQL records it.
    sign_out(&w, &by).await;
    end(&mut w.redis, Outage::Paused);
    // Once the other environment answers at all, its answer is the
    // sign-out's.
    let mut answer = Value::Null;
    for _ in 0..100 {
        answer = ping(other.clone()).await;
        if answer != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        answer, 410,
        "a ping after the outage answers the sign-out made during it"
    );
}
both_modes!(a_ping_after_an_outage_waits_for_its_sign_outs);

/// A page of `ws_all` (an announcement's audience) judges each connection
/// by its token as well as its session: an expired token's connection is
/// dead though its session lives — also one expiring this very second
/// (`exp` is the first second a token is no longer valid, RFC 7519 4.1.4;
/// should the second turn between the connect and the page, the case
/// holds either way).
async fn a_page_finds_an_expired_tokens_connection_dead(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let user = random_uuid();
    for lifetime in [-60, 0] {
        let by = signed_in(&w, &user, lifetime).await;
        let conn = format!("conn{}", &random_uuid()[..8]);
        assert_eq!(
            ws(&w, &ws_event("$connect", &conn, Some(&by))).await["statusCode"],
            200
        );
        let id = ConnectionId::parse(&conn).unwrap();
        let (_, live, dead) =
            realtime::everyone_page(&w.app.connections, paycache::keys::shard_of(&id), "", 10)
                .await
                .unwrap();
        assert!(!live.contains(&id), "exp in {lifetime} s: not live");
        assert!(
            dead.contains(&(id, Some(UserId::parse(&user).unwrap()))),
            "exp in {lifetime} s: dead"
        );
    }
}
both_modes!(a_page_finds_an_expired_tokens_connection_dead);
