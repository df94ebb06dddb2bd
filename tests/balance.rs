//! Wallet balances through the `balance-write` handler: versioned
//! write-through, idempotency, failure during a write, pub/sub order and
//! round trips. Real Redis (both modes) and PostgreSQL.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use lambda_http::{Body, Request, RequestExt, Response};
use paycache::App;
use paycache::balance::{WalletBalance, WriteOutcome, apply_pending, get_balance, load_balance};
use paycache::config::RedisMode;
use paycache::keys::WalletId;
use paycache::routes::balance::handle;
use paycache_tests::{World, both_modes};
use serde_json::{Value, json};
use test_support::{CommandMonitor, RedisServer, TestRedis, insert_wallet, random_uuid};

fn request(method: &str, wallet: &str, body: Option<Value>, key: Option<&str>) -> Request {
    let mut params = HashMap::new();
    params.insert("wallet_id".to_string(), wallet.to_string());
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("/wallets/{wallet}/balance"));
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    let body = match body {
        Some(v) => Body::Text(v.to_string()),
        None => Body::Empty,
    };
    let req = b.body(body).unwrap().with_path_parameters(params);
    paycache_tests::as_service(req, &paycache_tests::ALL_PERMISSIONS)
}

fn put_body(balance: &str, currency: &str, expected: u64) -> Value {
    json!({"balance": balance, "currency": currency, "expected_version": expected})
}

fn body_json(resp: &Response<Body>) -> Value {
    serde_json::from_slice(resp.body().as_ref()).unwrap()
}

fn header<'a>(resp: &'a Response<Body>, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

async fn new_wallet(w: &World, minor: i64) -> String {
    let id = random_uuid();
    insert_wallet(&w.db, 1, &id, "USD", minor).await;
    id
}

/// Outbox rows whose cache step has not been applied yet (every wallet).
async fn pending_outbox_rows(w: &World) -> i64 {
    w.db.client()
        .await
        .query_one(
            "SELECT count(*) FROM balance_outbox WHERE cache_applied_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn db_version(w: &World, wallet: &str) -> u64 {
    load_balance(&w.app.db, &WalletId::parse(wallet).unwrap())
        .await
        .unwrap()
        .unwrap()
        .version
}

async fn get_put_and_errors(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let wallet = new_wallet(&w, 12550).await;

    let first = handle(&w.app, request("GET", &wallet, None, None)).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "cache-status"), "paycache; fwd=miss; stored");
    let b = body_json(&first);
    assert_eq!(b["balance"], "125.50");
    assert_eq!(b["currency"], "USD");
    assert_eq!(b["version"], 1);
    assert_eq!(b["wallet_id"], wallet);
    assert_eq!(b.as_object().unwrap().len(), 5, "{b}");

    let put = handle(
        &w.app,
        request("PUT", &wallet, Some(put_body("99.5", "USD", 1)), None),
    )
    .await;
    assert_eq!(put.status(), StatusCode::OK);
    let b = body_json(&put);
    assert_eq!(b["balance"], "99.50");
    assert_eq!(b["version"], 2);

    // The write-through stored version 2: the next read is a hit on it.
    let read = handle(&w.app, request("GET", &wallet, None, None)).await;
    assert_eq!(header(&read, "cache-status"), "paycache; hit");
    assert_eq!(body_json(&read)["version"], 2);
    assert_eq!(body_json(&read)["balance"], "99.50");

    // A stale expected_version: 409 with the current state, nothing changes.
    let stale = handle(
        &w.app,
        request("PUT", &wallet, Some(put_body("1.00", "USD", 1)), None),
    )
    .await;
    assert_eq!(stale.status(), StatusCode::CONFLICT);
    assert_eq!(header(&stale, "content-type"), "application/problem+json");
    let p = body_json(&stale);
    assert_eq!(p["current"]["version"], 2);
    assert_eq!(p["current"]["balance"], "99.50");
    assert_eq!(p["type"], "urn:paycache:problem:version-conflict");

    // A write that commits nothing leaves the cache as it found it.
    let read = handle(&w.app, request("GET", &wallet, None, None)).await;
    assert_eq!(header(&read, "cache-status"), "paycache; hit");
    assert_eq!(body_json(&read)["version"], 2);

    // Not the wallet's currency: 422.
    let eur = handle(
        &w.app,
        request("PUT", &wallet, Some(put_body("1.00", "EUR", 2)), None),
    )
    .await;
    assert_eq!(eur.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body_json(&eur)["detail"].as_str().unwrap().contains("USD"));

    // Unknown wallet: 404 for both methods.
    let unknown = random_uuid();
    assert_eq!(
        handle(&w.app, request("GET", &unknown, None, None))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        handle(
            &w.app,
            request("PUT", &unknown, Some(put_body("1.00", "USD", 1)), None)
        )
        .await
        .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(db_version(&w, &wallet).await, 2);
}
both_modes!(get_put_and_errors);

/// Hostile input: each is answered 400 or 422 with a problem body, and
/// changes nothing — not the database, not the cache.
async fn hostile_writes_change_nothing(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let wallet = new_wallet(&w, 100).await;
    let raw = |text: &str| Body::Text(text.to_owned());
    let long_key = "k".repeat(129);
    let cases: Vec<(Body, Option<&str>, StatusCode)> = vec![
        (
            raw(r#"{"balance": 1e400, "currency": "USD", "expected_version": 1}"#),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            raw(r#"{"balance": 125.5, "currency": "USD", "expected_version": 1}"#),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            raw(r#"{"balance": "1e400", "currency": "USD", "expected_version": 1}"#),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            raw(r#"{"balance": "12,50", "currency": "USD", "expected_version": 1}"#),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            raw(r#"{"balance": "-5.00", "currency": "USD", "expected_version": 1}"#),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            raw(r#"{"balance": "1.005", "currency": "USD", "expected_version": 1}"#),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            raw(r#"{"balance": "99999999999999999999", "currency": "USD", "expected_version": 1}"#),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            raw(r#"{"balance": "1.00", "currency": "usd", "expected_version": 1}"#),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            raw(r#"{"balance": "1.00", "currency": "XYZ", "expected_version": 1}"#),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            raw(r#"{"balance": "1.00", "currency": "EUR", "expected_version": 1}"#),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            raw(r#"{"balance": "1.00", "currency": "USD"}"#),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            raw(r#"{"currency": "USD", "expected_version": 1}"#),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            raw(r#"{"balance": "1.00", "currency": "USD", "expected_version": 1.5}"#),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            raw(r#"{"balance": "1.00", "currency": "USD", "expected_version": -1}"#),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            raw(r#"{"balance": "1.00", "currency": "USD", "expected_version": 1e400}"#),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            raw(r#"{"balance": "1.00", "currency": "USD", "expected_version": "1"}"#),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            raw(r#"{"balance": "1.00", "currency": "USD", "expected_version": 1, "owner": "x"}"#),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (raw(r#"[1, 2]"#), None, StatusCode::BAD_REQUEST),
        (raw(r#"{"balance": "1.00""#), None, StatusCode::BAD_REQUEST),
        (
            Body::Binary(vec![0xff, 0xfe, 0x00]),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (Body::Empty, None, StatusCode::BAD_REQUEST),
        (
            raw(&format!("{{\"balance\": \"{}\"}}", "9".repeat(70_000))),
            None,
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            raw(r#"{"balance": "1.00", "currency": "USD", "expected_version": 1}"#),
            Some(""),
            StatusCode::BAD_REQUEST,
        ),
        (
            raw(r#"{"balance": "1.00", "currency": "USD", "expected_version": 1}"#),
            Some(&long_key),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (i, (body, key, expected)) in cases.into_iter().enumerate() {
        let mut params = HashMap::new();
        params.insert("wallet_id".to_string(), wallet.clone());
        let mut b = http::Request::builder()
            .method("PUT")
            .uri(format!("/wallets/{wallet}/balance"));
        if let Some(k) = key {
            b = b.header("idempotency-key", k);
        }
        let req = b.body(body).unwrap().with_path_parameters(params);
        let req = paycache_tests::as_service(req, &paycache_tests::ALL_PERMISSIONS);
        let resp = handle(&w.app, req).await;
        assert_eq!(
            resp.status(),
            expected,
            "case {i}: {}",
            String::from_utf8_lossy(resp.body().as_ref())
        );
        assert_eq!(
            header(&resp, "content-type"),
            "application/problem+json",
            "case {i}"
        );
    }
    // A wallet id that is not a UUID.
    for bad in ["not-a-uuid", "{00000000-0000-4000-9000-000000000004}", ""] {
        let resp = handle(
            &w.app,
            request("PUT", bad, Some(put_body("1.00", "USD", 1)), None),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad:?}");
    }
    assert_eq!(db_version(&w, &wallet).await, 1);
    // No fence is left behind; the only keys a refused write may leave are
    // the wallet's unchanged balance (a write refused by the database —
    // wrong currency — leaves the cache with the row it read) and the
    // caller's rate-limit counter (a well-formed attempt counts).
    let id = WalletId::parse(&wallet).unwrap();
    let value_key = w.app.keys.wallet_balance(&id);
    let keys = w.keys().await;
    assert!(
        keys.iter()
            .all(|k| k == value_key.as_str() || k.contains(":rate_limit:{svc:")),
        "{keys:?}"
    );
    let read = get_balance(&w.app.balances, &id).await.unwrap();
    assert_eq!(read.value.unwrap().version, 1);
}
both_modes!(hostile_writes_change_nothing);

/// Reads started after a write returned 200 must see that write's version
/// or a newer one. `floor` is the highest acknowledged version when the
/// read starts.
fn violates(floor: u64, read_version: u64) -> bool {
    read_version < floor
}

/// The writer under test in [`stale_reads_under_concurrency`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// This project's write: fence, commit, apply.
    Fenced,
    /// The design's write-through: update the database, then `SET` the
    /// cache. The broken variant the check must catch.
    UpdateThenSet,
}

/// One compare-and-set write of `minor` at `expected`; `Ok(version)` when
/// acknowledged, `Err(current version)` on a conflict. Both writers pause
/// for the same random 0–5 ms between their commit and their cache step.
async fn write_once(
    writer: Writer,
    app: &App,
    wallet: &WalletId,
    minor: i64,
    expected: u64,
) -> Result<u64, u64> {
    let pause = Duration::from_micros(fastrand::u64(0..=5_000));
    match writer {
        // A write refused before it decided (Redis too slow for the fence
        // on a busy machine: 503, nothing committed) is tried again.
        Writer::Fenced => write_paused(app, wallet, minor, expected, pause)
            .await
            .unwrap_or(Err(expected)),
        Writer::UpdateThenSet => {
            let client = app.db.client().await.unwrap();
            let updated = client
                .query_opt(
                    "UPDATE wallets SET balance_minor = $2, version = version + 1, updated_at = now()
                      WHERE wallet_id = $1 AND version = $3 RETURNING version, updated_at",
                    &[&wallet.as_uuid(), &minor, &(expected as i64)],
                )
                .await
                .unwrap();
            drop(client);
            let Some(row) = updated else {
                return Err(load_balance(&app.db, wallet)
                    .await
                    .unwrap()
                    .unwrap()
                    .version);
            };
            let usd = paycache::money::Currency::parse("USD").unwrap();
            let b = WalletBalance {
                wallet_id: *wallet,
                currency: "USD".into(),
                balance: paycache::money::format_amount(minor, usd),
                version: row.get::<_, i64>(0) as u64,
                updated_at: row.get(1),
                owner: None,
            };
            tokio::time::sleep(pause).await;
            naive_set(app, &b).await;
            Ok(b.version)
        }
    }
}

/// The wallet's writer fence once its lease key holds one starting with
/// `prefix` (`"w:"`: any writer's); fails after 2.5 s without.
async fn until_fenced(w: &World, wallet: &WalletId, prefix: &str, what: &str) -> String {
    let lock = w.app.keys.wallet_balance(wallet).lock_key();
    let mut raw = w.redis.raw().await;
    let mut held = None;
    for _ in 0..250 {
        held = redis::cmd("GET")
            .arg(&lock)
            .query_async::<Option<String>>(&mut raw)
            .await
            .unwrap();
        if held.as_deref().is_some_and(|h| h.starts_with(prefix)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let held = held.unwrap_or_default();
    assert!(held.starts_with(prefix), "{what}: {held:?}");
    held
}

/// A `PUT` of 20.00 at version 1 that stops after its fence: the test
/// holds the wallet's row lock — `ROLLBACK` on the returned connection
/// lets the write go on — and returns once the write's fence stands.
async fn a_write_held_after_its_fence(
    w: &World,
    wallet: &str,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Response<Body>>,
) {
    let blocker = w.db.client().await;
    blocker.batch_execute("BEGIN").await.unwrap();
    blocker
        .execute(
            "SELECT 1 FROM wallets WHERE wallet_id = $1::text::uuid FOR UPDATE",
            &[&wallet],
        )
        .await
        .unwrap();
    let (app, owned) = (w.app.clone(), wallet.to_owned());
    let write = tokio::spawn(async move {
        handle(
            &app,
            request("PUT", &owned, Some(put_body("20.00", "USD", 1)), None),
        )
        .await
    });
    until_fenced(
        w,
        &WalletId::parse(wallet).unwrap(),
        "w:",
        "the writer must fence before it touches the database",
    )
    .await;
    (blocker, write)
}

/// This project's write of `minor` at `expected`, pausing `pause` between
/// the database's decision and the cache step; `Ok(Ok(version))` when
/// acknowledged, `Ok(Err(current version))` on a conflict, `Err` when
/// refused before deciding (nothing committed).
async fn write_paused(
    app: &App,
    wallet: &WalletId,
    minor: i64,
    expected: u64,
    pause: Duration,
) -> Result<Result<u64, u64>, paycache::balance::WriteError> {
    let write = paycache::balance::BalanceWrite {
        wallet: *wallet,
        balance_minor: minor,
        currency: paycache::money::Currency::parse("USD").unwrap(),
        expected_version: expected,
        idempotency_key: None,
        actor: None,
    };
    Ok(
        match paycache::balance::write_balance_pausing(&app.balances, &write, pause).await? {
            WriteOutcome::Applied { balance, .. } => Ok(balance.version),
            WriteOutcome::VersionConflict { current } => Err(current.version),
            other => panic!("unexpected {other:?}"),
        },
    )
}

/// [`write_paused`] until it decides (a busy machine can make Redis too
/// slow for the fence: refused, nothing committed, tried again).
async fn write_deciding(
    app: &App,
    wallet: &WalletId,
    minor: i64,
    expected: u64,
    pause: Duration,
) -> Result<u64, u64> {
    for _ in 0..20 {
        if let Ok(decided) = write_paused(app, wallet, minor, expected, pause).await {
            return decided;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("a write was refused 20 times in a row");
}

/// The harness: 6 writers and 6 readers on one wallet from 4 execution
/// environments, until `writes` writes are acknowledged. Readers go
/// through the real `GET` handler. Returns (reads, stale reads).
async fn stale_reads_under_concurrency(w: &World, writer: Writer, writes: i64) -> (usize, usize) {
    let wallet = new_wallet(w, 0).await;
    let id = WalletId::parse(&wallet).unwrap();
    let apps: Vec<App> = (0..4).map(|_| w.another_environment()).collect();
    let acked = Arc::new(AtomicU64::new(1));
    let violations = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let writes_left = Arc::new(AtomicI64::new(writes));
    let mut tasks = Vec::new();
    for i in 0..6 {
        let app = apps[i % apps.len()].clone();
        let (acked, writes_left) = (acked.clone(), writes_left.clone());
        tasks.push(tokio::spawn(async move {
            let mut expected = 1;
            let mut n = 0i64;
            while writes_left.load(Ordering::SeqCst) > 0 {
                n += 1;
                let minor = i as i64 * 100_000 + n;
                match write_once(writer, &app, &id, minor, expected).await {
                    Ok(v) => {
                        acked.fetch_max(v, Ordering::SeqCst);
                        writes_left.fetch_sub(1, Ordering::SeqCst);
                        expected = v;
                    }
                    Err(current) => expected = current,
                }
            }
        }));
    }
    for i in 0..6 {
        let app = apps[(i + 1) % apps.len()].clone();
        let (wallet, acked, violations, reads, writes_left) = (
            wallet.clone(),
            acked.clone(),
            violations.clone(),
            reads.clone(),
            writes_left.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while writes_left.load(Ordering::SeqCst) > 0 {
                let floor = acked.load(Ordering::SeqCst);
                let resp = handle(&app, request("GET", &wallet, None, None)).await;
                assert_eq!(resp.status(), StatusCode::OK);
                let v = body_json(&resp)["version"].as_u64().unwrap();
                reads.fetch_add(1, Ordering::SeqCst);
                if violates(floor, v) {
                    violations.fetch_add(1, Ordering::SeqCst);
                    // What served it, for the failure's message: a hit, a
                    // load, or the database with Redis bypassed.
                    let served = resp
                        .headers()
                        .get("cache-status")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("-")
                        .to_owned();
                    eprintln!("stale read: version {v} after {floor} was acknowledged ({served})");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (reads, violations) = (
        reads.load(Ordering::SeqCst),
        violations.load(Ordering::SeqCst),
    );
    eprintln!("{writer:?} writer: {violations} stale reads in {reads} reads ({writes} writes)");
    if writer == Writer::Fenced {
        // And the cache ends on the database's version.
        let final_db = db_version(w, &wallet).await;
        let cached = get_balance(&w.app.balances, &id).await.unwrap();
        assert_eq!(cached.value.unwrap().version, final_db);
    }
    (reads, violations)
}

async fn readers_never_see_an_older_version(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let (reads, stale) = stale_reads_under_concurrency(&w, Writer::Fenced, 200).await;
    assert!(reads > 100, "the readers must actually have read: {reads}");
    assert_eq!(
        stale, 0,
        "a read returned a version older than an acknowledged write"
    );
}
both_modes!(readers_never_see_an_older_version);

/// The races behind the one stale read the harness above once found (1 in
/// 3,791), each made deterministic with the real writer and a pause after
/// the database's decision: writer A fails its compare-and-set and is
/// slow to leave; meanwhile writer B commits version 2 and is acknowledged.
///
/// 1. An invalidation empties the cache before A leaves: A's row (version
///    1, read before B's commit) must not fill it — a version older than
///    the highest published is never cached.
/// 2. Writer C raises a new fence and commits version 3 before A leaves:
///    A is no longer inside any fence and must not touch C's (a count of
///    writers let A lift it, C still inside, and cache version 1).
/// 3. A asked for a version from the future (its fence's intent is above
///    B's): B leaves the fence up for A, and A, the last one out, lifts it
///    — with its row from before B's commit, which must not be cached.
///
/// In each, every read after B's acknowledgement returns version 2 or
/// later, through the real `GET` handler.
async fn a_slow_writer_never_caches_a_row_older_than_an_acknowledged_write(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let mut c = w.redis.raw().await;
    let slow = Duration::from_millis(1500);
    for case in ["invalidation", "next fence", "future intent"] {
        let wallet = new_wallet(&w, 0).await;
        let id = WalletId::parse(&wallet).unwrap();
        let lock = w.app.keys.wallet_balance(&id).lock_key();
        // A: a compare-and-set that fails (version 1 is current), slow out.
        let a_expected = if case == "future intent" { 5 } else { 0 };
        let a = {
            let app = w.app.clone();
            tokio::spawn(async move { write_deciding(&app, &id, 7, a_expected, slow).await })
        };
        // A's decision is made well before B starts (B's row lock would
        // otherwise make A read version 2).
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            write_deciding(&w.app, &id, 200, 1, Duration::ZERO).await,
            Ok(2)
        );
        assert!(
            !a.is_finished(),
            "{case}: A is still on its way out when B is acknowledged"
        );
        let c_write = match case {
            "invalidation" => {
                paycache::balance::invalidate(&w.app.balances, &id)
                    .await
                    .unwrap();
                None
            }
            "next fence" => {
                let app = w.app.clone();
                let c_write = tokio::spawn(async move {
                    write_deciding(&app, &id, 300, 2, Duration::from_secs(4)).await
                });
                // C is inside its fence (it has committed, or is about to).
                let fence = until_fenced(&w, &id, "w:3:", "C's fence").await;
                Some((c_write, fence))
            }
            _ => None,
        };
        let a_result = a.await.unwrap();
        assert!(
            a_result.is_err(),
            "{case}: A fails its compare-and-set: {a_result:?}"
        );
        if let Some((_, fence)) = &c_write {
            let now: Option<String> = redis::cmd("GET")
                .arg(&lock)
                .query_async(&mut c)
                .await
                .unwrap();
            assert_eq!(
                now.as_ref(),
                Some(fence),
                "{case}: A, not inside C's fence, left it as it was"
            );
        }
        let resp = handle(&w.app, request("GET", &wallet, None, None)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let v = body_json(&resp)["version"].as_u64().unwrap();
        assert!(
            v >= 2,
            "{case}: a read returned version {v} after version 2 was acknowledged ({})",
            header(&resp, "cache-status")
        );
        if let Some((c_write, _)) = c_write {
            assert_eq!(c_write.await.unwrap(), Ok(3));
        }
    }
}
both_modes!(a_slow_writer_never_caches_a_row_older_than_an_acknowledged_write);

/// The design's write-through — update the database, then SET the cache —
/// through the same writers, readers, pauses and check: it serves stale
/// reads. This is what makes the test above able to fail. The race is
/// timing: on a loaded machine one round of 200 writes once served none
/// (0 stale in 2,303 reads), so up to five rounds, and the first with a
/// stale read ends it.
async fn update_then_set_is_caught(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let (reads, stale) = stale_reads_under_concurrency(&w, Writer::UpdateThenSet, 200).await;
        assert!(reads > 100, "the readers must actually have read: {reads}");
        rounds.push((reads, stale));
        if stale > 0 {
            return;
        }
    }
    panic!(
        "the update-then-SET writer should have served stale reads ((reads, stale) per round: {rounds:?})"
    );
}
both_modes!(update_then_set_is_caught);

async fn naive_set(app: &App, b: &WalletBalance) {
    let raw =
        paycache::cache_aside::encode(Some(b), b.version, Duration::ZERO, Duration::from_secs(300))
            .unwrap();
    let key = app.keys.wallet_balance(&b.wallet_id);
    let _: () = app
        .redis
        .run(|mut c| async move {
            redis::cmd("SET")
                .arg(key.as_str())
                .arg(raw)
                .query_async(&mut c)
                .await
        })
        .await
        .unwrap();
}

async fn idempotent_retries_apply_once(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let wallet = new_wallet(&w, 500).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let app = if i % 2 == 0 {
            w.app.clone()
        } else {
            w.another_environment()
        };
        let wallet = wallet.clone();
        tasks.push(tokio::spawn(async move {
            let resp = handle(
                &app,
                request(
                    "PUT",
                    &wallet,
                    Some(put_body("7.25", "USD", 1)),
                    Some("retry-me-1"),
                ),
            )
            .await;
            (
                resp.status(),
                header(&resp, "idempotent-replayed").to_owned(),
                body_json(&resp),
            )
        }));
    }
    let mut replayed = 0;
    let mut bodies = Vec::new();
    for t in tasks {
        let (status, replay, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        if replay == "true" {
            replayed += 1;
        }
        bodies.push(body);
    }
    assert_eq!(replayed, 49, "all but the first are replays");
    assert!(
        bodies.windows(2).all(|p| p[0] == p[1]),
        "every retry gets the first response"
    );
    assert_eq!(bodies[0]["version"], 2);
    assert_eq!(db_version(&w, &wallet).await, 2, "applied exactly once");
    let outbox: i64 =
        w.db.client()
            .await
            .query_one(
                "SELECT count(*) FROM balance_outbox WHERE wallet_id = $1::text::uuid",
                &[&wallet],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(outbox, 1);

    // Same key, different body: 422, nothing changes. "7.25" and "7.250"
    // would differ in text but the second is refused anyway (too precise);
    // "7.3" is a different amount.
    let other = handle(
        &w.app,
        request(
            "PUT",
            &wallet,
            Some(put_body("7.3", "USD", 1)),
            Some("retry-me-1"),
        ),
    )
    .await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // The same amount written differently is the same request.
    let same = handle(
        &w.app,
        request(
            "PUT",
            &wallet,
            Some(put_body("7.250", "USD", 1)),
            Some("retry-me-1"),
        ),
    )
    .await;
    assert_eq!(
        same.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "too many decimals is refused before the key is looked at"
    );
    let same = handle(
        &w.app,
        request(
            "PUT",
            &wallet,
            Some(put_body("7.25", "USD", 1)),
            Some("retry-me-1"),
        ),
    )
    .await;
    assert_eq!(same.status(), StatusCode::OK);
    assert_eq!(header(&same, "idempotent-replayed"), "true");
    // A 409 is replayed as a 409.
    let conflict = handle(
        &w.app,
        request("PUT", &wallet, Some(put_body("1.00", "USD", 1)), Some("k2")),
    )
    .await;
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    let again = handle(
        &w.app,
        request("PUT", &wallet, Some(put_body("1.00", "USD", 1)), Some("k2")),
    )
    .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(header(&again, "idempotent-replayed"), "true");
    assert_eq!(db_version(&w, &wallet).await, 2);
}
both_modes!(idempotent_retries_apply_once);

/// Redis dies between the fence and the cache update: the write succeeds,
/// no read afterwards serves the older cached version, and the pending
/// outbox row is applied once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dies_during_a_write() {
    let server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut w = World::with_redis(
        TestRedis::Standalone(server),
        &[
            ("REDIS_RESPONSE_TIMEOUT_MS", "300"),
            ("CACHE_BREAKER_FAILURES", "100"),
        ],
    )
    .await;
    let wallet = new_wallet(&w, 1000).await;
    let id = WalletId::parse(&wallet).unwrap();
    // Cache version 1: the stale value a broken design would keep serving.
    assert_eq!(
        get_balance(&w.app.balances, &id)
            .await
            .unwrap()
            .value
            .unwrap()
            .version,
        1
    );

    // Hold the wallet's row lock so the write stops after its fence.
    let (blocker, write) = a_write_held_after_its_fence(&w, &wallet).await;

    // Kill Redis (SIGKILL), then let the write commit.
    if let TestRedis::Standalone(server) = &mut w.redis {
        server.stop();
    }
    blocker.batch_execute("ROLLBACK").await.unwrap();
    let resp = write.await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "the write succeeds without Redis after its fence"
    );
    assert_eq!(body_json(&resp)["version"], 2);
    let pending: i64 = w
        .db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM balance_outbox WHERE wallet_id = $1::text::uuid AND cache_applied_at IS NULL",
            &[&wallet],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 1, "the cache step is pending in the outbox");

    // A sweep while Redis is still down applies nothing, keeps the row
    // pending and says so.
    let report = apply_pending(&w.app.balances, 100).await.unwrap();
    assert_eq!(
        (report.wallets, report.rows, report.failed_wallets),
        (1, 1, 1),
        "{report:?}"
    );

    // Redis comes back with its data (AOF): the old value was deleted by the
    // fence, and the fence is still up. No read may return version 1.
    if let TestRedis::Standalone(server) = &mut w.redis {
        server.restart();
    }
    for _ in 0..20 {
        let got = get_balance(&w.app.balances, &id).await.unwrap();
        assert_eq!(got.value.unwrap().version, 2, "served {:?}", got.status);
    }
    // The sweep applies the pending row; then reads are hits on version 2.
    let report = apply_pending(&w.app.balances, 100).await.unwrap();
    assert_eq!(report.rows, 1);
    assert_eq!(report.failed_wallets, 0);
    let pending = pending_outbox_rows(&w).await;
    assert_eq!(pending, 0);
    // The writer's fence may still be up (it expires by itself); once it is
    // gone, reads are cache hits on version 2.
    let mut raw = w.redis.raw().await;
    let _: i64 = redis::cmd("DEL")
        .arg(w.app.keys.wallet_balance(&id).lock_key())
        .query_async(&mut raw)
        .await
        .unwrap();
    let got = get_balance(&w.app.balances, &id).await.unwrap();
    assert_eq!(got.value.unwrap().version, 2);
    assert_eq!(got.status, paycache::CacheStatus::Hit);
}

/// Without Redis at the start of a write there is no fence: the write is
/// refused with 503 and nothing changes. (With revocation failing open, so
/// that the gate lets the write through to the fence.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fence_no_write() {
    let server = RedisServer::start();
    let mut w = World::with_redis(
        TestRedis::Standalone(server),
        &[("AUTH_REVOCATION_FAIL_OPEN", "true")],
    )
    .await;
    let wallet = new_wallet(&w, 1000).await;
    let TestRedis::Standalone(server) = &mut w.redis else {
        unreachable!()
    };
    server.stop();
    let resp = handle(
        &w.app,
        request("PUT", &wallet, Some(put_body("1.00", "USD", 1)), None),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&resp, "retry-after"), "1");
    assert_eq!(db_version(&w, &wallet).await, 1);
    // Reads still work, from the database.
    let read = handle(&w.app, request("GET", &wallet, None, None)).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(
        header(&read, "cache-status"),
        "paycache; fwd=uri-miss; detail=redis-unavailable"
    );
}

/// A subscriber to `balance:<wallet>` receives every version, in order,
/// even with concurrent writers whose cache steps finish out of order.
async fn pubsub_delivers_every_version_in_order(mode: RedisMode) {
    use futures_util::StreamExt;
    let w = World::new(mode, &[]).await;
    let wallet = new_wallet(&w, 0).await;
    let first_node = w.redis.urls().split(',').next().unwrap().to_owned();
    let client = redis::Client::open(first_node).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(format!("balance:{wallet}")).await.unwrap();
    let mut messages = pubsub.into_on_message();

    let apps: Vec<App> = (0..3).map(|_| w.another_environment()).collect();
    let mut tasks = Vec::new();
    for (i, app) in apps.into_iter().enumerate() {
        let wallet = wallet.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            let mut expected = 1;
            while done < 10 {
                let amount = format!("{}.00", i * 100 + done);
                let resp = handle(
                    &app,
                    request(
                        "PUT",
                        &wallet,
                        Some(put_body(&amount, "USD", expected)),
                        None,
                    ),
                )
                .await;
                let b = body_json(&resp);
                if resp.status() == StatusCode::OK {
                    done += 1;
                    expected = b["version"].as_u64().unwrap();
                } else {
                    expected = b["current"]["version"].as_u64().unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut versions = Vec::new();
    while versions.len() < 30 {
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("a balance message")
            .unwrap();
        let payload: String = msg.get_payload().unwrap();
        let m: Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(m["type"], "balance_update");
        assert_eq!(m["wallet_id"], wallet);
        assert_eq!(m["currency"], "USD");
        assert!(m["timestamp"].as_f64().unwrap() > 1.7e9);
        assert!(m["balance"].as_str().unwrap().ends_with(".00"));
        versions.push(m["version"].as_u64().unwrap());
    }
    assert_eq!(
        versions,
        (2..=31).collect::<Vec<_>>(),
        "every version once, in order"
    );
    paycache_tests::assert_no_message_before_sentinel(
        &w.redis,
        &format!("balance:{wallet}"),
        &mut messages,
        "no duplicates",
    )
    .await;
}
both_modes!(pubsub_delivers_every_version_in_order);

/// Round trips per operation, counted with MONITOR (commands that scripts
/// run inside are not round trips and are left out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_per_operation() {
    let server = RedisServer::start();
    let port = server.port;
    let w = World::with_redis(TestRedis::Standalone(server), &[]).await;
    let wallet = new_wallet(&w, 100).await;
    let id = WalletId::parse(&wallet).unwrap();
    // Warm up: load the scripts and the connection.
    handle(
        &w.app,
        request("PUT", &wallet, Some(put_body("2.00", "USD", 1)), None),
    )
    .await;
    handle(&w.app, request("GET", &wallet, None, None)).await;

    let monitor = CommandMonitor::start(port);
    let resp = handle(
        &w.app,
        request("PUT", &wallet, Some(put_body("3.00", "USD", 2)), None),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let sha = |src: &str| redis::Script::new(src).get_hash().to_owned();
    let fence = sha(include_str!(
        "../shared/paycache/src/domain/balance/fence.lua"
    ));
    let apply = sha(include_str!(
        "../shared/paycache/src/domain/balance/apply.lua"
    ));
    let append = sha(include_str!(
        "../shared/paycache/src/domain/audit/append.lua"
    ));
    let mut seen = monitor.commands_with_first_arg();
    // The gate: the service token's blacklist entry and its rate limit,
    // sent together (one round-trip time).
    let gate: Vec<_> = seen
        .iter()
        .filter(|(c, a)| c == "exists" && a.contains(":blacklist:"))
        .cloned()
        .collect();
    assert_eq!(gate.len(), 1, "{seen:?}");
    seen.retain(|(c, a)| !(c == "exists" && a.contains(":blacklist:")));
    seen.sort();
    let mut expected = vec![
        ("evalsha".to_owned(), fence),
        ("evalsha".to_owned(), apply),
        ("evalsha".to_owned(), append),
        // The delivery queue entry for ws-sender (after the apply).
        (
            "xadd".to_owned(),
            w.app.keys.ws_deliveries(w.app.delivery.partition(&wallet)),
        ),
    ];
    let limiter: Vec<_> = seen
        .iter()
        .filter(|s| !expected.contains(s))
        .cloned()
        .collect();
    assert_eq!(limiter.len(), 1, "the rate-limit script: {seen:?}");
    expected.extend(limiter);
    expected.sort();
    assert_eq!(
        seen, expected,
        "a balance write: gate (blacklist + rate limit, together), fence, cache update (1), audit append (1), delivery queue (1)"
    );

    monitor.clear();
    let read = get_balance(&w.app.balances, &id).await.unwrap();
    assert!(read.status.is_hit());
    assert_eq!(monitor.commands(), vec!["get"], "a cached read is one GET");
}

/// The fence protocol, script by script: writers only raise the fence; one
/// that leaves without committing never lifts another's, and one that is
/// no longer inside changes nothing; the last one out, or a version that
/// reaches the highest intent, lifts it.
async fn fence_protocol(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let wallet = WalletId::parse(&random_uuid()).unwrap();
    let key = w.app.keys.wallet_balance(&wallet);
    let lock = key.lock_key();
    let published = w.app.keys.wallet_balance_published(&wallet);
    let log = w.app.keys.wallet_balance_log(&wallet);
    let cursor = w.app.keys.wallet_balance_delivered(&wallet);
    let fence = redis::Script::new(include_str!(
        "../shared/paycache/src/domain/balance/fence.lua"
    ));
    let apply = redis::Script::new(include_str!(
        "../shared/paycache/src/domain/balance/apply.lua"
    ));
    let get_or_lease = redis::Script::new(include_str!(
        "../shared/paycache/src/patterns/cache_aside/get_or_lease.lua"
    ));
    let mut c = w.redis.raw().await;
    let value = |v: u64| {
        let b = WalletBalance {
            wallet_id: wallet,
            currency: "USD".into(),
            balance: format!("{v}.00"),
            version: v,
            updated_at: time::OffsetDateTime::now_utc(),
            owner: None,
        };
        paycache::cache_aside::encode(Some(&b), v, Duration::ZERO, Duration::from_secs(60)).unwrap()
    };
    let leave = |version: u64, leaving: &str| {
        let mut inv = apply.key(key.as_str());
        inv.key(&lock)
            .key(&published)
            .key(&log)
            .key(&cursor)
            .arg(60_000)
            .arg("balance:test")
            .arg(leaving)
            .arg(version)
            .arg(value(version));
        inv
    };
    let raise = |intent: u64, token: &str| {
        let mut inv = fence.key(key.as_str());
        inv.key(&lock).arg(intent).arg(10_000).arg(token);
        inv
    };
    let fence_now = async |c: &mut _| -> Option<String> {
        redis::cmd("GET").arg(&lock).query_async(c).await.unwrap()
    };
    let f: String = raise(2, "ta").invoke_async(&mut c).await.unwrap();
    assert_eq!(f, "w:2:ta");
    let f: String = raise(6, "tb").invoke_async(&mut c).await.unwrap();
    assert_eq!(f, "w:6:ta,tb");
    let f: String = raise(3, "tc").invoke_async(&mut c).await.unwrap();
    assert_eq!(f, "w:6:ta,tb,tc", "a lower intent never lowers the fence");
    // A writer leaves without committing (current version 1): the fence
    // stays, without its token.
    let (cached, _, _, _): (u64, u64, u64, u64) =
        leave(1, "ta").invoke_async(&mut c).await.unwrap();
    assert_eq!(cached, 0, "nothing may be cached while writers are inside");
    assert_eq!(fence_now(&mut c).await.as_deref(), Some("w:6:tb,tc"));
    // Readers see the writer fence and go to the database.
    let r: i64 = get_or_lease
        .key(key.as_str())
        .key(&lock)
        .arg("reader")
        .arg(1000)
        .invoke_async(&mut c)
        .await
        .unwrap();
    assert_eq!(r, -1);
    // A sweep with version 2 does not reach intent 6: nothing changes.
    let (cached, _, _, _): (u64, u64, u64, u64) = leave(2, "").invoke_async(&mut c).await.unwrap();
    assert_eq!(cached, 0);
    assert_eq!(fence_now(&mut c).await.as_deref(), Some("w:6:tb,tc"));
    // The writer that committed version 2 leaves: one writer still inside.
    let (cached, _, _, _): (u64, u64, u64, u64) =
        leave(2, "tb").invoke_async(&mut c).await.unwrap();
    assert_eq!(cached, 0);
    assert_eq!(fence_now(&mut c).await.as_deref(), Some("w:6:tc"));
    // A writer that is not inside (its fence was lifted, or expired, while
    // it was away) takes nobody's place: nothing changes.
    let (cached, _, _, _): (u64, u64, u64, u64) =
        leave(2, "ta").invoke_async(&mut c).await.unwrap();
    assert_eq!(cached, 0);
    assert_eq!(fence_now(&mut c).await.as_deref(), Some("w:6:tc"));
    // The last one leaves (it failed its compare-and-set at version 2): the
    // fence is lifted and the current row cached.
    let (cached, _, _, _): (u64, u64, u64, u64) =
        leave(2, "tc").invoke_async(&mut c).await.unwrap();
    assert_eq!(cached, 2);
    assert_eq!(fence_now(&mut c).await, None);
    // Never backwards: applying version 1 now changes nothing.
    let (cached, _, _, _): (u64, u64, u64, u64) = leave(1, "").invoke_async(&mut c).await.unwrap();
    assert_eq!(cached, 2);
    // A version that reaches the intent lifts a fence whoever is inside.
    let _: String = raise(3, "td").invoke_async(&mut c).await.unwrap();
    let _: String = raise(3, "te").invoke_async(&mut c).await.unwrap();
    let (cached, _, _, _): (u64, u64, u64, u64) = leave(3, "").invoke_async(&mut c).await.unwrap();
    assert_eq!(cached, 3);
    assert_eq!(fence_now(&mut c).await, None);
}
both_modes!(fence_protocol);

/// An invalidation (`cache-invalidator`) drops a reader's lease — its
/// in-flight load must store nothing — but keeps a writer's fence: lifting
/// it mid-write would let a reader cache the row from before the commit.
/// Each side of `invalidate.lua`'s one comparison, through the real
/// `balance::invalidate`.
async fn an_invalidation_keeps_a_writers_fence_and_drops_a_readers_lease(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let fence = redis::Script::new(include_str!(
        "../shared/paycache/src/domain/balance/fence.lua"
    ));
    let get_or_lease = redis::Script::new(include_str!(
        "../shared/paycache/src/patterns/cache_aside/get_or_lease.lua"
    ));
    let mut c = w.redis.raw().await;
    let mut held = Vec::new();
    for writer in [true, false] {
        let wallet = WalletId::parse(&random_uuid()).unwrap();
        let key = w.app.keys.wallet_balance(&wallet);
        let lock = key.lock_key();
        let taken: String = if writer {
            fence
                .key(key.as_str())
                .key(&lock)
                .arg(2)
                .arg(10_000)
                .arg("ta")
                .invoke_async(&mut c)
                .await
                .unwrap()
        } else {
            let r: i64 = get_or_lease
                .key(key.as_str())
                .key(&lock)
                .arg("reader-lease")
                .arg(10_000)
                .invoke_async(&mut c)
                .await
                .unwrap();
            assert_eq!(r, 1, "the reader holds the lease");
            "reader-lease".into()
        };
        paycache::balance::invalidate(&w.app.balances, &wallet)
            .await
            .unwrap();
        let after: Option<String> = redis::cmd("GET")
            .arg(&lock)
            .query_async(&mut c)
            .await
            .unwrap();
        held.push((taken, after));
    }
    assert_eq!(
        held,
        [
            ("w:2:ta".to_owned(), Some("w:2:ta".to_owned())),
            ("reader-lease".to_owned(), None)
        ],
        "kept: the writer's fence; dropped: the reader's lease"
    );
}
both_modes!(an_invalidation_keeps_a_writers_fence_and_drops_a_readers_lease);

/// A commit that would come after half the fence's TTL is rolled back
/// (503) — the fence must outlive every write that can still commit — and
/// one within it goes through. The write waits on the wallet's row lock,
/// held by the test from the moment the write's fence stands: 2.8 s
/// against a 4 s fence (past its half, within the whole), then 0.2 s.
async fn a_commit_after_half_the_fence_is_rolled_back(mode: RedisMode) {
    let w = World::new(mode, &[("BALANCE_FENCE_TTL_MS", "4000")]).await;
    for (held, status, version) in [
        (
            Duration::from_millis(2800),
            StatusCode::SERVICE_UNAVAILABLE,
            1,
        ),
        (Duration::from_millis(200), StatusCode::OK, 2),
    ] {
        let wallet = new_wallet(&w, 1000).await;
        let (blocker, write) = a_write_held_after_its_fence(&w, &wallet).await;
        tokio::time::sleep(held).await;
        blocker.batch_execute("ROLLBACK").await.unwrap();
        let resp = write.await.unwrap();
        assert_eq!(
            resp.status(),
            status,
            "row lock held {held:?}: {}",
            body_json(&resp)
        );
        assert_eq!(
            db_version(&w, &wallet).await,
            version,
            "row lock held {held:?}"
        );
    }
}
both_modes!(a_commit_after_half_the_fence_is_rolled_back);

/// The design's "trigger batch write if buffer is full": the balance write
/// whose audit append fills the buffer to `AUDIT_FLUSH_THRESHOLD` (or a
/// multiple) flushes a batch itself, before it answers; the writes before
/// it leave their events buffered for `audit-flush`.
async fn a_write_that_fills_the_audit_buffer_flushes_it(mode: RedisMode) {
    let w = World::new(mode, &[("AUDIT_FLUSH_THRESHOLD", "3")]).await;
    let wallet = new_wallet(&w, 0).await;
    let mut flushed = Vec::new();
    for (i, expected) in (1..=6).zip(1..) {
        let resp = handle(
            &w.app,
            request(
                "PUT",
                &wallet,
                Some(put_body(&format!("{i}.00"), "USD", expected)),
                None,
            ),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK, "{}", body_json(&resp));
        let n: i64 =
            w.db.client()
                .await
                .query_one("SELECT count(*) FROM audit_log", &[])
                .await
                .unwrap()
                .get(0);
        flushed.push(n);
    }
    assert_eq!(
        flushed,
        [0, 0, 3, 3, 3, 6],
        "audit_log rows after each write"
    );
}
both_modes!(a_write_that_fills_the_audit_buffer_flushes_it);

/// A write whose version another writer's cache step already published
/// (that one applied every pending row, this one's too) queues no
/// delivery of its own: the other's queue entry covers both versions, and
/// a second would be a round trip for nothing.
async fn a_write_published_by_another_queues_nothing(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let wallet = new_wallet(&w, 0).await;
    let id = WalletId::parse(&wallet).unwrap();
    // The first writer commits version 2 and stops before its cache step…
    let first = {
        let app = w.app.clone();
        tokio::spawn(
            async move { write_deciding(&app, &id, 200, 1, Duration::from_millis(1500)).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    // …the second commits version 3 and publishes both.
    assert_eq!(
        write_deciding(&w.app, &id, 300, 2, Duration::ZERO).await,
        Ok(3)
    );
    assert!(!first.is_finished(), "the first writer is still paused");
    assert_eq!(first.await.unwrap(), Ok(2));
    let mut raw = w.redis.raw().await;
    let entries = raw
        .stream(&w.app.keys.ws_deliveries(w.app.delivery.partition(&wallet)))
        .await
        .unwrap();
    let kicks: Vec<_> = entries
        .iter()
        .filter(|(_, f)| f.contains(&("w".into(), wallet.clone())))
        .map(|(_, f)| f.clone())
        .collect();
    assert_eq!(
        kicks.len(),
        1,
        "one queue entry for both versions: {kicks:?}"
    );
    assert!(kicks[0].contains(&("f".into(), "2".into())), "{kicks:?}");
}
both_modes!(a_write_published_by_another_queues_nothing);

/// The sweep's other failure: the cache step applies, but the wallet
/// cannot be queued for real-time delivery (the durable Redis that holds
/// the delivery streams is unreachable) — the row stays pending for the
/// next sweep, and the report counts the wallet as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_that_cannot_queue_delivery_keeps_the_row() {
    let w = World::new(
        RedisMode::Standalone,
        &[
            ("REDIS_DURABLE_URL", "redis://127.0.0.1:1"),
            ("REDIS_CONNECT_TIMEOUT_MS", "200"),
        ],
    )
    .await;
    let wallet = new_wallet(&w, 0).await;
    let resp = handle(
        &w.app,
        request("PUT", &wallet, Some(put_body("5.00", "USD", 1)), None),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", body_json(&resp));
    let report = apply_pending(&w.app.balances, 100).await.unwrap();
    assert_eq!(
        (report.wallets, report.rows, report.failed_wallets),
        (1, 1, 1),
        "{report:?}"
    );
    let pending = pending_outbox_rows(&w).await;
    assert_eq!(pending, 1, "the row stays pending");
}

/// Each `Idempotency-Key`'s record keeps the status its request was
/// answered with (what an operator reads beside the stored response): 200
/// applied, 409 conflict, 422 currency mismatch.
async fn an_idempotency_record_keeps_its_status(mode: RedisMode) {
    let w = World::new(mode, &[]).await;
    let wallet = new_wallet(&w, 0).await;
    for (key, body, status) in [
        ("k-applied", put_body("1.00", "USD", 1), 200),
        ("k-conflict", put_body("2.00", "USD", 1), 409),
        ("k-currency", put_body("3.00", "EUR", 2), 422),
    ] {
        let resp = handle(&w.app, request("PUT", &wallet, Some(body), Some(key))).await;
        assert_eq!(
            resp.status().as_u16(),
            status,
            "{key}: {}",
            body_json(&resp)
        );
        let stored: i16 = w
            .db
            .client()
            .await
            .query_one(
                "SELECT status FROM idempotency_keys WHERE wallet_id = $1::text::uuid AND idempotency_key = $2",
                &[&wallet, &key],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(stored as u16, status, "{key}");
    }
}
both_modes!(an_idempotency_record_keeps_its_status);
