//! What a Redis outage costs a signed-in caller, and what sign-in costs
//! with its PostgreSQL write — each next to its baseline in the same run
//! (docs/operations.md → Budgets):
//!
//! - with Redis stopped and the circuit breaker open: a signed-in,
//!   rate-limited profile read through the route (the session checked in
//!   PostgreSQL concurrently with the profile read) against the
//!   unauthenticated fall-through (`get_profile` alone: PostgreSQL);
//! - healthy: a sign-in (its PostgreSQL row and its Redis script, sent
//!   together) against the Redis script alone (the sign-in before
//!   PostgreSQL held sessions).
#![allow(clippy::unwrap_used, reason = "benchmark set-up")]

use std::collections::HashMap;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use lambda_http::{Body, RequestExt};
use paycache::App;
use paycache::keys::UserId;
use test_support::{RedisServer, TestDb, TestRedis, insert_user};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut server = RedisServer::start();
    let url = server.url();
    // Stopped later: the world uses the server through its URL.
    let redis = TestRedis::Shared {
        urls: url,
        mode: paycache::config::RedisMode::Standalone,
    };
    let (app, user, db) = rt.block_on(async {
        let db = TestDb::create().await;
        let user = insert_user(&db, 1).await;
        let extra = [
            // Every check allowed: the rate limit is not what is measured.
            (
                "RATE_LIMIT_DEFAULT",
                r#"{"algorithm": "gcra", "limit": 1000000, "burst": 1000000, "window_secs": 86400, "fail": "open"}"#,
            ),
            // Once open, the breaker stays open for the whole run.
            ("CACHE_BREAKER_COOLDOWN_MS", "600000"),
            ("REDIS_RESPONSE_TIMEOUT_MS", "250"),
        ];
        let app = App::new(test_support::config(&redis, &db, &extra)).unwrap();
        (app, UserId::parse(&user).unwrap(), db)
    });
    let session = paycache::sessions::Session {
        user_id: user,
        email: "user1@example.com".into(),
        roles: vec!["customer".into()],
        permissions: Vec::new(),
        last_activity: time::OffsetDateTime::now_utc(),
        ip_address: None,
        device_info: None,
    };

    let mut group = c.benchmark_group("sessions");
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("sign-in: PostgreSQL row + Redis script, together", |b| {
        b.to_async(&rt).iter(|| async {
            paycache::sessions::create(&app.sessions, &session)
                .await
                .unwrap()
        })
    });
    group.bench_function("sign-in before: the Redis script alone", |b| {
        b.to_async(&rt).iter(|| async {
            paycache::sessions::create_in_redis_only(&app.sessions, &session)
                .await
                .unwrap()
        })
    });
    group.finish();

    // The outage: a signed-in user, then Redis stopped and the breaker
    // tripped.
    let sid = rt
        .block_on(paycache::sessions::create(&app.sessions, &session))
        .unwrap();
    server.stop();
    let claims: HashMap<String, String> = [
        ("sub", user.to_string()),
        ("sid", sid.to_string()),
        ("client_id", "paycache-web".to_owned()),
        ("token_use", "access".to_owned()),
        ("jti", "bench-outage".to_owned()),
        (
            "exp",
            (time::OffsetDateTime::now_utc().unix_timestamp() + 86_400).to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let request = move || {
        use lambda_http::aws_lambda_events::apigw::{
            ApiGatewayRequestAuthorizer, ApiGatewayRequestAuthorizerJwtDescription,
            ApiGatewayV2httpRequestContext,
        };
        let mut jwt = ApiGatewayRequestAuthorizerJwtDescription::default();
        jwt.claims = claims.clone();
        let mut auth = ApiGatewayRequestAuthorizer::default();
        auth.jwt = Some(jwt);
        let mut ctx = ApiGatewayV2httpRequestContext::default();
        ctx.authorizer = Some(auth);
        let mut p = HashMap::new();
        p.insert("user_id".to_string(), user.to_string());
        http::Request::builder()
            .method("GET")
            .uri(format!("/users/{user}/profile"))
            .body(Body::Empty)
            .unwrap()
            .with_path_parameters(p)
            .with_request_context(lambda_http::request::RequestContext::ApiGatewayV2(ctx))
    };
    rt.block_on(async {
        for _ in 0..10 {
            let _ = paycache::routes::profile_read::handle(&app, request()).await;
        }
    });
    let first = rt.block_on(paycache::routes::profile_read::handle(&app, request()));
    assert_eq!(
        first.status(),
        200,
        "the signed-in read is served during the outage"
    );

    let mut group = c.benchmark_group("redis outage, breaker open");
    group.measurement_time(Duration::from_secs(4));
    group.bench_function(
        "signed-in profile read (session checked in PostgreSQL)",
        |b| {
            b.to_async(&rt).iter(|| async {
                let resp = paycache::routes::profile_read::handle(&app, request()).await;
                assert_eq!(resp.status(), 200);
            })
        },
    );
    let (jti, exp) = (
        paycache::keys::Jti::parse("bench-outage").unwrap(),
        time::OffsetDateTime::now_utc() + time::Duration::days(1),
    );
    group.bench_function("the session check alone (PostgreSQL)", |b| {
        b.to_async(&rt).iter(|| async {
            paycache::sessions::authenticate(&app.sessions, &user, &sid, &jti, exp)
                .await
                .unwrap()
        })
    });
    group.bench_function("unauthenticated fall-through (get_profile alone)", |b| {
        b.to_async(&rt).iter(|| async {
            paycache::profile::get_profile(&app.profiles, &user)
                .await
                .unwrap()
        })
    });
    group.finish();
    drop(db);
}

criterion_group!(benches, bench);
criterion_main!(benches);
