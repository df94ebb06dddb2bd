//! Session boundaries (issue 19), through the HTTP routes with the claims
//! API Gateway delivers, against real Redis (both modes) and PostgreSQL.
//! Each guarantee is checked once with the real code and once with a
//! deliberately broken variant through the same check, which must catch it.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::HashMap;

use http::StatusCode;
use lambda_http::{Body, Request, RequestExt, Response};
use paycache::config::RedisMode;
use paycache::keys::{ConnectionId, Endpoint, Jti, SessionId, UserId};
use paycache::realtime;
use paycache::routes::{balance, logout, profile_read, rate_limit_check};
use paycache::sessions;
use paycache_tests::{SignedIn, World, as_client, as_service, both_modes};
use serde_json::{Value, json};
use test_support::{insert_user, insert_wallet, random_uuid, seed_user_id};
use time::OffsetDateTime;

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

fn wallet_req(method: &str, wallet: &str, body: Option<Value>) -> Request {
    let mut p = HashMap::new();
    p.insert("wallet_id".to_string(), wallet.to_string());
    http::Request::builder()
        .method(method)
        .uri(format!("/wallets/{wallet}/balance"))
        .body(body.map_or(Body::Empty, |b| Body::Text(b.to_string())))
        .unwrap()
        .with_path_parameters(p)
}

fn logout_req(scope: Option<&str>) -> Request {
    http::Request::builder()
        .method("POST")
        .uri("/sessions/logout")
        .body(scope.map_or(Body::Empty, |s| {
            Body::Text(json!({ "scope": s }).to_string())
        }))
        .unwrap()
}

fn body(resp: &Response<Body>) -> Value {
    serde_json::from_slice(resp.body().as_ref()).unwrap_or(Value::Null)
}

async fn read_profile(w: &World, who: &SignedIn, user: &str) -> StatusCode {
    Box::pin(profile_read::handle(&w.app, who.on(profile(user))))
        .await
        .status()
}

/// Registers a WebSocket connection opened by `who`'s sign-in.
async fn connect(w: &World, who: &SignedIn) -> ConnectionId {
    let conn = ConnectionId::parse(&format!("c{}", &random_uuid()[..12])).unwrap();
    realtime::connect(
        &w.app.connections,
        &realtime::SignedIn {
            user: UserId::parse(&who.user).unwrap(),
            session: SessionId::parse(&who.session).unwrap(),
            expires_at: OffsetDateTime::now_utc() + time::Duration::hours(1),
        },
        &conn,
        None,
        &[],
    )
    .await
    .unwrap();
    conn
}

/// The connection ids queued to be closed (`ws-sender` closes them).
async fn queued_closes(w: &World) -> Vec<String> {
    let mut raw = w.redis.raw().await;
    let mut entries = Vec::new();
    for p in 0..w.app.config.delivery.partitions {
        let part = raw
            .stream(&w.app.keys.ws_deliveries(p))
            .await
            .unwrap_or_default();
        entries.extend(part);
    }
    entries
        .into_iter()
        .filter(|(_, f)| f.contains(&("k".into(), "close".into())))
        .flat_map(|(_, f)| {
            f.into_iter()
                .filter(|(k, _)| k == "c")
                .flat_map(|(_, v)| v.split(',').map(str::to_owned).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What each sign-out form ends (docs/security.md): "session" ends
/// this sign-in and its sockets, the user's other sign-in goes on; "all"
/// ends every sign-in and every socket of the user, and nobody else's.
/// Broken variant through the same check: an "all" that ends only the
/// calling sign-in (the previous logout) leaves device B signed in.
async fn signing_out_ends_this_sign_in_or_every_sign_in(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let (me, other) = (seed_user_id(1), seed_user_id(2));
    insert_user(&w.db, 1).await;
    insert_user(&w.db, 2).await;

    // Device A signs out of this sign-in only.
    let (a, b) = (w.sign_in(&me, &[]).await, w.sign_in(&me, &[]).await);
    let (ca, cb) = (connect(&w, &a).await, connect(&w, &b).await);
    let resp = logout::handle(&w.app, a.on(logout_req(Some("session")))).await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", body(&resp));
    assert_eq!(body(&resp)["scope"], "session");
    assert_eq!(body(&resp)["sessions_ended"], 1);
    assert_eq!(body(&resp)["connections_closed"], 1);
    assert_eq!(read_profile(&w, &a, &me).await, StatusCode::UNAUTHORIZED);
    assert_eq!(read_profile(&w, &b, &me).await, StatusCode::OK, "B goes on");
    let uid = UserId::parse(&me).unwrap();
    assert_eq!(
        realtime::connections(&w.app.connections, &uid)
            .await
            .unwrap(),
        vec![cb.clone()]
    );
    assert_eq!(queued_closes(&w).await, vec![ca.to_string()]);

    // The check of "all", run with the real route and with the broken one.
    for broken in [false, true] {
        let devices: Vec<SignedIn> = vec![
            w.sign_in(&me, &[]).await,
            w.sign_in(&me, &[]).await,
            w.sign_in(&me, &[]).await,
        ];
        let bystander = w.sign_in(&other, &[]).await;
        // The user's session index lists every live sign-in, and a sign-in
        // prunes the ended ones (A's tombstone) from it (`sign_in.lua`).
        let index: Vec<String> = sessions::index(&w.app.sessions, &uid)
            .await
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        for d in &devices {
            assert!(
                index.contains(&d.session),
                "a live sign-in is indexed: {index:?}"
            );
        }
        assert!(
            !index.contains(&a.session),
            "an ended one is pruned: {index:?}"
        );
        for d in &devices {
            connect(&w, d).await;
        }
        connect(&w, &bystander).await;
        let scope = if broken { "session" } else { "all" };
        let resp = logout::handle(&w.app, devices[0].on(logout_req(Some(scope)))).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let still_in = {
            let mut n = 0;
            for d in &devices {
                if read_profile(&w, d, &me).await == StatusCode::OK {
                    n += 1;
                }
            }
            n
        };
        let sockets = realtime::connections(&w.app.connections, &uid)
            .await
            .unwrap()
            .len();
        let everywhere = still_in == 0 && sockets == 0;
        if broken {
            assert!(
                !everywhere,
                "the broken sign-out must leave devices in: {still_in} signed in, {sockets} sockets"
            );
        } else {
            assert!(everywhere, "{still_in} still signed in, {sockets} sockets");
            assert!(
                sessions::index(&w.app.sessions, &uid)
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert_eq!(
                read_profile(&w, &bystander, &other).await,
                StatusCode::OK,
                "another user is not signed out"
            );
            assert_eq!(
                realtime::connections(&w.app.connections, &UserId::parse(&other).unwrap())
                    .await
                    .unwrap()
                    .len(),
                1
            );
        }
    }
}
both_modes!(signing_out_ends_this_sign_in_or_every_sign_in);

/// A token already refused cannot sign out (401), bad bodies are 400 and
/// change nothing, and sign-outs are rate-limited per principal: the sixth
/// within a minute is 429 (`sessions.logout`: burst 5). Broken variant
/// through the same count: a policy that does not limit.
async fn sign_out_is_authenticated_and_rate_limited(mode: RedisMode) {
    for broken in [false, true] {
        let extra: &[(&str, &str)] = if broken {
            &[(
                "RATE_LIMIT_POLICIES",
                r#"[{"name":"sessions.logout","algorithm":"gcra","limit":1000,"window_secs":60,"fail":"open"}]"#,
            )]
        } else {
            &[]
        };
        let w = World::new(mode, extra).await;
        let me = seed_user_id(1);
        insert_user(&w.db, 1).await;
        let first = w.sign_in(&me, &[]).await;
        for bad in [
            json!({"scope": "everything"}),
            json!({"scope": 1}),
            json!({"who": "all"}),
        ] {
            let req = http::Request::builder()
                .method("POST")
                .uri("/sessions/logout")
                .body(Body::Text(bad.to_string()))
                .unwrap();
            let resp = logout::handle(&w.app, first.on(req)).await;
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(resp.headers()["content-type"], "application/problem+json");
        }
        assert_eq!(
            read_profile(&w, &first, &me).await,
            StatusCode::OK,
            "unchanged"
        );
        assert_eq!(
            logout::handle(&w.app, first.on(logout_req(None)))
                .await
                .status(),
            StatusCode::OK
        );
        // The same token again: refused, not a second sign-out.
        let again = logout::handle(&w.app, first.on(logout_req(Some("all")))).await;
        assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            again.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
        // Five more sign-ins, five more sign-outs: the sixth in the minute
        // is over the limit.
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let s = w.sign_in(&me, &[]).await;
            statuses.push(
                logout::handle(&w.app, s.on(logout_req(None)))
                    .await
                    .status(),
            );
        }
        let limited = statuses.contains(&StatusCode::TOO_MANY_REQUESTS);
        if broken {
            assert!(!limited, "{statuses:?}");
        } else {
            assert!(limited, "{statuses:?}");
            assert_eq!(statuses[..4], [StatusCode::OK; 4], "{statuses:?}");
        }
    }
}
both_modes!(sign_out_is_authenticated_and_rate_limited);

/// A refusal costs its owner nothing, and gives nothing back either: the
/// owner spends 3 of a budget of 5, then 40 requests with the owner's
/// revoked token (blacklisted while its session still exists: the
/// blacklist check alone refuses it) are refunded exactly — the owner has
/// exactly 2 left, for each algorithm (a refund of more than was charged
/// would show as more than 2; one of less, or none, as fewer).
/// The broken form — the 40 refused requests' units kept (here charged by
/// the test, as a gate without refunds would have left them) — rate-limits
/// the owner, which the same check sees. (A gate that skips the blacklist
/// is mutation testing's.)
async fn a_refusal_costs_its_owner_nothing(mode: RedisMode) {
    for algorithm in ["fixed_window", "sliding_log", "sliding_window", "gcra"] {
        let policies = format!(
            r#"[{{"name":"users.profile.read","algorithm":"{algorithm}","limit":5,"window_secs":86400,"fail":"closed"}}]"#
        );
        // The count is the point, not an outage: on a busy machine (a
        // second build beside `make test`) a limiter decision once took
        // longer than its timeout, and the fail-closed policy answered 429
        // (`cache-unavailable`). The decision and Redis get 10 s here; a
        // refusal says why.
        let w = World::new(
            mode,
            &[
                ("RATE_LIMIT_POLICIES", &policies),
                ("REDIS_RESPONSE_TIMEOUT_MS", "10000"),
                ("RATE_LIMIT_TIMEOUT_MS", "10000"),
            ],
        )
        .await;
        let me = seed_user_id(1);
        insert_user(&w.db, 1).await;
        for kept in [false, true] {
            let app = w.another_environment();
            let owner = w.sign_in(&me, &[]).await;
            for i in 0..3 {
                let r = Box::pin(profile_read::handle(&app, owner.on(profile(&me)))).await;
                assert_eq!(
                    r.status(),
                    StatusCode::OK,
                    "{algorithm} (units kept: {kept}): the owner's request {i} of the first 3: {:?} {:?}",
                    r.headers(),
                    r.body()
                );
            }
            let stolen = w.sign_in(&me, &[]).await;
            sessions::blacklist(
                &app.sessions,
                &Jti::parse(&stolen.jti).unwrap(),
                &paycache::identity::Principal::User {
                    user: UserId::parse(&me).unwrap(),
                    session: SessionId::parse(&stolen.session).unwrap(),
                },
                OffsetDateTime::now_utc() + time::Duration::hours(1),
                "test",
            )
            .await
            .unwrap();
            let mut refused = 0;
            for _ in 0..40 {
                let s = Box::pin(profile_read::handle(&app, stolen.on(profile(&me))))
                    .await
                    .status();
                if s == StatusCode::UNAUTHORIZED {
                    refused += 1;
                }
            }
            if kept {
                let endpoint = Endpoint::parse("users.profile.read").unwrap();
                for _ in 0..40 {
                    app.limiter
                        .check(UserId::parse(&me).unwrap(), &endpoint, 1)
                        .await;
                }
            }
            let mut served = 0;
            for _ in 0..5 {
                if Box::pin(profile_read::handle(&app, owner.on(profile(&me))))
                    .await
                    .status()
                    == StatusCode::OK
                {
                    served += 1;
                }
            }
            let what = format!(
                "{algorithm} (units kept: {kept}): {refused} refused, then the owner served {served} of 5 asked"
            );
            assert_eq!(refused, 40, "{what}");
            if kept {
                assert!(served < 2, "the kept units must cost the owner: {what}");
            } else {
                assert_eq!(served, 2, "exactly the 2 left: {what}");
            }
            // The next round starts from a full budget.
            let mut raw = w.redis.raw().await;
            for key in w.keys().await {
                if key.contains("rate_limit") || key.contains("sliding") {
                    let _: i64 = redis::cmd("DEL")
                        .arg(&key)
                        .query_async(&mut raw)
                        .await
                        .unwrap();
                }
            }
        }
    }
}
both_modes!(a_refusal_costs_its_owner_nothing);

/// The activity sync notes the time in the Redis copy of a live session,
/// and never writes over a sign-out's tombstone (`touch.lua`): a sync that
/// read the session before a sign-out and lands after it must not bring
/// the session back.
async fn an_activity_sync_does_not_revive_a_signed_out_session(mode: RedisMode) {
    let w = World::new(mode, &[("SESSION_ACTIVITY_SYNC_SECS", "1")]).await;
    let me = seed_user_id(1);
    insert_user(&w.db, 1).await;
    let uid = UserId::parse(&me).unwrap();
    let mut raw = w.redis.raw().await;
    let mut read_copy = async |sid: &SessionId| -> Option<String> {
        redis::cmd("GET")
            .arg(w.app.keys.session(&uid, sid).to_string())
            .query_async(&mut raw)
            .await
            .unwrap()
    };
    let (leaving, staying) = (w.sign_in(&me, &[]).await, w.sign_in(&me, &[]).await);
    let mut stale = Vec::new();
    for who in [&leaving, &staying] {
        let sid = SessionId::parse(&who.session).unwrap();
        let json = read_copy(&sid).await.expect("signed in");
        let mut session: paycache::sessions::Session = serde_json::from_str(&json).unwrap();
        // Read long enough ago that a sync is due.
        session.last_activity = OffsetDateTime::now_utc() - time::Duration::hours(1);
        stale.push((sid, session));
    }
    let out = logout::handle(&w.app, leaving.on(logout_req(Some("session")))).await;
    assert_eq!(out.status(), StatusCode::OK, "{}", body(&out));
    let tombstone = read_copy(&stale[0].0).await;
    for (sid, session) in &stale {
        paycache::sessions::sync_activity(&w.app.sessions, sid, session);
    }
    // The live one is noted (so the syncs ran) …
    let mut noted = None;
    for _ in 0..100 {
        let json = read_copy(&stale[1].0).await.expect("still signed in");
        let s: paycache::sessions::Session = serde_json::from_str(&json).unwrap();
        if OffsetDateTime::now_utc() - s.last_activity < time::Duration::minutes(1) {
            noted = Some(s.last_activity);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        noted.is_some(),
        "the live session's activity is noted in Redis"
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // … and the signed-out one stays a tombstone, refused.
    assert_eq!(
        read_copy(&stale[0].0).await,
        tombstone,
        "the tombstone stays"
    );
    let r = Box::pin(profile_read::handle(&w.app, leaving.on(profile(&me)))).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}
both_modes!(an_activity_sync_does_not_revive_a_signed_out_session);

/// A revoked token stays refused for as long as a verifier could accept
/// it: 1.5 s past its `exp`, inside the routes' leeway, a revoked service
/// token is 401 (the attack: 200, its blacklist entry gone at `exp`) —
/// refused because it is revoked, not because it expired: a token with
/// the same `exp`, not revoked, is served at the same moment (a route
/// without its leeway would refuse both, and the check would hold for the
/// wrong reason).
async fn a_revoked_token_stays_refused_through_the_leeway(mode: RedisMode) {
    // The broken form through the same check: a revocation that lasts
    // until `exp` only (here the test shortens the blacklist entry to that,
    // as such a revocation would have written it): the attack's 200.
    for broken in [false, true] {
        let w = World::new(mode, &[]).await;
        let app = w.another_environment();
        let wallet = random_uuid();
        insert_wallet(&w.db, 1, &wallet, "USD", 1000).await;
        let exp = OffsetDateTime::now_utc().unix_timestamp() + 1;
        let jti = format!("j{}", &random_uuid()[..12]);
        let twin = format!("j{}", &random_uuid()[..12]);
        let with_jti = |req: Request, jti: &str| {
            let r = as_client(req, "support-console", &["wallets.read.any"]);
            paycache_tests::with_claim_values(
                r,
                &[("exp", exp.to_string()), ("jti", jti.to_owned())],
            )
        };
        let claims_req = |req: Request| with_jti(req, &jti);
        let ok = balance::handle(&app, claims_req(wallet_req("GET", &wallet, None))).await;
        assert_eq!(ok.status(), StatusCode::OK);
        let out = logout::handle(&app, claims_req(logout_req(None))).await;
        assert_eq!(out.status(), StatusCode::OK, "{}", body(&out));
        if broken {
            let key = app.keys.blacklist(&Jti::parse(&jti).unwrap()).to_string();
            let mut raw = w.redis.raw().await;
            let _: i64 = redis::cmd("PEXPIREAT")
                .arg(&key)
                .arg(exp * 1000)
                .query_async(&mut raw)
                .await
                .unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        // Past `exp`, inside the 5 s leeway the routes allow.
        let replay = balance::handle(&app, claims_req(wallet_req("GET", &wallet, None))).await;
        if broken {
            assert_eq!(
                replay.status(),
                StatusCode::OK,
                "the broken revocation lapsed at exp"
            );
            continue;
        }
        assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
        let unrevoked =
            balance::handle(&app, with_jti(wallet_req("GET", &wallet, None), &twin)).await;
        assert_eq!(
            unrevoked.status(),
            StatusCode::OK,
            "inside the leeway: the 401 above is the revocation's"
        );
        let left = sessions::blacklist_ttl(&app.sessions, &Jti::parse(&jti).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert!(left > std::time::Duration::from_secs(290), "{left:?}");
    }
}
both_modes!(a_revoked_token_stays_refused_through_the_leeway);

/// Services cannot spend users' route budgets: `POST /rate-limit/check`
/// refuses the routes' policy names (422), and consulted counters are kept
/// apart from the routes' — the user's balance reads stay 200 after a
/// service consumed a same-named policy to the limit. The broken variant,
/// the same consumption in the routes' counters, makes them 429.
async fn services_cannot_spend_a_users_route_budget(mode: RedisMode) {
    let w = World::new(
        mode,
        &[(
            "RATE_LIMIT_POLICIES",
            r#"[{"name":"wallets.balance.read","algorithm":"gcra","limit":100,"window_secs":60,"fail":"closed"}]"#,
        )],
    )
    .await;
    let me = seed_user_id(1);
    let wallet = random_uuid();
    insert_wallet(&w.db, 1, &wallet, "USD", 1000).await;
    let check = |endpoint: &str| {
        http::Request::builder()
            .method("POST")
            .uri("/rate-limit/check")
            .body(Body::Text(
                json!({"user_id": me, "endpoint": endpoint, "cost": 100}).to_string(),
            ))
            .unwrap()
    };
    for route in [
        "users.profile.read",
        "wallets.balance.read",
        "wallets.balance.write",
        "sessions.logout",
    ] {
        let resp = rate_limit_check::handle(
            &w.app,
            as_client(check(route), "limits-gateway", &["ratelimit.check"]),
        )
        .await;
        assert_eq!(
            resp.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{route}: {}",
            body(&resp)
        );
    }
    let user = w.sign_in(&me, &[]).await;
    let uid = UserId::parse(&me).unwrap();
    let endpoint = Endpoint::parse("wallets.balance.read").unwrap();
    for counters in [
        paycache::ratelimit::Counters::Consulted,
        paycache::ratelimit::Counters::Routes,
    ] {
        let app = w.another_environment();
        // Consulted: the whole 100 — were the counters shared, the read
        // right after would be the 101st and refused (this assertion, not
        // the next step's precondition, catches it). Routes: 99, as the
        // first iteration's read took one unit of the route's 100.
        let cost = if counters == paycache::ratelimit::Counters::Consulted {
            100
        } else {
            99
        };
        let spent = app.limiter.check_in(counters, &uid, &endpoint, cost).await;
        assert!(spent.allowed, "{counters:?}");
        let read = balance::handle(&app, user.on(wallet_req("GET", &wallet, None))).await;
        if counters == paycache::ratelimit::Counters::Consulted {
            assert_eq!(
                read.status(),
                StatusCode::OK,
                "consulted counters are apart"
            );
        } else {
            assert_eq!(
                read.status(),
                StatusCode::TOO_MANY_REQUESTS,
                "the broken variant spends the user's own budget"
            );
        }
    }
}
both_modes!(services_cannot_spend_a_users_route_budget);

/// Item 9's 404: another user's wallet answers the same 404 whether or not
/// it is cached (its owner read it first), and the same as a wallet that
/// does not exist — type and detail, ids normalised. The comparison must
/// tell a different answer apart (the broken variant: the 403 a naive
/// route gives for a cached wallet it can see is not its caller's).
async fn another_users_wallet_is_404_cached_or_not(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let (mine, theirs) = (seed_user_id(1), seed_user_id(2));
    let wallet = random_uuid();
    insert_wallet(&w.db, 2, &wallet, "USD", 1000).await;
    insert_user(&w.db, 1).await;
    let me = w.sign_in(&mine, &[]).await;
    let owner = w.sign_in(&theirs, &[]).await;
    let normalised = |resp: Response<Body>, id: &str| {
        let b = body(&resp);
        (
            resp.status(),
            b["type"].as_str().unwrap_or("").to_owned(),
            b["detail"].as_str().unwrap_or("").replace(id, "<id>"),
        )
    };
    let uncached = normalised(
        balance::handle(&w.app, me.on(wallet_req("GET", &wallet, None))).await,
        &wallet,
    );
    let mut raw = w.redis.raw().await;
    let _: i64 = redis::cmd("DEL")
        .arg(
            w.app
                .keys
                .wallet_balance(&paycache::keys::WalletId::parse(&wallet).unwrap())
                .to_string(),
        )
        .query_async(&mut raw)
        .await
        .unwrap();
    let own = balance::handle(&w.app, owner.on(wallet_req("GET", &wallet, None))).await;
    assert_eq!(own.status(), StatusCode::OK);
    let cached = balance::handle(&w.app, me.on(wallet_req("GET", &wallet, None))).await;
    assert_eq!(
        cached
            .headers()
            .get("cache-status")
            .map(|v| v.to_str().unwrap()),
        None
    );
    let cached = normalised(cached, &wallet);
    let missing_id = random_uuid();
    let missing = normalised(
        balance::handle(&w.app, me.on(wallet_req("GET", &missing_id, None))).await,
        &missing_id,
    );
    assert_eq!(uncached.0, StatusCode::NOT_FOUND);
    assert_eq!(uncached, cached, "cached or not, the same 404");
    assert_eq!(
        uncached, missing,
        "the same as a wallet that does not exist"
    );
    // The comparison tells another answer apart.
    let naive = normalised(
        paycache::routes::gate::forbidden("You may not read this wallet.", "r"),
        &wallet,
    );
    assert_ne!(uncached, naive);
}
both_modes!(another_users_wallet_is_404_cached_or_not);

/// Announcements only from the platform: an event with another `source`,
/// or from another account, reaches nobody and queues nothing. The broken
/// variant — the same event to a handler that trusts its source — queues
/// it, which the same check sees.
async fn announcements_only_from_the_platform(mode: RedisMode) {
    for broken in [false, true] {
        let source = if broken {
            "attacker.app"
        } else {
            "payments.operations"
        };
        let w = World::new(
            mode,
            &[
                ("ANNOUNCEMENT_SOURCE", source),
                ("PLATFORM_ACCOUNT_ID", "111122223333"),
            ],
        )
        .await;
        let event = |source: &str, account: &str| {
            json!({"version": "0", "id": random_uuid(), "detail-type": "SystemAnnouncement",
                   "source": source, "account": account, "region": "us-east-1",
                   "time": "2026-12-04T00:00:00Z", "resources": [],
                   "detail": {"message": "forged: sign in at evil.example"}})
        };
        async fn queued(w: &World) -> i64 {
            let mut raw = w.redis.raw().await;
            let mut n = 0;
            for p in 0..w.app.config.delivery.partitions {
                let len: i64 = redis::cmd("XLEN")
                    .arg(w.app.keys.ws_deliveries(p))
                    .query_async(&mut raw)
                    .await
                    .unwrap();
                n += len;
            }
            n
        }
        for (src, account) in [
            ("attacker.app", "111122223333"),
            ("payments.operations", "999988887777"),
        ] {
            let before = queued(&w).await;
            let out =
                paycache::events::cache_invalidation(&w.app.invalidation, &event(src, account))
                    .await
                    .unwrap();
            let reached = queued(&w).await > before;
            let should = broken && src == "attacker.app";
            assert_eq!(reached, should, "{src}/{account}: {out}");
            if !reached {
                assert_eq!(out["status"], "rejected", "{out}");
            }
        }
    }
}
both_modes!(announcements_only_from_the_platform);

/// The trust boundary: with `AUTH_VERIFY_IN_FUNCTION=true`, a hand-made
/// event carrying API Gateway claims (what anyone allowed to invoke the
/// function could send) is refused unless its bearer token verifies here and
/// names the same principal and `jti`. The broken variant — the default,
/// trusting the claims — serves it.
async fn claims_are_checked_against_the_token_when_asked(mode: RedisMode) {
    for verify in [true, false] {
        let mut extra = paycache_tests::auth_env();
        if verify {
            extra.push(("AUTH_VERIFY_IN_FUNCTION".into(), "true".into()));
        }
        let pairs: Vec<(&str, &str)> = extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let w = World::new(mode, &pairs).await;
        let app = w.with_verifier();
        let me = seed_user_id(1);
        insert_user(&w.db, 1).await;
        let user = w.sign_in(&me, &[]).await;
        // A hand-made event: the claims, no token.
        let forged = Box::pin(profile_read::handle(&app, user.on(profile(&me)))).await;
        // The same claims with a real token for them.
        let token = paycache_tests::token_for(&user);
        let mut req = user.on(profile(&me));
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let genuine = Box::pin(profile_read::handle(&app, req)).await;
        assert_eq!(genuine.status(), StatusCode::OK, "{}", body(&genuine));
        // A real token of another sign-in under the forged claims.
        let other = w.sign_in(&me, &[]).await;
        let mut req = user.on(profile(&me));
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", paycache_tests::token_for(&other))
                .parse()
                .unwrap(),
        );
        let mixed = Box::pin(profile_read::handle(&app, req)).await;
        // The genuine token under another scheme, and the scheme without
        // a token: `Authorization` is `Bearer <token>` or nothing.
        let mut schemes = Vec::new();
        for header in [format!("Basic {token}"), "Bearer  ".to_owned()] {
            let mut req = user.on(profile(&me));
            req.headers_mut()
                .insert("authorization", header.parse().unwrap());
            let r = Box::pin(profile_read::handle(&app, req)).await;
            schemes.push((
                header.split(' ').next().unwrap_or("").to_owned(),
                r.status(),
            ));
        }
        if verify {
            assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(mixed.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(
                schemes,
                [
                    ("Basic".to_owned(), StatusCode::UNAUTHORIZED),
                    ("Bearer".to_owned(), StatusCode::UNAUTHORIZED)
                ],
                "a token counts only as `Bearer <token>`"
            );
        } else {
            assert_eq!(
                forged.status(),
                StatusCode::OK,
                "the broken variant trusts the event"
            );
        }
    }
}
both_modes!(claims_are_checked_against_the_token_when_asked);

/// With `AUTH_VERIFY_IN_FUNCTION`, a service's permissions are its token's
/// scopes (issue 28): a genuine token of the limits gateway (scope
/// `ratelimit.check`) under hand-made claims that name the same client and
/// `jti` but the ledger's scope cannot set a balance (401, logged
/// `ClaimsMismatch`), nor can claims that move its `exp`, nor claims that
/// differ from the token in their `jti` alone; the same token under its
/// own claims is let in and refused for want of the permission (404: the
/// wallet is not its to see) — the check is the scopes, not the token.
/// The broken variant, the comparison before (principal and `jti`
/// only), is the trusting
/// configuration's answer: without `AUTH_VERIFY_IN_FUNCTION` the forged
/// scopes write the balance (200).
async fn a_services_scopes_are_its_tokens(mode: RedisMode) {
    for verify in [true, false] {
        let mut extra = paycache_tests::auth_env();
        extra.retain(|(k, _)| k != "AUTH_AUDIENCE");
        extra.push(("AUTH_AUDIENCE".into(), "paycache-web,limits-gateway".into()));
        if verify {
            extra.push(("AUTH_VERIFY_IN_FUNCTION".into(), "true".into()));
        }
        let pairs: Vec<(&str, &str)> = extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let w = World::new(mode, &pairs).await;
        let mut app = w.app.clone();
        let vars: HashMap<String, String> = extra.iter().cloned().collect();
        app.verifier = Some(std::sync::Arc::new(
            paycache::auth::Verifier::new(
                paycache::auth::AuthConfig::from_lookup(|k| vars.get(k).cloned()).unwrap(),
            )
            .unwrap(),
        ));
        let wallet = random_uuid();
        insert_wallet(&w.db, 3, &wallet, "USD", 1000).await;
        let jti = paycache_tests::token_id();
        let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
        let token =
            paycache_tests::service_token("limits-gateway", &jti, &["ratelimit.check"], exp);
        let put_as = |scopes: &[&str], exp: i64, jti: &str| {
            let req = paycache_tests::as_client_token(
                wallet_req(
                    "PUT",
                    &wallet,
                    Some(json!({"balance": "99.00", "currency": "USD", "expected_version": 1})),
                ),
                "limits-gateway",
                jti,
                scopes,
            );
            let mut req = paycache_tests::with_claim_values(req, &[("exp", exp.to_string())]);
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            req
        };
        let put = |scopes: &[&str], exp: i64| put_as(scopes, exp, &jti);
        let own = balance::handle(&app, put(&["ratelimit.check"], exp)).await;
        // Everything the same but the `jti` (another token's, which a
        // revocation check would then look up instead).
        let other_jti = paycache_tests::token_id();
        let renamed = balance::handle(&app, put_as(&["ratelimit.check"], exp, &other_jti)).await;
        let forged = balance::handle(&app, put(&["wallets.balance.write"], exp)).await;
        let later = balance::handle(&app, put(&["ratelimit.check"], exp + 86_400)).await;
        if verify {
            // Let in (not 401), and the wallet is not its to see.
            assert_eq!(own.status(), StatusCode::NOT_FOUND, "{}", body(&own));
            assert_eq!(
                forged.status(),
                StatusCode::UNAUTHORIZED,
                "{}",
                body(&forged)
            );
            assert_eq!(later.status(), StatusCode::UNAUTHORIZED, "{}", body(&later));
            assert_eq!(
                renamed.status(),
                StatusCode::UNAUTHORIZED,
                "claims naming another jti: {}",
                body(&renamed)
            );
        } else {
            assert_eq!(
                forged.status(),
                StatusCode::OK,
                "the broken variant trusts the claims' scopes: {}",
                body(&forged)
            );
        }
        // Nothing was written when refused.
        let version: i64 =
            w.db.client()
                .await
                .query_one(
                    "SELECT version FROM wallets WHERE wallet_id = $1::text::uuid",
                    &[&wallet],
                )
                .await
                .unwrap()
                .get(0);
        assert_eq!(version, if verify { 1 } else { 2 });
    }
}
both_modes!(a_services_scopes_are_its_tokens);

/// Balance audit events name the actor: the principal, the token's `jti`
/// and the request id. The broken variant, a write that does not carry its
/// actor, fails the same check.
async fn balance_audit_events_name_the_actor(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let wallet = random_uuid();
    insert_wallet(&w.db, 1, &wallet, "USD", 1000).await;
    let jti = format!("j{}", &random_uuid()[..12]);
    let req = as_service(
        wallet_req(
            "PUT",
            &wallet,
            Some(json!({"balance": "12.34", "currency": "USD", "expected_version": 1})),
        ),
        &["wallets.balance.write"],
    );
    let client = paycache_tests::claim(&req, "client_id").unwrap();
    let req = paycache_tests::with_claim_values(req, &[("jti", jti.clone())]);
    let resp = balance::handle(&w.app, req).await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", body(&resp));
    let actor_of = |version: i64| {
        let db = &w.db;
        let wallet = wallet.clone();
        async move {
            let row = db
                .client()
                .await
                .query_one(
                    "SELECT audit_event FROM balance_outbox WHERE wallet_id = $1::text::uuid AND version = $2",
                    &[&wallet, &version],
                )
                .await
                .unwrap();
            let event: Value = row.get(0);
            event["payload"]["actor"].clone()
        }
    };
    let names = |actor: &Value| {
        actor["principal"] == format!("svc:{client}")
            && actor["jti"] == jti.as_str()
            && actor["request_id"].as_str().is_some_and(|r| !r.is_empty())
    };
    let actor = actor_of(2).await;
    assert!(names(&actor), "{actor}");
    // Broken variant: the same write without its actor.
    let write = paycache::balance::BalanceWrite {
        wallet: paycache::keys::WalletId::parse(&wallet).unwrap(),
        balance_minor: 999,
        currency: paycache::money::Currency::parse("USD").unwrap(),
        expected_version: 2,
        idempotency_key: None,
        actor: None,
    };
    paycache::balance::write_balance(&w.app.balances, &write)
        .await
        .unwrap();
    assert!(!names(&actor_of(3).await));
}
both_modes!(balance_audit_events_name_the_actor);

/// The local gateway's management API needs the run's credentials (SigV4,
/// as IAM does deployed) and its test controls exist only when a test
/// turns them on: unsigned, or signed with another secret, a forged frame
/// is refused (403); signed with the right one it is served (here 410: no
/// such connection); a body changed after signing and a date more than
/// five minutes off are refused too. The broken variant — a gateway that
/// does not check —
/// serves the unsigned post, which the same check sees.
/// A `PostToConnection` to `base`, SigV4-signed at `at` over `signed`
/// with the run's credentials, sending `sent` as its body.
fn signed_by_hand(
    base: &str,
    signed: &[u8],
    sent: &[u8],
    at: std::time::SystemTime,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let url = format!("{base}/@connections/victimconn1=");
    let host = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let identity =
        aws_credential_types::Credentials::new("AKIDRUN", "run-secret", None, None, "test").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("execute-api")
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let headers = [("host", host.as_str())];
    let signable = SignableRequest::new(
        "POST",
        &url,
        headers.iter().copied(),
        SignableBody::Bytes(signed),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut req = http::Request::builder()
        .method("POST")
        .uri(&url)
        .header("host", &host)
        .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
            sent,
        )))
        .unwrap();
    instructions.apply_to_request_http1x(&mut req);
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_gateway_needs_credentials() {
    use paycache_ws_gateway::{Options, serve, sigv4::Expected};
    let invoke: paycache_ws_gateway::Invoke =
        std::sync::Arc::new(|_, _| Box::pin(async { Err("no functions here".to_owned()) }));
    let client = |key: &str, secret: &str, endpoint: String| {
        let creds = aws_credential_types::Credentials::new(key, secret, None, None, "test");
        async move {
            let sdk = paycache::aws::sdk_config(std::time::Duration::from_secs(5)).await;
            aws_sdk_apigatewaymanagement::Client::from_conf(
                aws_sdk_apigatewaymanagement::config::Builder::from(sdk)
                    .endpoint_url(endpoint)
                    .credentials_provider(creds)
                    .build(),
            )
        }
    };
    let post = |c: aws_sdk_apigatewaymanagement::Client| async move {
        match c
            .post_to_connection()
            .connection_id("victimconn1=")
            .data(aws_sdk_apigatewaymanagement::primitives::Blob::new(
                br#"{"type":"balance_update","balance":"0.00"}"#.to_vec(),
            ))
            .send()
            .await
        {
            Ok(_) => 200,
            Err(e) => e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0),
        }
    };
    let raw = |method: &'static str, url: String| async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let req = http::Request::builder()
            .method(method)
            .uri(url)
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap();
        client.request(req).await.unwrap().status().as_u16()
    };
    for unchecked in [false, true] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw = serve(
            listener,
            invoke.clone(),
            Options {
                management: Some(Expected::new("AKIDRUN", "run-secret")),
                test_controls: false,
                unchecked,
            },
        )
        .unwrap();
        let base = gw.management_url();
        let unsigned = raw("POST", format!("{base}/@connections/victimconn1=")).await;
        if unchecked {
            assert_eq!(unsigned, 410, "the broken gateway serves an unsigned post");
            gw.stop();
            continue;
        }
        assert_eq!(unsigned, 403, "unsigned");
        assert_eq!(
            post(client("AKIDRUN", "another-secret", base.clone()).await).await,
            403,
            "wrong secret"
        );
        assert_eq!(
            post(client("AKIDOTHER", "run-secret", base.clone()).await).await,
            403
        );
        assert_eq!(
            post(client("AKIDRUN", "run-secret", base.clone()).await).await,
            410,
            "signed right: served (no such connection)"
        );
        // Signed by hand: the signature covers the body (a body changed
        // after signing is refused), and the date (more than five minutes
        // off is refused, as AWS does; two minutes is a clock's skew).
        let now = std::time::SystemTime::now();
        let minutes = |m: u64| std::time::Duration::from_secs(60 * m);
        for (what, at, sent, want) in [
            ("as signed", now, &b"{\"a\":1}"[..], 410),
            ("body changed after signing", now, &b"{\"a\":2}"[..], 403),
            (
                "signed 10 minutes ago",
                now - minutes(10),
                &b"{\"a\":1}"[..],
                403,
            ),
            (
                "signed 10 minutes ahead",
                now + minutes(10),
                &b"{\"a\":1}"[..],
                403,
            ),
            (
                "signed 2 minutes ago",
                now - minutes(2),
                &b"{\"a\":1}"[..],
                410,
            ),
        ] {
            let req = signed_by_hand(&base, b"{\"a\":1}", sent, at);
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
            let status = client.request(req).await.unwrap().status().as_u16();
            assert_eq!(status, want, "{what}");
        }
        // No test controls unless asked for.
        for path in ["/_gateway/stats", "/_gateway/hold/x", "/_gateway/forget/x"] {
            let method = if path.ends_with("stats") {
                "GET"
            } else {
                "POST"
            };
            let status = raw(method, format!("{base}{path}")).await;
            assert_ne!(status, 200, "{path}");
            assert_ne!(status, 204, "{path}");
        }
        gw.stop();
    }
}
