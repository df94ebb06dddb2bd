//! `GET /health` and `GET /health/nodes` against real Redis: healthy,
//! stopped, paused, and a cluster with a node down — status and time bound;
//! what an anonymous caller learns, and what it costs Redis.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::time::{Duration, Instant};

use http::StatusCode;
use lambda_http::{Body, Request, Response};
use paycache::config::RedisMode;
use paycache::routes::health::handle;
use paycache_tests::{World, as_service};
use serde_json::Value;
use test_support::{RedisCluster, RedisServer, TestRedis};

fn get() -> Request {
    http::Request::builder()
        .method("GET")
        .uri("/health/nodes")
        .body(Body::Empty)
        .unwrap()
}

fn anonymous() -> Request {
    http::Request::builder()
        .method("GET")
        .uri("/health")
        .body(Body::Empty)
        .unwrap()
}

fn body(resp: &Response<Body>) -> Value {
    serde_json::from_slice(resp.body().as_ref()).unwrap()
}

/// `GET /health/nodes` as an operator's service (`health.read`).
async fn timed(w: &World) -> (Response<Body>, Duration) {
    let started = Instant::now();
    let resp = handle(&w.app, as_service(get(), &["health.read"])).await;
    (resp, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_standalone() {
    let w = World::new(RedisMode::Standalone, &[]).await;
    let (resp, _) = timed(&w).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let b = body(&resp);
    assert_eq!(b["status"], "healthy");
    assert!(b["response_time_ms"].as_f64().unwrap() > 0.0);
    assert!(
        b["memory_usage"]
            .as_str()
            .unwrap()
            .ends_with(['B', 'K', 'M', 'G'])
    );
    assert!(b["cluster_state"].is_null());
    let nodes = b["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["ok"], true);
    assert_eq!(nodes[0]["role"], "primary");
    assert!(nodes[0]["latency_ms"].as_f64().unwrap() >= 0.0);
    assert!(nodes[0]["used_memory_human"].is_string());
    // The probe leaves nothing behind.
    assert!(w.keys().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_cluster_lists_every_node() {
    let w = World::new(RedisMode::Cluster, &[]).await;
    let (resp, _) = timed(&w).await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", body(&resp));
    let b = body(&resp);
    assert_eq!(b["cluster_state"], "ok");
    let nodes = b["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 6);
    assert_eq!(nodes.iter().filter(|n| n["role"] == "primary").count(), 3);
    assert_eq!(nodes.iter().filter(|n| n["role"] == "replica").count(), 3);
    assert!(nodes.iter().all(|n| n["ok"] == true), "{b}");
    assert!(b["memory_usage"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_or_paused_is_503_within_2s() {
    // The anonymous route: it needs no session check (Redis is what fails).
    async fn timed(w: &World) -> (Response<Body>, Duration) {
        let started = Instant::now();
        let resp = handle(&w.app, anonymous()).await;
        (resp, started.elapsed())
    }
    let server = RedisServer::start();
    let mut w = World::with_redis(
        TestRedis::Standalone(server),
        &[("HEALTH_TIMEOUT_MS", "500")],
    )
    .await;
    assert_eq!(timed(&w).await.0.status(), StatusCode::OK);

    let TestRedis::Standalone(server) = &mut w.redis else {
        unreachable!()
    };
    server.pause();
    let (resp, took) = timed(&w).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(took < Duration::from_secs(2), "paused: {took:?}");
    let b = body(&resp);
    assert_eq!(b["status"], "unhealthy");
    assert!(b["error"].as_str().unwrap().contains("Redis"), "{b}");
    assert_eq!(resp.headers()["content-type"], "application/json");

    if let TestRedis::Standalone(server) = &mut w.redis {
        server.resume();
        server.stop();
    }
    let (resp, took) = timed(&w).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(took < Duration::from_secs(2), "stopped: {took:?}");
    let error = body(&resp)["error"].as_str().unwrap().to_owned();
    for internal in ["127.0.0.1", "refused", "os error"] {
        assert!(!error.contains(internal), "internal text in {error}");
    }
}

/// One replica down (of another primary): still healthy, the node shows
/// `ok: false`. A primary killed: unhealthy — the probe's keys on its slots
/// fail, then `cluster_state` is `fail` until its replica takes over — then
/// healthy again with the dead node reported and its replica promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_with_a_node_down() {
    // Status and time bound from the anonymous route, the nodes from the
    // report (a principal's check needs the very Redis that is failing).
    async fn timed(w: &World) -> (Response<Body>, Duration) {
        let started = Instant::now();
        let resp = handle(&w.app, anonymous()).await;
        let took = started.elapsed();
        if resp.status() != StatusCode::OK {
            return (resp, took);
        }
        let report = paycache::health::check(&w.app.health).await;
        let resp = match report {
            Ok(r) => lambda_http::Response::builder()
                .status(200)
                .body(Body::Text(serde_json::to_string(&r).unwrap()))
                .unwrap(),
            Err(e) => lambda_http::Response::builder()
                .status(503)
                .body(Body::Text(
                    serde_json::json!({"status": "unhealthy", "error": e.to_string()}).to_string(),
                ))
                .unwrap(),
        };
        (resp, took)
    }
    let cluster = RedisCluster::start();
    let primary = (0..6).find(|i| cluster.role(*i) == "master").unwrap();
    let primary_port = cluster.nodes[primary].port;
    let replicates = |i: usize, port: u16| cluster.replicates(i, port);
    // A replica that does not replicate the primary we kill later, and the
    // one that does (it must survive to take over).
    let replica = (0..6)
        .find(|&i| cluster.role(i) == "slave" && !replicates(i, primary_port))
        .unwrap();
    let heir = (0..6).find(|&i| replicates(i, primary_port)).unwrap();
    let (replica_port, heir_port) = (cluster.nodes[replica].port, cluster.nodes[heir].port);
    let mut w = World::with_redis(TestRedis::Cluster(cluster), &[]).await;
    assert_eq!(timed(&w).await.0.status(), StatusCode::OK);

    let TestRedis::Cluster(cluster) = &mut w.redis else {
        unreachable!()
    };
    cluster.nodes[replica].stop();
    let (resp, took) = timed(&w).await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(resp.status(), StatusCode::OK, "{}", body(&resp));
    let b = body(&resp);
    let down = b["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["addr"] == format!("127.0.0.1:{replica_port}"))
        .cloned();
    assert_eq!(down.unwrap()["ok"], false, "{b}");

    let TestRedis::Cluster(cluster) = &mut w.redis else {
        unreachable!()
    };
    cluster.nodes[primary].stop();
    let stopped = Instant::now();
    let deadline = stopped + Duration::from_secs(30);
    let mut unhealthy: Option<Duration> = None;
    let mut healthy_again: Option<Duration> = None;
    while Instant::now() < deadline {
        let (resp, took) = timed(&w).await;
        assert!(took < Duration::from_secs(2), "{took:?}");
        let b = body(&resp);
        if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(b["status"], "unhealthy", "{b}");
            unhealthy.get_or_insert(stopped.elapsed());
        } else if resp.status() == StatusCode::OK && unhealthy.is_some() {
            let node = |port: u16| {
                b["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|n| n["addr"] == format!("127.0.0.1:{port}"))
                    .cloned()
                    .unwrap_or_default()
            };
            assert_eq!(b["cluster_state"], "ok", "{b}");
            if node(primary_port)["ok"] == false && node(heir_port)["role"] == "primary" {
                healthy_again = Some(stopped.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("primary stopped: unhealthy from {unhealthy:?}, healthy again at {healthy_again:?}");
    assert!(
        unhealthy.is_some(),
        "the health check never saw the cluster without a primary"
    );
    assert!(
        healthy_again.is_some(),
        "after failover the cluster should be healthy with the dead primary reported \
         and its replica promoted"
    );
}

/// Counts the connections the nodes accept (`INFO stats`), over one
/// connection per node opened once, so that counting opens none.
struct Accepted(Vec<redis::aio::MultiplexedConnection>);

impl Accepted {
    async fn new(redis: &TestRedis) -> Self {
        let mut conns = Vec::new();
        for url in redis.urls().split(',') {
            let client = redis::Client::open(url).unwrap();
            conns.push(client.get_multiplexed_async_connection().await.unwrap());
        }
        Self(conns)
    }

    async fn total(&mut self) -> u64 {
        let mut total = 0;
        for c in &mut self.0 {
            let info: String = redis::cmd("INFO")
                .arg("stats")
                .query_async(c)
                .await
                .unwrap();
            total += info
                .lines()
                .find_map(|l| l.strip_prefix("total_connections_received:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap();
        }
        total
    }
}

/// What an anonymous `GET /health` learns — the status, nothing of the
/// topology — and what ten of them cost Redis: no new connection. The same
/// count catches the broken variant, the full node check per call (what the
/// anonymous route used to run: a connection per node per call).
async fn anonymous_health_is_the_status_and_opens_no_connection(mode: RedisMode) {
    // Its own servers: the count must see this test's connections only.
    let redis = match mode {
        RedisMode::Standalone => TestRedis::Standalone(RedisServer::start()),
        RedisMode::Cluster => TestRedis::Cluster(RedisCluster::start()),
    };
    let w = World::with_redis(redis, &[]).await;
    // The function's own connection is opened by its first request.
    let first = handle(&w.app, anonymous()).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(body(&first), serde_json::json!({"status": "healthy"}));
    let text = String::from_utf8_lossy(first.body().as_ref()).to_string();
    for topology in ["127.0.0.1", "nodes", "memory", "primary", "cluster_state"] {
        assert!(!text.contains(topology), "{topology} in {text}");
    }
    let mut accepted = Accepted::new(&w.redis).await;
    let before = accepted.total().await;
    for _ in 0..10 {
        assert_eq!(handle(&w.app, anonymous()).await.status(), StatusCode::OK);
    }
    let opened = accepted.total().await - before;
    assert_eq!(opened, 0, "anonymous health opened {opened} connections");

    // Broken variant: the node report for every anonymous call.
    let before = accepted.total().await;
    for _ in 0..10 {
        paycache::health::check(&w.app.health).await.unwrap();
    }
    let opened = accepted.total().await - before;
    assert!(opened >= 10, "the per-node check opened only {opened}");
}
paycache_tests::both_modes!(anonymous_health_is_the_status_and_opens_no_connection);

/// Node details need a principal with `health.read`: 401 without a token,
/// 403 with one that lacks it. Their answer is kept `HEALTH_CACHE_MS` per
/// execution environment: a flood of callers costs one round of node
/// connections per period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_details_need_a_principal_and_are_cached() {
    let w = World::with_redis(
        TestRedis::Cluster(RedisCluster::start()),
        &[("HEALTH_CACHE_MS", "10000")],
    )
    .await;
    let bare = handle(&w.app, get()).await;
    assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);
    let wrong = handle(&w.app, as_service(get(), &["ratelimit.check"])).await;
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    assert_eq!(wrong.headers()["content-type"], "application/problem+json");
    let (first, _) = timed(&w).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(body(&first)["nodes"].as_array().unwrap().len(), 6);
    let mut accepted = Accepted::new(&w.redis).await;
    let before = accepted.total().await;
    for _ in 0..10 {
        assert_eq!(timed(&w).await.0.status(), StatusCode::OK);
    }
    assert_eq!(accepted.total().await - before, 0, "cached");
}
