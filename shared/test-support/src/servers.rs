//! Redis for tests: throwaway `redis-server` processes (stopped, paused,
//! cut off and restored), a local 3+3 cluster, the shared servers `make
//! test` starts, raw connections for assertions, and `MONITOR`.

use super::scratch::TempDir;
use paycache::config::RedisMode;
use redis::Cmd;
use redis::Pipeline;
use redis::RedisFuture;
use redis::Value;
use redis::aio::ConnectionLike;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use std::net::TcpListener;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

/// A raw redis-rs connection for assertions, independent of the code under
/// test: one of each mode behind one type that commands run on.
#[derive(Clone)]
pub enum RawRedis {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A stream entry as `XRANGE` returns it: its id and its field-value pairs.
pub type StreamEntry = (String, Vec<(String, String)>);

impl RawRedis {
    /// Every entry of the stream `key` (`XRANGE key - +`), oldest first.
    pub async fn stream(&mut self, key: &str) -> redis::RedisResult<Vec<StreamEntry>> {
        redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query_async(self)
            .await
    }
}

impl ConnectionLike for RawRedis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port P such that P and P + 10000 (the cluster bus port) are both free,
/// with P ≤ 55535 as cluster mode requires.
pub fn free_cluster_port() -> u16 {
    for _ in 0..200 {
        let p = fastrand::u16(20_000..45_000);
        let a = TcpListener::bind(("127.0.0.1", p));
        let b = TcpListener::bind(("127.0.0.1", p + 10_000));
        if a.is_ok() && b.is_ok() {
            return p;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// One `redis-server` process owned by the test; killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments (e.g. cluster settings).
    pub fn start_with(extra: &[&str]) -> Self {
        crate::logs::init();
        let dir = TempDir::new("redis");
        let mut server = Self {
            port: 0,
            child: None,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        // A port can be taken between choosing and binding; try a few.
        let cluster = server.extra.iter().any(|a| a == "--cluster-enabled");
        for _ in 0..5 {
            server.port = if cluster {
                free_cluster_port()
            } else {
                free_port()
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("could not start redis-server (is it installed? `make test` installs it)");
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--logfile", "redis.log"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH (`make test` installs it)");
        self.child = Some(child);
        wait_for_ping(self.port, Duration::from_secs(10))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "redis-server did not come back on port {}",
            self.port
        );
    }

    /// Cuts it off as a partition or an unresponsive node does, keeping its
    /// data: saved (`SAVE`), then killed — connections are refused until
    /// [`RedisServer::restore`] starts it again on the same port with what
    /// it held.
    pub fn cut(&mut self) {
        // A replica's full sync runs a background save on its primary, and
        // `SAVE` is refused while one runs: wait for it (up to 10 s).
        let until = Instant::now() + Duration::from_secs(10);
        let mut answer = None;
        while Instant::now() < until {
            answer = redis_cli(self.port, &["SAVE"]);
            if answer.as_deref().is_some_and(|o| o.contains("OK")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            answer.is_some_and(|o| o.contains("OK")),
            "SAVE failed on port {} for 10 s",
            self.port
        );
        self.stop();
    }

    /// Starts a [`RedisServer::cut`] server again, with the data it saved.
    pub fn restore(&mut self) {
        assert!(
            self.spawn(),
            "redis-server did not come back on port {}",
            self.port
        );
    }

    /// Freezes the process (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let ok = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(child.id().to_string())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "kill -{sig} failed");
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume_quietly();
        self.stop();
    }
}

impl RedisServer {
    fn resume_quietly(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
        }
    }
}

pub(super) fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(super) fn wait_for_ping(port: u16, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        // A server with `requirepass` answers NOAUTH: it is up all the same.
        if redis_cli(port, &["PING"]).is_some_and(|o| o.trim() == "PONG" || o.contains("NOAUTH")) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A local Redis Cluster: 3 primaries, 3 replicas, `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args: Vec<&str> = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        let created = redis_cli(nodes[0].port, &args);
        assert!(created.is_some(), "redis-cli --cluster create failed");
        let cluster = Self { nodes };
        cluster.wait_until_ok(Duration::from_secs(30));
        cluster
    }

    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until every node reports `cluster_state:ok` and the topology
    /// is complete: every replica's replication link is up.
    /// (`cluster_state:ok` alone comes earlier, while the replicas are still
    /// attaching — a primary killed then has no one to take over.)
    pub fn wait_until_ok(&self, within: Duration) {
        let until = Instant::now() + within;
        while Instant::now() < until {
            let all_ok = self.nodes.iter().all(|n| {
                redis_cli(n.port, &["CLUSTER", "INFO"])
                    .is_some_and(|o| o.contains("cluster_state:ok"))
            });
            let replicas_up = self
                .nodes
                .iter()
                .filter_map(|n| redis_cli(n.port, &["INFO", "replication"]))
                .filter(|i| i.contains("role:slave") && i.contains("master_link_status:up"))
                .count();
            if all_ok && replicas_up == self.nodes.len() / 2 {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the local Redis Cluster did not reach cluster_state:ok with every replica attached"
        );
    }
}

/// Where a test's Redis is: a shared server (isolated by key prefix) or a
/// private one this value owns.
#[derive(Debug)]
pub enum TestRedis {
    Shared { mode: RedisMode, urls: String },
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

impl TestRedis {
    pub fn standalone() -> Self {
        match std::env::var("PAYCACHE_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => Self::Shared {
                mode: RedisMode::Standalone,
                urls: url,
            },
            _ => Self::Standalone(RedisServer::start()),
        }
    }

    pub fn cluster() -> Self {
        match std::env::var("PAYCACHE_TEST_CLUSTER_URLS") {
            Ok(urls) if !urls.is_empty() => Self::Shared {
                mode: RedisMode::Cluster,
                urls,
            },
            _ => Self::Cluster(RedisCluster::start()),
        }
    }

    pub fn of_mode(mode: RedisMode) -> Self {
        match mode {
            RedisMode::Standalone => Self::standalone(),
            RedisMode::Cluster => Self::cluster(),
        }
    }

    pub fn mode(&self) -> RedisMode {
        match self {
            Self::Shared { mode, .. } => *mode,
            Self::Standalone(_) => RedisMode::Standalone,
            Self::Cluster(_) => RedisMode::Cluster,
        }
    }

    pub fn urls(&self) -> String {
        match self {
            Self::Shared { urls, .. } => urls.clone(),
            Self::Standalone(s) => s.url(),
            Self::Cluster(c) => c.urls(),
        }
    }

    /// A raw redis-rs connection for assertions (independent of the code
    /// under test).
    pub async fn raw(&self) -> RawRedis {
        let urls = self.urls();
        match self.mode() {
            RedisMode::Standalone => {
                let client = redis::Client::open(urls.as_str()).unwrap();
                RawRedis::Standalone(redis::aio::ConnectionManager::new(client).await.unwrap())
            }
            RedisMode::Cluster => {
                let client =
                    redis::cluster::ClusterClient::new(urls.split(',').collect::<Vec<_>>())
                        .unwrap();
                RawRedis::Cluster(client.get_async_connection().await.unwrap())
            }
        }
    }
}

/// Counts the commands a Redis server has executed (`INFO commandstats`),
/// summed over the given `cmdstat_*` names. For round-trip accounting.
pub fn command_calls(port: u16) -> std::collections::HashMap<String, u64> {
    let info = redis_cli(port, &["INFO", "commandstats"]).unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// Watches a Redis server with `MONITOR` and reports the commands clients
/// sent — one per round trip — leaving out the calls scripts make inside
/// (MONITOR marks those `lua`).
pub struct CommandMonitor {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl CommandMonitor {
    pub fn start(port: u16) -> Self {
        use std::io::BufRead;
        let mut child = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "MONITOR"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line == "OK" {
                    let _ = ready_tx.send(());
                    continue;
                }
                sink.lock().unwrap().push(line);
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        Self { child, lines }
    }

    /// Lower-case names of the client commands seen so far, in order
    /// (waits briefly for MONITOR's output to catch up).
    pub fn commands(&self) -> Vec<String> {
        self.commands_with_first_arg()
            .into_iter()
            .map(|(c, _)| c)
            .collect()
    }

    /// Like [`Self::commands`], with each command's first argument (a
    /// script's SHA for `evalsha`).
    pub fn commands_with_first_arg(&self) -> Vec<(String, String)> {
        std::thread::sleep(Duration::from_millis(200));
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| !l.contains(" lua]"))
            .filter_map(|l| {
                let (_, rest) = l.split_once("] \"")?;
                let mut parts = rest.split("\" \"");
                let cmd = parts.next()?.trim_end_matches('"').to_lowercase();
                let arg = parts.next().unwrap_or("").trim_end_matches('"').to_owned();
                Some((cmd, arg))
            })
            .collect()
    }

    pub fn clear(&self) {
        std::thread::sleep(Duration::from_millis(200));
        self.lines.lock().unwrap().clear();
    }
}

impl Drop for CommandMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RedisCluster {
    /// `master` or `slave`, as the node itself says (`ROLE`).
    pub fn role(&self, index: usize) -> String {
        redis_cli(self.nodes[index].port, &["ROLE"])
            .and_then(|o| o.lines().next().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The index of the primary that serves `key`'s hash slot now.
    pub fn primary_for_key(&self, key: &str) -> usize {
        let slot: u16 = (0..self.nodes.len())
            .find_map(|i| redis_cli(self.nodes[i].port, &["CLUSTER", "KEYSLOT", key]))
            .and_then(|o| o.trim().parse().ok())
            .expect("CLUSTER KEYSLOT");
        (0..self.nodes.len())
            .find(|&i| {
                let Some(nodes) = redis_cli(self.nodes[i].port, &["CLUSTER", "NODES"]) else {
                    return false;
                };
                nodes.lines().any(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    fields.len() > 8
                        && fields[2].contains("myself")
                        && fields[2].contains("master")
                        && fields[8..].iter().any(|range| {
                            let mut ends = range.splitn(2, '-');
                            let lo = ends.next().and_then(|v| v.parse::<u16>().ok());
                            let hi = ends.next().and_then(|v| v.parse::<u16>().ok()).or(lo);
                            matches!((lo, hi), (Some(lo), Some(hi)) if lo <= slot && slot <= hi)
                        })
                })
            })
            .expect("a primary serves every slot")
    }

    /// Every node tells clients to reach it at `ports[i]` (a proxy in
    /// front of it: `cluster-announce-port`; the cluster bus keeps its own
    /// port), so a cluster client's every connection goes through them.
    /// Waits until every node's `CLUSTER SLOTS` names only those ports.
    pub fn announce_ports(&self, ports: &[u16]) {
        assert_eq!(ports.len(), self.nodes.len());
        for (node, port) in self.nodes.iter().zip(ports) {
            let set = redis_cli(
                node.port,
                &["CONFIG", "SET", "cluster-announce-port", &port.to_string()],
            );
            assert!(
                set.is_some_and(|o| o.contains("OK")),
                "cluster-announce-port"
            );
        }
        let wanted: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let all = self.nodes.iter().all(|n| {
                let Some(out) = redis_cli(n.port, &["CLUSTER", "SLOTS"]) else {
                    return false;
                };
                // Flattened: … ip, port, id … — the line after an address.
                let lines: Vec<&str> = out.lines().map(str::trim).collect();
                let named: std::collections::BTreeSet<u16> = lines
                    .windows(2)
                    .filter(|w| w[0] == "127.0.0.1")
                    .filter_map(|w| w[1].parse().ok())
                    .collect();
                named == wanted
            });
            if all {
                return;
            }
            assert!(
                Instant::now() < until,
                "the nodes did not announce the proxies' ports"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether node `index` is a replica of the primary on `primary_port`.
    pub fn replicates(&self, index: usize, primary_port: u16) -> bool {
        redis_cli(self.nodes[index].port, &["INFO", "replication"]).is_some_and(|o| {
            o.lines()
                .any(|l| l.trim() == format!("master_port:{primary_port}"))
        })
    }
}

/// Settings for a standalone Redis at `url` with the defaults of the
/// configuration (for benchmarks that build a `Redis` handle directly).
pub fn standalone_redis(
    url: &str,
) -> (
    paycache::config::RedisConfig,
    paycache::config::BreakerConfig,
) {
    (
        paycache::config::RedisConfig {
            mode: RedisMode::Standalone,
            urls: paycache::config::Secret::new(url),
            tls: false,
            ca_cert: None,
            auth_token: None,
            auth_token_secret_arn: None,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_millis(250),
        },
        paycache::config::BreakerConfig {
            failure_threshold: 3,
            cooldown: Duration::from_secs(5),
        },
    )
}
