//! 64 execution environments through a transaction pooler: what RDS Proxy
//! is for, rehearsed with PgBouncer (transaction mode; `make bench` gives
//! it 4 server connections per database, `make test` 2).
//!
//! Each environment is a pool of its own (one connection, as a Lambda
//! execution environment holds) running the functions' kinds of database
//! work — a profile read, a balance read and a one-row write transaction —
//! through the crate's statements ([`paycache::db::DbClient`]: the unnamed
//! statement, nothing prepared, nothing `SET`). Meanwhile PgBouncer's
//! `SHOW POOLS` is sampled: clients waiting, server connections in use.
//! Then `SHOW STATS` and the verdict:
//!
//! - no operation failed;
//! - more clients were served than the pool has server connections (the
//!   pooler multiplexed them), and no more server connections were used
//!   than the pool holds;
//! - **the broken variant fails**: the same reads with tokio-postgres's
//!   `Client::query` (a named statement per query, prepared in one
//!   exchange and run in the next) through the same pooler — statements
//!   land on server connections that did not prepare them, or collide
//!   with another client's of the same name. If that variant ever passed,
//!   the check above would prove nothing, and the run fails.
//!
//! `cargo bench --bench pooler` runs 10 seconds; `make test` runs it once,
//! briefly, as a check (`cargo test --bench pooler`).
#![allow(clippy::unwrap_used, reason = "benchmark set-up")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use paycache::db::Db;
use paycache::keys::{UserId, WalletId};
use test_support::TestDb;

const ENVIRONMENTS: usize = 64;

/// PgBouncer's `SHOW POOLS` row for `database`: (cl_active, cl_waiting,
/// sv_active + sv_idle + sv_used + sv_tested + sv_login).
async fn pools(admin: &tokio_postgres::Client, database: &str) -> Option<(u64, u64, u64)> {
    let rows = admin.simple_query("SHOW POOLS").await.ok()?;
    for m in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            if r.get("database") != Some(database) {
                continue;
            }
            let n = |c: &str| r.get(c).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let servers =
                n("sv_active") + n("sv_idle") + n("sv_used") + n("sv_tested") + n("sv_login");
            return Some((n("cl_active"), n("cl_waiting"), servers));
        }
    }
    None
}

/// `SHOW STATS` for `database`, as (column, value) pairs.
async fn stats(admin: &tokio_postgres::Client, database: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for m in admin.simple_query("SHOW STATS").await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            if r.get("database") != Some(database) {
                continue;
            }
            for (i, c) in r.columns().iter().enumerate() {
                out.push((c.name().to_owned(), r.get(i).unwrap_or("").to_owned()));
            }
        }
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let run_for = if bench {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(2)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(run_for));
}

async fn run(run_for: Duration) {
    let db = TestDb::pooled().await;
    let database = db.app_conninfo.rsplit("dbname=").next().unwrap().to_owned();
    let mut users = Vec::new();
    let mut wallets = Vec::new();
    for n in 1..=ENVIRONMENTS as u64 {
        users.push(UserId::parse(&test_support::insert_user(&db, n).await).unwrap());
        let wallet = test_support::random_uuid();
        test_support::insert_wallet(&db, n, &wallet, "USD", 10_000).await;
        wallets.push(WalletId::parse(&wallet).unwrap());
    }
    let pooler = std::env::var("PAYCACHE_TEST_PG_POOLER").unwrap();
    let (admin, conn) =
        tokio_postgres::connect(&format!("{pooler} dbname=pgbouncer"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);

    // The environments: one connection each (DATABASE_POOL_SIZE=1).
    let mut config = db.config();
    config.pool_size = 1;
    let envs: Vec<Db> = (0..ENVIRONMENTS)
        .map(|_| Db::new(&config).unwrap())
        .collect();
    let running = Arc::new(AtomicBool::new(true));
    let (most_clients, most_waiting, most_servers) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let sampler = {
        let (running, c, w, s, database) = (
            running.clone(),
            most_clients.clone(),
            most_waiting.clone(),
            most_servers.clone(),
            database.clone(),
        );
        tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                if let Some((active, waiting, servers)) = pools(&admin, &database).await {
                    c.fetch_max(active + waiting, Ordering::Relaxed);
                    w.fetch_max(waiting, Ordering::Relaxed);
                    s.fetch_max(servers, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            admin
        })
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, env) in envs.into_iter().enumerate() {
        let (user, wallet) = (users[i], wallets[i]);
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut took) = (0u64, 0u64, Vec::new());
            while started.elapsed() < run_for {
                let t = Instant::now();
                let result = match ok % 3 {
                    0 => paycache::profile::load_profile(&env, &user)
                        .await
                        .map(|_| ()),
                    1 => paycache::balance::load_balance(&env, &wallet)
                        .await
                        .map(|_| ()),
                    _ => {
                        async {
                            let mut client = env.client().await?;
                            let tx = client.transaction().await?;
                            tx.execute(
                                "UPDATE wallets SET updated_at = now() WHERE wallet_id = $1",
                                &[&wallet.as_uuid()],
                            )
                            .await?;
                            tx.commit().await
                        }
                        .await
                    }
                };
                took.push(t.elapsed());
                match result {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        failed += 1;
                        eprintln!("environment {i}: {e}");
                        ok += 1; // the next kind of work, all the same
                    }
                }
            }
            (ok, failed, took)
        }));
    }
    let (mut ops, mut errors, mut took) = (0u64, 0u64, Vec::new());
    for t in tasks {
        let (o, f, mut d) = t.await.unwrap();
        ops += o;
        errors += f;
        took.append(&mut d);
    }
    let elapsed = started.elapsed();
    running.store(false, Ordering::Relaxed);
    let admin = sampler.await.unwrap();
    took.sort();
    let (clients, waiting, servers) = (
        most_clients.load(Ordering::Relaxed),
        most_waiting.load(Ordering::Relaxed),
        most_servers.load(Ordering::Relaxed),
    );
    let pool = pool_size(&admin).await;

    let s = stats(&admin, &database).await;
    // The broken variant: named statements through the same pooler.
    let broken_errors = named_statements(&db, &wallets, run_for).await;

    println!(
        "pooler: {ENVIRONMENTS} execution environments through PgBouncer (transaction mode, {pool} server connections) for {:.1} s",
        elapsed.as_secs_f64()
    );
    println!(
        "  {ops} operations ({:.0}/s), {errors} failed; latency p50 {:?}, p99 {:?}",
        ops as f64 / elapsed.as_secs_f64(),
        percentile(&took, 0.5),
        percentile(&took, 0.99)
    );
    println!(
        "  SHOW POOLS, most seen: {clients} clients (cl_active + cl_waiting), {waiting} waiting, {servers} server connections"
    );
    let pick = |name: &str| {
        s.iter()
            .find(|(c, _)| c == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    println!(
        "  SHOW STATS: total_xact_count {}, total_query_count {}, total_wait_time {} µs",
        pick("total_xact_count"),
        pick("total_query_count"),
        pick("total_wait_time")
    );
    println!(
        "  broken variant (tokio-postgres named statements, same pooler): {broken_errors} failed"
    );
    let mut wrong = Vec::new();
    if errors > 0 {
        wrong.push(format!("{errors} operations failed through the pooler"));
    }
    if servers > pool {
        wrong.push(format!(
            "{servers} server connections, more than the pool's {pool}"
        ));
    }
    if clients <= pool {
        wrong.push(format!(
            "at most {clients} clients seen at once: the pooler was never shared"
        ));
    }
    if broken_errors == 0 {
        wrong.push(
            "the broken variant (named statements) did not fail: the check proves nothing".into(),
        );
    }
    if !wrong.is_empty() {
        eprintln!("pooler: {}", wrong.join("; "));
        std::process::exit(1);
    }
}

/// `default_pool_size` from `SHOW CONFIG`.
async fn pool_size(admin: &tokio_postgres::Client) -> u64 {
    for m in admin.simple_query("SHOW CONFIG").await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m
            && r.get("key") == Some("default_pool_size")
        {
            return r.get("value").and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    0
}

/// The same balance reads with tokio-postgres's `Client::query` (named
/// statements) from every environment through the pooler: how many failed.
async fn named_statements(db: &TestDb, wallets: &[WalletId], run_for: Duration) -> u64 {
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for &wallet in wallets {
        let (conninfo, failed) = (db.app_conninfo.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let Ok((client, conn)) =
                tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await
            else {
                failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            tokio::spawn(conn);
            while started.elapsed() < run_for / 2 {
                if client
                    .query(
                        "SELECT version FROM wallets WHERE wallet_id = $1",
                        &[&wallet.as_uuid()],
                    )
                    .await
                    .is_err()
                {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    failed.load(Ordering::Relaxed)
}
