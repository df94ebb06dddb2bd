//! `metrics-emitter` against a real Redis and a local CloudWatch-compatible
//! endpoint (`moto_server`, started by `make test`; the AWS environment
//! variables point the SDK at it).
#![allow(clippy::unwrap_used, reason = "tests")]

use std::time::Duration;

use aws_sdk_cloudwatch::types::Dimension;
use paycache::events::emit_metrics;
use paycache::keys::UserId;
use paycache_tests::World;
use serde_json::Value;
use test_support::{RedisServer, TestRedis, seed_user_id};

/// The AWS SDK's CloudWatch client, to read back what `metrics-emitter`
/// published with its own signed requests: an independent check of them.
async fn sdk_client() -> aws_sdk_cloudwatch::Client {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_config::from_env().http_client(http).load().await;
    aws_sdk_cloudwatch::Client::new(&config)
}

fn must_have_endpoint() {
    assert!(
        std::env::var("AWS_ENDPOINT_URL").is_ok_and(|v| v.starts_with("http://127.0.0.1")),
        "AWS_ENDPOINT_URL must point at the local moto_server: run the tests with `make test`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_over_the_interval_survive_counter_resets() {
    must_have_endpoint();
    let server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let port = server.port;
    let node = format!("127.0.0.1:{port}");
    let mut w = World::with_redis(TestRedis::Standalone(server), &[]).await;
    let cw = paycache::cloudwatch::client();

    let first = emit_metrics(&w.app.health, &cw).await;
    assert_eq!(first["status"], "ok", "{first}");
    assert_eq!(first["nodes"], 1);
    assert!(
        first["published"].as_u64().unwrap() >= 4,
        "gauges per node and cluster: {first}"
    );

    // Traffic: lookups that hit and miss.
    for n in 0..20u64 {
        let key = w
            .app
            .keys
            .user_profile(&UserId::parse(&seed_user_id(n % 5 + 1)).unwrap());
        w.app
            .cache
            .get_or_load(&key, || async { Ok::<_, ()>(Some(n)) })
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = emit_metrics(&w.app.health, &cw).await;
    assert_eq!(second["status"], "ok", "{second}");
    assert!(
        second["published"].as_u64().unwrap() > first["published"].as_u64().unwrap(),
        "rates now: {second}"
    );
    assert_eq!(second["restarted"], Value::Array(vec![]));

    // Counters reset under the same run id (CONFIG RESETSTAT), then a real
    // restart (new run id; the previous snapshot survives in the AOF).
    let mut raw = w.redis.raw().await;
    let _: () = redis::cmd("SET")
        .arg("bump")
        .arg(1)
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut raw)
        .await
        .unwrap();
    let third = emit_metrics(&w.app.health, &cw).await;
    assert_eq!(third["status"], "ok", "{third}");
    assert_eq!(third["restarted"], serde_json::json!([node]), "{third}");
    if let TestRedis::Standalone(s) = &mut w.redis {
        s.restart();
    }
    let mut fourth = emit_metrics(&w.app.health, &cw).await;
    for _ in 0..20 {
        if fourth["status"] == "ok" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        fourth = emit_metrics(&w.app.health, &cw).await;
    }
    assert_eq!(fourth["status"], "ok", "{fourth}");
    assert_eq!(fourth["restarted"], serde_json::json!([node]), "{fourth}");

    // Read back what CloudWatch holds: every metric of the design, per node
    // and for the cluster, with sane values — none negative, rates ≤ 100 %.
    let sdk = sdk_client().await;
    let listed = sdk
        .list_metrics()
        .namespace(paycache::cloudwatch::NAMESPACE)
        .send()
        .await
        .unwrap();
    let names: std::collections::HashSet<String> = listed
        .metrics()
        .iter()
        .filter_map(|m| m.metric_name().map(str::to_owned))
        .collect();
    for name in [
        "cache_hit_rate",
        "cache_miss_rate",
        "average_response_time",
        "memory_utilization",
        "connection_count",
        "evicted_keys",
    ] {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
    let now = std::time::SystemTime::now();
    for (name, dim) in [
        ("cache_hit_rate", ("Node", node.as_str())),
        ("cache_hit_rate", ("Cluster", "all")),
        ("evicted_keys", ("Node", node.as_str())),
    ] {
        let stats = sdk
            .get_metric_statistics()
            .namespace(paycache::cloudwatch::NAMESPACE)
            .metric_name(name)
            .dimensions(Dimension::builder().name(dim.0).value(dim.1).build())
            .start_time((now - Duration::from_secs(3600)).into())
            .end_time((now + Duration::from_secs(3600)).into())
            .period(60)
            .statistics(aws_sdk_cloudwatch::types::Statistic::Minimum)
            .statistics(aws_sdk_cloudwatch::types::Statistic::Maximum)
            .send()
            .await
            .unwrap();
        let points = stats.datapoints();
        assert!(!points.is_empty(), "{name} {dim:?}: no datapoints");
        for p in points {
            let (min, max) = (p.minimum().unwrap(), p.maximum().unwrap());
            assert!(min >= 0.0, "{name} {dim:?} went negative: {min}");
            if name.ends_with("_rate") {
                assert!(max <= 100.0, "{name} {dim:?} above 100 %: {max}");
            }
        }
    }
}

/// In cluster mode every primary and replica is read and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cluster_node_is_reported() {
    must_have_endpoint();
    let w = World::new(paycache::config::RedisMode::Cluster, &[]).await;
    let cw = paycache::cloudwatch::client();
    let first = emit_metrics(&w.app.health, &cw).await;
    assert_eq!(first["status"], "ok", "{first}");
    assert_eq!(first["nodes"], 6);
    assert_eq!(first["nodes_unreachable"], 0);
    // Lookups between the two runs, on keys spread over every primary:
    // misses, and hits on a key just written.
    let mut raw = w.redis.raw().await;
    for n in 0..60 {
        let key = format!("{}:lookup:{n}", w.app.keys.prefix());
        let _: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .unwrap();
        if n % 2 == 0 {
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg("x")
                .arg("EX")
                .arg(60)
                .query_async(&mut raw)
                .await
                .unwrap();
            let _: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut raw)
                .await
                .unwrap();
        }
    }
    let collected = paycache::node_metrics::collect(&w.app.health, Duration::from_secs(1))
        .await
        .unwrap();
    let by = paycache::node_metrics::by_name(&collected.data);
    // Six nodes plus the cluster-wide value, for each gauge.
    assert_eq!(by["connection_count"].len(), 7);
    // The second run has intervals with lookups: exactly one cluster-wide
    // hit rate, strictly between 0 and 100 % (there were hits and misses).
    let rates = by
        .get("cache_hit_rate")
        .expect("a hit rate over the interval");
    let cluster_wide: Vec<_> = rates.iter().filter(|d| d.node.is_none()).collect();
    assert_eq!(cluster_wide.len(), 1, "{rates:?}");
    assert!(
        cluster_wide[0].value > 0.0 && cluster_wide[0].value < 100.0,
        "{rates:?}"
    );
    assert!(by["evicted_keys"].iter().all(|d| d.value >= 0.0));
}
