//! The design's custom cache metrics, per node and for the whole cluster,
//! computed over the interval since the previous run (function
//! `metrics-emitter`, every minute).
//!
//! | metric | unit | from `INFO` |
//! |---|---|---|
//! | `cache_hit_rate` | Percent | Δ`keyspace_hits` / (Δhits + Δ`keyspace_misses`) |
//! | `cache_miss_rate` | Percent | Δmisses / (Δhits + Δmisses) |
//! | `average_response_time` | Milliseconds | Δ(Σ`usec` of `commandstats`) / Δ(Σ`calls`): server time per command |
//! | `memory_utilization` | Percent | `used_memory` / `maxmemory` (or `total_system_memory` when no limit is set) |
//! | `connection_count` | Count | `connected_clients` |
//! | `evicted_keys` | Count/Second | Δ`evicted_keys` / seconds elapsed |
//!
//! Rates are over the interval since the previous run, not since the
//! server started: each run keeps the counters it read in Redis
//! (`metrics_prev:{<node>}`, with a day's TTL) and the next run subtracts.
//! **A restarted node** (its `run_id` changed, or any counter went
//! backwards) has its counters measured from its start instead, over its
//! uptime — never a negative or absurd delta. A node seen for the first time
//! yields no rates in that run (only gauges).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::domain::health::{Health, parse_cluster_nodes};
use crate::infra::config::RedisMode;

/// What one `INFO` says, as far as these metrics need.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// `run_id`: changes when the node restarts.
    pub run_id: String,
    /// When the snapshot was taken (Unix ms).
    pub at_ms: u64,
    /// `uptime_in_seconds`.
    pub uptime_secs: u64,
    /// `keyspace_hits` (cumulative).
    pub hits: u64,
    /// `keyspace_misses` (cumulative).
    pub misses: u64,
    /// Total `usec` over `commandstats` (cumulative).
    pub cmd_usec: u64,
    /// Total `calls` over `commandstats` (cumulative).
    pub cmd_calls: u64,
    /// `evicted_keys` (cumulative).
    pub evicted: u64,
    /// `used_memory`.
    pub used_memory: u64,
    /// `maxmemory` (0 when unlimited).
    pub max_memory: u64,
    /// `connected_clients`.
    pub connected_clients: u64,
}

impl Snapshot {
    /// Reads the fields above from `INFO` text.
    pub fn parse(info: &str, at_ms: u64) -> Self {
        let mut s = Snapshot {
            at_ms,
            ..Snapshot::default()
        };
        let mut system_memory = 0;
        for line in info.lines() {
            let Some((k, v)) = line.trim().split_once(':') else {
                continue;
            };
            let num = || v.parse::<u64>().unwrap_or(0);
            match k {
                "run_id" => s.run_id = v.to_owned(),
                "uptime_in_seconds" => s.uptime_secs = num(),
                "keyspace_hits" => s.hits = num(),
                "keyspace_misses" => s.misses = num(),
                "evicted_keys" => s.evicted = num(),
                "used_memory" => s.used_memory = num(),
                "maxmemory" => s.max_memory = num(),
                "total_system_memory" => system_memory = num(),
                "connected_clients" => s.connected_clients = num(),
                _ if k.starts_with("cmdstat_") => {
                    for kv in v.split(',') {
                        match kv.split_once('=') {
                            Some(("calls", n)) => s.cmd_calls += n.parse::<u64>().unwrap_or(0),
                            Some(("usec", n)) => s.cmd_usec += n.parse::<u64>().unwrap_or(0),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if s.max_memory == 0 {
            s.max_memory = system_memory;
        }
        s
    }
}

/// The counters accumulated over an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Interval {
    /// Hits in the interval.
    pub hits: u64,
    /// Misses in the interval.
    pub misses: u64,
    /// Command time in the interval (µs).
    pub cmd_usec: u64,
    /// Commands in the interval.
    pub cmd_calls: u64,
    /// Evictions in the interval.
    pub evicted: u64,
    /// The interval's length.
    pub seconds: f64,
}

/// The interval between two snapshots of one node, and whether the node
/// restarted in between (then the interval runs from its start); `None`
/// when there is no previous snapshot.
pub fn interval(prev: Option<&Snapshot>, cur: &Snapshot) -> Option<(Interval, bool)> {
    let prev = prev?;
    let restarted = prev.run_id != cur.run_id
        || cur.hits < prev.hits
        || cur.misses < prev.misses
        || cur.cmd_usec < prev.cmd_usec
        || cur.cmd_calls < prev.cmd_calls
        || cur.evicted < prev.evicted;
    if restarted {
        let since_start = Interval {
            hits: cur.hits,
            misses: cur.misses,
            cmd_usec: cur.cmd_usec,
            cmd_calls: cur.cmd_calls,
            evicted: cur.evicted,
            seconds: cur.uptime_secs.max(1) as f64,
        };
        return Some((since_start, true));
    }
    let since_prev = Interval {
        hits: cur.hits - prev.hits,
        misses: cur.misses - prev.misses,
        cmd_usec: cur.cmd_usec - prev.cmd_usec,
        cmd_calls: cur.cmd_calls - prev.cmd_calls,
        evicted: cur.evicted - prev.evicted,
        seconds: (cur.at_ms.saturating_sub(prev.at_ms) as f64 / 1000.0).max(0.001),
    };
    Some((since_prev, false))
}

/// One metric value, ready for CloudWatch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Datum {
    /// CloudWatch metric name.
    pub name: &'static str,
    /// CloudWatch unit name.
    pub unit: &'static str,
    /// The value.
    pub value: f64,
    /// `None` for the whole cluster, else the node's address.
    pub node: Option<String>,
}

fn rates(i: &Interval, node: Option<&str>, out: &mut Vec<Datum>) {
    let d = |name, unit, value| Datum {
        name,
        unit,
        value,
        node: node.map(str::to_owned),
    };
    let lookups = i.hits + i.misses;
    if lookups > 0 {
        out.push(d(
            "cache_hit_rate",
            "Percent",
            i.hits as f64 * 100.0 / lookups as f64,
        ));
        out.push(d(
            "cache_miss_rate",
            "Percent",
            i.misses as f64 * 100.0 / lookups as f64,
        ));
    }
    if i.cmd_calls > 0 {
        out.push(d(
            "average_response_time",
            "Milliseconds",
            i.cmd_usec as f64 / i.cmd_calls as f64 / 1000.0,
        ));
    }
    out.push(d(
        "evicted_keys",
        "Count/Second",
        i.evicted as f64 / i.seconds,
    ));
}

fn gauges(s: &Snapshot, node: Option<&str>, out: &mut Vec<Datum>) {
    let d = |name, unit, value| Datum {
        name,
        unit,
        value,
        node: node.map(str::to_owned),
    };
    if s.max_memory > 0 {
        out.push(d(
            "memory_utilization",
            "Percent",
            s.used_memory as f64 * 100.0 / s.max_memory as f64,
        ));
    }
    out.push(d("connection_count", "Count", s.connected_clients as f64));
}

/// Per node and cluster-wide data from the current snapshots and the
/// intervals since the previous ones.
pub(crate) fn compute(nodes: &[(String, Snapshot, Option<Interval>)]) -> Vec<Datum> {
    let mut out = Vec::new();
    let mut total = Interval::default();
    let mut any_interval = false;
    let mut memory = (0u64, 0u64);
    let mut clients = 0u64;
    for (addr, snap, interval) in nodes {
        gauges(snap, Some(addr), &mut out);
        memory.0 += snap.used_memory;
        memory.1 += snap.max_memory;
        clients += snap.connected_clients;
        if let Some(i) = interval {
            rates(i, Some(addr), &mut out);
            any_interval = true;
            total.hits += i.hits;
            total.misses += i.misses;
            total.cmd_usec += i.cmd_usec;
            total.cmd_calls += i.cmd_calls;
            total.evicted += i.evicted;
            total.seconds = total.seconds.max(i.seconds);
        }
    }
    if !nodes.is_empty() {
        let cluster = Snapshot {
            used_memory: memory.0,
            max_memory: memory.1,
            connected_clients: clients,
            ..Snapshot::default()
        };
        gauges(&cluster, None, &mut out);
        if any_interval {
            rates(&total, None, &mut out);
        }
    }
    out
}

/// What a run read and computed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Collected {
    /// Nodes read.
    pub nodes: usize,
    /// Nodes that did not answer.
    pub nodes_unreachable: usize,
    /// Nodes that restarted since the previous run (their counters began again).
    pub restarted: Vec<String>,
    /// The metrics to publish.
    pub data: Vec<Datum>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reads `INFO` from every node, computes the data, and stores the new
/// snapshots for the next run.
pub async fn collect(
    health: &Health,
    node_timeout: Duration,
) -> Result<Collected, crate::infra::connection::RedisUnavailable> {
    let nodes: Vec<(String, u16, bool)> = if health.redis.mode() == RedisMode::Standalone {
        health
            .redis
            .seed_address()
            .map(|(h, p)| (h, p, true))
            .into_iter()
            .collect()
    } else {
        let text: String = health
            .redis
            .run(
                |mut c| async move { redis::cmd("CLUSTER").arg("NODES").query_async(&mut c).await },
            )
            .await?;
        parse_cluster_nodes(&text)
            .into_iter()
            .map(|(h, p, role, _)| (h, p, role == "primary"))
            .collect()
    };
    let reads = nodes.iter().map(|(host, port, _)| async move {
        let addr = format!("{host}:{port}");
        let client = health.redis.node_client(host, *port).ok()?;
        let info = tokio::time::timeout(node_timeout, async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("INFO")
                .arg("server")
                .arg("clients")
                .arg("memory")
                .arg("stats")
                .arg("commandstats")
                .query_async::<String>(&mut conn)
                .await
        })
        .await
        .ok()?
        .ok()?;
        Some((addr, Snapshot::parse(&info, now_ms())))
    });
    let read = futures_util::future::join_all(reads).await;
    let mut collected = Collected {
        nodes: nodes.len(),
        ..Collected::default()
    };
    let mut rows = Vec::new();
    for snap in read {
        let Some((addr, snap)) = snap else {
            collected.nodes_unreachable += 1;
            continue;
        };
        let key = format!("{}:metrics_prev:{{{}}}", health.keys.prefix(), hex(&addr));
        let (k, json) = (&key, serde_json::to_string(&snap).unwrap_or_default());
        let prev: Option<String> = health
            .redis
            .run(|mut c| async move {
                redis::cmd("SET")
                    .arg(k)
                    .arg(json)
                    .arg("PX")
                    .arg(86_400_000)
                    .arg("GET")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let prev: Option<Snapshot> = prev.and_then(|p| serde_json::from_str(&p).ok());
        let iv = interval(prev.as_ref(), &snap);
        if iv.is_some_and(|(_, restarted)| restarted) {
            collected.restarted.push(addr.clone());
        }
        rows.push((addr, snap, iv.map(|(i, _)| i)));
    }
    collected.data = compute(&rows);
    Ok(collected)
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Groups data by name, for summaries and tests.
pub fn by_name(data: &[Datum]) -> HashMap<&'static str, Vec<&Datum>> {
    let mut m: HashMap<&'static str, Vec<&Datum>> = HashMap::new();
    for d in data {
        m.entry(d.name).or_default().push(d);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(run: &str, at: u64, hits: u64, misses: u64, evicted: u64) -> Snapshot {
        Snapshot {
            run_id: run.into(),
            at_ms: at,
            uptime_secs: 30,
            hits,
            misses,
            cmd_usec: hits * 10,
            cmd_calls: hits,
            evicted,
            used_memory: 50,
            max_memory: 200,
            connected_clients: 3,
        }
    }

    #[test]
    fn parses_info() {
        let info = "# Server\r\nrun_id:abc\r\nuptime_in_seconds:42\r\n# Clients\r\nconnected_clients:7\r\n# Memory\r\nused_memory:1000\r\nmaxmemory:0\r\ntotal_system_memory:4000\r\n# Stats\r\nkeyspace_hits:9\r\nkeyspace_misses:1\r\nevicted_keys:2\r\n# Commandstats\r\ncmdstat_get:calls=10,usec=50,usec_per_call=5.00\r\ncmdstat_set:calls=5,usec=25,usec_per_call=5.00\r\n";
        let s = Snapshot::parse(info, 1);
        assert_eq!(s.run_id, "abc");
        assert_eq!((s.hits, s.misses, s.evicted), (9, 1, 2));
        assert_eq!((s.cmd_calls, s.cmd_usec), (15, 75));
        assert_eq!(s.max_memory, 4000, "no maxmemory: the machine's memory");
        assert_eq!(s.connected_clients, 7);
    }

    #[test]
    fn rates_are_over_the_interval() {
        let a = snap("r1", 0, 100, 100, 10);
        let b = snap("r1", 60_000, 190, 110, 70);
        let (i, restarted) = interval(Some(&a), &b).unwrap();
        assert!(!restarted);
        assert_eq!((i.hits, i.misses, i.evicted), (90, 10, 60));
        assert_eq!(i.seconds, 60.0);
        let data = compute(&[("n1".into(), b, Some(i))]);
        let m = by_name(&data);
        assert_eq!(m["cache_hit_rate"][0].value, 90.0);
        assert_eq!(m["cache_miss_rate"][0].value, 10.0);
        assert_eq!(m["evicted_keys"][0].value, 1.0);
        assert_eq!(m["memory_utilization"][0].value, 25.0);
        assert_eq!(m["average_response_time"][0].value, 0.01);
    }

    #[test]
    fn a_restart_never_makes_negative_rates() {
        let before = snap("r1", 0, 1_000_000, 500, 900);
        let after = snap("r2", 60_000, 10, 0, 0);
        let (i, restarted) = interval(Some(&before), &after).unwrap();
        assert!(restarted);
        assert_eq!((i.hits, i.misses, i.evicted), (10, 0, 0));
        assert_eq!(i.seconds, 30.0, "since the node's start");
        // Same run id but a counter went backwards (CONFIG RESETSTAT): the same.
        let reset = snap("r1", 60_000, 5, 0, 0);
        assert_eq!(interval(Some(&before), &reset).unwrap().0.hits, 5);
        for d in compute(&[("n".into(), after, Some(i))]) {
            assert!(d.value >= 0.0 && d.value.is_finite(), "{d:?}");
        }
        assert!(
            interval(None, &before).is_none(),
            "no rates from a first sight"
        );
    }
}
