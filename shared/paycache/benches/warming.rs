//! Keys warmed per second by `cache-warmer`'s engine on a local Redis and
//! PostgreSQL holding the deterministic seed data (10,000 users). Each
//! iteration warms 200 users from a cold cache (a fresh key prefix).
//! `make bench` starts the servers; `PAYCACHE_TEST_PG` names the database.
#![allow(clippy::unwrap_used, reason = "benchmark set-up")]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use paycache::App;
use test_support::{TestDb, TestRedis};

/// Throughput is measured, not resilience: on a loaded machine (CI runs this
/// once as a smoke test beside other work) a 250 ms response timeout could
/// fail keys and the breaker open; neither is what this measures.
const PATIENT: [(&str, &str); 2] = [
    ("REDIS_RESPONSE_TIMEOUT_MS", "5000"),
    ("CACHE_BREAKER_FAILURES", "1000"),
];

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let redis = TestRedis::standalone();
    let (db, users, keys_per_run) = rt.block_on(async {
        let db = TestDb::create().await;
        let app = App::new(test_support::config(&redis, &db, &PATIENT)).unwrap();
        app.db.seed_local().await.unwrap();
        let users = paycache::warming::most_recently_active(&app.warmer, 200)
            .await
            .unwrap();
        let report = paycache::warming::warm(
            &app.warmer,
            Some(users.clone()),
            Instant::now() + Duration::from_secs(600),
        )
        .await;
        assert_eq!(report.failed, 0, "{report:?} (the reasons are in the log)");
        (db, users, report.warmed)
    });
    let mut group = c.benchmark_group("cache warming");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(keys_per_run));
    group.bench_function(format!("200 users, {keys_per_run} keys, cold cache"), |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (redis, db, users) = (&redis, &db, users.clone());
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // A fresh prefix: a cold cache, without flushing anything.
                    let app = App::new(test_support::config(redis, db, &PATIENT)).unwrap();
                    let started = Instant::now();
                    let report = paycache::warming::warm(
                        &app.warmer,
                        Some(users.clone()),
                        Instant::now() + Duration::from_secs(600),
                    )
                    .await;
                    total += started.elapsed();
                    assert_eq!(report.warmed, keys_per_run);
                }
                total
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
