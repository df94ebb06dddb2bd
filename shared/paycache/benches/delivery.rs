//! Real-time delivery throughput (docs/operations.md → Budgets): the sender against
//! the local gateway with an injected Management API latency (25 ms per
//! post) and injected 429s (every 200th post), for
//!
//! - **balance kicks**: 4,000 wallets, one version each, each owner with
//!   one connection — frames per second;
//! - **an announcement to 100,000 registered connections** (16 registry
//!   shards over 8 partitions, pages of 500, sessions checked per page),
//!
//! with 1, 2 and 4 senders (`WS_FAN_OUT` = 64 posts in flight each). The
//! configured post rate is `senders × 64 / 25 ms`; the goal is the
//! announcement within 1.2× the time that rate allows, zero frames sent
//! twice in a run without a sender death, and throughput near-linear in
//! senders up to the partition count.
//!
//! Connections are `sink…` ids the gateway accepts and counts without a
//! socket; registry entries and sessions are written straight into Redis
//! (what `$connect` and sign-in write), so the set-up is not measured.
//! `cargo test` runs it as a smoke test (2,000 connections, 1 sender).
#![allow(clippy::unwrap_used, reason = "benchmark set-up")]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paycache::App;
use paycache::delivery::{self, Management, Recipients, Sender};
use paycache::keys::{ConnectionId, SessionId, UserId, WalletId};
use paycache::realtime;
use serde_json::{Value, json};
use test_support::{RawRedis, RedisServer, TestDb, TestRedis, random_uuid};

const LATENCY_MS: u64 = 25;
const FAN_OUT: usize = 64;
const THROTTLE_EVERY: u64 = 200;

struct Bench {
    app: Arc<App>,
    gateway: paycache_ws_gateway::Handle,
    raw: RawRedis,
}

async fn run_pipe(raw: &mut RawRedis, pipe: &redis::Pipeline) {
    if pipe.cmd_iter().next().is_none() {
        return;
    }
    let () = pipe.query_async(raw).await.unwrap();
}

async fn gateway_post(gw: &paycache_ws_gateway::Handle, path: &str) {
    let url = format!("{}/_gateway/{path}", gw.management_url());
    let out = std::process::Command::new("curl")
        .args(["-s", "-X", "POST", &url])
        .output();
    assert!(out.is_ok(), "curl {url}");
}

/// The gateway's stats; `?sink=1` adds the posts per id.
async fn stats(gw: &paycache_ws_gateway::Handle, query: &str) -> Value {
    let url = format!("{}/_gateway/stats{query}", gw.management_url());
    let out = tokio::process::Command::new("curl")
        .args(["-s", &url])
        .output()
        .await
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

async fn sink_connections(b: &Bench) -> u64 {
    stats(&b.gateway, "").await["sink_connections"]
        .as_u64()
        .unwrap_or(0)
}

async fn sink_counts(gw: &paycache_ws_gateway::Handle) -> HashMap<String, u64> {
    stats(gw, "?sink=1").await["sink"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `n` registered connections (one user and session each) into
/// the registry: what `$connect` and sign-in write, pipelined.
async fn register(b: &mut Bench, tag: &str, n: usize) -> Vec<(UserId, ConnectionId)> {
    let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    let mut out = Vec::with_capacity(n);
    let mut pipe = redis::pipe();
    for i in 0..n {
        let user = UserId::parse(&random_uuid()).unwrap();
        let sid = SessionId::parse(&format!("s{tag}{i}")).unwrap();
        let conn = ConnectionId::parse(&format!("sink{tag}{i:07}=")).unwrap();
        let session = b.app.keys.session(&user, &sid);
        pipe.set_ex(session.as_str(), "{}", 3600).ignore();
        pipe.hset(
            b.app.keys.ws_all(realtime::shard_of(&conn)),
            conn.as_str(),
            format!("{user} {sid} {exp}"),
        )
        .ignore();
        pipe.zadd(
            b.app.keys.ws_all_ids(realtime::shard_of(&conn)),
            conn.as_str(),
            0,
        )
        .ignore();
        pipe.hset(
            b.app.keys.ws_connections(&user).as_str(),
            conn.as_str(),
            format!("{sid} {exp}"),
        )
        .ignore();
        out.push((user, conn));
        if (i + 1) % 500 == 0 {
            run_pipe(&mut b.raw, &pipe).await;
            pipe = redis::pipe();
        }
    }
    run_pipe(&mut b.raw, &pipe).await;
    out
}

/// Starts `senders` senders and waits until they have shared the
/// partitions (the steady state: deployed, senders run all the time).
async fn start_senders(
    b: &Bench,
    senders: usize,
) -> Vec<tokio::task::JoinHandle<delivery::Report>> {
    let mut tasks = Vec::new();
    for _ in 0..senders {
        let app = b.app.clone();
        let endpoint = b.gateway.management_url();
        tasks.push(tokio::spawn(async move {
            let m = Management::new(&endpoint, 5, Duration::from_secs(5)).await;
            let mut sender = Sender::new(m).with_fan_out(FAN_OUT);
            delivery::run(
                &app.deliveries,
                &mut sender,
                Instant::now() + Duration::from_secs(600),
            )
            .await
        }));
    }
    // Until every partition is held and no sender holds more than its
    // share (maintenance runs every third of the 10 s lease).
    let share = usize::from(b.app.config.delivery.partitions).div_ceil(senders);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let mut raw = b.raw.clone();
        let mut holders: HashMap<String, usize> = HashMap::new();
        let mut held = 0;
        for p in 0..b.app.config.delivery.partitions {
            let holder: Option<String> = redis::cmd("GET")
                .arg(b.app.keys.ws_lease(p))
                .query_async(&mut raw)
                .await
                .unwrap();
            if let Some(h) = holder {
                held += 1;
                *holders.entry(h).or_default() += 1;
            }
        }
        let balanced = held == usize::from(b.app.config.delivery.partitions)
            && holders.len() == senders
            && holders.values().all(|n| *n <= share);
        if balanced || Instant::now() > deadline {
            assert!(
                balanced,
                "the senders did not share the partitions: {holders:?}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tasks
}

/// Waits until the gateway counted `frames` new sink connections with
/// `tag` (or 10 minutes), stops the senders; returns the time since
/// `started`, the connections reached and the posts beyond one each.
async fn finish(
    b: &Bench,
    tasks: Vec<tokio::task::JoinHandle<delivery::Report>>,
    started: Instant,
    before: u64,
    tag: &str,
    frames: usize,
) -> (Duration, u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    let prefix = format!("sink{tag}");
    // Polled cheaply (counts only); each round's connections are new ids.
    let mut took;
    loop {
        let done = stats(&b.gateway, "").await["sink_connections"]
            .as_u64()
            .unwrap_or(0)
            - before;
        took = started.elapsed();
        if done >= frames as u64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Anything sent twice arrives within moments.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counts = sink_counts(&b.gateway).await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    let mine: Vec<u64> = counts
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| *v)
        .collect();
    let delivered = mine.len() as u64;
    let twice: u64 = mine.iter().map(|n| n.saturating_sub(1)).sum();
    (took, delivered, twice)
}

/// Releases every lease between rounds (aborted senders keep theirs).
async fn clear_leases(b: &mut Bench) {
    let mut pipe = redis::pipe();
    for p in 0..b.app.config.delivery.partitions {
        pipe.del(b.app.keys.ws_lease(p)).ignore();
    }
    pipe.del(b.app.keys.ws_senders()).ignore();
    run_pipe(&mut b.raw, &pipe).await;
}

/// One balance version (logged, its kick queued) for a wallet of each of
/// `owners`.
async fn kicks(b: &mut Bench, owners: &[(UserId, ConnectionId)]) {
    let mut pipe = redis::pipe();
    for (user, _) in owners {
        let wallet = WalletId::parse(&random_uuid()).unwrap();
        let w = wallet.to_string();
        let message = json!({"type": "balance_update", "wallet_id": w, "balance": "1.00",
                             "currency": "USD", "version": 2, "timestamp": 0.0})
        .to_string();
        let log = b.app.keys.wallet_balance_log(&wallet);
        pipe.cmd("XADD")
            .arg(&log)
            .arg("2-1")
            .arg("m")
            .arg(message)
            .ignore();
        pipe.set(b.app.keys.wallet_balance_delivered(&wallet), 1)
            .ignore();
        let p = b.app.delivery.partition(&w);
        pipe.cmd("XADD")
            .arg(b.app.keys.ws_deliveries(p))
            .arg("*")
            .arg("k")
            .arg("balance")
            .arg("w")
            .arg(&w)
            .arg("u")
            .arg(user.to_string())
            .arg("f")
            .arg(2)
            .ignore();
    }
    run_pipe(&mut b.raw, &pipe).await;
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if std::env::var("RUST_LOG").is_ok() {
        paycache::app::init_logging();
    }
    // `PAYCACHE_BENCH_SENDERS=2,4` runs those sender counts only.
    let only: Option<Vec<usize>> = std::env::var("PAYCACHE_BENCH_SENDERS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let server = RedisServer::start();
        let redis = TestRedis::Shared {
            urls: server.url(),
            mode: paycache::config::RedisMode::Standalone,
        };
        let db = TestDb::create().await;
        // Each round and kind of load in a keyspace of its own: nothing a
        // round leaves behind (pending entries, progress) reaches the next.
        let app_for = |round: &str| {
            let prefix = format!("bench{round}");
            Arc::new(
                App::new(test_support::config(
                    &redis,
                    &db,
                    &[
                        ("WS_REDELIVER_AFTER_MS", "30000"),
                        ("CACHE_KEY_PREFIX", prefix.as_str()),
                    ],
                ))
                .unwrap(),
            )
        };
        let app = app_for("setup");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let invoke: paycache_ws_gateway::Invoke =
            Arc::new(|_, _| Box::pin(async { Err("no functions".to_owned()) }));
        let gateway = paycache_ws_gateway::serve(
            listener,
            invoke,
            paycache_ws_gateway::Options::new(paycache_ws_gateway::sigv4::Expected::from_env(), true),
        )
        .unwrap();
        let raw = redis.raw().await;
        let mut b = Bench { app, gateway, raw };
        gateway_post(
            &b.gateway,
            &format!("latency?ms={LATENCY_MS}&throttle_every={THROTTLE_EVERY}"),
        )
        .await;
        delivery::ensure_groups(&b.app.deliveries).await.unwrap();
        let (connections, wallets, counts): (usize, usize, &[usize]) = if full {
            (100_000, 4_000, &[1, 2, 4])
        } else {
            (2_000, 200, &[1])
        };
        println!(
            "delivery: gateway latency {LATENCY_MS} ms per post, a 429 every {THROTTLE_EVERY} posts, \
             WS_FAN_OUT {FAN_OUT}, {} partitions",
            b.app.config.delivery.partitions
        );
        println!(
            "| senders | configured rate (posts/s) | balance kicks: frames/s | kicks sent twice | \
             announcement to {connections}: seconds | allowed (1.2×) | frames/s | sent twice |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let mut failed = Vec::new();
        let counts: Vec<usize> = only.unwrap_or_else(|| counts.to_vec());
        for &senders in &counts {
            let rate = senders as f64 * FAN_OUT as f64 * 1000.0 / LATENCY_MS as f64;
            // Balance kicks.
            let tag = format!("k{senders}x");
            b.app = app_for(&tag);
            delivery::ensure_groups(&b.app.deliveries).await.unwrap();
            let owners = register(&mut b, &tag, wallets).await;
            let tasks = start_senders(&b, senders).await;
            let before = sink_connections(&b).await;
            let started = Instant::now();
            kicks(&mut b, &owners).await;
            let (k_took, k_delivered, k_twice) =
                finish(&b, tasks, started, before, &tag, wallets).await;
            clear_leases(&mut b).await;
            // The announcement, to this round's connections only.
            for shard in 0..realtime::REGISTRY_SHARDS {
                let mut pipe = redis::pipe();
                pipe.del(b.app.keys.ws_all(shard)).ignore();
                pipe.del(b.app.keys.ws_all_ids(shard)).ignore();
                run_pipe(&mut b.raw, &pipe).await;
            }
            let tag = format!("a{senders}x");
            b.app = app_for(&tag);
            delivery::ensure_groups(&b.app.deliveries).await.unwrap();
            register(&mut b, &tag, connections).await;
            let tasks = start_senders(&b, senders).await;
            let before = sink_connections(&b).await;
            let started = Instant::now();
            b.app
                .delivery
                .message(
                    "system:announcements",
                    &Recipients::Everyone,
                    &json!({"type": "announcement", "message": "maintenance at 02:00"}),
                )
                .await
                .unwrap();
            let (a_took, a_delivered, a_twice) =
                finish(&b, tasks, started, before, &tag, connections).await;
            clear_leases(&mut b).await;
            let allowed = 1.2 * connections as f64 / rate;
            println!(
                "| {senders} | {rate:.0} | {:.0} | {k_twice} | {:.1} | {allowed:.1} | {:.0} | {a_twice} |",
                k_delivered as f64 / k_took.as_secs_f64(),
                a_took.as_secs_f64(),
                a_delivered as f64 / a_took.as_secs_f64(),
            );
            if k_delivered != wallets as u64 || a_delivered != connections as u64 {
                failed.push(format!(
                    "{senders} senders: {k_delivered}/{wallets} kicks, {a_delivered}/{connections} announced"
                ));
            }
            if k_twice + a_twice > 0 {
                failed.push(format!("{senders} senders: frames sent twice"));
            }
        }
        b.gateway.stop();
        drop(server);
        assert!(failed.is_empty(), "{failed:?}");
    });
}
