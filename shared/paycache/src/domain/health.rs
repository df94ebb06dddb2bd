//! Cache health: the design's `cache_health_check`, measured and bounded.
//!
//! **Guarantee:** an answer within `HEALTH_TIMEOUT_MS` (default 1500 ms,
//! under the contract's 2 s) whatever Redis does — down, paused, or one
//! cluster node gone.
//!
//! What it does, concurrently:
//! - the design's probe — `SET`, `GET`, `DEL` of a fresh key — as one
//!   pipeline, timed (`response_time_ms`, a measurement, where the design
//!   reported a constant "< 1ms");
//! - in cluster mode `CLUSTER INFO` (`cluster_state`) and `CLUSTER NODES`;
//! - per node (the one standalone server, or every primary and replica): a
//!   direct connection with the same TLS and credentials, `PING` timed and
//!   `INFO memory`, each bounded by `HEALTH_NODE_TIMEOUT_MS`.
//!
//! Healthy means: the probe round-tripped its value, and in cluster mode
//! `cluster_state` is `ok`. A failed replica, or a primary that has been
//! failed over, shows in `nodes` with `ok: false` without making the cache
//! unhealthy — the cluster still serves every slot.
//!
//! **Two answers.** [`status`] — what an anonymous `GET /health` gets — is
//! the probe (and `cluster_state`) over the function's own, already open
//! connection: it opens no connection and says nothing of the topology.
//! [`check`] — the node details, for a principal with `health.read` — adds
//! the per-node connections. Each answer is kept for
//! `HEALTH_CACHE_MS` (default 1000 ms) per execution environment and
//! computed by one caller at a time, so a flood of health requests costs
//! Redis at most one probe (and one round of node connections) per
//! environment per period.

use std::time::Instant;

use serde::Serialize;

pub use crate::infra::config::HealthConfig;
use crate::infra::config::RedisMode;
use crate::infra::connection::Redis;
use crate::infra::keys::Keyspace;

/// What the health check and the node metrics use: Redis (every node of a
/// cluster), the key prefix, and the check's budgets.
#[derive(Debug, Clone)]
pub struct Health {
    pub(crate) keys: Keyspace,
    pub(crate) redis: Redis,
    pub(crate) config: HealthConfig,
    pub(crate) recent: std::sync::Arc<Recent>,
}

/// The answers of the last period, per execution environment.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    status: tokio::sync::Mutex<Option<(Instant, Result<Status, Unhealthy>)>>,
    report: tokio::sync::Mutex<Option<(Instant, Result<HealthReport, Unhealthy>)>>,
}

/// What an anonymous caller learns: the status only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Status {
    /// `healthy`.
    pub status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
/// One node's answer to the health check.
pub struct NodeHealth {
    /// `host:port`.
    pub addr: String,
    /// `primary` or `replica` (`unknown` when the node did not answer).
    pub role: String,
    /// Whether the node answered `PING` in time.
    pub ok: bool,
    /// Its `PING` round trip.
    pub latency_ms: Option<f64>,
    /// Its `used_memory_human`.
    pub used_memory_human: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
/// `GET /health`'s answer (the contract's `HealthReport`).
pub struct HealthReport {
    /// `healthy`.
    pub status: &'static str,
    /// The whole check's duration.
    pub response_time_ms: f64,
    /// `used_memory_human` of the node that served the probe (standalone) or
    /// the sum over primaries (cluster), as Redis formats it.
    pub memory_usage: Option<String>,
    /// `ok` or `fail` in cluster mode; absent (null) for a standalone Redis.
    pub cluster_state: Option<String>,
    /// Every node, when in cluster mode; the one server otherwise.
    pub nodes: Vec<NodeHealth>,
}

/// Why the cache is unhealthy, in plain words (no Redis error text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unhealthy {
    #[error("Redis did not answer the health probe within {0} ms")]
    /// The check took longer than `HEALTH_TIMEOUT_MS` (its value, in ms).
    Timeout(u128),
    #[error("the Redis health probe failed ({0})")]
    /// The probe write or read failed (the reason).
    Probe(&'static str),
    #[error("the Redis cluster state is {0}")]
    /// `cluster_state` is not `ok` (its value).
    ClusterState(String),
}

/// The full health check with every node (see the module documentation),
/// within `HEALTH_TIMEOUT_MS`; the answer of the last `HEALTH_CACHE_MS`
/// when there is one.
pub async fn check(health: &Health) -> Result<HealthReport, Unhealthy> {
    let mut recent = health.recent.report.lock().await;
    if let Some((at, answer)) = recent.as_ref()
        && at.elapsed() < health.config.cache_for
    {
        return answer.clone();
    }
    let budget = health.config.timeout;
    let answer = match tokio::time::timeout(budget, run(health)).await {
        Ok(result) => result,
        Err(_) => Err(Unhealthy::Timeout(budget.as_millis())),
    };
    *recent = Some((Instant::now(), answer.clone()));
    answer
}

/// The status alone (an anonymous `GET /health`): the probe, and in
/// cluster mode `cluster_state`, over the existing connection — no node
/// connection is opened. Within `HEALTH_TIMEOUT_MS`; the answer of the last
/// `HEALTH_CACHE_MS` when there is one.
pub async fn status(health: &Health) -> Result<Status, Unhealthy> {
    let mut recent = health.recent.status.lock().await;
    if let Some((at, answer)) = recent.as_ref()
        && at.elapsed() < health.config.cache_for
    {
        return answer.clone();
    }
    let budget = health.config.timeout;
    let answer = match tokio::time::timeout(budget, async {
        let (_, state) = tokio::try_join!(probe(health), cluster_state(health))?;
        if let Some(state) = state
            && state != "ok"
        {
            return Err(Unhealthy::ClusterState(state));
        }
        Ok(Status { status: "healthy" })
    })
    .await
    {
        Ok(result) => result,
        Err(_) => Err(Unhealthy::Timeout(budget.as_millis())),
    };
    *recent = Some((Instant::now(), answer.clone()));
    answer
}

/// `cluster_state` (`None` for a standalone Redis).
async fn cluster_state(health: &Health) -> Result<Option<String>, Unhealthy> {
    if health.redis.mode() == RedisMode::Standalone {
        return Ok(None);
    }
    let info: String = health
        .redis
        .run(|mut c| async move { redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await })
        .await
        .map_err(|why| Unhealthy::Probe(why.as_str()))?;
    Ok(Some(
        info.lines()
            .find_map(|l| l.trim().strip_prefix("cluster_state:"))
            .unwrap_or("unknown")
            .to_owned(),
    ))
}

/// The design's probe: `SET`, `GET`, `DEL` of a fresh key, one pipeline,
/// timed.
async fn probe(health: &Health) -> Result<std::time::Duration, Unhealthy> {
    let key = format!(
        "{}:health_check:{{{:016x}}}",
        health.keys.prefix(),
        fastrand::u64(..)
    );
    let started = Instant::now();
    let k = &key;
    let got: (Option<String>, i64) = health
        .redis
        .run(|mut c| async move {
            let (_, got, deleted): ((), Option<String>, i64) = redis::pipe()
                .set_ex(k, "ok", 60)
                .get(k)
                .del(k)
                .query_async(&mut c)
                .await?;
            Ok((got, deleted))
        })
        .await
        .map_err(|why| Unhealthy::Probe(why.as_str()))?;
    if got.0.as_deref() != Some("ok") {
        return Err(Unhealthy::Probe("the probe value did not round-trip"));
    }
    Ok(started.elapsed())
}

async fn run(health: &Health) -> Result<HealthReport, Unhealthy> {
    let probe = probe(health);
    let topology = async {
        if health.redis.mode() == RedisMode::Standalone {
            let nodes = match health.redis.seed_address() {
                Some((host, port)) => vec![(host, port, "primary".to_owned(), false)],
                None => Vec::new(),
            };
            return Ok((None, nodes));
        }
        let (info, nodes): (String, String) = health
            .redis
            .run(|mut c| async move {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut c)
                    .await?;
                let nodes: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut c)
                    .await?;
                Ok((info, nodes))
            })
            .await
            .map_err(|why| Unhealthy::Probe(why.as_str()))?;
        let state = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("cluster_state:"))
            .unwrap_or("unknown")
            .to_owned();
        Ok((Some(state), parse_cluster_nodes(&nodes)))
    };
    let (elapsed, (cluster_state, nodes)) = tokio::try_join!(probe, topology)?;

    let node_timeout = health.config.node_timeout;
    let probes = nodes.iter().map(|(host, port, role, failed)| async move {
        let mut node = NodeHealth {
            addr: format!("{host}:{port}"),
            role: role.clone(),
            ok: false,
            latency_ms: None,
            used_memory_human: None,
        };
        if let Ok(client) = health.redis.node_client(host, *port) {
            let reached = tokio::time::timeout(node_timeout, async {
                let mut conn = client.get_multiplexed_async_connection().await?;
                let started = Instant::now();
                let _: String = redis::cmd("PING").query_async(&mut conn).await?;
                let latency = started.elapsed();
                let info: String = redis::cmd("INFO")
                    .arg("memory")
                    .query_async(&mut conn)
                    .await?;
                Ok::<_, redis::RedisError>((latency, info))
            })
            .await;
            if let Ok(Ok((latency, info))) = reached {
                node.ok = !failed;
                node.latency_ms = Some(latency.as_secs_f64() * 1000.0);
                node.used_memory_human = info_field(&info, "used_memory_human");
            }
        }
        node
    });
    let nodes = futures_util::future::join_all(probes).await;

    let memory_usage = match &cluster_state {
        None => nodes.first().and_then(|n| n.used_memory_human.clone()),
        Some(_) => None,
    }
    .or_else(|| sum_primary_memory(&nodes));
    if let Some(state) = &cluster_state
        && state != "ok"
    {
        return Err(Unhealthy::ClusterState(state.clone()));
    }
    Ok(HealthReport {
        status: "healthy",
        response_time_ms: elapsed.as_secs_f64() * 1000.0,
        memory_usage,
        cluster_state,
        nodes,
    })
}

/// `(host, port, role, flagged failed)` per node of `CLUSTER NODES`.
pub(crate) fn parse_cluster_nodes(text: &str) -> Vec<(String, u16, String, bool)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _id = fields.next()?;
            let addr = fields.next()?;
            let flags = fields.next()?;
            // ip:port@cport[,hostname]; prefer the hostname (TLS checks it).
            let (ip_port, rest) = addr.split_once('@').unwrap_or((addr, ""));
            let hostname = rest
                .split_once(',')
                .map(|(_, h)| h)
                .filter(|h| !h.is_empty());
            let (ip, port) = ip_port.rsplit_once(':')?;
            let port: u16 = port.parse().ok()?;
            if port == 0 || flags.contains("noaddr") || flags.contains("handshake") {
                return None;
            }
            let role = if flags.contains("master") {
                "primary"
            } else {
                "replica"
            };
            let failed = flags.split(',').any(|f| f == "fail" || f == "fail?");
            Some((
                hostname.unwrap_or(ip).to_owned(),
                port,
                role.to_owned(),
                failed,
            ))
        })
        .collect()
}

fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.trim()
            .strip_prefix(name)?
            .strip_prefix(':')
            .map(str::to_owned)
    })
}

/// The sum of the primaries' memory, formatted like Redis (`1.50M`).
fn sum_primary_memory(nodes: &[NodeHealth]) -> Option<String> {
    let mut total = 0f64;
    let mut any = false;
    for n in nodes.iter().filter(|n| n.role == "primary") {
        if let Some(bytes) = n.used_memory_human.as_deref().and_then(parse_human) {
            total += bytes;
            any = true;
        }
    }
    any.then(|| format_human(total))
}

fn parse_human(s: &str) -> Option<f64> {
    let (num, mult) = match s.chars().last()? {
        'K' => (&s[..s.len() - 1], 1024f64),
        'M' => (&s[..s.len() - 1], 1024f64 * 1024.0),
        'G' => (&s[..s.len() - 1], 1024f64 * 1024.0 * 1024.0),
        'B' => (&s[..s.len() - 1], 1.0),
        _ => (s, 1.0),
    };
    num.parse::<f64>().ok().map(|n| n * mult)
}

fn format_human(bytes: f64) -> String {
    const K: f64 = 1024.0;
    if bytes >= K * K * K {
        format!("{:.2}G", bytes / (K * K * K))
    } else if bytes >= K * K {
        format!("{:.2}M", bytes / (K * K))
    } else if bytes >= K {
        format!("{:.2}K", bytes / K)
    } else {
        format!("{bytes:.0}B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,cache-0001-002.example master - 0 1426238317239 4 connected 0-5460
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,slave 07c37dfeb235213a872192d90877d0cd55635b91 0 0 1 connected
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master,fail - 1426238316232 1426238315232 3 connected
6ec23923021cf3ffec47632106199cb7f496ce01 :0@0 master,noaddr - 0 0 0 disconnected";
        let nodes = parse_cluster_nodes(text);
        assert_eq!(nodes.len(), 3);
        assert_eq!(
            nodes[0],
            (
                "cache-0001-002.example".into(),
                30004,
                "primary".into(),
                false
            )
        );
        assert_eq!(
            nodes[1],
            ("127.0.0.1".into(), 30001, "replica".into(), false)
        );
        assert_eq!(
            nodes[2],
            ("127.0.0.1".into(), 30003, "primary".into(), true)
        );
    }

    #[test]
    fn memory_sums_and_formats() {
        assert_eq!(parse_human("1.50M"), Some(1.5 * 1024.0 * 1024.0));
        assert_eq!(parse_human("900B"), Some(900.0));
        assert_eq!(format_human(3.0 * 1024.0 * 1024.0), "3.00M");
        assert_eq!(format_human(10.0), "10B");
    }
}
