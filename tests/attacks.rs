//! What an outage or a noisy user could still do (issue 28), tried through
//! the real handlers, the local WebSocket gateway (real sockets) and real
//! Redis — the test's own servers, cut off (connections refused, data
//! kept) or paused, both modes — and PostgreSQL. Each guarantee is also run
//! in its broken form through the same check, which must catch it.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http::StatusCode;
use lambda_http::{Body, Request, RequestExt, Response};
use paycache::App;
use paycache::config::RedisMode;
use paycache::keys::WalletId;
use paycache::routes::{balance, logout, profile_read};
use paycache_tests::{SignedIn, as_client_token, both_modes, token_id};
use serde_json::{Value, json};
use test_support::{RedisServer, TestRedis, insert_user, insert_wallet, random_uuid, seed_user_id};
use tokio_tungstenite::tungstenite::Message;

use crate::outage::{SHORT, own_redis};
use crate::realtime::{versions, versions_until, write_until_applied};
use paycache_tests::realtime::{Rig, Ws, next_frame};

fn profile(user: &str) -> Request {
    let mut p = HashMap::new();
    p.insert("user_id".to_string(), user.to_string());
    http::Request::builder()
        .method("GET")
        .uri(format!("/users/{user}/profile"))
        .body(Body::Empty)
        .unwrap()
        .with_path_parameters(p)
}

fn wallet_get(wallet: &str) -> Request {
    let mut p = HashMap::new();
    p.insert("wallet_id".to_string(), wallet.to_string());
    http::Request::builder()
        .method("GET")
        .uri(format!("/wallets/{wallet}/balance"))
        .body(Body::Empty)
        .unwrap()
        .with_path_parameters(p)
}

fn sign_out(scope: &str) -> Request {
    http::Request::builder()
        .method("POST")
        .body(Body::Text(json!({ "scope": scope }).to_string()))
        .unwrap()
}

fn body(resp: &Response<Body>) -> Value {
    serde_json::from_slice(resp.body().as_ref()).unwrap_or(Value::Null)
}

async fn read(app: &App, who: &SignedIn, user: &str) -> StatusCode {
    Box::pin(profile_read::handle(app, who.on(profile(user))))
        .await
        .status()
}

/// A service (the support console) reading a wallet with its one token.
async fn service_read(app: &App, jti: &str, wallet: &str) -> StatusCode {
    let req = as_client_token(
        wallet_get(wallet),
        "support-console",
        jti,
        &["wallets.read.any"],
    );
    Box::pin(balance::handle(app, req)).await.status()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// Every node cut off, its data kept (a partition, an unresponsive
    /// node): connections refused until it is back with what it held.
    Cut,
    /// Every node paused (`SIGSTOP`): requests hang until the timeout.
    Paused,
}

fn begin(redis: &mut TestRedis, outage: Outage) {
    let each = |s: &mut RedisServer| match outage {
        Outage::Cut => s.cut(),
        Outage::Paused => s.pause(),
    };
    match redis {
        TestRedis::Standalone(s) => each(s),
        TestRedis::Cluster(c) => c.nodes.iter_mut().for_each(each),
        _ => unreachable!("the test's own servers"),
    }
}

fn end(redis: &mut TestRedis, outage: Outage) {
    match (redis, outage) {
        (TestRedis::Standalone(s), Outage::Cut) => s.restore(),
        (TestRedis::Cluster(c), Outage::Cut) => {
            c.nodes.iter_mut().for_each(RedisServer::restore);
            c.wait_until_ok(Duration::from_secs(30));
        }
        (TestRedis::Standalone(s), Outage::Paused) => s.resume(),
        (TestRedis::Cluster(c), Outage::Paused) => c.nodes.iter().for_each(|s| s.resume()),
        _ => unreachable!("the test's own servers"),
    }
}

/// Sign-outs and revocations not yet applied to Redis.
async fn pending(rig: &Rig) -> i64 {
    rig.w
        .db
        .client()
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM sessions WHERE cache_pending)
                  + (SELECT count(*) FROM revoked_tokens WHERE cache_pending)",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Balance frames of `wallet` until `wait` passes without one, and whether
/// the socket was closed.
async fn frames_and_close(ws: &mut Ws, wait: Duration) -> (Vec<Value>, bool) {
    let mut frames = Vec::new();
    loop {
        match tokio::time::timeout(wait, futures_util::StreamExt::next(ws)).await {
            Ok(Some(Ok(Message::Text(t)))) => frames.push(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                return (frames, true);
            }
            Ok(Some(Ok(_))) => continue,
            Err(_) => return (frames, false),
        }
    }
}

/// A sign-out made during a Redis outage holds after it (issue 28), both
/// kinds of outage: Redis returns still holding the sessions and no
/// blacklist entry, yet the execution environment that saw the outage
/// refuses the signed-out user's other device and the signed-out service
/// token on its very first request after it (it tells Redis of the
/// sign-outs first: `sessions::recovered`), and from then on Redis alone
/// refuses them everywhere. The sockets of the ended sign-ins receive
/// nothing more and are closed (the sweep queued their close); another
/// user's socket gets its frame. The broken form — an environment that
/// trusts Redis right after the outage — is an environment that started
/// after it (a cold start: it saw nothing): with the connections cut
/// (Redis cannot have heard of the sign-out), it admits the other device
/// until told, which the same read shows.
async fn a_sign_out_during_an_outage_holds_after_it(mode: RedisMode) {
    for outage in [Outage::Cut, Outage::Paused] {
        let mut rig = Rig::with_redis(own_redis(mode), &SHORT).await;
        let me = seed_user_id(1);
        insert_user(&rig.w.db, 1).await;
        insert_user(&rig.w.db, 2).await;
        let (mine, theirs) = (random_uuid(), random_uuid());
        insert_wallet(&rig.w.db, 1, &mine, "USD", 1000).await;
        insert_wallet(&rig.w.db, 2, &theirs, "USD", 1000).await;
        let (t1, this_device) = rig.token_for(1, 600).await;
        let (t2, other_device) = rig.token_for(1, 600).await;
        let (t3, _) = rig.token_for(2, 600).await;
        let (mut ws1, mut ws2, mut ws3) = (
            rig.connect(&t1).await,
            rig.connect(&t2).await,
            rig.connect(&t3).await,
        );
        let service = token_id();
        // Two execution environments: `seen` (the gateway's, and the one
        // that serves requests during the outage) and `unseen` (idle
        // during it: it never learns of the outage).
        let (seen, unseen) = (rig.app.clone(), rig.w.another_environment());
        for app in [&*seen, &unseen] {
            assert_eq!(read(app, &other_device, &me).await, StatusCode::OK);
            assert_eq!(service_read(app, &service, &mine).await, StatusCode::OK);
        }

        begin(&mut rig.w.redis, outage);
        let out = Box::pin(logout::handle(&*seen, this_device.on(sign_out("all")))).await;
        assert_eq!(out.status(), StatusCode::OK, "{}", body(&out));
        let req = as_client_token(sign_out("session"), "support-console", &service, &[]);
        let out = Box::pin(logout::handle(&*seen, req)).await;
        assert_eq!(out.status(), StatusCode::OK, "{}", body(&out));
        assert_eq!(
            read(&seen, &other_device, &me).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            service_read(&seen, &service, &mine).await,
            StatusCode::UNAUTHORIZED
        );
        end(&mut rig.w.redis, outage);

        if outage == Outage::Cut {
            // Redis came back as it was: to an environment that trusts it
            // — one started after the outage, which saw nothing of it —
            // the other device is still signed in.
            let fresh = rig.w.another_environment();
            assert_eq!(
                read(&fresh, &other_device, &me).await,
                StatusCode::OK,
                "the broken form: an environment that trusts Redis after the outage admits the other device"
            );
        }
        // The environment that saw the outage refuses them from its first
        // request after it — while its breaker recovers (PostgreSQL
        // decides) and after it has told Redis (the sweep).
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            assert_eq!(
                read(&seen, &other_device, &me).await,
                StatusCode::UNAUTHORIZED
            );
            assert_eq!(
                service_read(&seen, &service, &mine).await,
                StatusCode::UNAUTHORIZED
            );
            if pending(&rig).await == 0 {
                break;
            }
            assert!(
                Instant::now() < until,
                "the environment that saw the outage swept"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // It told Redis: every environment refuses them from Redis now.
        for app in [&unseen, &rig.w.another_environment()] {
            assert_eq!(
                read(app, &other_device, &me).await,
                StatusCode::UNAUTHORIZED
            );
            assert_eq!(
                service_read(app, &service, &mine).await,
                StatusCode::UNAUTHORIZED
            );
        }

        // The sockets: the ended sign-ins' receive nothing and close;
        // another user's gets its frame.
        let sender = rig.spawn_sender(rig.sender(5).await);
        write_until_applied(&seen, &WalletId::parse(&mine).unwrap(), 500).await;
        let v = write_until_applied(&seen, &WalletId::parse(&theirs).unwrap(), 600).await;
        let theirs_frame =
            paycache_tests::realtime::frame_where(&mut ws3, Duration::from_secs(10), |f| {
                f["type"] == "balance_update"
            })
            .await;
        assert_eq!(
            theirs_frame.map(|f| f["version"].clone()),
            Some(json!(v)),
            "another user's socket receives"
        );
        for (name, ws) in [("this device", &mut ws1), ("the other device", &mut ws2)] {
            let (frames, closed) = frames_and_close(ws, Duration::from_secs(5)).await;
            assert!(
                frames.iter().all(|f| f["type"] != "balance_update"),
                "{outage:?}: {name}'s socket received {frames:?}"
            );
            assert!(closed, "{outage:?}: {name}'s socket is closed");
        }
        sender.abort();
    }
}
both_modes!(a_sign_out_during_an_outage_holds_after_it);

/// A sign-out closes the sockets of the sign-ins it ends — "this device"
/// its own, "everywhere" every other one of the user's — through
/// `ws-sender` (the close entries the sign-out queued: a close
/// acknowledged without its `DELETE @connections` leaves the socket open,
/// which this test catches); a bystander's socket stays open and receives
/// its frame.
async fn a_sign_out_closes_its_sockets(mode: RedisMode) {
    let rig = Rig::new(mode).await;
    insert_user(&rig.w.db, 1).await;
    insert_user(&rig.w.db, 2).await;
    let theirs = random_uuid();
    insert_wallet(&rig.w.db, 2, &theirs, "USD", 1000).await;
    let (t1, this_device) = rig.token_for(1, 600).await;
    let (t2, other_device) = rig.token_for(1, 600).await;
    let (t3, _) = rig.token_for(1, 600).await;
    let (t4, _) = rig.token_for(2, 600).await;
    let (mut ws1, mut ws2, mut ws3, mut ws4) = (
        rig.connect(&t1).await,
        rig.connect(&t2).await,
        rig.connect(&t3).await,
        rig.connect(&t4).await,
    );
    let sender = rig.spawn_sender(rig.sender(5).await);
    let out = Box::pin(logout::handle(
        &*rig.app,
        this_device.on(sign_out("session")),
    ))
    .await;
    assert_eq!(out.status(), StatusCode::OK, "{}", body(&out));
    let (_, closed) = frames_and_close(&mut ws1, Duration::from_secs(10)).await;
    assert!(closed, "this device's socket is closed");
    let (_, closed) = frames_and_close(&mut ws2, Duration::from_millis(500)).await;
    assert!(!closed, "the other devices' sockets stay open");
    let out = Box::pin(logout::handle(&*rig.app, other_device.on(sign_out("all")))).await;
    assert_eq!(out.status(), StatusCode::OK, "{}", body(&out));
    for (name, ws) in [("the other device", &mut ws2), ("the third", &mut ws3)] {
        let (_, closed) = frames_and_close(ws, Duration::from_secs(10)).await;
        assert!(closed, "signed out everywhere: {name}'s socket is closed");
    }
    let v = write_until_applied(&rig.app, &WalletId::parse(&theirs).unwrap(), 600).await;
    let frame = paycache_tests::realtime::frame_where(&mut ws4, Duration::from_secs(10), |f| {
        f["type"] == "balance_update"
    })
    .await;
    assert_eq!(
        frame.map(|f| f["version"].clone()),
        Some(json!(v)),
        "a bystander's socket stays open and receives"
    );
    sender.abort();
}
both_modes!(a_sign_out_closes_its_sockets);

/// An execution environment that did not see the outage (started after
/// it, or on the other side of a partition that hid it) learns of a sign-out
/// made during it from `ws-sender`, which sweeps pending sign-outs into
/// Redis every second: the time from Redis's return to the other device's
/// refusal there is printed (the bound: `SWEEP_EVERY` after the sender
/// reaches Redis again; docs/security.md). The broken form — no sweeping
/// sender, only the minute backstop — still admits it three seconds
/// later, which the same reads show.
async fn the_sender_tells_redis_of_outage_sign_outs_within_seconds(mode: RedisMode) {
    for broken in [false, true] {
        let mut rig = Rig::with_redis(own_redis(mode), &SHORT).await;
        let me = seed_user_id(1);
        insert_user(&rig.w.db, 1).await;
        let this_device = rig.w.sign_in(&me, &[]).await;
        let other_device = rig.w.sign_in(&me, &[]).await;
        // The sender runs through the outage, as deployed.
        let sender = if broken {
            None
        } else {
            Some(rig.spawn_sender(rig.sender(5).await))
        };
        begin(&mut rig.w.redis, Outage::Cut);
        // Signed out in another environment, which saw the outage.
        let during = rig.w.another_environment();
        let out = Box::pin(logout::handle(&during, this_device.on(sign_out("all")))).await;
        assert_eq!(out.status(), StatusCode::OK, "{}", body(&out));
        end(&mut rig.w.redis, Outage::Cut);
        let back = Instant::now();
        // An environment that saw nothing of the outage (started after it).
        let unseen = rig.w.another_environment();
        let mut refused_after = None;
        while back.elapsed() < Duration::from_secs(if broken { 3 } else { 15 }) {
            if read(&unseen, &other_device, &me).await == StatusCode::UNAUTHORIZED {
                refused_after = Some(back.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(s) = sender {
            s.abort();
        }
        if broken {
            assert_eq!(
                refused_after, None,
                "the broken form: without the sender's sweep the other device is still admitted"
            );
        } else {
            let after = refused_after.expect("the sender's sweep reached Redis");
            println!(
                "{mode:?}: an outage sign-out in force everywhere {:.2} s after Redis returned",
                after.as_secs_f64()
            );
            assert!(after < Duration::from_secs(15));
        }
    }
}
both_modes!(the_sender_tells_redis_of_outage_sign_outs_within_seconds);

/// An execution environment whose connection broke during an outage (its
/// breaker open, its connection dead) records a sign-out made just after
/// Redis returned in Redis, not as a pending one: the sign-out insists
/// (past the open breaker, on a fresh connection). Another environment
/// refuses the other device at once, from Redis, and nothing is pending.
/// The broken form is what the same environment's ordinary call meets at
/// that moment — the breaker refuses it — which a sign-out that does not
/// insist would have turned into a pending one.
async fn a_sign_out_right_after_an_outage_is_not_pending(mode: RedisMode) {
    let mut rig = Rig::with_redis(
        own_redis(mode),
        &[
            ("REDIS_RESPONSE_TIMEOUT_MS", "200"),
            ("REDIS_CONNECT_TIMEOUT_MS", "200"),
            ("CACHE_BREAKER_COOLDOWN_MS", "10000"),
        ],
    )
    .await;
    let me = seed_user_id(1);
    insert_user(&rig.w.db, 1).await;
    let this_device = rig.w.sign_in(&me, &[]).await;
    let other_device = rig.w.sign_in(&me, &[]).await;
    let (env, elsewhere) = (rig.w.another_environment(), rig.w.another_environment());
    for app in [&env, &elsewhere] {
        assert_eq!(read(app, &other_device, &me).await, StatusCode::OK);
    }
    begin(&mut rig.w.redis, Outage::Cut);
    for _ in 0..5 {
        assert_eq!(read(&env, &other_device, &me).await, StatusCode::OK);
    }
    assert!(
        env.redis.breaker().is_open(),
        "the outage opened the breaker"
    );
    end(&mut rig.w.redis, Outage::Cut);
    // The broken form: an ordinary call is refused by the open breaker.
    let ordinary = env
        .redis
        .run(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
        .await;
    assert_eq!(
        ordinary,
        Err(paycache::RedisUnavailable::BreakerOpen),
        "a sign-out that did not insist would have been pending"
    );
    let out = Box::pin(logout::handle(&env, this_device.on(sign_out("all")))).await;
    assert_eq!(out.status(), StatusCode::OK, "{}", body(&out));
    let pending: i64 = rig
        .w
        .db
        .client()
        .await
        .query_one("SELECT count(*) FROM sessions WHERE cache_pending", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 0, "nothing left for a sweep");
    assert_eq!(
        read(&elsewhere, &other_device, &me).await,
        StatusCode::UNAUTHORIZED,
        "refused by Redis in an environment that saw nothing"
    );
}
both_modes!(a_sign_out_right_after_an_outage_is_not_pending);

/// One user's reconnects do not hold back another user's frames beyond a
/// bound (issue 28): eight sockets of one sign-in reconnect at once, each
/// resuming a wallet 100 versions back (800 catch-up posts, 5 ms each at
/// the gateway: four seconds of work in one lane); another user's balance
/// frame, written right after, arrives within the catch-ups' slice of a
/// batch (`WS_CATCH_UP_SLICE_MS`, 250 ms) and a post — and each
/// reconnecting socket still receives every missed version, in order,
/// then nothing twice. The broken form — catch-ups without a slice (ten
/// seconds) — makes the other user's frame wait for all of them, which the
/// same measurement shows (at least twice as long).
async fn one_users_reconnects_do_not_hold_back_anothers_frames(mode: RedisMode) {
    let mut waited = Vec::new();
    for broken in [false, true] {
        let slice = if broken { "10000" } else { "250" };
        let rig = Rig::with(mode, &[("WS_CATCH_UP_SLICE_MS", slice)]).await;
        let (mine, theirs) = (random_uuid(), random_uuid());
        insert_wallet(&rig.w.db, 1, &mine, "USD", 10_000).await;
        insert_wallet(&rig.w.db, 2, &theirs, "USD", 10_000).await;
        let (mine_w, theirs_w) = (
            WalletId::parse(&mine).unwrap(),
            WalletId::parse(&theirs).unwrap(),
        );
        let mut last = 1;
        for k in 0..110 {
            last = write_until_applied(&rig.app, &mine_w, 1_000 + k).await;
        }
        let seen = last - 100;
        let t_mine = rig.token(1).await;
        let t_theirs = rig.token(2).await;
        let mut other = rig.connect(&t_theirs).await;
        rig.control("latency?ms=5").await;
        let sender = rig.spawn_sender(rig.sender(5).await);
        let mut back = Vec::new();
        for _ in 0..8 {
            back.push(
                rig.connect_with(&t_mine, &format!("&resume={mine}:{seen}"))
                    .await,
            );
        }
        let t0 = Instant::now();
        let v = write_until_applied(&rig.app, &theirs_w, 2_000).await;
        let f = paycache_tests::realtime::frame_where(&mut other, Duration::from_secs(30), |f| {
            f["type"] == "balance_update"
        })
        .await
        .expect("the other user's frame arrives");
        assert_eq!(f["version"], v);
        waited.push(t0.elapsed());
        if !broken {
            let missed = usize::try_from(last - seen).unwrap();
            for ws in &mut back {
                let got = versions_until(ws, missed, Duration::from_secs(90)).await;
                assert_eq!(
                    got,
                    ((seen + 1)..=last).collect::<Vec<u64>>(),
                    "every missed version, in order, once"
                );
            }
        }
        sender.abort();
    }
    println!(
        "{mode:?}: another user's frame during 8 reconnects' catch-ups: {:.0} ms (sliced), {:.0} ms (broken: unsliced)",
        waited[0].as_secs_f64() * 1000.0,
        waited[1].as_secs_f64() * 1000.0
    );
    assert!(
        waited[0] * 2 < waited[1],
        "the slice bounds the delay: {waited:?}"
    );
}
both_modes!(one_users_reconnects_do_not_hold_back_anothers_frames);

/// A reconnect that missed more than `WS_CATCH_UP_MAX` versions receives a
/// `resync` (read the balance over HTTP) instead of the versions, then the
/// new ones. The broken form — no cap (10,000) — posts all 150, which the
/// same count sees.
async fn a_catch_up_past_its_cap_is_a_resync(mode: RedisMode) {
    for broken in [false, true] {
        let cap = if broken { "10000" } else { "100" };
        let rig = Rig::with(mode, &[("WS_CATCH_UP_MAX", cap)]).await;
        let wallet = random_uuid();
        insert_wallet(&rig.w.db, 1, &wallet, "USD", 10_000).await;
        let w = WalletId::parse(&wallet).unwrap();
        for k in 0..150 {
            write_until_applied(&rig.app, &w, 1_000 + k).await;
        }
        let token = rig.token(1).await;
        let sender = rig.spawn_sender(rig.sender(5).await);
        let mut ws = rig
            .connect_with(&token, &format!("&resume={wallet}:0"))
            .await;
        let mut frames = Vec::new();
        while let Some(f) = next_frame(&mut ws, Duration::from_secs(3)).await {
            frames.push(f);
        }
        let updates = frames
            .iter()
            .filter(|f| f["type"] == "balance_update")
            .count();
        if broken {
            assert_eq!(updates, 150, "the broken form sends them all");
        } else {
            assert_eq!(frames.len(), 1, "{frames:?}");
            assert_eq!(frames[0]["type"], "resync");
            assert_eq!(frames[0]["after_version"], 0);
            let next = write_until_applied(&rig.app, &w, 9_999).await;
            assert_eq!(versions(&mut ws, Duration::from_secs(3)).await, [next]);
        }
        sender.abort();
    }
}
both_modes!(a_catch_up_past_its_cap_is_a_resync);
