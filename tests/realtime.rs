//! Real-time delivery (`paycache::delivery`, `ws-sender`) end to end through
//! the local WebSocket gateway (`paycache-ws-gateway`) with real WebSocket
//! clients, real Redis (both modes) and PostgreSQL. The gateway runs
//! `$connect` through the same authorizer and `ws-connections` handlers the
//! functions run (in-process here; through `cargo lambda watch` in
//! `make run` and the e2e journey), and the sender posts through the AWS
//! SDK to the gateway's `@connections` API.
//!
//! Each guarantee is also run in a broken form through the same check,
//! which must catch it: an alternative design (`delivery::Variants`,
//! compiled for tests only: a sender without leases, one without the
//! sign-in check), what a broken sender would leave behind, done by the
//! test itself (a cursor moved early, progress dropped, marks cleared, an
//! entry acknowledged on fetch), or no retries. The one-line inversions
//! (a size check skipped, a gone connection kept, a catch-up dropped) are
//! mutation testing's (docs/guarantees.md).
#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use paycache::App;
use paycache::balance::{BalanceWrite, WriteOutcome, load_balance, write_balance};
use paycache::config::RedisMode;
use paycache::delivery::{self, Sender, Variants};
use paycache::keys::{ConnectionId, UserId, WalletId};
use paycache::money::Currency;
use paycache::realtime;
use paycache_tests::both_modes;
use serde_json::{Value, json};
use test_support::{insert_transaction, insert_user, insert_wallet, random_uuid, seed_user_id};
use time::OffsetDateTime;
use tokio_tungstenite::tungstenite::Message;

use paycache_tests::realtime::{Rig, Ws, frame_where, http_post, hyper_client, next_frame};

fn profile_updated(user: &str) -> Value {
    json!({"detail-type": "UserProfileUpdated", "source": "paycache.test", "detail": {"user_id": user}})
}

pub(crate) async fn write_until_applied(app: &App, wallet: &WalletId, minor: i64) -> u64 {
    loop {
        let current = load_balance(&app.db, wallet).await.unwrap().unwrap();
        let outcome = write_balance(
            &app.balances,
            &BalanceWrite {
                wallet: *wallet,
                balance_minor: minor,
                currency: Currency::parse("USD").unwrap(),
                expected_version: current.version,
                idempotency_key: None,
                actor: None,
            },
        )
        .await;
        // A 503 (Redis slow on a busy machine: no fence, nothing written)
        // is retried, as a client would.
        let Ok(outcome) = outcome else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        match outcome {
            WriteOutcome::Applied { balance, .. } => return balance.version,
            WriteOutcome::VersionConflict { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Sign in, connect twice, write the balance 200 times (four writers at
/// once) → both connections receive every version, in order.
async fn every_balance_version_reaches_every_connection_in_order(mode: RedisMode) {
    let rig = Rig::new(mode).await;
    let wallet_id = random_uuid();
    insert_wallet(&rig.w.db, 1, &wallet_id, "USD", 10_000).await;
    let wallet = WalletId::parse(&wallet_id).unwrap();
    let token = rig.token(1).await;
    let mut a = rig.connect(&token).await;
    let mut b = rig.connect(&token).await;
    let sender = rig.spawn_sender(rig.sender(5).await);

    let writers: Vec<_> = (0..4)
        .map(|i| {
            let app = rig.app.clone();
            tokio::spawn(async move {
                let mut versions = Vec::new();
                for k in 0..50 {
                    versions.push(write_until_applied(&app, &wallet, 10_000 + i * 100 + k).await);
                }
                versions
            })
        })
        .collect();
    let mut written = Vec::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    written.sort_unstable();
    assert_eq!(written, (2..=201).collect::<Vec<u64>>());

    for ws in [&mut a, &mut b] {
        let mut seen = HashSet::new();
        let mut order = Vec::new();
        while order.len() < 200 {
            let Some(f) = next_frame(ws, Duration::from_secs(10)).await else {
                panic!("only {} of 200 versions arrived: {order:?}", order.len());
            };
            assert_eq!(f["channel"], format!("balance:{wallet_id}"), "{f}");
            assert_eq!(f["type"], "balance_update");
            let id = f["id"].as_str().unwrap().to_owned();
            if seen.insert(id) {
                order.push(f["version"].as_u64().unwrap());
            }
        }
        assert_eq!(
            order,
            (2..=201).collect::<Vec<u64>>(),
            "every version, in order"
        );
    }
    sender.abort();
}
both_modes!(every_balance_version_reaches_every_connection_in_order);

/// A socket lives no longer than its sign-in: once its session has ended
/// (idled out: no sign-out took it out of the registry) or its token has
/// expired, no frame is posted to it, it is closed (the client sees the
/// close) and pruned; the user's socket of a live sign-in still gets every
/// frame. The sign-in check costs one round-trip time per batch. The
/// broken variant — a sender that does not check (every registered
/// connection gets the frames) — delivers to the dead sockets, which the
/// same check sees.
async fn a_socket_lives_no_longer_than_its_sign_in(mode: RedisMode) {
    for broken in [false, true] {
        let rig = Rig::new(mode).await;
        let wallet_id = random_uuid();
        insert_wallet(&rig.w.db, 1, &wallet_id, "USD", 10_000).await;
        let wallet = WalletId::parse(&wallet_id).unwrap();
        let uid = UserId::parse(&seed_user_id(1)).unwrap();
        let (live_token, _) = rig.token_for(1, 600).await;
        let (idle_token, idle) = rig.token_for(1, 600).await;
        let (short_token, _) = rig.token_for(1, 2).await;
        let mut live = rig.connect(&live_token).await;
        let mut idled = rig.connect(&idle_token).await;
        let mut expired = rig.connect(&short_token).await;
        // The idle session ends without a sign-out; the short token expires.
        rig.w.idle_out(&idle).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let variant = Variants {
            no_sign_in_check: broken,
            ..Variants::default()
        };
        let sender = rig.spawn_sender(rig.sender(5).await.with_variants(variant));
        let version = write_until_applied(&rig.app, &wallet, 4_242).await;
        let got = next_frame(&mut live, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(got["version"], version, "{got}");
        for (name, ws) in [("idled", &mut idled), ("expired", &mut expired)] {
            let frame = next_frame(ws, Duration::from_millis(1500)).await;
            if broken {
                assert!(
                    frame.is_some(),
                    "the broken sender posts to the {name} socket"
                );
            } else {
                assert!(frame.is_none(), "{name}: {frame:?}");
            }
        }
        sender.abort();
        if !broken {
            // Both dead sockets were closed and pruned; the live one stays.
            for ws in [&mut idled, &mut expired] {
                let closed = tokio::time::timeout(Duration::from_secs(5), async {
                    loop {
                        match ws.next().await {
                            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break true,
                            Some(Ok(_)) => continue,
                        }
                    }
                })
                .await
                .unwrap_or(false);
                assert!(closed, "a dead sign-in's socket is closed");
            }
            assert_eq!(
                realtime::connections(&rig.app.connections, &uid)
                    .await
                    .unwrap()
                    .len(),
                1
            );
            assert_eq!(rig.gateway.connection_ids().await.len(), 1);
        }
    }
}
both_modes!(a_socket_lives_no_longer_than_its_sign_in);

/// A completed transaction's status reaches both parties' connections; an
/// announcement reaches every connection; a fraud alert reaches none (it is
/// for the fraud team's subscribers on `fraud:<user_id>`).
async fn transactions_announcements_and_fraud(mode: RedisMode) {
    let rig = Rig::new(mode).await;
    let (wa, wb) = (random_uuid(), random_uuid());
    insert_wallet(&rig.w.db, 1, &wa, "USD", 10_000).await;
    insert_wallet(&rig.w.db, 2, &wb, "USD", 10_000).await;
    let txn = random_uuid();
    insert_transaction(&rig.w.db, &txn, &wa, &wb, 2_500, "completed").await;
    let (ta, tb) = (rig.token(1).await, rig.token(2).await);
    let mut a1 = rig.connect(&ta).await;
    let mut a2 = rig.connect(&ta).await;
    let mut b1 = rig.connect(&tb).await;
    let sender = rig.spawn_sender(rig.sender(5).await);

    // A fraud alert for user 1 first: it must not reach user 1's sockets.
    let fraud_channel = format!("fraud:{}", seed_user_id(1));
    let u1 = UserId::parse(&seed_user_id(1)).unwrap();
    paycache::fraud::set_risk_score(&rig.app.fraud, &u1, 99, &["new_device"])
        .await
        .unwrap();
    // Reading a score at or above the threshold publishes the alert.
    let mut fraud_sub = paycache_tests::subscribe(&rig.w.redis, &fraud_channel).await;
    paycache::fraud::risk(&rig.app.fraud, &u1).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), fraud_sub.next())
            .await
            .is_ok(),
        "the fraud team's subscriber got the alert"
    );

    rig.invalidate(
        json!({"detail-type": "TransactionCompleted", "source": "paycache.test",
        "detail": {"transaction_id": txn, "sender_wallet_id": wa, "receiver_wallet_id": wb}}),
    )
    .await;
    for ws in [&mut a1, &mut a2, &mut b1] {
        let f = next_frame(ws, Duration::from_secs(10)).await.unwrap();
        assert_ne!(
            f["channel"], fraud_channel,
            "a fraud alert reached the user: {f}"
        );
        assert_eq!(f["channel"], format!("transactions:{txn}"), "{f}");
        assert_eq!(f["type"], "status_update");
        assert_eq!(f["status"], "completed");
        assert!(f["id"].as_str().is_some_and(|i| !i.is_empty()));
        assert!(f["timestamp"].as_f64().is_some());
    }
    rig.invalidate(
        json!({"detail-type": "SystemAnnouncement", "source": "payments.operations",
        "detail": {"message": "maintenance at 03:00 UTC"}}),
    )
    .await;
    let mut ids = HashSet::new();
    for ws in [&mut a1, &mut a2, &mut b1] {
        let f = next_frame(ws, Duration::from_secs(10)).await.unwrap();
        assert_eq!(f["channel"], "system:announcements", "{f}");
        assert_eq!(f["type"], "announcement");
        assert_eq!(f["message"], "maintenance at 03:00 UTC");
        ids.insert(f["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "one message, one id on every connection");
    sender.abort();
}
both_modes!(transactions_announcements_and_fraud);

/// A connection API Gateway lost without `$disconnect` is pruned the first
/// time a post answers 410; after that, nobody connected means no
/// management calls at all. (The broken form — a sender that keeps a gone
/// connection — is left to mutation testing.)
async fn gone_connections_are_pruned(mode: RedisMode) {
    let rig = Rig::new(mode).await;
    let user = insert_user(&rig.w.db, 1).await;
    let uid = UserId::parse(&user).unwrap();
    let token = rig.token(1).await;
    let _ws = rig.connect(&token).await;
    let ids = rig.gateway.connection_ids().await;
    assert_eq!(ids.len(), 1);
    let forget = format!(
        "{}/_gateway/forget/{}",
        rig.gateway.management_url(),
        ids[0]
    );
    http_post(&forget).await;
    let mut sender = rig.sender(5).await;
    let mut calls = Vec::new();
    for _ in 0..2 {
        let before = rig.gateway.management_calls();
        rig.invalidate(profile_updated(&user)).await;
        drain(&rig, &mut sender, 1).await;
        calls.push(rig.gateway.management_calls() - before);
    }
    // Read raw (the helper filters dead connections itself): the user's
    // registry and the connection's `ws_all` shard.
    let mut raw = rig.w.redis.raw().await;
    let mut registered: Vec<String> = redis::cmd("HKEYS")
        .arg(rig.app.keys.ws_connections(&uid).as_str())
        .query_async(&mut raw)
        .await
        .unwrap();
    let conn = ConnectionId::parse(&ids[0]).unwrap();
    let in_all: bool = redis::cmd("HEXISTS")
        .arg(rig.app.keys.ws_all(realtime::shard_of(&conn)))
        .arg(&ids[0])
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(!in_all, "ws_all");
    registered.retain(|c| c == &ids[0]);
    assert!(registered.is_empty(), "pruned after the first 410");
    assert_eq!(calls, [1, 0], "then nobody connected: no management calls");
}
both_modes!(gone_connections_are_pruned);

/// Fetches and delivers until `entries` entries were handled.
async fn drain(rig: &Rig, sender: &mut Sender, entries: u64) -> delivery::Report {
    let mut total = delivery::Report::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    delivery::ensure_groups(&rig.app.deliveries).await.unwrap();
    while total.entries + total.failed < entries && Instant::now() < deadline {
        let (batch, _) = delivery::fetch(&rig.app.deliveries, sender).await.unwrap();
        let r = delivery::deliver(&rig.app.deliveries, sender, &batch).await;
        total.add(&r);
    }
    total
}

/// Throttled posts (429 `LimitExceededException`) are retried with backoff
/// and jitter until they go through; without retries the message does not
/// arrive (its entry stays pending).
async fn throttled_posts_are_retried(mode: RedisMode) {
    for attempts in [5, 1] {
        let rig = Rig::new(mode).await;
        let user = insert_user(&rig.w.db, 1).await;
        let token = rig.token(1).await;
        let mut ws = rig.connect(&token).await;
        let id = rig.gateway.connection_ids().await.remove(0);
        let url = format!(
            "{}/_gateway/throttle/{id}?count=3",
            rig.gateway.management_url()
        );
        http_post(&url).await;
        let mut sender = rig.sender(attempts).await;
        rig.invalidate(profile_updated(&user)).await;
        let report = drain(&rig, &mut sender, 1).await;
        let frame = next_frame(&mut ws, Duration::from_millis(500)).await;
        if attempts > 1 {
            assert_eq!(report.sent, 1, "{report:?}");
            assert_eq!(frame.unwrap()["type"], "profile_updated");
            assert_eq!(rig.gateway.management_calls(), 4, "3 throttled + 1");
        } else {
            assert_eq!((report.sent, report.failed), (0, 1), "{report:?}");
            assert!(frame.is_none(), "no retries: the message did not arrive");
        }
    }
}
both_modes!(throttled_posts_are_retried);

/// A frame over 32 KB is replaced by a `message_too_large` notice (sent as
/// is — the broken form, left to mutation testing — API Gateway refuses it
/// with 413 and nothing arrives).
async fn oversize_messages_become_a_notice(mode: RedisMode) {
    let rig = Rig::new(mode).await;
    insert_user(&rig.w.db, 1).await;
    let token = rig.token(1).await;
    let mut ws = rig.connect(&token).await;
    let mut sender = rig.sender(5).await;
    let big = "x".repeat(40_000);
    rig.invalidate(
        json!({"detail-type": "SystemAnnouncement", "source": "payments.operations",
        "detail": {"message": big}}),
    )
    .await;
    let report = drain(&rig, &mut sender, 1).await;
    let f = next_frame(&mut ws, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(f["type"], "message_too_large", "{f}");
    assert_eq!(f["original_type"], "announcement");
    assert_eq!(f["channel"], "system:announcements");
    assert!(f["bytes"].as_u64().unwrap() > 32 * 1024);
    assert!(f["id"].as_str().is_some());
    assert_eq!(report.too_large, 1);
}
both_modes!(oversize_messages_become_a_notice);

/// A sender killed between fetching entries and sending them: another
/// sender takes them over after `WS_REDELIVER_AFTER_MS` and the message
/// arrives. The broken form — entries acknowledged as they are fetched
/// (here the doomed sender's fetch is followed by an `XACK`, as
/// `XREADGROUP … NOACK` would do) — loses it, which the same check sees.
async fn a_sender_killed_after_fetching_loses_nothing(mode: RedisMode) {
    for broken in [false, true] {
        let rig = Rig::new(mode).await;
        let user = insert_user(&rig.w.db, 1).await;
        let token = rig.token(1).await;
        let mut ws = rig.connect(&token).await;
        delivery::ensure_groups(&rig.app.deliveries).await.unwrap();
        rig.invalidate(profile_updated(&user)).await;
        {
            // The first sender fetches… and dies (dropped before sending).
            let mut doomed = rig.sender(5).await;
            let mut fetched = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            while fetched.is_empty() && Instant::now() < deadline {
                fetched = delivery::fetch(&rig.app.deliveries, &mut doomed)
                    .await
                    .unwrap()
                    .0;
            }
            assert_eq!(fetched.len(), 1, "the doomed sender fetched the entry");
            if broken {
                let mut raw = rig.w.redis.raw().await;
                for e in &fetched {
                    let _: i64 = redis::cmd("XACK")
                        .arg(rig.app.keys.ws_deliveries(e.partition))
                        .arg(delivery::GROUP)
                        .arg(&e.id)
                        .query_async(&mut raw)
                        .await
                        .unwrap();
                }
            }
        }
        let survivor = rig.spawn_sender(rig.sender(5).await);
        let frame = frame_where(&mut ws, Duration::from_secs(3), |f| {
            f["type"] == "profile_updated"
        })
        .await;
        survivor.abort();
        if broken {
            assert!(
                frame.is_none(),
                "acknowledged on fetch: the message is lost"
            );
        } else {
            assert!(frame.is_some(), "taken over and delivered");
        }
    }
}
both_modes!(a_sender_killed_after_fetching_loses_nothing);

/// Nobody connected: a balance write, a notification and a transaction
/// status are handled (acknowledged) without one post. A connection whose
/// sign-in is over (its session ended without `$disconnect`) is not
/// "connected": it gets no frame, only its close — the one management call.
async fn nobody_connected_costs_no_management_calls(mode: RedisMode) {
    let rig = Rig::new(mode).await;
    let wallet_id = random_uuid();
    insert_wallet(&rig.w.db, 1, &wallet_id, "USD", 10_000).await;
    let user = seed_user_id(1);
    let uid = UserId::parse(&user).unwrap();
    let stale = ConnectionId::parse("staleconn1=").unwrap();
    let signed = rig.w.sign_in(&user, &[]).await;
    let session = paycache::keys::SessionId::parse(&signed.session).unwrap();
    realtime::connect(
        &rig.app.connections,
        &realtime::SignedIn {
            user: uid,
            session: session.clone(),
            expires_at: OffsetDateTime::now_utc() + time::Duration::hours(1),
        },
        &stale,
        None,
        &[],
    )
    .await
    .unwrap();
    // The session idles out (no sign-out: the registry still lists it).
    rig.w.idle_out(&signed).await;
    let mut sender = rig.sender(5).await;
    write_until_applied(&rig.app, &WalletId::parse(&wallet_id).unwrap(), 5).await;
    rig.invalidate(profile_updated(&user)).await;
    let report = drain(&rig, &mut sender, 2).await;
    assert_eq!(report.entries, 2, "{report:?}");
    assert_eq!(report.sent, 0, "{report:?}");
    assert_eq!(report.closed + report.gone, 1, "{report:?}");
    assert_eq!(rig.gateway.management_calls(), 1, "the close only");
}
both_modes!(nobody_connected_costs_no_management_calls);

/// The gateway behaves as API Gateway's WebSocket API does for what the
/// project relies on: `$connect` refused without a valid token (no socket),
/// `ping` routed to `ws-connections`, other actions answered "Forbidden",
/// `$disconnect` on close, and the `@connections` API (200 while open, 410
/// after).
async fn the_gateway_routes_like_api_gateway(mode: RedisMode) {
    let rig = Rig::new(mode).await;
    insert_user(&rig.w.db, 1).await;
    let uid = UserId::parse(&seed_user_id(1)).unwrap();
    for (bad, refused) in [("", 401), ("?token=not.a.jwt", 403)] {
        let url = format!("{}{bad}", rig.gateway.ws_url());
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), refused, "{bad}")
            }
            other => panic!("{bad}: {:?}", other.map(|_| "accepted")),
        }
    }
    assert!(rig.gateway.connection_ids().await.is_empty());

    let token = rig.token(1).await;
    let mut ws = rig.connect(&token).await;
    let id = rig.gateway.connection_ids().await.remove(0);
    let conn = ConnectionId::parse(&id).unwrap();
    let before = realtime::meta(&rig.app.connections, &conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.user_id, uid, "$connect registered the token's user");
    tokio::time::sleep(Duration::from_millis(20)).await;
    futures_util::SinkExt::send(&mut ws, Message::Text(r#"{"action":"ping"}"#.into()))
        .await
        .unwrap();
    futures_util::SinkExt::send(&mut ws, Message::Text(r#"{"action":"transfer"}"#.into()))
        .await
        .unwrap();
    let answer = next_frame(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer["message"], "Forbidden", "no such route: {answer}");
    let after = realtime::meta(&rig.app.connections, &conn)
        .await
        .unwrap()
        .unwrap();
    assert!(
        after.last_ping > before.last_ping,
        "ping reached ws-connections"
    );

    // The management API answers signed requests only (as IAM does): the
    // same GET, unsigned, is refused; signed by the SDK, answered.
    let url = format!("{}/@connections/{id}", rig.gateway.management_url());
    let unsigned = |url: String| async move {
        let req = http::Request::get(url)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        hyper_client().request(req).await.unwrap().status()
    };
    assert_eq!(unsigned(url.clone()).await, 403, "unsigned");
    let sdk = management_client(&rig.gateway.management_url()).await;
    let status = |id: String| {
        let sdk = sdk.clone();
        async move {
            match sdk.get_connection().connection_id(id).send().await {
                Ok(_) => 200,
                Err(e) => e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0),
            }
        }
    };
    assert_eq!(status(id.clone()).await, 200);
    futures_util::SinkExt::close(&mut ws).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while realtime::meta(&rig.app.connections, &conn)
        .await
        .unwrap()
        .is_some()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        realtime::connections(&rig.app.connections, &uid)
            .await
            .unwrap()
            .is_empty(),
        "$disconnect ran on close"
    );
    assert_eq!(status(id).await, 410, "a closed connection is gone");
}
both_modes!(the_gateway_routes_like_api_gateway);

/// A run ends at its deadline, idle or not (a `ws-sender` invocation must
/// answer: the next scheduled run starts beside it only after its timeout).
async fn a_run_ends_on_time(mode: RedisMode) {
    let rig = Rig::new(mode).await;
    let mut sender = rig.sender(5).await;
    let started = Instant::now();
    let run = delivery::run(
        &rig.app.deliveries,
        &mut sender,
        Instant::now() + Duration::from_secs(1),
    );
    let report = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the run ended");
    assert_eq!(report, delivery::Report::default());
    assert!(started.elapsed() >= Duration::from_secs(1));
}
both_modes!(a_run_ends_on_time);

/// Two writers' queue entries can reach the stream in the opposite order of
/// their versions (each sends its own after its cache step). The wallet's
/// delivered cursor is set where versions are sequenced (`apply.lua`), so
/// delivery starts at the first version whatever entry comes first. The
/// broken variant — no cursor, start at the first entry's version — skips
/// the earlier version.
async fn queue_entries_out_of_order_skip_nothing(mode: RedisMode) {
    for broken in [false, true] {
        let rig = Rig::new(mode).await;
        let wallet_id = random_uuid();
        insert_wallet(&rig.w.db, 1, &wallet_id, "USD", 10_000).await;
        let wallet = WalletId::parse(&wallet_id).unwrap();
        let token = rig.token(1).await;
        let mut ws = rig.connect(&token).await;
        write_until_applied(&rig.app, &wallet, 1).await;
        write_until_applied(&rig.app, &wallet, 2).await;
        // Reverse the two queue entries (versions 2 and 3).
        let stream = rig
            .app
            .keys
            .ws_deliveries(rig.app.delivery.partition(&wallet_id));
        let mut raw = rig.w.redis.raw().await;
        let entries = raw.stream(&stream).await.unwrap();
        assert_eq!(entries.len(), 2);
        for (id, _) in &entries {
            let _: i64 = redis::cmd("XDEL")
                .arg(&stream)
                .arg(id)
                .query_async(&mut raw)
                .await
                .unwrap();
        }
        for (_, fields) in entries.iter().rev() {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&stream).arg("*");
            for (f, v) in fields {
                cmd.arg(f).arg(v);
            }
            let _: String = cmd.query_async(&mut raw).await.unwrap();
        }
        if broken {
            let _: i64 = redis::cmd("DEL")
                .arg(rig.app.keys.wallet_balance_delivered(&wallet))
                .query_async(&mut raw)
                .await
                .unwrap();
        }
        let mut sender = rig.sender(5).await;
        drain(&rig, &mut sender, 2).await;
        let mut versions = Vec::new();
        while let Some(f) = next_frame(&mut ws, Duration::from_millis(500)).await {
            versions.push(f["version"].as_u64().unwrap());
        }
        if broken {
            assert_eq!(versions, [3], "without the cursor, version 2 is skipped");
        } else {
            assert_eq!(versions, [2, 3], "every version, in order");
        }
    }
}
both_modes!(queue_entries_out_of_order_skip_nothing);

/// The SDK's management client for the local gateway (signed with the
/// test run's credentials, as `ws-sender`'s).
async fn management_client(endpoint: &str) -> aws_sdk_apigatewaymanagement::Client {
    let sdk = paycache::aws::sdk_config(Duration::from_secs(5)).await;
    let config = aws_sdk_apigatewaymanagement::config::Builder::from(sdk)
        .endpoint_url(endpoint)
        .build();
    aws_sdk_apigatewaymanagement::Client::from_conf(config)
}

/// The connection id the gateway gave the only open socket.
async fn only_connection(rig: &Rig) -> String {
    let ids = rig.gateway.connection_ids().await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0].clone()
}

/// Balance frames' versions until `wait` passes without one (repeats,
/// same `id`, dropped as a client drops them).
pub(crate) async fn versions(ws: &mut Ws, wait: Duration) -> Vec<u64> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    while let Some(f) = next_frame(ws, wait).await {
        if f["type"] == "balance_update" && seen.insert(f["id"].as_str().unwrap().to_owned()) {
            out.push(f["version"].as_u64().unwrap());
        }
    }
    out
}

/// The balance versions `ws` receives (each frame id once), until `want`
/// have come or `deadline` has passed — then half a second more, so that
/// a frame sent twice is seen. For a catch-up whose pace depends on the
/// machine: a busy one (a second build beside `make test`) once left a
/// connection ten seconds without a frame mid-catch-up.
pub(crate) async fn versions_until(ws: &mut Ws, want: usize, deadline: Duration) -> Vec<u64> {
    let end = Instant::now() + deadline;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    loop {
        let left = if out.len() >= want {
            Duration::from_millis(500)
        } else {
            end.saturating_duration_since(Instant::now())
        };
        if left.is_zero() {
            break;
        }
        let Some(f) = next_frame(ws, left).await else {
            break;
        };
        if f["type"] == "balance_update" && seen.insert(f["id"].as_str().unwrap().to_owned()) {
            out.push(f["version"].as_u64().unwrap());
        }
    }
    out
}

/// Moves a wallet's delivered cursor, as a broken sender would.
async fn set_delivered(rig: &Rig, wallet: &WalletId, version: u64) {
    let mut raw = rig.w.redis.raw().await;
    let _: () = redis::cmd("SET")
        .arg(rig.app.keys.wallet_balance_delivered(wallet))
        .arg(version)
        .query_async(&mut raw)
        .await
        .unwrap();
}

/// A sender killed while a **balance** post is in flight (the gateway
/// holds it; the sender is aborted; the held post is then dropped, as a
/// dead process's would be): the next sender takes the partition over and
/// the version arrives. The broken form — a sender that moves the wallet's
/// delivered cursor before posting (here the test moves it while the post
/// is in flight, as that sender would have) — loses the version, which the
/// same check sees.
async fn a_sender_killed_mid_balance_post_loses_no_version(mode: RedisMode) {
    for broken in [false, true] {
        let rig = Rig::new(mode).await;
        let wallet_id = random_uuid();
        insert_wallet(&rig.w.db, 1, &wallet_id, "USD", 10_000).await;
        let wallet = WalletId::parse(&wallet_id).unwrap();
        let token = rig.token(1).await;
        let mut ws = rig.connect(&token).await;
        let id = only_connection(&rig).await;
        rig.control(&format!("hold/{id}")).await;
        let doomed = rig.spawn_sender(rig.sender(5).await);
        let version = write_until_applied(&rig.app, &wallet, 777).await;
        assert!(rig.until_held(1).await, "the post is in flight");
        if broken {
            set_delivered(&rig, &wallet, version).await;
        }
        doomed.abort();
        let _ = doomed.await;
        rig.control(&format!("release/{id}")).await;
        let survivor = rig.spawn_sender(rig.sender(5).await);
        let got = versions(&mut ws, Duration::from_secs(4)).await;
        survivor.abort();
        if broken {
            assert!(got.is_empty(), "the cursor moved first: lost ({got:?})");
        } else {
            assert_eq!(got, [version], "taken over and delivered");
        }
    }
}
both_modes!(a_sender_killed_mid_balance_post_loses_no_version);

/// A balance post that fails (throttled past the sender's one attempt):
/// the wallet's cursor stays before the failed version and the retry
/// sends it — by itself, with no later write to carry it (a kick
/// acknowledged without its post would leave the wallet's last version
/// undelivered until the next write). The broken form — a sender that
/// moves the cursor past it (here the test moves it once the post has
/// failed, as that sender would have) — skips it: nothing arrives until
/// the next version, and then only that one.
async fn a_failed_balance_post_is_sent_again(mode: RedisMode) {
    for broken in [false, true] {
        let rig = Rig::new(mode).await;
        let wallet_id = random_uuid();
        insert_wallet(&rig.w.db, 1, &wallet_id, "USD", 10_000).await;
        let wallet = WalletId::parse(&wallet_id).unwrap();
        let token = rig.token(1).await;
        let mut ws = rig.connect(&token).await;
        let id = only_connection(&rig).await;
        rig.control(&format!("throttle/{id}?count=1")).await;
        let sender = rig.spawn_sender(rig.sender(1).await);
        let first = write_until_applied(&rig.app, &wallet, 1_001).await;
        if broken {
            let deadline = Instant::now() + Duration::from_secs(5);
            while rig.stats().await["statuses"]["429"] != 1 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            set_delivered(&rig, &wallet, first).await;
        }
        // The retry (after WS_REDELIVER_AFTER_MS), with no later write.
        let retried = versions(&mut ws, Duration::from_secs(3)).await;
        let second = write_until_applied(&rig.app, &wallet, 1_002).await;
        let next = versions(&mut ws, Duration::from_secs(3)).await;
        sender.abort();
        assert_eq!(
            rig.stats().await["statuses"]["429"],
            1,
            "the first post failed"
        );
        if broken {
            assert_eq!(
                (retried, next),
                (vec![], vec![second]),
                "the failed version was skipped"
            );
        } else {
            assert_eq!(
                (retried, next),
                (vec![first], vec![second]),
                "retried by itself, then the next version"
            );
        }
    }
}
both_modes!(a_failed_balance_post_is_sent_again);

/// A frame of exactly 32,768 bytes (API Gateway's limit) arrives intact;
/// one byte more is replaced by the `message_too_large` notice, and the
/// gateway refuses nothing (413s counted in its stats). Sent as is — the
/// broken form, left to mutation testing — it would be refused.
async fn frames_at_the_limit_arrive_and_over_it_become_a_notice(mode: RedisMode) {
    let rig = Rig::new(mode).await;
    let user = insert_user(&rig.w.db, 1).await;
    let uid = UserId::parse(&user).unwrap();
    let token = rig.token(1).await;
    let mut ws = rig.connect(&token).await;
    let mut sender = rig.sender(5).await;
    let to = delivery::Recipients::Users(vec![uid]);
    // {"channel":"notifications:<user>","id":"<uuid>","pad":"…","type":"t"}
    let empty = delivery::frame(
        &random_uuid(),
        &format!("notifications:{user}"),
        &json!({"type": "t", "pad": ""}),
    )
    .unwrap()
    .len();
    for extra in [0, 1] {
        let pad = "x".repeat(delivery::FRAME_LIMIT - empty + extra);
        rig.app
            .delivery
            .message(
                &format!("notifications:{user}"),
                &to,
                &json!({"type": "t", "pad": pad}),
            )
            .await
            .unwrap();
    }
    let report = drain(&rig, &mut sender, 2).await;
    let at_limit = next_frame(&mut ws, Duration::from_secs(2)).await.unwrap();
    assert_eq!(at_limit["type"], "t");
    assert_eq!(
        at_limit.to_string().len(),
        delivery::FRAME_LIMIT,
        "32,768 bytes, intact"
    );
    let over = next_frame(&mut ws, Duration::from_millis(500)).await;
    let refused = rig.stats().await["statuses"]["413"].as_u64().unwrap_or(0);
    let f = over.unwrap();
    assert_eq!(f["type"], "message_too_large", "{f}");
    assert_eq!(f["bytes"], delivery::FRAME_LIMIT + 1);
    assert_eq!(refused, 0);
    assert_eq!(report.too_large, 1, "{report:?}");
}
both_modes!(frames_at_the_limit_arrive_and_over_it_become_a_notice);

/// Two senders at once, one user's messages in quick succession, each
/// post held until the next message was published: the user's partition
/// is leased to one sender, so the connection receives them in publication
/// order. The broken variant (no leases: both senders read the partition)
/// hands consecutive messages to different senders, whose held posts are
/// released together — the order is lost in some round.
async fn two_senders_keep_each_connections_order(mode: RedisMode) {
    for broken in [false, true] {
        let rig = Rig::new(mode).await;
        let user = insert_user(&rig.w.db, 1).await;
        let uid = UserId::parse(&user).unwrap();
        let token = rig.token(1).await;
        let mut ws = rig.connect(&token).await;
        let id = only_connection(&rig).await;
        let variant = Variants {
            no_leases: broken,
            ..Variants::default()
        };
        let a = rig.spawn_sender(rig.sender(5).await.with_variants(variant));
        let b = rig.spawn_sender(rig.sender(5).await.with_variants(variant));
        // Both senders have taken their share.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let to = delivery::Recipients::Users(vec![uid]);
        let mut inversions = 0;
        for round in 0..8 {
            rig.control(&format!("hold/{id}")).await;
            for k in 0..2 {
                rig.app
                    .delivery
                    .message(
                        &format!("notifications:{user}"),
                        &to,
                        &json!({"type": "n", "seq": round * 2 + k}),
                    )
                    .await
                    .unwrap();
                // The first is held before the second is published; the
                // second reaches the gateway only if another sender read it.
                if k == 0 {
                    assert!(rig.until_held(1).await);
                } else {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
            }
            rig.control(&format!("release/{id}?deliver=1")).await;
            let mut seqs = Vec::new();
            while seqs.len() < 2 {
                let Some(f) = next_frame(&mut ws, Duration::from_secs(5)).await else {
                    break;
                };
                seqs.push(f["seq"].as_u64().unwrap());
            }
            assert_eq!(seqs.len(), 2, "round {round}: {seqs:?}");
            if seqs[0] > seqs[1] {
                inversions += 1;
            }
        }
        a.abort();
        b.abort();
        if broken {
            assert!(inversions > 0, "without leases the order is lost");
        } else {
            assert_eq!(inversions, 0, "one sender per partition: in order");
        }
    }
}
both_modes!(two_senders_keep_each_connections_order);

/// `n` registered connections (`sink…` ids: the gateway accepts and counts
/// their posts) of one signed-in user, all in registry shard 0.
async fn sinks(rig: &Rig, n: usize) -> Vec<String> {
    let user = seed_user_id(1);
    let signed = rig.w.sign_in(&user, &[]).await;
    let by = realtime::SignedIn {
        user: UserId::parse(&user).unwrap(),
        session: paycache::keys::SessionId::parse(&signed.session).unwrap(),
        expires_at: OffsetDateTime::now_utc() + time::Duration::hours(1),
    };
    let mut ids = Vec::new();
    let mut k = 0u32;
    while ids.len() < n {
        k += 1;
        let id = format!("sink{k:06}=");
        let conn = ConnectionId::parse(&id).unwrap();
        if realtime::shard_of(&conn) != 0 {
            continue;
        }
        realtime::connect(&rig.app.connections, &by, &conn, None, &[])
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

/// Deletes every announcement's progress (`ws_fanout:…`: the checkpoint
/// and the retry list), as a sender that keeps none would leave it.
async fn drop_fanout_progress(rig: &Rig) {
    let mut raw = rig.w.redis.raw().await;
    for key in rig.w.keys().await {
        if key.contains(":ws_fanout:") {
            let _: i64 = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut raw)
                .await
                .unwrap();
        }
    }
}

/// Sinks are many connections of one sign-in: past the limits a person
/// meets (`WS_MAX_CONNECTIONS_PER_*`).
const MANY: (&str, &str) = ("WS_MAX_CONNECTIONS_PER_SESSION", "1000");
const MANY_USER: (&str, &str) = ("WS_MAX_CONNECTIONS_PER_USER", "1000");

/// Posts per sink id so far.
async fn sink_counts(rig: &Rig) -> HashMap<String, u64> {
    let stats = rig.stats_of("stats?sink=1").await;
    stats["sink"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

fn announce_event() -> Value {
    json!({"detail-type": "SystemAnnouncement", "source": "payments.operations",
           "detail": {"message": "maintenance at 02:00"}})
}

/// An announcement to 400 connections, read 20 at a time and posted 4 at
/// a time with 5 ms per post: the sender is killed half-way, and the next
/// one resumes at the last checkpoint — every connection receives it, and
/// no more than a page and the posts in flight twice. The broken form — a
/// sender that keeps no checkpoint (here the test drops the progress when
/// the first sender dies) — starts again from the first connection, and
/// about half of them receive it twice.
async fn an_announcement_resumes_where_a_dead_sender_stopped(mode: RedisMode) {
    for broken in [false, true] {
        let rig = Rig::with(
            mode,
            &[
                ("WS_FANOUT_PAGE", "20"),
                ("WS_FAN_OUT", "4"),
                MANY,
                MANY_USER,
            ],
        )
        .await;
        insert_user(&rig.w.db, 1).await;
        let ids = sinks(&rig, 400).await;
        rig.control("latency?ms=5").await;
        let doomed = rig.spawn_sender(rig.sender(5).await.with_fan_out(4));
        rig.invalidate(announce_event()).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while sink_counts(&rig).await.len() < 200 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        doomed.abort();
        let _ = doomed.await;
        if broken {
            drop_fanout_progress(&rig).await;
        }
        let survivor = rig.spawn_sender(rig.sender(5).await.with_fan_out(4));
        let deadline = Instant::now() + Duration::from_secs(30);
        while sink_counts(&rig).await.len() < ids.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        survivor.abort();
        let counts = sink_counts(&rig).await;
        assert_eq!(counts.len(), ids.len(), "every connection received it");
        let twice: u64 = counts.values().map(|n| n - 1).sum();
        if broken {
            assert!(
                twice >= 150,
                "no checkpoint: sent again from the start ({twice})"
            );
        } else {
            // One page (HSCAN's COUNT is a hint: a few more) and the posts
            // in flight.
            assert!(twice <= 40, "at most about a page twice: {twice}");
        }
    }
}
both_modes!(an_announcement_resumes_where_a_dead_sender_stopped);

/// A sender has at most its fan-out (`WS_FAN_OUT`) Management API calls in
/// flight, across its lanes and the registry's shards: an announcement to
/// 120 connections at 20 ms a post never has more than 4 posts at the
/// gateway at once — and has 4 (the bound is what limits it, not the
/// load). Without the bound, the shards' pages would be posted at once.
async fn a_sender_posts_at_most_its_fan_out_at_once(mode: RedisMode) {
    let rig = Rig::with(
        mode,
        &[
            ("WS_FANOUT_PAGE", "20"),
            ("WS_FAN_OUT", "4"),
            MANY,
            MANY_USER,
        ],
    )
    .await;
    insert_user(&rig.w.db, 1).await;
    let ids = sinks(&rig, 120).await;
    rig.control("latency?ms=20").await;
    let sender = rig.spawn_sender(rig.sender(5).await.with_fan_out(4));
    rig.invalidate(announce_event()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink_counts(&rig).await.len() < ids.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sender.abort();
    assert_eq!(sink_counts(&rig).await.len(), ids.len(), "every connection");
    let most = rig.stats().await["most_posts_in_flight"].as_u64().unwrap();
    assert_eq!(most, 4, "posts in flight at once, fan-out 4");
}
both_modes!(a_sender_posts_at_most_its_fan_out_at_once);

/// An announcement whose post to one connection fails (throttled past the
/// sender's single attempt): the retry posts to that connection only.
/// (The broken form — the whole shard again on a failure — is mutation
/// testing's: the retry follows the failure within milliseconds, too soon
/// for the test to stand in for it.)
async fn an_announcement_retries_only_the_failed_post(mode: RedisMode) {
    let rig = Rig::with(mode, &[("WS_FANOUT_PAGE", "20"), MANY, MANY_USER]).await;
    insert_user(&rig.w.db, 1).await;
    let ids = sinks(&rig, 150).await;
    // The connection to fail: the one the shard's pages reach last (in id
    // order), after every other page was sent once.
    let failing = ids.iter().max().unwrap();
    rig.control(&format!("throttle/{failing}?count=1")).await;
    let sender = rig.spawn_sender(rig.sender(1).await);
    rig.invalidate(announce_event()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sink_counts(&rig).await.len() < ids.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The retry has happened (WS_REDELIVER_AFTER_MS 500 ms).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sender.abort();
    let counts = sink_counts(&rig).await;
    assert_eq!(counts.len(), ids.len(), "every connection received it");
    let posts: u64 = counts.values().sum();
    assert_eq!(posts, ids.len() as u64, "each connection once");
    assert_eq!(rig.stats().await["statuses"]["429"], 1);
}
both_modes!(an_announcement_retries_only_the_failed_post);

/// A client that reconnects with the last version it saw receives what it
/// missed from the wallet's log, in order, then new versions; one whose
/// gap is older than the log first receives a `resync` frame. (The broken
/// form — the catch-up dropped — is left to mutation testing.)
async fn a_reconnect_catches_up_without_a_gap(mode: RedisMode) {
    let rig = Rig::new(mode).await;
    let wallet_id = random_uuid();
    insert_wallet(&rig.w.db, 1, &wallet_id, "USD", 10_000).await;
    let wallet = WalletId::parse(&wallet_id).unwrap();
    let token = rig.token(1).await;
    let sender = rig.spawn_sender(rig.sender(5).await);
    let mut ws = rig.connect(&token).await;
    let mut written = Vec::new();
    for k in 0..3 {
        written.push(write_until_applied(&rig.app, &wallet, 100 + k).await);
    }
    assert_eq!(versions(&mut ws, Duration::from_secs(2)).await, written);
    let seen = *written.last().unwrap();
    futures_util::SinkExt::close(&mut ws).await.unwrap();
    drop(ws);
    // Away: three more versions.
    let mut missed = Vec::new();
    for k in 0..3 {
        missed.push(write_until_applied(&rig.app, &wallet, 200 + k).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut back = rig
        .connect_with(&token, &format!("&resume={wallet_id}:{seen}"))
        .await;
    let after = write_until_applied(&rig.app, &wallet, 300).await;
    let got = versions(&mut back, Duration::from_secs(2)).await;
    let mut want = missed.clone();
    want.push(after);
    assert_eq!(got, want, "what was missed, in order, then new versions");
    // A gap older than the log: a resync frame first.
    let mut raw = rig.w.redis.raw().await;
    let _: i64 = redis::cmd("XTRIM")
        .arg(rig.app.keys.wallet_balance_log(&wallet))
        .arg("MAXLEN")
        .arg(1)
        .query_async(&mut raw)
        .await
        .unwrap();
    let mut old = rig
        .connect_with(&token, &format!("&resume=balance:{wallet_id}:1"))
        .await;
    let first = next_frame(&mut old, Duration::from_secs(3)).await.unwrap();
    assert_eq!(first["type"], "resync", "{first}");
    assert_eq!(first["wallet_id"], wallet_id);
    assert_eq!(first["after_version"], 1);
    assert_eq!(first["oldest_version"], after);
    assert_eq!(first["channel"], format!("balance:{wallet_id}"));
    let next = next_frame(&mut old, Duration::from_secs(3)).await.unwrap();
    assert_eq!(next["version"], after, "then what the log holds");
    sender.abort();
}
both_modes!(a_reconnect_catches_up_without_a_gap);

/// A reconnect that missed more versions than one read of the wallet log
/// returns (80: a page is 64, the cap `WS_CATCH_UP_MAX` 100) receives
/// every one of them, in order, across the page boundary — none skipped,
/// none twice — and then the next new version.
async fn a_reconnect_missing_more_than_a_page_catches_up(mode: RedisMode) {
    let rig = Rig::new(mode).await;
    let wallet_id = random_uuid();
    insert_wallet(&rig.w.db, 1, &wallet_id, "USD", 10_000).await;
    let wallet = WalletId::parse(&wallet_id).unwrap();
    let token = rig.token(1).await;
    let sender = rig.spawn_sender(rig.sender(5).await);
    let seen = write_until_applied(&rig.app, &wallet, 100).await;
    let mut missed = Vec::new();
    for k in 0..80 {
        missed.push(write_until_applied(&rig.app, &wallet, 1_000 + k).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut back = rig
        .connect_with(&token, &format!("&resume={wallet_id}:{seen}"))
        .await;
    let got = versions(&mut back, Duration::from_secs(3)).await;
    assert_eq!(got.len(), missed.len(), "every missed version: {got:?}");
    assert_eq!(got, missed, "in order, across the page boundary");
    let after = write_until_applied(&rig.app, &wallet, 5_000).await;
    assert_eq!(versions(&mut back, Duration::from_secs(3)).await, [after]);
    sender.abort();
}
both_modes!(a_reconnect_missing_more_than_a_page_catches_up);

/// A reconnect's catch-up and a new version queued before it: the new
/// version's kick is read first (it was queued before the `$connect`), but
/// the connection is still catching up on the wallet, so the kick skips it
/// and the catch-up sends everything in order. The broken form — a sender
/// that ignores the catch-up marks (here the test clears them after the
/// `$connect`) — sends the new version before the versions it missed.
async fn new_frames_wait_for_a_reconnects_catch_up(mode: RedisMode) {
    for broken in [false, true] {
        let rig = Rig::new(mode).await;
        let wallet_id = random_uuid();
        insert_wallet(&rig.w.db, 1, &wallet_id, "USD", 10_000).await;
        let wallet = WalletId::parse(&wallet_id).unwrap();
        let token = rig.token(1).await;
        let seen = load_balance(&rig.app.db, &wallet)
            .await
            .unwrap()
            .unwrap()
            .version;
        let mut sender = rig.sender(5).await;
        // Missed while away (delivered to nobody: the cursor moves on).
        let missed = [
            write_until_applied(&rig.app, &wallet, 11).await,
            write_until_applied(&rig.app, &wallet, 12).await,
        ];
        drain(&rig, &mut sender, 2).await;
        // A new version queued, then the reconnect.
        let new = write_until_applied(&rig.app, &wallet, 13).await;
        let mut ws = rig
            .connect_with(&token, &format!("&resume={wallet_id}:{seen}"))
            .await;
        if broken {
            let mut raw = rig.w.redis.raw().await;
            let _: i64 = redis::cmd("DEL")
                .arg(
                    rig.app
                        .keys
                        .ws_resume(&UserId::parse(&seed_user_id(1)).unwrap()),
                )
                .query_async(&mut raw)
                .await
                .unwrap();
        }
        drain(&rig, &mut sender, 2).await;
        let got = versions(&mut ws, Duration::from_millis(800)).await;
        if broken {
            assert_eq!(got.first(), Some(&new), "the new version first: {got:?}");
        } else {
            assert_eq!(got, [missed[0], missed[1], new], "in order");
        }
    }
}
both_modes!(new_frames_wait_for_a_reconnects_catch_up);

/// Senders share the partitions: two hold four each (disjoint), and when
/// one stops renewing (dead, or frozen), the other takes its four — only
/// after the lease (not while it still runs), and then all of them. The
/// frozen one, running again, finds its leases lost and drops those
/// partitions (no two senders ever hold one).
async fn senders_share_the_partitions_and_take_over_a_dead_ones(mode: RedisMode) {
    let rig = Rig::new(mode).await;
    let mut a = rig.sender(5).await;
    let mut b = rig.sender(5).await;
    let until = |at: Instant| Instant::now() < at;
    let end = Instant::now() + Duration::from_millis(1500);
    while until(end) {
        delivery::fetch(&rig.app.deliveries, &mut a).await.unwrap();
        delivery::fetch(&rig.app.deliveries, &mut b).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (pa, pb): (HashSet<u16>, HashSet<u16>) = (
        a.partitions().iter().copied().collect(),
        b.partitions().iter().copied().collect(),
    );
    assert_eq!((pa.len(), pb.len()), (4, 4), "{pa:?} {pb:?}");
    assert!(pa.is_disjoint(&pb), "{pa:?} {pb:?}");
    // b stops renewing (frozen, no release): while its leases run (1 s
    // from its last renewal) a takes none of its partitions…
    let frozen_at = Instant::now();
    while frozen_at.elapsed() < Duration::from_millis(400) {
        delivery::fetch(&rig.app.deliveries, &mut a).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        a.partitions().len(),
        4,
        "b's leases still run: {:?}",
        a.partitions()
    );
    // …and after them, every one.
    let end = Instant::now() + Duration::from_millis(2500);
    while until(end) && a.partitions().len() < 8 {
        delivery::fetch(&rig.app.deliveries, &mut a).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.partitions().len(), 8, "{:?}", a.partitions());
    // b runs again: its renewals fail, it drops what it lost.
    delivery::fetch(&rig.app.deliveries, &mut b).await.unwrap();
    let (pa, pb): (HashSet<u16>, HashSet<u16>) = (
        a.partitions().iter().copied().collect(),
        b.partitions().iter().copied().collect(),
    );
    assert!(
        pa.is_disjoint(&pb),
        "a frozen sender keeps partitions it lost: a {pa:?}, b {pb:?}"
    );
}
both_modes!(senders_share_the_partitions_and_take_over_a_dead_ones);
