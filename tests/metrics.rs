//! The per-invocation EMF lines, parsed and checked against the CloudWatch
//! Embedded Metric Format specification. (One test in its own binary: the
//! metrics recorder is global to the process.)
#![allow(clippy::unwrap_used, reason = "tests")]

use std::time::{Duration, Instant};

use paycache::config::RedisMode;
use paycache::keys::{Endpoint, UserId};
use paycache_tests::World;
use serde_json::Value;
use test_support::{RedisServer, TestRedis, insert_user, random_uuid};

const UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// Checks one EMF document against the specification; returns the metric
/// values by name.
fn validate(doc: &Value) -> std::collections::HashMap<String, Value> {
    let root = doc.as_object().expect("an EMF document is a JSON object");
    let aws = root["_aws"].as_object().expect("_aws member");
    let ts = aws["Timestamp"]
        .as_u64()
        .expect("Timestamp: milliseconds since the epoch");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(now.abs_diff(ts) < 60_000, "Timestamp {ts} is not now");
    let directives = aws["CloudWatchMetrics"]
        .as_array()
        .expect("CloudWatchMetrics array");
    assert!(!directives.is_empty());
    let mut values = std::collections::HashMap::new();
    for d in directives {
        let ns = d["Namespace"].as_str().expect("Namespace");
        assert!(!ns.is_empty() && ns.len() <= 256);
        for set in d["Dimensions"].as_array().expect("Dimensions") {
            let set = set.as_array().expect("a dimension set is an array");
            assert!(set.len() <= 30);
            for name in set {
                let name = name.as_str().unwrap();
                assert!(
                    root[name].is_string(),
                    "dimension {name} must be a string member of the root"
                );
            }
        }
        let metrics = d["Metrics"].as_array().expect("Metrics");
        assert!(metrics.len() <= 100);
        for m in metrics {
            let name = m["Name"].as_str().expect("Name");
            assert!(!name.is_empty() && name.len() <= 1024);
            if let Some(unit) = m.get("Unit") {
                assert!(UNITS.contains(&unit.as_str().unwrap()), "unit {unit}");
            }
            let v = &root[name];
            let ok = v.is_number()
                || v.as_array()
                    .is_some_and(|a| a.len() <= 100 && a.iter().all(Value::is_number));
            assert!(
                ok,
                "metric {name} must be a number or an array of at most 100 numbers: {v}"
            );
            values.insert(name.to_owned(), v.clone());
        }
    }
    values
}

fn total(v: &Value) -> f64 {
    match v {
        Value::Array(a) => a.iter().filter_map(Value::as_f64).sum(),
        other => other.as_f64().unwrap_or(0.0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emf_lines_follow_the_specification() {
    let collector = paycache::telemetry::init("emf-test").expect("first recorder of this process");
    let policies = r#"[{"name": "tight", "algorithm": "gcra", "limit": 1, "window_secs": 3600, "fail": "open"}]"#;
    let w = World::new(RedisMode::Standalone, &[("RATE_LIMIT_POLICIES", policies)]).await;
    let id = UserId::parse(&insert_user(&w.db, 1).await).unwrap();
    let started = Instant::now();
    // A miss, a hit, a rate-limit denial.
    paycache::profile::get_profile(&w.app.profiles, &id)
        .await
        .unwrap();
    paycache::profile::get_profile(&w.app.profiles, &id)
        .await
        .unwrap();
    let user = UserId::parse(&random_uuid()).unwrap();
    let tight = Endpoint::parse("tight").unwrap();
    assert!(w.app.limiter.check(&user, &tight, 1).await.allowed);
    assert!(!w.app.limiter.check(&user, &tight, 1).await.allowed);
    // Redis gone: a bypass and a Redis error.
    let server = RedisServer::start();
    let mut down = World::with_redis(TestRedis::Standalone(server), &[]).await;
    if let TestRedis::Standalone(s) = &mut down.redis {
        s.stop();
    }
    paycache::profile::get_profile(&down.app.profiles, &id)
        .await
        .unwrap();
    // The invocation's end, as every function's main records it: Latency is
    // the time since `started`, which is at least the 50 ms waited here.
    tokio::time::sleep(Duration::from_millis(50)).await;
    paycache::telemetry::finish(None, started);

    let mut out = Vec::new();
    paycache::telemetry::flush_to(collector, &mut out);
    let text = String::from_utf8(out).unwrap();
    let docs: Vec<Value> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!docs.is_empty(), "no EMF output");
    let mut seen = std::collections::HashMap::new();
    for doc in &docs {
        assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Namespace"], "paycache");
        assert_eq!(doc["function"], "emf-test");
        for (k, v) in validate(doc) {
            *seen.entry(k).or_insert(0.0) += total(&v);
        }
    }
    assert!(seen["CacheHit"] >= 1.0, "{seen:?}");
    assert!(seen["CacheMiss"] >= 1.0, "{seen:?}");
    assert!(seen["CacheBypass"] >= 1.0, "{seen:?}");
    assert!(seen["RedisError"] >= 1.0, "{seen:?}");
    assert!(seen["RateLimitDenied"] >= 1.0, "{seen:?}");
    assert!(seen["Latency"] >= 50.0, "{seen:?}");
    assert!(seen["Latency"] < 60_000.0, "{seen:?}");
    // Counters reset at each flush: a second flush reports no new hits.
    let mut again = Vec::new();
    paycache::telemetry::flush_to(collector, &mut again);
    let again = String::from_utf8(again).unwrap();
    for line in again.lines().filter(|l| !l.is_empty()) {
        let doc: Value = serde_json::from_str(line).unwrap();
        let values = validate(&doc);
        assert!(
            values.get("CacheHit").is_none_or(|v| total(v) == 0.0),
            "{line}"
        );
    }

    // ws-sender's run metrics: WsFramesSent (the frames a run sent),
    // WsFramesPerSecond (their rate while busy), WsBacklog (what the run
    // left waiting in its partitions). First a run whose one post keeps
    // failing (the connection throttled, one attempt): nothing sent, the
    // entry left waiting; then a run that sends it and two more.
    let rig = paycache_tests::realtime::Rig::new(RedisMode::Standalone).await;
    insert_user(&rig.w.db, 1).await;
    let token = rig.token(1).await;
    let _ws = rig.connect(&token).await;
    let conn = rig.stats().await["connections"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let announce = || {
        serde_json::json!({"detail-type": "SystemAnnouncement", "source": "payments.operations",
                           "detail": {"message": "maintenance at 02:00"}})
    };
    let run = |seconds: u64| {
        let rig = &rig;
        async move {
            let mut sender = rig.sender(1).await;
            paycache::delivery::run(
                &rig.app.deliveries,
                &mut sender,
                Instant::now() + Duration::from_secs(seconds),
            )
            .await
        }
    };
    let emitted = || {
        let mut out = Vec::new();
        paycache::telemetry::flush_to(collector, &mut out);
        let mut seen = std::collections::HashMap::<String, f64>::new();
        for line in String::from_utf8(out)
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
        {
            let doc: Value = serde_json::from_str(line).unwrap();
            for (k, v) in validate(&doc) {
                *seen.entry(k).or_insert(0.0) += total(&v);
            }
        }
        seen
    };
    rig.control(&format!("throttle/{conn}?count=1000")).await;
    rig.invalidate(announce()).await;
    let report = run(2).await;
    assert_eq!((report.sent, report.failed > 0), (0, true), "{report:?}");
    let seen = emitted();
    // (A counter that did not move is not emitted.)
    assert_eq!(
        seen.get("WsFramesSent").copied().unwrap_or(0.0),
        0.0,
        "{seen:?}"
    );
    assert!(seen["WsBacklog"] >= 1.0, "the failed entry waits: {seen:?}");
    rig.control(&format!("throttle/{conn}?count=0")).await;
    rig.invalidate(announce()).await;
    rig.invalidate(announce()).await;
    let report = run(3).await;
    assert_eq!(report.sent, 3, "{report:?}");
    let seen = emitted();
    assert_eq!(seen.get("WsFramesSent"), Some(&3.0), "{seen:?}");
    assert_eq!(seen.get("WsBacklog"), Some(&0.0), "{seen:?}");
    assert!(seen["WsFramesPerSecond"] > 0.0, "{seen:?}");
}
