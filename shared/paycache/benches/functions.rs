//! Budgets of the function binaries themselves (`make bench` builds them in
//! release first): **cold start** — from process start to the first
//! `GET /runtime/invocation/next`, i.e. ready for its first event — for
//! every function, and **peak memory** (`VmHWM`) of the request-serving
//! functions after a sustained load of events.
//!
//! The binaries talk to a minimal Lambda Runtime API served here (the two
//! endpoints a runtime uses: next invocation, and its response) and to real
//! Redis and PostgreSQL. The baseline, measured in the same run, is the
//! cold start of a process that does nothing but the same HTTP request
//! (`curl` — exec, dynamic linking, one loopback connection).
#![allow(clippy::unwrap_used, reason = "benchmark set-up")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use test_support::RedisServer;

const FUNCTIONS: &[&str] = &[
    "profile-read",
    "balance-write",
    "rate-limit-check",
    "health-check",
    "authorizer",
    "session-logout",
    "ws-connections",
    "metrics-emitter",
    "cache-warmer",
    "audit-flush",
    "cache-invalidator",
    "session-signin",
];

fn bin_dir() -> PathBuf {
    std::env::var_os("PAYCACHE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What the runtime API serves: events to hand out, and a signal when the
/// runtime first asks for one.
/// Per event: when it was handed out, and when its response came back.
type Timings = Mutex<Vec<(Option<Instant>, Option<Instant>)>>;

struct RuntimeApi {
    port: u16,
    /// Set on drop: the accept loop ends and closes its listener (a run
    /// starts hundreds of these; leaked listeners exhaust file descriptors).
    stop: Arc<std::sync::atomic::AtomicBool>,
    first_next: mpsc::Receiver<Instant>,
    answered: Arc<AtomicUsize>,
    /// Per event: when it was handed out, and when its response came back.
    timings: Arc<Timings>,
}

fn runtime_api(events: Vec<Vec<u8>>) -> RuntimeApi {
    // Out of ephemeral ports (see the cold-start group), wait for sockets
    // in TIME_WAIT to expire rather than fail the run.
    let listener = (0..90)
        .find_map(|_| match TcpListener::bind("127.0.0.1:0") {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                std::thread::sleep(Duration::from_secs(1));
                None
            }
            other => Some(other),
        })
        .expect("no loopback port for 90 s")
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let timings = Arc::new(Mutex::new(vec![(None, None); events.len()]));
    let events = Arc::new(events);
    let served = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let (s2, a2, t2) = (served.clone(), answered.clone(), timings.clone());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            let Ok(stream) = stream else { return };
            let (tx, events, served, answered, timings) = (
                tx.clone(),
                events.clone(),
                s2.clone(),
                a2.clone(),
                t2.clone(),
            );
            std::thread::spawn(move || serve(stream, &tx, &events, &served, &answered, &timings));
        }
    });
    RuntimeApi {
        port,
        stop,
        first_next: rx,
        answered,
        timings,
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(
    stream: TcpStream,
    first: &Mutex<Option<mpsc::Sender<Instant>>>,
    events: &[Vec<u8>],
    served: &AtomicUsize,
    answered: &AtomicUsize,
    timings: &Timings,
) {
    // One write per answer and no Nagle delay: otherwise every event waits
    // for a delayed ACK, and the load measures TCP, not the function.
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        let mut chunked = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            let h = h.to_ascii_lowercase();
            if let Some(v) = h.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if h.starts_with("transfer-encoding:") && h.contains("chunked") {
                chunked = true;
            }
        }
        if chunked {
            // Chunks until the empty one, then the (empty) trailer line.
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                    .unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                if n == 0 {
                    break;
                }
            }
        } else {
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        }
        if line.starts_with("GET") && line.contains("/invocation/next") {
            if let Some(tx) = first.lock().unwrap().take() {
                let _ = tx.send(Instant::now());
            }
            let n = served.fetch_add(1, Ordering::SeqCst);
            let Some(event) = events.get(n) else {
                if events.is_empty() {
                    return; // cold start only: the runtime is killed now
                }
                // Load done: hold the runtime here (alive, for its VmHWM)
                // until it is killed.
                std::thread::sleep(Duration::from_secs(600));
                return;
            };
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                + 10_000;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                 lambda-runtime-aws-request-id: req-{n}\r\n\
                 lambda-runtime-deadline-ms: {deadline}\r\n\
                 lambda-runtime-invoked-function-arn: arn:aws:lambda:us-east-1:123456789012:function:bench\r\n\
                 lambda-runtime-trace-id: Root=1-00000000-000000000000000000000000;Sampled=0\r\n\
                 content-length: {}\r\n\r\n",
                event.len()
            );
            let mut answer = head.into_bytes();
            answer.extend_from_slice(event);
            timings.lock().unwrap()[n].0 = Some(Instant::now());
            if out.write_all(&answer).is_err() {
                return;
            }
        } else {
            // POST /2018-06-01/runtime/invocation/req-<n>/response
            let n = line
                .split("/invocation/req-")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(n) = n
                && let Some(t) = timings.lock().unwrap().get_mut(n)
            {
                t.1 = Some(Instant::now());
            }
            answered.fetch_add(1, Ordering::SeqCst);
            let answer = "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n";
            if out.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }
}

struct Env {
    vars: Vec<(String, String)>,
    /// The signed-in user's session id.
    session: String,
    _redis: RedisServer,
}

fn environment() -> Env {
    let redis = RedisServer::start();
    let pg = std::env::var("PAYCACHE_TEST_PG").expect("PAYCACHE_TEST_PG (make bench sets it)");
    let db = format!("bench_{}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg, tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        drop(client);
        let _ = task.await;
        let url = format!("{pg} dbname={db}");
        let config = paycache::config::DatabaseConfig {
            url: paycache::config::Secret::new(url),
            secret_arn: None,
            credentials: None,
            ca_cert: None,
            pool_size: 1,
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(600),
        };
        let db = paycache::db::Db::new(&config).unwrap();
        db.migrate().await.unwrap();
        db.seed_local().await.unwrap();
    });
    let vars = vec![
        ("REDIS_URL".into(), redis.url()),
        ("DATABASE_URL".into(), format!("{pg} dbname={db}")),
        ("CACHE_KEY_PREFIX".into(), "bench".into()),
        ("AUTH_ISSUER".into(), "https://auth.paycache.test".into()),
        ("AUTH_AUDIENCE".into(), "paycache-api".into()),
        (
            "AUTH_JWKS_FILE".into(),
            root()
                .join("tests/fixtures/jwks.json")
                .display()
                .to_string(),
        ),
        // Every hit is the same caller (the events' service principal): no
        // limit may stop the benchmark (the rate-limit script still runs).
        (
            "RATE_LIMIT_POLICIES".into(),
            r#"[{"name":"users.profile.read","algorithm":"gcra","limit":1000000,"window_secs":1,"burst":1000000,"fail":"open"},{"name":"wallets.balance.read","algorithm":"gcra","limit":1000000,"window_secs":1,"burst":1000000,"fail":"open"}]"#.into(),
        ),
        ("AWS_REGION".into(), "us-east-1".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(), "256".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION".into(), "$LATEST".into()),
        ("AWS_LAMBDA_LOG_STREAM_NAME".into(), "bench".into()),
        ("AWS_LAMBDA_LOG_GROUP_NAME".into(), "bench".into()),
        ("RUST_LOG".into(), "error".into()),
    ];
    // A signed-in user's session (what the sign-in makes), for the
    // signed-in hit: its token names it (`sid`).
    let _runtime = rt.enter();
    let app = paycache::App::new(
        paycache::Config::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v): &(String, String)| v.clone())
        })
        .unwrap(),
    )
    .unwrap();
    let session = rt.block_on(async {
        let session = paycache::sessions::Session {
            user_id: paycache::keys::UserId::parse(SIGNED_IN_USER).unwrap(),
            email: "bench@example.test".into(),
            roles: vec!["customer".into()],
            permissions: Vec::new(),
            last_activity: time::OffsetDateTime::now_utc(),
            ip_address: None,
            device_info: None,
        };
        paycache::sessions::create(&app.sessions, &session)
            .await
            .unwrap()
            .to_string()
    });
    Env {
        vars,
        session,
        _redis: redis,
    }
}

/// The signed-in user of the benchmark (seed user 1).
const SIGNED_IN_USER: &str = "00000000-0000-4000-8000-000000000001";

fn spawn(program: &PathBuf, name: &str, env: &Env, port: u16) -> Child {
    Command::new(program)
        .env_clear()
        .envs(env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("AWS_LAMBDA_FUNCTION_NAME", name)
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (make bench builds it)", program.display()))
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Process start to the first `next` request.
fn cold_start(program: &PathBuf, name: &str, env: &Env) -> Duration {
    let api = runtime_api(Vec::new());
    let started = Instant::now();
    let child = spawn(program, name, env, api.port);
    let ready = api
        .first_next
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{name} never asked for an event"));
    kill(child);
    ready - started
}

fn curl_baseline(port: u16) -> Duration {
    let started = Instant::now();
    let mut child = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-m",
            "5",
            &format!("http://127.0.0.1:{port}/2018-06-01/runtime/invocation/next"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _ = child.wait();
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    let dir = bin_dir();
    // `cargo test --all-targets` runs benchmarks once as a smoke test; this
    // one needs release binaries and minutes, so it runs under `make bench`
    // (`cargo bench`) only.
    if !std::env::args().any(|a| a == "--bench") {
        println!("functions: skipped outside `cargo bench` (make bench runs it)");
        return;
    }
    if let Some(missing) = FUNCTIONS.iter().find(|f| !dir.join(f).exists()) {
        panic!(
            "{} is not built: `make bench` builds the release binaries first",
            dir.join(missing).display()
        );
    }
    let env = environment();
    // PAYCACHE_BENCH_HITS_ONLY: the cache-hit invocations against the floor
    // and nothing else.
    if std::env::var_os("PAYCACHE_BENCH_HITS_ONLY").is_some() {
        hit_invocations(&env, &dir);
        return;
    }
    let mut group = c.benchmark_group("cold_start");
    // A budget of loopback ports: every cold start opens connections to
    // the same Redis and PostgreSQL, and each leaves a socket in TIME_WAIT
    // for 60 s, holding its ephemeral port (about 28,000 of them). With 20
    // samples over 3 s plus a 3 s warm-up, a 1.6 ms cold start ran about
    // 3,800 times per function and the run ran out of ports (`AddrInUse`)
    // at the sixth function. Ten equal samples over one second, after a
    // 300 ms warm-up: about 800 per function — every function, its
    // "before" and the Secrets Manager variants come to about 22,000.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(1));
    group.bench_function("baseline: curl of the runtime API", |b| {
        b.iter_custom(|iters| {
            let api = runtime_api(vec![b"{}".to_vec(); iters as usize + 1]);
            (0..iters).map(|_| curl_baseline(api.port)).sum()
        })
    });
    // PAYCACHE_BIN_DIR_BEFORE: the same functions built from another commit
    // (before a change), measured in the same run, side by side.
    let before = std::env::var_os("PAYCACHE_BIN_DIR_BEFORE").map(PathBuf::from);
    for name in FUNCTIONS {
        let program = dir.join(name);
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| cold_start(&program, name, &env)).sum())
        });
        if let Some(before) = &before {
            let program = before.join(name);
            if program.exists() {
                group.bench_function(format!("{name} (before)"), |b| {
                    b.iter_custom(|iters| {
                        (0..iters).map(|_| cold_start(&program, name, &env)).sum()
                    })
                });
            }
        }
    }
    // Init with the Redis token and database credentials fetched from
    // Secrets Manager (the deployed configuration), when a local endpoint
    // is there (`make bench` starts moto_server): the SDK's configuration
    // and two GetSecretValue calls on the init path.
    if let Some(arns) = secrets_for_init() {
        let with_secrets = Env {
            vars: env
                .vars
                .iter()
                .cloned()
                .chain(arns)
                .chain(
                    [
                        "AWS_ENDPOINT_URL",
                        "AWS_ACCESS_KEY_ID",
                        "AWS_SECRET_ACCESS_KEY",
                    ]
                    .iter()
                    .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?))),
                )
                .collect(),
            session: env.session.clone(),
            _redis: RedisServer::start(),
        };
        for (label, d) in [("", Some(&dir)), (" (before)", before.as_ref())] {
            let Some(d) = d else { continue };
            let program = d.join("profile-read");
            group.bench_function(
                format!("profile-read, secrets from Secrets Manager{label}"),
                |b| {
                    b.iter_custom(|iters| {
                        (0..iters)
                            .map(|_| cold_start(&program, "profile-read", &with_secrets))
                            .sum()
                    })
                },
            );
        }
    }
    group.finish();
    for name in FUNCTIONS {
        let size = |d: &std::path::Path| std::fs::metadata(d.join(name)).map(|m| m.len()).ok();
        let mib =
            |b: Option<u64>| b.map_or("—".to_owned(), |b| format!("{:.2} MB", b as f64 / 1e6));
        println!(
            "size {name:<18} {:>9}  (before: {})",
            mib(size(&dir)),
            mib(before.as_deref().and_then(size))
        );
    }
    // PAYCACHE_BENCH_COLD_START_ONLY: the cold starts above and nothing else.
    if std::env::var_os("PAYCACHE_BENCH_COLD_START_ONLY").is_some() {
        return;
    }
    hit_invocations(&env, &dir);
    peak_memory(&env, &dir);
}

/// Runs `events` through one process of `program` and returns the time of
/// each invocation after the first `warmup`: event handed out → response
/// received, as the Lambda service would see it.
fn invocation_times(
    program: &std::path::Path,
    name: &str,
    env: &Env,
    extra: &[(&str, &str)],
    events: Vec<Vec<u8>>,
    warmup: usize,
) -> Vec<Duration> {
    let count = events.len();
    let api = runtime_api(events);
    let mut command = Command::new(program);
    command
        .env_clear()
        .envs(env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(extra.iter().copied())
        .env("AWS_LAMBDA_FUNCTION_NAME", name)
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{}", api.port))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (make bench builds it)", program.display()));
    let until = Instant::now() + Duration::from_secs(300);
    while api.answered.load(Ordering::SeqCst) < count && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(child);
    let timings = api.timings.lock().unwrap();
    timings
        .iter()
        .skip(warmup)
        .filter_map(|(out, back)| Some(back.as_ref()?.duration_since(*out.as_ref()?)))
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Cache-hit invocation time of every HTTP function, against the floor (a
/// minimal `lambda_http` function doing one Redis `GET`; examples/floor.rs)
/// in the same run, same Runtime API, same Redis. Rounds alternate between
/// the programs so that machine noise falls on all of them alike.
fn hit_invocations(env: &Env, dir: &std::path::Path) {
    const N: usize = 1500;
    const WARMUP: usize = 300;
    let floor = dir.join("examples/floor");
    if !floor.exists() {
        panic!("{} is not built: `make bench` builds it", floor.display());
    }
    // The floor reads a value the size of a cached profile.
    let redis_url = env
        .vars
        .iter()
        .find(|(k, _)| k == "REDIS_URL")
        .unwrap()
        .1
        .clone();
    let mut conn = redis::Client::open(redis_url)
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("bench-floor")
        .arg(vec![b'x'; 400])
        .query(&mut conn)
        .unwrap();
    let one_user = |n: usize| {
        let mut e = event("profile-read.json");
        for_user(&mut e, SIGNED_IN_USER);
        vec![serde_json::to_vec(&e).unwrap(); n]
    };
    type Load = (String, PathBuf, Vec<Vec<u8>>);
    // A signed-in user reading their own profile: the session and the
    // blacklist checked, the rate limit, the read — four commands, one
    // round-trip time.
    let signed_in = {
        let mut e = event("profile-read.json");
        let id = SIGNED_IN_USER;
        for_user(&mut e, id);
        e["requestContext"]["authorizer"]["jwt"] = serde_json::json!({
            "claims": {
                "sub": id,
                "sid": env.session,
                "client_id": "paycache-web",
                "token_use": "access",
                "iss": "https://auth.paycache.test",
                "exp": "4102444800",
                "iat": "1795600000",
                "jti": "bench-signed-in",
            },
            "scopes": null,
        });
        vec![serde_json::to_vec(&e).unwrap(); N]
    };
    let mut loads: Vec<Load> = [
        (
            "floor: one Redis GET",
            "examples/floor",
            repeated("profile-read.json", N),
        ),
        (
            "floor, current-thread runtime",
            "examples/floor",
            repeated("profile-read.json", N),
        ),
        ("profile-read (hit)", "profile-read", one_user(N)),
        ("profile-read, signed in", "profile-read", signed_in),
        (
            "balance-write GET (hit)",
            "balance-write",
            repeated("balance-get.json", N),
        ),
        (
            "rate-limit-check",
            "rate-limit-check",
            repeated("rate-limit-check.json", N),
        ),
        (
            "health-check",
            "health-check",
            repeated("health-check.json", N / 5),
        ),
        (
            "session-logout",
            "session-logout",
            repeated("session-logout.json", N),
        ),
    ]
    .into_iter()
    .map(|(label, program, events): (&str, &str, Vec<Vec<u8>>)| {
        (label.to_owned(), dir.join(program), events)
    })
    .collect();
    // PAYCACHE_BIN_DIR_BEFORE: the two profile hits of the functions built
    // from another commit, in the same rounds.
    if let Some(before) = std::env::var_os("PAYCACHE_BIN_DIR_BEFORE").map(PathBuf::from) {
        let again: Vec<Load> = loads
            .iter()
            .filter(|(label, _, _)| label.starts_with("profile-read"))
            .map(|(label, _, events)| {
                (
                    format!("{label} (before)"),
                    before.join("profile-read"),
                    events.clone(),
                )
            })
            .collect();
        loads.extend(again);
    }
    let mut all: Vec<Vec<Duration>> = vec![Vec::new(); loads.len()];
    for _round in 0..3 {
        for (i, (label, program, events)) in loads.iter().enumerate() {
            let name = program.file_name().unwrap().to_str().unwrap();
            let extra: &[(&str, &str)] = if label.contains("current-thread") {
                &[("FLOOR_KEY", "bench-floor"), ("FLOOR_CURRENT_THREAD", "1")]
            } else if name == "floor" {
                &[("FLOOR_KEY", "bench-floor")]
            } else {
                &[]
            };
            let warmup = if events.len() < N { WARMUP / 5 } else { WARMUP };
            let mut t = invocation_times(program, name, env, extra, events.clone(), warmup);
            assert!(!t.is_empty(), "{label}: no invocation answered");
            all[i].append(&mut t);
        }
    }
    let medians: Vec<(Duration, Duration)> = all
        .iter_mut()
        .map(|t| {
            t.sort();
            (percentile(t, 0.5), percentile(t, 0.9))
        })
        .collect();
    let floor_median = medians[0].0;
    let single_median = medians[1].0;
    println!("\nwarm invocation time, event handed out -> response received (3 rounds):");
    println!(
        "  {:<34} {:>10} {:>10} {:>8} {:>16}",
        "function", "median", "p90", "/floor", "/current-thread"
    );
    for ((label, _, _), (median, p90)) in loads.iter().zip(&medians) {
        println!(
            "  {label:<34} {:>7.1} µs {:>7.1} µs {:>7.2}× {:>15.2}×",
            median.as_secs_f64() * 1e6,
            p90.as_secs_f64() * 1e6,
            median.as_secs_f64() / floor_median.as_secs_f64(),
            median.as_secs_f64() / single_median.as_secs_f64()
        );
    }
}

/// Creates the two secrets a deployed function reads at init in the local
/// Secrets Manager (`AWS_ENDPOINT_URL`), and returns the variables naming
/// them; `None` without a local endpoint.
fn secrets_for_init() -> Option<Vec<(String, String)>> {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").ok()?;
    if !endpoint.starts_with("http://127.0.0.1") {
        return None;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sm = aws_sdk_secretsmanager::Client::new(
            paycache::aws::sdk_config(Duration::from_secs(5)).await,
        );
        let tag = format!("bench-{}", std::process::id());
        let redis = sm
            .create_secret()
            .name(format!("{tag}/redis"))
            .secret_string(r#"{"token":"bench-token-0123456789abcdef"}"#)
            .send()
            .await
            .ok()?;
        let db = sm
            .create_secret()
            .name(format!("{tag}/db"))
            .secret_string(r#"{"username":"postgres","password":"bench-password"}"#)
            .send()
            .await
            .ok()?;
        Some(vec![
            (
                "REDIS_AUTH_TOKEN_SECRET_ARN".to_owned(),
                redis.arn()?.to_owned(),
            ),
            ("DATABASE_SECRET_ARN".to_owned(), db.arn()?.to_owned()),
        ])
    })
}

/// `VmHWM` of a process, in KiB.
fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn event(file: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("events").join(file)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `n` profile reads over 2,000 users (misses, then hits), as one event each.
fn profile_events(n: usize) -> Vec<Vec<u8>> {
    let template = event("profile-read.json");
    (0..n)
        .map(|i| {
            let id = format!("00000000-0000-4000-8000-{:012x}", i % 2000 + 1);
            let mut e = template.clone();
            for_user(&mut e, &id);
            serde_json::to_vec(&e).unwrap()
        })
        .collect()
}

/// A profile-read event for user `id`'s profile.
fn for_user(e: &mut serde_json::Value, id: &str) {
    e["rawPath"] = format!("/users/{id}/profile").into();
    e["requestContext"]["http"]["path"] = format!("/users/{id}/profile").into();
    e["pathParameters"]["user_id"] = id.into();
}

fn repeated(file: &str, n: usize) -> Vec<Vec<u8>> {
    vec![serde_json::to_vec(&event(file)).unwrap(); n]
}

fn peak_memory(env: &Env, dir: &std::path::Path) {
    const N: usize = 5000;
    let loads: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("profile-read", profile_events(N)),
        ("balance-write", repeated("balance-get.json", N)),
        ("rate-limit-check", repeated("rate-limit-check.json", N)),
        ("health-check", repeated("health-check.json", N / 5)),
        ("authorizer", repeated("authorizer-no-session.json", N)),
    ];
    println!("\npeak memory (VmHWM) after a sustained load, target 32 MiB:");
    for (name, events) in loads {
        let count = events.len();
        let api = runtime_api(events);
        let child = spawn(&dir.join(name), name, env, api.port);
        let until = Instant::now() + Duration::from_secs(300);
        while api.answered.load(Ordering::SeqCst) < count && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        let kib = peak_kib(child.id());
        let done = api.answered.load(Ordering::SeqCst);
        kill(child);
        println!(
            "  {name:<18} {:>6.1} MiB after {done} events",
            kib as f64 / 1024.0
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
