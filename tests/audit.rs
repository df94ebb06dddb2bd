//! The write-behind audit log: buffer, claim, insert, acknowledge — with the
//! flusher killed at every step. Real Redis (both modes) and PostgreSQL,
//! reached through PgBouncer in transaction mode (`World::pooled`), as the
//! `audit-flush` function reaches it through RDS Proxy.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use paycache::audit::{AppendError, AuditEvent, FlushStep, append, flush, flush_with_hook};
use paycache::config::RedisMode;
use paycache::keys::ServiceName;
use paycache_tests::{World, both_modes};
use test_support::{CommandMonitor, RedisServer, TestRedis};
use time::OffsetDateTime;
use uuid::Uuid;

fn event(service: &ServiceName, n: u64) -> AuditEvent {
    AuditEvent {
        event_id: Uuid::new_v4(),
        service: service.clone(),
        event_type: "test_event".into(),
        occurred_at: OffsetDateTime::now_utc(),
        payload: serde_json::json!({"n": n}),
    }
}

async fn audit_rows(w: &World) -> i64 {
    w.db.client()
        .await
        .query_one("SELECT count(*) FROM audit_log", &[])
        .await
        .unwrap()
        .get(0)
}

async fn list_len(w: &World, key: &str) -> i64 {
    let mut raw = w.redis.raw().await;
    redis::cmd("LLEN")
        .arg(key)
        .query_async(&mut raw)
        .await
        .unwrap()
}

async fn fill(w: &World, service: &ServiceName, count: u64) {
    // Appends from 8 concurrent tasks, each one round trip per event.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let app = w.app.clone();
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            for n in (t..count).step_by(8) {
                append(&app.audit, &event(&service, n)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The flusher under test in [`rows_after_kills`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flusher {
    /// This project's: claim into a processing list, insert, acknowledge.
    Claiming,
    /// The broken variant: pop a batch off the buffer, then insert it.
    PopThenInsert,
}

/// One run of the pop-then-insert flusher, with the same hook points as
/// the real one. Returns true if the hook killed it.
async fn pop_then_insert(
    w: &World,
    service: &ServiceName,
    hook: &mut (dyn FnMut(FlushStep) -> ControlFlow<()> + Send),
) -> bool {
    if hook(FlushStep::Locked).is_break() {
        return true;
    }
    let buffer = w.app.keys.audit_buffer(service);
    loop {
        let mut raw = w.redis.raw().await;
        let batch: Option<Vec<String>> = redis::cmd("LPOP")
            .arg(buffer.as_str())
            .arg(700)
            .query_async(&mut raw)
            .await
            .unwrap();
        let Some(batch) = batch.filter(|b| !b.is_empty()) else {
            return false;
        };
        if hook(FlushStep::Claimed).is_break() {
            return true;
        }
        let events: Vec<AuditEvent> = batch
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let services: Vec<&str> = events.iter().map(|e| e.service.as_str()).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let times: Vec<OffsetDateTime> = events.iter().map(|e| e.occurred_at).collect();
        let payloads: Vec<&serde_json::Value> = events.iter().map(|e| &e.payload).collect();
        w.db.client()
            .await
            .execute(
                "INSERT INTO audit_log (event_id, service, event_type, occurred_at, payload)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::jsonb[])
                 ON CONFLICT (event_id) DO NOTHING",
                &[&ids, &services, &types, &times, &payloads],
            )
            .await
            .unwrap();
        if hook(FlushStep::Inserted).is_break() || hook(FlushStep::Acked).is_break() {
            return true;
        }
    }
}

/// The harness: `count` events; the flusher dies at each step in turn
/// (after taking the lock, after claiming, after inserting, after
/// acknowledging), twice over; then flushers run to the end until the
/// buffer is empty. Returns the rows in `audit_log`.
async fn rows_after_kills(w: &World, flusher: Flusher, count: u64) -> i64 {
    let service = ServiceName::parse("test-svc").unwrap();
    fill(w, &service, count).await;
    let buffer = w.app.keys.audit_buffer(&service);
    assert_eq!(list_len(w, buffer.as_str()).await, count as i64);
    let far = Instant::now() + Duration::from_secs(600);
    // AUDIT_FLUSH_LOCK_MS in the tests that call this.
    const LOCK_MS: Duration = Duration::from_millis(300);
    let mut lock_checked = 0;

    for (round, kill_at) in [
        FlushStep::Locked,
        FlushStep::Claimed,
        FlushStep::Inserted,
        FlushStep::Acked,
    ]
    .into_iter()
    .cycle()
    .take(8)
    .enumerate()
    {
        let mut hook = |step: FlushStep| {
            if step == kill_at {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        match flusher {
            Flusher::Claiming => {
                let locked_at = Instant::now();
                let report = flush_with_hook(&w.app.audit, &service, far, u64::MAX, &mut hook)
                    .await
                    .unwrap();
                assert!(
                    report.ran && report.interrupted,
                    "round {round}: {report:?}"
                );
                // The dead flusher's lock must expire before anyone can go on.
                let blocked = flush(&w.app.audit, &service, far, 1).await.unwrap();
                // Judged only while the lock (300 ms) can still be held: a
                // busy machine once took longer than that between the two
                // flushes, and the lock had rightly expired.
                if locked_at.elapsed() < LOCK_MS {
                    lock_checked += 1;
                    assert!(
                        !blocked.ran,
                        "round {round}: the lock of a dead flusher is still held"
                    );
                }
                tokio::time::sleep(Duration::from_millis(350)).await;
            }
            Flusher::PopThenInsert => {
                assert!(
                    pop_then_insert(w, &service, &mut hook).await,
                    "round {round}"
                );
            }
        }
    }
    if matches!(flusher, Flusher::Claiming) {
        assert!(
            lock_checked > 0,
            "no round was quick enough to see a dead flusher's lock held"
        );
    }
    // Now flushers run to the end (the lock is short, so it may take a few
    // runs; each stops well before its lock could expire).
    let mut runs = 0;
    while list_len(w, buffer.as_str()).await > 0
        || list_len(w, &format!("{buffer}:processing")).await > 0
    {
        runs += 1;
        assert!(runs < 200, "the buffer should drain");
        match flusher {
            Flusher::Claiming => {
                flush(&w.app.audit, &service, far, u64::MAX).await.unwrap();
            }
            Flusher::PopThenInsert => {
                pop_then_insert(w, &service, &mut |_| ControlFlow::Continue(())).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rows = audit_rows(w).await;
    eprintln!("{flusher:?} flusher: {rows} rows for {count} events after 8 kills");
    rows
}

/// The check both flushers go through.
fn exactly_once(rows: i64, events: u64) -> bool {
    rows == events as i64
}

/// 10,000 events survive a flusher killed at every step: exactly once.
async fn ten_thousand_events_survive_a_flusher_killed_at_every_step(mode: RedisMode) {
    let w = World::pooled(
        mode,
        &[("AUDIT_FLUSH_LOCK_MS", "300"), ("AUDIT_FLUSH_BATCH", "700")],
    )
    .await;
    let rows = rows_after_kills(&w, Flusher::Claiming, 10_000).await;
    assert!(
        exactly_once(rows, 10_000),
        "every event exactly once: {rows}"
    );
    let buffer = w
        .app
        .keys
        .audit_buffer(&ServiceName::parse("test-svc").unwrap());
    assert_eq!(list_len(&w, &format!("{buffer}:dead")).await, 0);
    // No buffer key carries a TTL (an expiring buffer loses events).
    let mut raw = w.redis.raw().await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(buffer.as_str())
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(
        ttl == -2 || ttl == -1,
        "the buffer must never expire: {ttl}"
    );
}
both_modes!(ten_thousand_events_survive_a_flusher_killed_at_every_step);

/// The broken variant through the same harness, kill schedule and check:
/// killed between its pop and its insert, a pop-then-insert flusher loses
/// the batch.
async fn a_pop_then_insert_flusher_loses_events(mode: RedisMode) {
    let w = World::pooled(mode, &[]).await;
    let rows = rows_after_kills(&w, Flusher::PopThenInsert, 10_000).await;
    assert!(
        !exactly_once(rows, 10_000),
        "the pop-then-insert flusher should have lost events, table has {rows}"
    );
}
both_modes!(a_pop_then_insert_flusher_loses_events);

async fn a_full_buffer_refuses_instead_of_dropping(mode: RedisMode) {
    let w = World::pooled(mode, &[("AUDIT_BUFFER_MAX_EVENTS", "5")]).await;
    let service = ServiceName::parse("small-svc").unwrap();
    for n in 0..5 {
        assert_eq!(
            append(&w.app.audit, &event(&service, n)).await.unwrap(),
            n + 1
        );
    }
    assert_eq!(
        append(&w.app.audit, &event(&service, 5)).await,
        Err(AppendError::Full)
    );
    let buffer = w.app.keys.audit_buffer(&service);
    assert_eq!(list_len(&w, buffer.as_str()).await, 5);
}
both_modes!(a_full_buffer_refuses_instead_of_dropping);

/// A flush keeps to its bounds: the batch limit it is given, the caller's
/// deadline (it starts no batch within 2 s of it) and its lock (it stops
/// once half the lock's time has gone, well before the lock could expire
/// under it and a second flusher take over mid-batch). Each bound
/// measured by what was left in the buffer.
async fn a_flush_keeps_to_its_bounds(mode: RedisMode) {
    let w = World::pooled(
        mode,
        &[("AUDIT_FLUSH_BATCH", "10"), ("AUDIT_FLUSH_LOCK_MS", "2000")],
    )
    .await;
    let service = ServiceName::parse("bounded-svc").unwrap();
    let buffer = w.app.keys.audit_buffer(&service);
    fill(&w, &service, 30).await;
    let far = Instant::now() + Duration::from_secs(60);
    // The batch limit: 2 of the 3 batches (and, the events being sound, no
    // dead-letter error logged: an operator's alarm reads those).
    let (r, logs) = test_support::logs::capture(flush(&w.app.audit, &service, far, 2)).await;
    let r = r.unwrap();
    assert!(!logs.contains("unparseable"), "{logs}");
    assert_eq!(
        (
            r.service.as_str(),
            r.ran,
            r.batches,
            r.events_seen,
            r.inserted
        ),
        ("bounded-svc", true, 2, 20, 20),
        "{r:?}"
    );
    assert_eq!(list_len(&w, buffer.as_str()).await, 10);
    // The caller's deadline: 1 s away, less than a batch is given.
    let soon = Instant::now() + Duration::from_secs(1);
    let r = flush(&w.app.audit, &service, soon, u64::MAX).await.unwrap();
    assert_eq!((r.ran, r.batches), (true, 0), "{r:?}");
    assert_eq!(list_len(&w, buffer.as_str()).await, 10);
    // The lock (2 s): batches of 600 ms, so it stops after the second (at
    // 1.2 s, half the lock gone); a flusher that ran to the lock's end
    // would have claimed a third and a fourth.
    fill(&w, &service, 50).await;
    let mut hook = |step: FlushStep| {
        if matches!(step, FlushStep::Claimed) {
            std::thread::sleep(Duration::from_millis(600));
        }
        ControlFlow::Continue(())
    };
    let r = flush_with_hook(&w.app.audit, &service, far, u64::MAX, &mut hook)
        .await
        .unwrap();
    assert!((1..=2).contains(&r.batches), "{r:?}");
}
both_modes!(a_flush_keeps_to_its_bounds);

/// Unparseable entries are kept in a dead-letter list, not dropped and not
/// allowed to block the flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_buffer_goes_to_the_dead_letter_list() {
    let w = World::pooled(RedisMode::Standalone, &[]).await;
    let service = ServiceName::parse("mixed-svc").unwrap();
    append(&w.app.audit, &event(&service, 1)).await.unwrap();
    let buffer = w.app.keys.audit_buffer(&service);
    let mut raw = w.redis.raw().await;
    let _: i64 = redis::cmd("RPUSH")
        .arg(buffer.as_str())
        .arg("{not json")
        .query_async(&mut raw)
        .await
        .unwrap();
    append(&w.app.audit, &event(&service, 2)).await.unwrap();
    let report = flush(
        &w.app.audit,
        &service,
        Instant::now() + Duration::from_secs(60),
        u64::MAX,
    )
    .await
    .unwrap();
    assert_eq!(report.inserted, 2);
    assert_eq!(report.dead_lettered, 1);
    assert_eq!(audit_rows(&w).await, 2);
    assert_eq!(list_len(&w, &format!("{buffer}:dead")).await, 1);
    assert_eq!(list_len(&w, buffer.as_str()).await, 0);
}

/// An append is one round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_is_one_round_trip() {
    let server = RedisServer::start();
    let port = server.port;
    let w = World::with_redis_pooled(TestRedis::Standalone(server), &[]).await;
    let service = ServiceName::parse("rt-svc").unwrap();
    append(&w.app.audit, &event(&service, 0)).await.unwrap(); // loads the script
    let monitor = CommandMonitor::start(port);
    append(&w.app.audit, &event(&service, 1)).await.unwrap();
    assert_eq!(monitor.commands(), vec!["evalsha"]);
}

/// Balance writes' audit events reach `audit_log` even when the Redis
/// append never happened: the reconciliation inserts them from the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_reconciliation_records_events_the_buffer_never_got() {
    let w = World::pooled(
        RedisMode::Standalone,
        &[("AUDIT_RECONCILE_AFTER_SECS", "1")],
    )
    .await;
    let wallet = test_support::random_uuid();
    test_support::insert_wallet(&w.db, 1, &wallet, "USD", 100).await;
    let write = paycache::balance::BalanceWrite {
        wallet: paycache::keys::WalletId::parse(&wallet).unwrap(),
        balance_minor: 250,
        currency: paycache::money::Currency::parse("USD").unwrap(),
        expected_version: 1,
        idempotency_key: None,
        actor: None,
    };
    paycache::balance::write_balance(&w.app.balances, &write)
        .await
        .unwrap();
    // Lose the buffered event, as a failover right after the append could.
    let buffer = w
        .app
        .keys
        .audit_buffer(&ServiceName::parse("balance-write").unwrap());
    let mut raw = w.redis.raw().await;
    let _: i64 = redis::cmd("DEL")
        .arg(buffer.as_str())
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        paycache::audit::reconcile_outbox(&w.app.audit, 100)
            .await
            .unwrap(),
        0,
        "not due yet"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        paycache::audit::reconcile_outbox(&w.app.audit, 100)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        paycache::audit::reconcile_outbox(&w.app.audit, 100)
            .await
            .unwrap(),
        0,
        "once"
    );
    let row =
        w.db.client()
            .await
            .query_one(
                "SELECT service, event_type, payload->>'balance' FROM audit_log",
                &[],
            )
            .await
            .unwrap();
    assert_eq!(row.get::<_, String>(0), "balance-write");
    assert_eq!(row.get::<_, String>(1), "balance_updated");
    assert_eq!(row.get::<_, String>(2), "2.50");
}

/// With `REDIS_DURABLE_URL` set, audit buffers live there (a Redis that
/// never evicts) and nothing of them in the cache's Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_buffers_live_in_the_durable_redis() {
    let durable = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]);
    let url = durable.url();
    let w = World::pooled(RedisMode::Standalone, &[("REDIS_DURABLE_URL", &url)]).await;
    let service = ServiceName::parse("durable-svc").unwrap();
    for n in 0..3 {
        append(&w.app.audit, &event(&service, n)).await.unwrap();
    }
    let key = w.app.keys.audit_buffer(&service);
    let mut d = redis::aio::ConnectionManager::new(redis::Client::open(url.as_str()).unwrap())
        .await
        .unwrap();
    let len: i64 = redis::cmd("LLEN")
        .arg(key.as_str())
        .query_async(&mut d)
        .await
        .unwrap();
    assert_eq!(len, 3);
    assert!(
        w.keys().await.is_empty(),
        "nothing in the cache's Redis: {:?}",
        w.keys().await
    );
    let report = flush(
        &w.app.audit,
        &service,
        Instant::now() + Duration::from_secs(60),
        u64::MAX,
    )
    .await
    .unwrap();
    assert_eq!(report.inserted, 3);
    drop(durable);
}
