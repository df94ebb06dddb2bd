//! Per-check latency and checks per second of each rate-limit algorithm,
//! next to the raw `EVALSHA` round trip of a trivial script on the same
//! throwaway `redis-server`, in the same run. `make bench` runs it.
#![allow(clippy::unwrap_used, reason = "benchmark set-up")]

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use paycache::Redis;
use paycache::keys::{Endpoint, Keyspace, UserId};
use paycache::ratelimit::{Algorithm, Policies, RateLimiter};
use test_support::RedisServer;

fn bench(c: &mut Criterion) {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let policies = serde_json::to_string(
        &Algorithm::ALL
            .iter()
            .map(|a| {
                serde_json::json!({"name": a.as_str(), "algorithm": a.as_str(),
                                        "limit": 1_000_000, "window_secs": 3600, "fail": "open"})
            })
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let limiter = rt.block_on(async {
        let redis = {
            let (redis, breaker) = test_support::standalone_redis(&server.url());
            Redis::new(&redis, breaker)
        }
        .unwrap();
        RateLimiter::new(
            redis,
            Keyspace::new("bench"),
            Policies::parse(Some(&policies), None).unwrap(),
            Duration::from_secs(1),
            0,
        )
    });
    let users: Vec<UserId> = (0..1000u128)
        .map(|n| UserId::from(uuid::Uuid::from_u128(n + 1)))
        .collect();
    let mut raw = rt.block_on(async {
        redis::aio::ConnectionManager::new(redis::Client::open(server.url()).unwrap())
            .await
            .unwrap()
    });
    let trivial = redis::Script::new("return 1");

    let mut group = c.benchmark_group("rate limit check");
    group.measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(1));
    group.bench_function("raw EVALSHA (return 1)", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = raw.clone();
            let script = &trivial;
            async move {
                let v: i64 = script
                    .prepare_invoke()
                    .invoke_async(&mut conn)
                    .await
                    .unwrap();
                v
            }
        })
    });
    for algorithm in Algorithm::ALL {
        let policy = Endpoint::parse(algorithm.as_str()).unwrap();
        let mut i = 0usize;
        group.bench_function(algorithm.as_str(), |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 1) % users.len();
                let (user, policy, limiter) = (&users[i], &policy, &limiter);
                async move {
                    let d = limiter.check(user, policy, 1).await;
                    debug_assert!(d.allowed && d.reason.is_none());
                    d
                }
            })
        });
    }
    group.finish();
    let _ = &mut raw;
    drop(server);
}

criterion_group!(benches, bench);
criterion_main!(benches);
