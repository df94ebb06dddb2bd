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

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use test_support::RedisServer;

mod fixtures;
mod runtime_api;

use fixtures::{
    Env, SIGNED_IN_USER, environment, event, for_user, kill, profile_events, repeated,
    secrets_for_init, spawn,
};
use runtime_api::runtime_api;

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
