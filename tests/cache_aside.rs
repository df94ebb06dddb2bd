//! `get_or_load` against real Redis (standalone and a 3+3 cluster) and a
//! real PostgreSQL schema.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use paycache::config::RedisMode;
use paycache::keys::UserId;
use paycache::{CacheStatus, RedisUnavailable};
use paycache_tests::{World, both_modes};
use test_support::{RedisServer, TestRedis, insert_user, seed_user_id};

fn user(n: u64) -> UserId {
    UserId::parse(&seed_user_id(n)).unwrap()
}

async fn miss_then_hit(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let key = w.app.keys.user_profile(&user(1));
    let loads = AtomicUsize::new(0);
    let load = || async {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok::<_, ()>(Some(serde_json::json!({"name": "one"})))
    };
    let first = w.app.cache.get_or_load(&key, load).await.unwrap();
    assert_eq!(first.status, CacheStatus::Miss { stored: true });
    assert_eq!(first.value, Some(serde_json::json!({"name": "one"})));
    let second = w.app.cache.get_or_load(&key, load).await.unwrap();
    assert_eq!(second.status, CacheStatus::Hit);
    assert_eq!(second.value, first.value);
    assert_eq!(loads.load(Ordering::SeqCst), 1);

    // The stored key has the family's TTL (3600 s, less at most 10 % jitter)
    // and the lease is gone.
    let mut raw = w.redis.raw().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(key.as_str())
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!((3_240_000..=3_600_000).contains(&ttl), "ttl {ttl}");
    assert_eq!(w.keys().await, vec![key.as_str().to_owned()]);
}
both_modes!(miss_then_hit);

async fn not_found_is_cached_briefly(mode: RedisMode) {
    let w = World::new(mode, &[("CACHE_NEGATIVE_TTL_SECS", "30")]).await;
    let key = w.app.keys.user_profile(&user(2));
    let loads = AtomicUsize::new(0);
    let load = || async {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok::<Option<serde_json::Value>, ()>(None)
    };
    let first = w.app.cache.get_or_load(&key, load).await.unwrap();
    assert_eq!(first.value, None);
    assert_eq!(first.status, CacheStatus::Miss { stored: true });
    let second = w.app.cache.get_or_load(&key, load).await.unwrap();
    assert_eq!(second.value, None);
    assert_eq!(second.status, CacheStatus::Hit);
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let mut raw = w.redis.raw().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(key.as_str())
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!((27_000..=30_000).contains(&ttl), "negative ttl {ttl}");
}
both_modes!(not_found_is_cached_briefly);

/// 200 concurrent misses on one key, spread over 8 execution environments
/// (8 connections, 8 breakers: nothing shared but Redis), load once.
async fn run_stampede(w: &World, environments: usize) -> usize {
    let apps: Vec<_> = (0..environments).map(|_| w.another_environment()).collect();
    let key = w.app.keys.user_profile(&user(3));
    let loads = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(200));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let app = apps[i % apps.len()].clone();
        let key = key.clone();
        let loads = loads.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            app.cache
                .get_or_load(&key, || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    // A database read that takes a while, so the others
                    // really are waiting while it runs.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, ()>(Some(serde_json::json!({"user": 3})))
                })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.value, Some(serde_json::json!({"user": 3})));
        assert!(
            !matches!(got.status, CacheStatus::Bypass(_)),
            "{:?}",
            got.status
        );
    }
    loads.load(Ordering::SeqCst)
}

async fn stampede_loads_once(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    assert_eq!(
        run_stampede(&w, 8).await,
        1,
        "200 concurrent misses must cause exactly one load"
    );

    // The broken variant: waiters that do not wait (CACHE_LOCK_WAIT_MS=0)
    // go to the database themselves. The same counter sees the stampede,
    // which proves the assertion above can fail.
    let broken = World::new(mode, &[("CACHE_LOCK_WAIT_MS", "0")]).await;
    let loads = run_stampede(&broken, 8).await;
    eprintln!("{mode:?}: waiters that do not wait: {loads} database loads for 200 misses");
    assert!(
        loads > 1,
        "the broken variant should stampede, saw {loads} load(s)"
    );
}
both_modes!(stampede_loads_once);

async fn invalidation_beats_an_in_flight_load(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let key = w.app.keys.user_profile(&user(4));
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let app = w.app.clone();
    let k = key.clone();
    let reader = tokio::spawn(async move {
        app.cache
            .get_or_load(&k, || async move {
                // Read "the old row", then stall before storing it.
                let _ = loaded_tx.send(());
                let _ = go_rx.await;
                Ok::<_, ()>(Some(serde_json::json!({"version": "old"})))
            })
            .await
            .unwrap()
    });
    loaded_rx.await.unwrap();
    // The row changes and the change invalidates the cache.
    w.app.cache.invalidate(&key).await.unwrap();
    go_tx.send(()).unwrap();
    let got = reader.await.unwrap();
    assert_eq!(
        got.status,
        CacheStatus::Miss { stored: false },
        "the stale load must not be stored"
    );
    assert!(
        w.keys().await.is_empty(),
        "nothing may be cached after the invalidation"
    );
}
both_modes!(invalidation_beats_an_in_flight_load);

/// A failed load gives its lease back at once (`release_lease.lua`: only
/// the holder's token deletes it), so the next reader loads now instead of
/// waiting out the lease.
async fn a_failed_load_gives_its_lease_back(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let user = UserId::parse(&seed_user_id(7)).unwrap();
    let key = w.app.keys.user_profile(&user);
    let failed = w
        .app
        .cache
        .get_or_load(&key, || async {
            Err::<Option<u8>, &str>("the database failed")
        })
        .await;
    assert_eq!(failed.err(), Some("the database failed"));
    let mut c = w.redis.raw().await;
    let left: Option<String> = redis::cmd("GET")
        .arg(key.lock_key())
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(left, None, "the failed load's lease is released");
    // The next reader loads at once.
    let next = w
        .app
        .cache
        .get_or_load(&key, || async { Ok::<_, ()>(Some(2u8)) })
        .await
        .unwrap();
    assert_eq!(next.value, Some(2));
    assert!(
        matches!(next.status, CacheStatus::Miss { .. }),
        "{:?}",
        next.status
    );
}
both_modes!(a_failed_load_gives_its_lease_back);

async fn xfetch_refreshes_early(mode: RedisMode) {
    // TTL 1 s, a load that takes 300 ms, β = 10: at 800 ms the refresh is
    // all but certain (P = 1 − e^(−200/3000) ≈ 0.94 per read; 10 reads).
    let w = World::new(
        mode,
        &[
            ("CACHE_TTL_USER_PROFILE_SECS", "1"),
            ("CACHE_TTL_JITTER_PERCENT", "0"),
            ("CACHE_XFETCH_BETA", "10"),
        ],
    )
    .await;
    let key = w.app.keys.user_profile(&user(5));
    let load = || async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok::<_, ()>(Some(1u32))
    };
    let first = w.app.cache.get_or_load(&key, load).await.unwrap();
    assert_eq!(first.status, CacheStatus::Miss { stored: true });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut refreshed = false;
    for _ in 0..10 {
        let got = w.app.cache.get_or_load(&key, load).await.unwrap();
        if matches!(got.status, CacheStatus::EarlyRefresh { stored: true }) {
            refreshed = true;
            break;
        }
    }
    assert!(
        refreshed,
        "XFetch should refresh a value this close to expiry"
    );

    // β = 0 turns it off. TTL 4 s, read after 1 s: with β = 10 each read
    // would refresh with P = e^(−3000/3000) ≈ 0.37, so ten plain hits in a
    // row show that β = 0 really is off — and 3 s of slack keep a slow
    // machine from reaching the real expiry.
    let off = World::new(
        mode,
        &[
            ("CACHE_TTL_USER_PROFILE_SECS", "4"),
            ("CACHE_TTL_JITTER_PERCENT", "0"),
            ("CACHE_XFETCH_BETA", "0"),
        ],
    )
    .await;
    let key = off.app.keys.user_profile(&user(5));
    off.app.cache.get_or_load(&key, load).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for _ in 0..10 {
        let got = off.app.cache.get_or_load(&key, load).await.unwrap();
        assert_eq!(got.status, CacheStatus::Hit);
    }
}
both_modes!(xfetch_refreshes_early);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_and_lease_share_a_cluster_slot() {
    let w = World::new(RedisMode::Cluster, &[]).await;
    let key = w.app.keys.user_profile(&user(6));
    let mut raw = w.redis.raw().await;
    let slot = |k: String| {
        let mut c = raw.clone();
        async move {
            let s: i64 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(k)
                .query_async(&mut c)
                .await
                .unwrap();
            s
        }
    };
    assert_eq!(
        slot(key.as_str().to_owned()).await,
        slot(key.lock_key()).await
    );
    // And a different user lands (almost surely) elsewhere: the tag is the id.
    let other = w.app.keys.user_profile(&user(7));
    assert_ne!(
        slot(key.as_str().to_owned()).await,
        slot(other.as_str().to_owned()).await
    );
    let _: () = redis::cmd("PING").query_async(&mut raw).await.unwrap();
}

/// With Redis killed, reads are served from the database; once the breaker
/// is open they no longer touch Redis at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_falls_through_and_breaker_opens() {
    let server = RedisServer::start();
    let port = server.port;
    let mut w = World::with_redis(
        TestRedis::Standalone(server),
        &[
            ("CACHE_BREAKER_FAILURES", "3"),
            ("CACHE_BREAKER_COOLDOWN_MS", "60000"),
        ],
    )
    .await;
    insert_user(&w.db, 8).await;
    let key = w.app.keys.user_profile(&user(8));
    let loads = AtomicUsize::new(0);
    let load = || async {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok::<_, ()>(Some(8u8))
    };
    assert_eq!(
        w.app.cache.get_or_load(&key, load).await.unwrap().status,
        CacheStatus::Miss { stored: true }
    );

    if let TestRedis::Standalone(server) = &mut w.redis {
        server.stop();
    }
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let got = w.app.cache.get_or_load(&key, load).await.unwrap();
        assert_eq!(got.value, Some(8));
        statuses.push(got.status);
    }
    assert!(
        statuses.iter().all(|s| matches!(s, CacheStatus::Bypass(_))),
        "{statuses:?}"
    );
    assert_eq!(
        statuses[4],
        CacheStatus::Bypass(RedisUnavailable::BreakerOpen)
    );
    assert!(w.app.redis.breaker().is_open());
    assert_eq!(
        paycache::http::cache_status_header(&statuses[4]),
        "paycache; fwd=uri-miss; detail=redis-unavailable"
    );
    let _ = port;
}

/// With Redis frozen (SIGSTOP: connections open, no answers) a read costs at
/// most one response timeout until the breaker opens; after that, the
/// outage adds almost nothing. "Almost nothing" is measured against a
/// baseline from the same run — the same load without any cache — so a busy
/// machine slows both sides alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_costs_one_timeout_until_the_breaker_opens() {
    let server = RedisServer::start();
    let w = World::with_redis(
        TestRedis::Standalone(server),
        &[
            ("REDIS_RESPONSE_TIMEOUT_MS", "100"),
            ("CACHE_BREAKER_FAILURES", "3"),
            ("CACHE_BREAKER_COOLDOWN_MS", "60000"),
        ],
    )
    .await;
    let db_user = insert_user(&w.db, 9).await;
    let id = UserId::parse(&db_user).unwrap();
    // Warm the connection so the pause hits an established socket.
    paycache::profile::get_profile(&w.app.profiles, &id)
        .await
        .unwrap();
    let TestRedis::Standalone(server) = &w.redis else {
        unreachable!()
    };
    server.pause();

    for _ in 0..3 {
        let started = Instant::now();
        let got = paycache::profile::get_profile(&w.app.profiles, &id)
            .await
            .unwrap();
        assert!(got.value.is_some());
        assert!(
            matches!(got.status, CacheStatus::Bypass(RedisUnavailable::Timeout)),
            "{:?}",
            got.status
        );
        // Bounded by the response timeout (plus the database read), never hung.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(w.app.redis.breaker().is_open());

    let mut with_breaker = Vec::new();
    let mut baseline = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let got = paycache::profile::get_profile(&w.app.profiles, &id)
            .await
            .unwrap();
        with_breaker.push(t.elapsed());
        assert_eq!(
            got.status,
            CacheStatus::Bypass(RedisUnavailable::BreakerOpen)
        );
        let t = Instant::now();
        paycache::profile::load_profile(&w.app.db, &id)
            .await
            .unwrap();
        baseline.push(t.elapsed());
    }
    with_breaker.sort();
    baseline.sort();
    let added = with_breaker[15].saturating_sub(baseline[15]);
    assert!(
        added < Duration::from_millis(5),
        "median added latency {added:?} (breaker {:?}, db {:?})",
        with_breaker[15],
        baseline[15]
    );
    server.resume();
}

/// After the cooldown, one probe closes the breaker once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_closes_when_redis_returns() {
    let server = RedisServer::start();
    let mut w = World::with_redis(
        TestRedis::Standalone(server),
        &[
            ("CACHE_BREAKER_FAILURES", "1"),
            ("CACHE_BREAKER_COOLDOWN_MS", "200"),
        ],
    )
    .await;
    let key = w.app.keys.user_profile(&user(10));
    let load = || async { Ok::<_, ()>(Some(10u8)) };
    let TestRedis::Standalone(server) = &mut w.redis else {
        unreachable!()
    };
    server.stop();
    let got = w.app.cache.get_or_load(&key, load).await.unwrap();
    assert!(matches!(got.status, CacheStatus::Bypass(_)));
    assert!(w.app.redis.breaker().is_open());
    server.restart();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The probe may need a reconnect; within a few reads the cache is back.
    let mut back = false;
    for _ in 0..20 {
        let got = w.app.cache.get_or_load(&key, load).await.unwrap();
        if !matches!(got.status, CacheStatus::Bypass(_)) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(back, "the cache should be used again after Redis returns");
    assert!(!w.app.redis.breaker().is_open());
}

/// The AUTH token is sent: the right one works, a wrong one is an outage
/// (served from the database), never an error to the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_token_is_used() {
    let token = "correct-horse-battery-staple-42";
    let server = RedisServer::start_with(&["--requirepass", token]);
    let url = server.url();
    let w = World::with_redis(
        TestRedis::Standalone(server),
        &[("REDIS_AUTH_TOKEN", token)],
    )
    .await;
    let key = w.app.keys.user_profile(&user(11));
    let load = || async { Ok::<_, ()>(Some(11u8)) };
    let got = w.app.cache.get_or_load(&key, load).await.unwrap();
    assert_eq!(got.status, CacheStatus::Miss { stored: true });
    assert_eq!(
        w.app.cache.get_or_load(&key, load).await.unwrap().status,
        CacheStatus::Hit
    );

    let mut wrong = w.app.config.clone();
    wrong.redis.auth_token = Some(paycache::config::Secret::new("wrong-token-wrong-token"));
    wrong.redis.urls = paycache::config::Secret::new(url);
    let app = paycache::App::new(wrong).unwrap();
    let got = app.cache.get_or_load(&key, load).await.unwrap();
    assert!(
        matches!(got.status, CacheStatus::Bypass(_)),
        "{:?}",
        got.status
    );
    assert_eq!(got.value, Some(11));
}
