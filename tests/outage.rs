//! A Redis outage costs latency, never availability — for signed-in
//! callers too (issue 20): sessions and revocations have their source of
//! truth in PostgreSQL, which decides when Redis cannot answer or no longer
//! holds a session. Against real Redis (both modes; stopped and paused) and
//! PostgreSQL — reached through PgBouncer in transaction mode, as the
//! functions reach it through RDS Proxy (`World::pooled`) — through the
//! HTTP routes with the claims API Gateway delivers. Each guarantee is also run in a broken form through the same
//! check, which must catch it: the design before PostgreSQL held sessions
//! (`SessionVariants::redis_only`, compiled for tests only), or what a
//! broken gate would do, done by the test itself.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::HashMap;
use std::time::Duration;

use http::StatusCode;
use lambda_http::{Body, Request, RequestExt, Response};
use paycache::App;
use paycache::config::RedisMode;
use paycache::keys::{Jti, SessionId, UserId};
use paycache::routes::{balance, logout, profile_read};
use paycache::sessions::{self, SessionVariants};
use paycache_tests::{SignedIn, World, as_client, as_client_token, both_modes, token_id};
use serde_json::{Value, json};
use test_support::{
    RedisCluster, RedisServer, TestRedis, insert_user, insert_wallet, seed_user_id,
};

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

fn body(resp: &Response<Body>) -> Value {
    serde_json::from_slice(resp.body().as_ref()).unwrap_or(Value::Null)
}

/// Timeouts short enough that an outage is seen within a test's patience,
/// and a breaker that lets a call through again 100 ms after it opened.
pub(crate) const SHORT: [(&str, &str); 3] = [
    ("REDIS_RESPONSE_TIMEOUT_MS", "200"),
    ("REDIS_CONNECT_TIMEOUT_MS", "200"),
    ("CACHE_BREAKER_COOLDOWN_MS", "100"),
];

/// Servers of the test's own, so that it can stop or pause them.
pub(crate) fn own_redis(mode: RedisMode) -> TestRedis {
    match mode {
        RedisMode::Standalone => TestRedis::Standalone(RedisServer::start()),
        RedisMode::Cluster => TestRedis::Cluster(RedisCluster::start()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outage {
    /// Every node stopped (connections refused).
    Stopped,
    /// Every node paused (`SIGSTOP`): requests hang until the timeout.
    Paused,
}

pub(crate) fn begin(redis: &mut TestRedis, outage: Outage) {
    let each = |s: &mut RedisServer| match outage {
        Outage::Stopped => s.stop(),
        Outage::Paused => s.pause(),
    };
    match redis {
        TestRedis::Standalone(s) => each(s),
        TestRedis::Cluster(c) => c.nodes.iter_mut().for_each(each),
        _ => unreachable!("the test's own servers"),
    }
}

pub(crate) fn end(redis: &mut TestRedis, outage: Outage) {
    if outage == Outage::Paused {
        match redis {
            TestRedis::Standalone(s) => s.resume(),
            TestRedis::Cluster(c) => c.nodes.iter().for_each(|s| s.resume()),
            _ => unreachable!("the test's own servers"),
        }
    }
}

async fn read(app: &App, who: &SignedIn, user: &str) -> Response<Body> {
    Box::pin(profile_read::handle(app, who.on(profile(user)))).await
}

/// A service (the support console) reading a wallet with its token `jti`.
async fn service_read(app: &App, jti: &str, wallet: &str) -> StatusCode {
    let mut p = HashMap::new();
    p.insert("wallet_id".to_string(), wallet.to_string());
    let req = http::Request::builder()
        .method("GET")
        .uri(format!("/wallets/{wallet}/balance"))
        .body(Body::Empty)
        .unwrap()
        .with_path_parameters(p);
    let req = as_client_token(req, "support-console", jti, &["wallets.read.any"]);
    Box::pin(balance::handle(app, req)).await.status()
}

/// The service signs its token `jti` out.
async fn service_sign_out(app: &App, jti: &str) -> StatusCode {
    let req = http::Request::builder()
        .method("POST")
        .body(Body::Empty)
        .unwrap();
    let req = as_client_token(req, "support-console", jti, &[]);
    Box::pin(logout::handle(app, req)).await.status()
}

/// Another environment, Redis alone deciding (`redis_only`) or not.
fn redis_only(w: &World, redis_only: bool) -> App {
    w.another_environment()
        .with_session_variants(SessionVariants { redis_only })
}

/// Redis stopped, then paused: a user signed in before the outage is
/// served (from PostgreSQL, concurrently with the session check), a token
/// signed out before it is refused (401), and so is a token whose session
/// was signed out "everywhere", and a service's token signed out before
/// it — by this execution environment and by one that never talked to
/// Redis (nothing remembered: PostgreSQL's `revoked_tokens` decides); a
/// live service token is served. The broken form through the same checks:
/// the gate without the PostgreSQL fallback answers 503 to the signed-in
/// user. (A fallback that ignores sign-outs is mutation testing's.)
async fn signed_in_callers_ride_out_a_redis_outage(mode: RedisMode) {
    for outage in [Outage::Stopped, Outage::Paused] {
        let mut w = World::with_redis_pooled(
            own_redis(mode),
            &[
                ("REDIS_RESPONSE_TIMEOUT_MS", "200"),
                ("REDIS_CONNECT_TIMEOUT_MS", "200"),
            ],
        )
        .await;
        let (me, other) = (seed_user_id(1), seed_user_id(2));
        insert_user(&w.db, 1).await;
        insert_user(&w.db, 2).await;
        let signed_in = w.sign_in(&me, &[]).await;
        let signed_out = w.sign_in(&me, &[]).await;
        let everywhere = w.sign_in(&other, &[]).await;
        let also_everywhere = w.sign_in(&other, &[]).await;
        for (who, user) in [(&signed_in, &me), (&signed_out, &me), (&everywhere, &other)] {
            assert_eq!(read(&w.app, who, user).await.status(), StatusCode::OK);
        }
        let wallet = test_support::random_uuid();
        insert_wallet(&w.db, 1, &wallet, "USD", 1000).await;
        let (service, signed_out_service) = (token_id(), token_id());
        for jti in [&service, &signed_out_service] {
            assert_eq!(service_read(&w.app, jti, &wallet).await, StatusCode::OK);
        }
        assert_eq!(
            service_sign_out(&w.app, &signed_out_service).await,
            StatusCode::OK
        );
        assert_eq!(
            logout::handle(
                &w.app,
                signed_out.on(http::Request::builder()
                    .method("POST")
                    .body(Body::Empty)
                    .unwrap())
            )
            .await
            .status(),
            StatusCode::OK
        );
        let all = http::Request::builder()
            .method("POST")
            .body(Body::Text(json!({"scope": "all"}).to_string()))
            .unwrap();
        assert_eq!(
            logout::handle(&w.app, everywhere.on(all)).await.status(),
            StatusCode::OK
        );

        begin(&mut w.redis, outage);
        let what = format!("{mode:?} {outage:?}");
        // Several requests: the first ones meet the timeout, the breaker
        // then opens and the rest skip Redis.
        for _ in 0..4 {
            let resp = read(&w.app, &signed_in, &me).await;
            assert_eq!(resp.status(), StatusCode::OK, "{what}: {}", body(&resp));
            assert_eq!(
                resp.headers()["cache-status"],
                "paycache; fwd=uri-miss; detail=redis-unavailable",
                "{what}"
            );
            assert_eq!(body(&resp)["user_id"], me);
            let refused = read(&w.app, &signed_out, &me).await;
            assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{what}");
            let refused = read(&w.app, &also_everywhere, &other).await;
            assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{what}");
            assert_eq!(
                service_read(&w.app, &service, &wallet).await,
                StatusCode::OK,
                "{what}: a live service token is served"
            );
            assert_eq!(
                service_read(&w.app, &signed_out_service, &wallet).await,
                StatusCode::UNAUTHORIZED,
                "{what}: a service token signed out before the outage"
            );
        }
        let cold = w.another_environment();
        assert_eq!(
            service_read(&cold, &signed_out_service, &wallet).await,
            StatusCode::UNAUTHORIZED,
            "{what}: an environment that never reached Redis refuses the signed-out service token"
        );
        assert_eq!(
            service_read(&cold, &service, &wallet).await,
            StatusCode::OK,
            "{what}: and serves the live one"
        );

        let no_fallback = redis_only(&w, true);
        assert_eq!(
            read(&no_fallback, &signed_in, &me).await.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{what}: without the fallback, the signed-in user is refused"
        );
        end(&mut w.redis, outage);
    }
}
both_modes!(signed_in_callers_ride_out_a_redis_outage);

/// During the outage, rate limits follow their policy's fail mode (a
/// fail-closed policy refuses with 429, `reason: cache-unavailable`) and a
/// balance write is refused before its fence (503) and changes nothing;
/// a service's token is checked for revocation in PostgreSQL too.
async fn during_an_outage_limits_and_writes_keep_their_rules(mode: RedisMode) {
    let mut w = World::with_redis_pooled(
        own_redis(mode),
        &[
            ("REDIS_RESPONSE_TIMEOUT_MS", "200"),
            ("REDIS_CONNECT_TIMEOUT_MS", "200"),
            (
                "RATE_LIMIT_POLICIES",
                r#"[{"name":"users.profile.read","algorithm":"gcra","limit":100,"window_secs":60,"fail":"closed"}]"#,
            ),
        ],
    )
    .await;
    let me = seed_user_id(1);
    let wallet = test_support::random_uuid();
    insert_wallet(&w.db, 1, &wallet, "USD", 1000).await;
    let user = w.sign_in(&me, &[]).await;
    begin(&mut w.redis, Outage::Stopped);
    let limited = read(&w.app, &user, &me).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body(&limited)["reason"], "cache-unavailable");
    let mut p = HashMap::new();
    p.insert("wallet_id".to_string(), wallet.clone());
    let put = http::Request::builder()
        .method("PUT")
        .uri(format!("/wallets/{wallet}/balance"))
        .body(Body::Text(
            json!({"balance": "1.00", "currency": "USD", "expected_version": 1}).to_string(),
        ))
        .unwrap()
        .with_path_parameters(p);
    let resp = balance::handle(&w.app, as_client(put, "ledger", &["wallets.balance.write"])).await;
    assert_eq!(
        resp.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        body(&resp)
    );
    let row =
        w.db.client()
            .await
            .query_one(
                "SELECT balance_minor FROM wallets WHERE wallet_id = $1::text::uuid",
                &[&wallet],
            )
            .await
            .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1000, "nothing changed");
}
both_modes!(during_an_outage_limits_and_writes_keep_their_rules);

/// A session Redis no longer holds (evicted: the cache group is
/// `volatile-lru`) is reloaded from PostgreSQL, not treated as signed out —
/// and put back, so the next request is a Redis hit again. An idled-out
/// session (PostgreSQL last saw it longer ago than the timeout) is refused
/// and marked over. Broken variant: the gate that asks nothing of
/// PostgreSQL signs the evicted session's user out.
async fn an_evicted_session_is_reloaded(mode: RedisMode) {
    let w = World::pooled(mode, &[]).await;
    let me = seed_user_id(1);
    insert_user(&w.db, 1).await;
    for broken in [false, true] {
        let app = redis_only(&w, broken);
        let user = w.sign_in(&me, &[]).await;
        let uid = UserId::parse(&me).unwrap();
        let sid = SessionId::parse(&user.session).unwrap();
        let key = w.app.keys.session(&uid, &sid).to_string();
        let mut raw = w.redis.raw().await;
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .unwrap();
        let status = read(&app, &user, &me).await.status();
        if broken {
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "the broken gate signs the user out"
            );
            continue;
        }
        assert_eq!(status, StatusCode::OK);
        let back: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert!(back.is_some_and(|v| v.starts_with('{')), "put back");
        // The next request is a Redis hit: no database query.
        let before = app.db.checkouts();
        assert_eq!(read(&app, &user, &me).await.status(), StatusCode::OK);
        assert_eq!(app.db.checkouts(), before);
    }
    // Idled out: refused, and marked over (the next request asks nothing
    // of PostgreSQL).
    let idle = w.sign_in(&me, &[]).await;
    w.idle_out(&idle).await;
    assert_eq!(
        read(&w.app, &idle, &me).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let before = w.app.db.checkouts();
    assert_eq!(
        read(&w.app, &idle, &me).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(w.app.db.checkouts(), before, "the tombstone answers");
}
both_modes!(an_evicted_session_is_reloaded);

/// A healthy hit makes no PostgreSQL query: a signed-in, rate-limited
/// profile read served from the cache takes no database connection (every
/// query takes one: `Db::checkouts`). The broken form through the same
/// count: a gate that asks PostgreSQL on every request (here the test
/// takes the session out of Redis before each read, so that the gate must).
async fn a_healthy_hit_makes_no_postgres_query(mode: RedisMode) {
    let w = World::pooled(mode, &[]).await;
    let me = seed_user_id(1);
    insert_user(&w.db, 1).await;
    let user = w.sign_in(&me, &[]).await;
    let key = w
        .app
        .keys
        .session(
            &UserId::parse(&me).unwrap(),
            &SessionId::parse(&user.session).unwrap(),
        )
        .to_string();
    for always in [false, true] {
        let app = w.another_environment();
        // Warm: the profile is cached.
        assert_eq!(read(&app, &user, &me).await.status(), StatusCode::OK);
        let before = app.db.checkouts();
        for _ in 0..5 {
            if always {
                let mut raw = w.redis.raw().await;
                let _: i64 = redis::cmd("DEL")
                    .arg(&key)
                    .query_async(&mut raw)
                    .await
                    .unwrap();
            }
            let resp = read(&app, &user, &me).await;
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.headers()["cache-status"], "paycache; hit");
        }
        let queries = app.db.checkouts() - before;
        if always {
            assert!(queries >= 5, "the broken gate: {queries}");
        } else {
            assert_eq!(queries, 0, "a hit took {queries} database connections");
        }
    }
}
both_modes!(a_healthy_hit_makes_no_postgres_query);

async fn last_seen(w: &World, sid: String) -> f64 {
    let row = w
        .db
        .client()
        .await
        .query_one(
            "SELECT extract(epoch FROM now() - last_seen_at)::float8 FROM sessions WHERE session_id = $1",
            &[&sid],
        )
        .await
        .unwrap();
    row.get::<_, f64>(0)
}

async fn set_last_seen(w: &World, sid: String, ago_secs: i64) {
    w.db.client()
        .await
        .execute(
            "UPDATE sessions SET last_seen_at = now() - make_interval(secs => $2) WHERE session_id = $1",
            &[&sid, &(ago_secs as f64)],
        )
        .await
        .unwrap();
}

/// How PostgreSQL learns of activity without a write per request: a hit
/// whose session's last recorded activity is older than
/// `SESSION_ACTIVITY_SYNC_SECS` moves it to now (beside the request), a
/// hit within the interval writes nothing. During an outage, a session
/// PostgreSQL last saw longer ago than the idle timeout plus the interval
/// is refused; one seen within it is admitted.
async fn activity_reaches_postgres_within_the_sync_interval(mode: RedisMode) {
    let mut w = World::with_redis_pooled(
        own_redis(mode),
        &[
            ("SESSION_ACTIVITY_SYNC_SECS", "60"),
            ("CACHE_TTL_SESSION_DATA_SECS", "600"),
            ("REDIS_RESPONSE_TIMEOUT_MS", "200"),
        ],
    )
    .await;
    let me = seed_user_id(1);
    insert_user(&w.db, 1).await;
    let user = w.sign_in(&me, &[]).await;
    // Within the interval: nothing written.
    set_last_seen(&w, user.session.clone(), 30).await;
    assert_eq!(read(&w.app, &user, &me).await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(last_seen(&w, user.session.clone()).await > 29.0);
    // Past it (the Redis copy says so too): moved to now, beside the
    // request.
    let uid = UserId::parse(&me).unwrap();
    let sid = SessionId::parse(&user.session).unwrap();
    let key = w.app.keys.session(&uid, &sid).to_string();
    let mut raw = w.redis.raw().await;
    let json: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    let mut s: Value = serde_json::from_str(&json).unwrap();
    s["last_activity"] = json!("2026-01-01T00:00:00Z");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(s.to_string())
        .arg("KEEPTTL")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(read(&w.app, &user, &me).await.status(), StatusCode::OK);
    let mut synced = false;
    for _ in 0..50 {
        if last_seen(&w, user.session.clone()).await < 5.0 {
            synced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(synced, "the activity reached PostgreSQL");

    // During an outage: the idle timeout (600 s) plus the interval (60 s).
    let recent = w.sign_in(&me, &[]).await;
    let stale = w.sign_in(&me, &[]).await;
    set_last_seen(&w, recent.session.clone(), 640).await;
    set_last_seen(&w, stale.session.clone(), 670).await;
    begin(&mut w.redis, Outage::Stopped);
    assert_eq!(read(&w.app, &recent, &me).await.status(), StatusCode::OK);
    assert_eq!(
        read(&w.app, &stale, &me).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // And the fallback recorded the recent one's activity.
    assert!(last_seen(&w, recent.session.clone()).await < 5.0);
}
both_modes!(activity_reaches_postgres_within_the_sync_interval);

/// A sign-out while Redis is down is recorded in PostgreSQL — refused at
/// once by the fallback — and applied to Redis by the sweep once Redis is
/// back: after it, the token is refused by Redis alone, for as long as a
/// verifier could accept it (the blacklist entry lives to the token's
/// `exp` plus the grace, the tombstones `TOMBSTONE_TTL`). And once the
/// tombstones are gone (expired, evicted), PostgreSQL's reload for the
/// real-time checks (`sessions::reload`) does not put the ended sessions
/// back: both devices stay refused.
async fn a_sign_out_during_an_outage_reaches_redis(mode: RedisMode) {
    let mut w = World::with_redis_pooled(own_redis(mode), &SHORT).await;
    let me = seed_user_id(1);
    insert_user(&w.db, 1).await;
    let user = w.sign_in(&me, &[]).await;
    let other_device = w.sign_in(&me, &[]).await;
    assert_eq!(read(&w.app, &user, &me).await.status(), StatusCode::OK);
    begin(&mut w.redis, Outage::Paused);
    let all = http::Request::builder()
        .method("POST")
        .body(Body::Text(json!({"scope": "all"}).to_string()))
        .unwrap();
    let out = logout::handle(&w.app, user.on(all)).await;
    assert_eq!(out.status(), StatusCode::OK, "{}", body(&out));
    assert_eq!(
        read(&w.app, &user, &me).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        read(&w.app, &other_device, &me).await.status(),
        StatusCode::UNAUTHORIZED
    );
    end(&mut w.redis, Outage::Paused);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = sessions::apply_pending(&w.app.sessions).await.unwrap();
    assert_eq!(report.sessions, 2, "{report:?}");
    assert_eq!(report.tokens, 1, "{report:?}");
    // Redis alone now refuses them (no database query).
    let app = w.another_environment();
    let before = app.db.checkouts();
    for who in [&user, &other_device] {
        assert_eq!(
            read(&app, who, &me).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(app.db.checkouts(), before);
    // For as long as a verifier could accept them: the token is valid for
    // another hour, and a tombstone lasts a day and the grace.
    let left = sessions::blacklist_ttl(&w.app.sessions, &Jti::parse(&user.jti).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        left > Duration::from_secs(3600),
        "the swept revocation lasts past the token's exp: {left:?}"
    );
    let uid = UserId::parse(&me).unwrap();
    let mut raw = w.redis.raw().await;
    for who in [&user, &other_device] {
        let key = w
            .app
            .keys
            .session(&uid, &SessionId::parse(&who.session).unwrap())
            .to_string();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .unwrap();
        let floor = sessions::TOMBSTONE_TTL - Duration::from_secs(60);
        assert!(
            u128::try_from(ttl).unwrap_or(0) > floor.as_millis(),
            "the swept tombstone lasts TOMBSTONE_TTL: {ttl} ms ({:?})",
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<String>>(&mut raw)
                .await
        );
    }
    // Nothing left pending.
    let again = sessions::apply_pending(&w.app.sessions).await.unwrap();
    assert_eq!((again.sessions, again.tokens), (0, 0));

    // The tombstones gone: the reload the real-time checks use does not
    // put the ended sessions back, and both devices stay refused; a live
    // session is reloaded (the reload works).
    let live = w.sign_in(&me, &[]).await;
    let ids: Vec<(UserId, SessionId)> = [&user, &other_device, &live]
        .iter()
        .map(|who| (uid, SessionId::parse(&who.session).unwrap()))
        .collect();
    for (u, sid) in &ids {
        let _: i64 = redis::cmd("DEL")
            .arg(w.app.keys.session(u, sid).to_string())
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    let reloaded = sessions::reload(&w.app.sessions, &ids).await.unwrap();
    assert_eq!(
        reloaded,
        vec![ids[2].clone()],
        "only the live session is put back"
    );
    let app = w.another_environment();
    for who in [&user, &other_device] {
        assert_eq!(
            read(&app, who, &me).await.status(),
            StatusCode::UNAUTHORIZED,
            "an ended session stays ended after its tombstone"
        );
    }
    assert_eq!(read(&app, &live, &me).await.status(), StatusCode::OK);
}
both_modes!(a_sign_out_during_an_outage_reaches_redis);

/// A sign-in during the outage: its session is written to PostgreSQL (the
/// trigger succeeds, Cognito issues the token) and the API admits it from
/// there; once Redis is back, the first request puts it into Redis. The
/// broken variant — a gate without the fallback — refuses it (503).
async fn a_sign_in_during_an_outage_is_admitted(mode: RedisMode) {
    let mut w = World::with_redis_pooled(own_redis(mode), &SHORT).await;
    let me = seed_user_id(1);
    insert_user(&w.db, 1).await;
    begin(&mut w.redis, Outage::Paused);
    let user = w.sign_in(&me, &[]).await;
    assert_eq!(read(&w.app, &user, &me).await.status(), StatusCode::OK);
    let broken = redis_only(&w, true);
    assert_eq!(
        read(&broken, &user, &me).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    end(&mut w.redis, Outage::Paused);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let app = w.another_environment();
    assert_eq!(read(&app, &user, &me).await.status(), StatusCode::OK);
    let before = app.db.checkouts();
    let hit = read(&app, &user, &me).await;
    assert_eq!(hit.status(), StatusCode::OK);
    assert_eq!(app.db.checkouts(), before, "back in Redis");
}
both_modes!(a_sign_in_during_an_outage_is_admitted);
