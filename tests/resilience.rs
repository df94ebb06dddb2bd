//! What happens to requests when the network or a server misbehaves:
//! a connection killed while idle (a frozen execution environment's
//! reality), Redis busy in `DEBUG SLEEP`, PostgreSQL down.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http::StatusCode;
use lambda_http::{Body, Request, RequestExt};
use paycache::CacheStatus;
use paycache::connection::RedisUnavailable;
use paycache::keys::UserId;
use paycache_tests::World;
use test_support::{RedisCluster, RedisServer, TestRedis, insert_user, random_uuid};

fn kill_clients(port: u16) {
    let ok = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "CLIENT", "KILL", "TYPE", "normal"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

async fn survives_killed_connections(w: &World, ports: &[u16]) {
    let user = UserId::parse(&insert_user(&w.db, 1).await).unwrap();
    let read = || paycache::profile::get_profile(&w.app.profiles, &user);
    assert!(!read().await.unwrap().status.is_hit());
    assert_eq!(read().await.unwrap().status, CacheStatus::Hit);
    // The server closes every client connection, as after a long freeze.
    for p in ports {
        kill_clients(*p);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // No request fails; within a few requests the cache serves again.
    let mut back = false;
    for _ in 0..20 {
        let got = read().await.unwrap();
        assert!(got.value.is_some());
        if got.status == CacheStatus::Hit {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the connection should come back by itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_idle_connection_is_replaced_standalone() {
    let server = RedisServer::start();
    let port = server.port;
    let w = World::with_redis(TestRedis::Standalone(server), &[]).await;
    survives_killed_connections(&w, &[port]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_idle_connection_is_replaced_cluster() {
    let cluster = RedisCluster::start();
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let w = World::with_redis(TestRedis::Cluster(cluster), &[]).await;
    survives_killed_connections(&w, &ports).await;
}

/// Redis busy (`DEBUG SLEEP`): reads fall through within the response
/// timeout instead of waiting for Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_redis_costs_one_timeout() {
    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let port = server.port;
    let w = World::with_redis(
        TestRedis::Standalone(server),
        &[("REDIS_RESPONSE_TIMEOUT_MS", "100")],
    )
    .await;
    let user = UserId::parse(&insert_user(&w.db, 2).await).unwrap();
    paycache::profile::get_profile(&w.app.profiles, &user)
        .await
        .unwrap();
    let mut sleeper = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "DEBUG", "SLEEP", "2"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let got = paycache::profile::get_profile(&w.app.profiles, &user)
        .await
        .unwrap();
    let took = started.elapsed();
    sleeper.wait().unwrap();
    // What the bound is for: the response timeout cut the call short.
    assert!(
        matches!(got.status, CacheStatus::Bypass(RedisUnavailable::Timeout)),
        "{:?}",
        got.status
    );
    assert!(got.value.is_some());
    assert!(
        took < Duration::from_millis(1500),
        "bounded by the timeout, not by the 2 s sleep: {took:?}"
    );
}

fn request(method: &str, path: &str, param: (&str, &str), body: Option<&str>) -> Request {
    let mut params = HashMap::new();
    params.insert(param.0.to_string(), param.1.to_string());
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .body(
            body.map(|b| Body::Text(b.to_owned()))
                .unwrap_or(Body::Empty),
        )
        .unwrap()
        .with_path_parameters(params);
    paycache_tests::as_service(req, &paycache_tests::ALL_PERMISSIONS)
}

/// PostgreSQL down, Redis up: cached reads still succeed; misses and writes
/// answer a clean 503 quickly, never hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_keeps_cached_reads() {
    let w = World::new(paycache::config::RedisMode::Standalone, &[]).await;
    let cached = insert_user(&w.db, 3).await;
    let wallet = random_uuid();
    test_support::insert_wallet(&w.db, 4, &wallet, "USD", 100).await;
    // Warm the cache through the working database.
    assert_eq!(
        paycache::routes::profile_read::handle(
            &w.app,
            request("GET", "/", ("user_id", &cached), None)
        )
        .await
        .status(),
        StatusCode::OK
    );

    // The same configuration, but PostgreSQL is gone.
    let mut config = w.app.config.clone();
    config.database.url = paycache::config::Secret::new(format!(
        "host=127.0.0.1 port={} user=nobody dbname=none",
        test_support::free_port()
    ));
    config.database.connect_timeout = Duration::from_millis(300);
    let down = paycache::App::new(config).unwrap();

    let hit = paycache::routes::profile_read::handle(
        &down,
        request("GET", "/", ("user_id", &cached), None),
    )
    .await;
    assert_eq!(hit.status(), StatusCode::OK);
    assert_eq!(hit.headers()["cache-status"], "paycache; hit");

    for req in [
        request(
            "GET",
            "/",
            ("user_id", &test_support::seed_user_id(77)),
            None,
        ),
        request("GET", "/", ("wallet_id", &wallet), None),
        request(
            "PUT",
            "/",
            ("wallet_id", &wallet),
            Some(r#"{"balance": "1.00", "currency": "USD", "expected_version": 1}"#),
        ),
    ] {
        let is_profile = req.path_parameters().first("user_id").is_some();
        let started = Instant::now();
        let resp = if is_profile {
            paycache::routes::profile_read::handle(&down, req).await
        } else {
            paycache::routes::balance::handle(&down, req).await
        };
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        // What the bound is for: the database's connect timeout answered
        // (its problem, with Retry-After), not the cache or a hang.
        let problem: serde_json::Value = serde_json::from_slice(resp.body().as_ref()).unwrap();
        assert_eq!(problem["type"], "urn:paycache:problem:unavailable");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("store is unavailable"), "{detail}");
        assert_eq!(resp.headers()["retry-after"], "1");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    // The failed write left no fence behind: reads through the working
    // database are cached again.
    let again = paycache::routes::balance::handle(
        &w.app,
        request("GET", "/", ("wallet_id", &wallet), None),
    )
    .await;
    assert_eq!(again.status(), StatusCode::OK);
    let again = paycache::routes::balance::handle(
        &w.app,
        request("GET", "/", ("wallet_id", &wallet), None),
    )
    .await;
    assert_eq!(again.headers()["cache-status"], "paycache; hit");
}
