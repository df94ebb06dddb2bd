//! The cache-hit path of `get_or_load` next to the raw `GET` round trip it
//! is built on, on the same throwaway `redis-server`, in the same run.
//!
//! `make bench` runs it; docs/operations.md reports the ratio. The target is a hit
//! within 1.25x of a raw GET: everything the cache adds (breaker check,
//! timeout, envelope and JSON decoding) must be small next to one round trip.
#![allow(clippy::unwrap_used, reason = "benchmark set-up")]

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use paycache::config::{CacheAsideConfig, TtlConfig};
use paycache::keys::{Keyspace, UserId};
use paycache::profile::UserProfile;
use paycache::{CacheAside, CacheStatus, Redis};
use redis::AsyncCommands;
use test_support::RedisServer;

fn bench(c: &mut Criterion) {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = rt.block_on(async {
        let (redis, breaker) = test_support::standalone_redis(&server.url());
        Redis::new(&redis, breaker).unwrap()
    });
    let ttl = TtlConfig {
        user_profile: Duration::from_secs(3600),
        wallet_balance: Duration::from_secs(300),
        exchange_rates: Duration::from_secs(60),
        fraud_scores: Duration::from_secs(300),
        session_data: Duration::from_secs(1800),
        rate_limits: Duration::from_secs(60),
        jitter_percent: 10,
        negative: Duration::from_secs(30),
    };
    let cache = CacheAside::new(
        redis.clone(),
        ttl,
        CacheAsideConfig {
            lock_lease: Duration::from_secs(3),
            lock_wait: Duration::from_millis(1500),
            xfetch_beta: 1.0,
        },
    );
    let keys = Keyspace::new("bench");
    let user = UserId::parse("00000000-0000-4000-8000-000000000001").unwrap();
    let key = keys.user_profile(&user);
    let profile = UserProfile {
        user_id: user,
        email: "user1@example.com".into(),
        display_name: "User 1".into(),
        country: "GB".into(),
        verified: true,
        created_at: time::macros::datetime!(2025-01-01 00:01 UTC),
        updated_at: time::macros::datetime!(2025-06-01 00:01 UTC),
    };
    // Fill the cache once, and give the raw GET a value of the same size.
    let raw_key = "bench:raw";
    rt.block_on(async {
        let p = profile.clone();
        let first = cache
            .get_or_load(&key, || async move { Ok::<_, ()>(Some(p)) })
            .await
            .unwrap();
        assert_eq!(first.status, CacheStatus::Miss { stored: true });
        let k = &key;
        let stored: Vec<u8> = redis
            .run(|mut c| async move { c.get(k).await })
            .await
            .unwrap();
        let mut conn =
            redis::aio::ConnectionManager::new(redis::Client::open(server.url()).unwrap())
                .await
                .unwrap();
        let _: () = conn.set(raw_key, stored).await.unwrap();
    });
    let mut raw_conn = rt.block_on(async {
        redis::aio::ConnectionManager::new(redis::Client::open(server.url()).unwrap())
            .await
            .unwrap()
    });

    let mut group = c.benchmark_group("profile read");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("raw GET round trip", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = raw_conn.clone();
            async move {
                let v: Vec<u8> = conn.get(raw_key).await.unwrap();
                v
            }
        })
    });
    group.bench_function("get_or_load hit", |b| {
        b.to_async(&rt).iter(|| async {
            let got = cache
                .get_or_load(&key, || async { Ok::<Option<UserProfile>, ()>(None) })
                .await
                .unwrap();
            debug_assert!(got.status.is_hit());
            got
        })
    });
    group.finish();
    let _ = &mut raw_conn;
    drop(server);
}

criterion_group!(benches, bench);
criterion_main!(benches);
