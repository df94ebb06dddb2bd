//! Every cache operation next to the raw round trip it is built on, on the
//! same throwaway `redis-server` and PostgreSQL, in the same run: the
//! docs/architecture.md's round-trip table reports each median and its ratio to a raw
//! `GET`. `make bench` runs it.
#![allow(clippy::unwrap_used, reason = "benchmark set-up")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use paycache::App;
use paycache::audit::AuditEvent;
use paycache::balance::{BalanceWrite, WriteOutcome};
use paycache::keys::{Endpoint, Jti, ServiceName, SessionId, UserId, WalletId};
use paycache::money::Currency;
use test_support::{RedisServer, TestDb, TestRedis, insert_user, insert_wallet};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start();
    let url = server.url();
    let redis = TestRedis::Standalone(server);
    let (app, user, wallet) = rt.block_on(async {
        let db = TestDb::create().await;
        let user = insert_user(&db, 1).await;
        let wallet = test_support::random_uuid();
        insert_wallet(&db, 1, &wallet, "USD", 100).await;
        // The audit buffer must not fill up during the run, and appends are
        // measured without the writer-side flush (a PostgreSQL insert every
        // AUDIT_FLUSH_THRESHOLD appends).
        // And a loaded machine (CI runs this once as a smoke test) must not
        // turn a slow answer into a failed set-up.
        let extra = [
            ("AUDIT_BUFFER_MAX_EVENTS", "100000000"),
            ("AUDIT_FLUSH_THRESHOLD", "1000000"),
            ("REDIS_RESPONSE_TIMEOUT_MS", "5000"),
            ("CACHE_BREAKER_FAILURES", "1000"),
            // Every check allowed: a remembered denial costs no round trip
            // and is not what this row measures.
            (
                "RATE_LIMIT_DEFAULT",
                r#"{"algorithm": "gcra", "limit": 1000000, "burst": 1000000, "window_secs": 86400, "fail": "open"}"#,
            ),
        ];
        let app = App::new(test_support::config(&redis, &db, &extra)).unwrap();
        (
            app,
            UserId::parse(&user).unwrap(),
            WalletId::parse(&wallet).unwrap(),
        )
    });
    let mut raw = rt.block_on(async {
        redis::aio::ConnectionManager::new(redis::Client::open(url).unwrap())
            .await
            .unwrap()
    });
    rt.block_on(async {
        // Warm the entries the hit paths read.
        paycache::profile::get_profile(&app.profiles, &user)
            .await
            .unwrap();
        paycache::balance::get_balance(&app.balances, &wallet)
            .await
            .unwrap();
        let _: () = redis::AsyncCommands::set(&mut raw, "raw-key", "x".repeat(200))
            .await
            .unwrap();
    });

    let mut group = c.benchmark_group("operations");
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("raw GET", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = raw.clone();
            async move {
                let v: Option<String> = redis::AsyncCommands::get(&mut conn, "raw-key")
                    .await
                    .unwrap();
                v
            }
        })
    });
    group.bench_function("profile read, cache hit", |b| {
        b.to_async(&rt).iter(|| async {
            let r = paycache::profile::get_profile(&app.profiles, &user)
                .await
                .unwrap();
            assert!(r.value.is_some());
        })
    });
    group.bench_function("balance read, cache hit", |b| {
        b.to_async(&rt).iter(|| async {
            paycache::balance::get_balance(&app.balances, &wallet)
                .await
                .unwrap()
        })
    });
    let version = AtomicU64::new(1);
    let usd = Currency::parse("USD").unwrap();
    group.bench_function("balance write (PostgreSQL commit included)", |b| {
        b.to_async(&rt).iter(|| async {
            let expected = version.load(Ordering::SeqCst);
            let write = BalanceWrite {
                wallet,
                balance_minor: (expected % 1000) as i64,
                currency: usd,
                expected_version: expected,
                idempotency_key: None,
                actor: None,
            };
            match paycache::balance::write_balance(&app.balances, &write)
                .await
                .unwrap()
            {
                WriteOutcome::Applied { balance, .. } => {
                    version.store(balance.version, Ordering::SeqCst)
                }
                other => panic!("{other:?}"),
            }
        })
    });
    let endpoint = Endpoint::parse("bench.op").unwrap();
    group.bench_function("rate-limit check (gcra, the default)", |b| {
        b.to_async(&rt).iter(|| async {
            let d = app.limiter.check(&user, &endpoint, 1).await;
            assert!(d.allowed);
            d
        })
    });
    let service = ServiceName::parse("bench").unwrap();
    group.bench_function("audit append", |b| {
        b.to_async(&rt).iter(|| async {
            let event = AuditEvent {
                event_id: uuid::Uuid::new_v4(),
                service: service.clone(),
                event_type: "bench".into(),
                occurred_at: time::OffsetDateTime::now_utc(),
                payload: serde_json::json!({"n": 1}),
            };
            paycache::audit::append(&app.audit, &event).await.unwrap()
        })
    });
    let session = SessionId::parse("YmVuY2gtc2Vzc2lvbg").unwrap();
    let jti = Jti::parse("bench-jti").unwrap();
    group.bench_function("session + revocation check", |b| {
        b.to_async(&rt).iter(|| async {
            paycache::sessions::check(&app.sessions, &user, &session, &jti).await
        })
    });
    group.bench_function(
        "invalidation: UserProfileUpdated (PostgreSQL lookup included)",
        |b| {
            b.to_async(&rt).iter(|| async {
                paycache::invalidation::user_profile_updated(&app.invalidation, &user)
                    .await
                    .unwrap()
            })
        },
    );
    group.bench_function("health check", |b| {
        b.to_async(&rt)
            .iter(|| async { paycache::health::check(&app.health).await.unwrap() })
    });
    // What AUTH_VERIFY_IN_FUNCTION adds to every request: one RS256
    // verification of the bearer token (no Redis).
    let (verifier, token) = bearer_token();
    group.bench_function(
        "bearer token verification (RS256, AUTH_VERIFY_IN_FUNCTION)",
        |b| b.iter(|| verifier.verify_token(&token).unwrap()),
    );
    group.finish();
    drop(redis);
}

/// The test key pair's verifier and a user's access token signed with it.
fn bearer_token() -> (paycache::auth::Verifier, String) {
    const KEY: &[u8] = include_bytes!("../../../tests/fixtures/jwt-test-key.pem");
    const JWKS: &str = include_str!("../../../tests/fixtures/jwks.json");
    let vars: std::collections::HashMap<&str, String> = [
        ("AUTH_ISSUER", "https://auth.paycache.test".to_owned()),
        ("AUTH_AUDIENCE", "paycache-web".to_owned()),
        ("AUTH_JWKS", JWKS.to_owned()),
    ]
    .into_iter()
    .collect();
    let config = paycache::auth::AuthConfig::from_lookup(|k| vars.get(k).cloned()).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = serde_json::json!({
        "sub": "00000000-0000-4000-8000-000000000001", "sid": "YmVuY2gtc2Vzc2lvbg",
        "jti": "bench-jti", "iss": "https://auth.paycache.test", "client_id": "paycache-web",
        "token_use": "access", "iat": now, "exp": now + 86_400,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-key-1".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(KEY).unwrap(),
    )
    .unwrap();
    (paycache::auth::Verifier::new(config).unwrap(), token)
}

criterion_group!(benches, bench);
criterion_main!(benches);
