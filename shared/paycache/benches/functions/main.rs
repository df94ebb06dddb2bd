//! Budgets of the function binaries themselves (`make bench` builds them in
//! release first): **cold start** — from process start to the first
//! `GET /runtime/invocation/next`, i.e. ready for its first event — for
//! every function, **peak memory** (`VmHWM`) of the request-serving
//! functions after a sustained load of events, and **what Lambda bills**
//! ([`cost`]): CPU time per warm invocation of every HTTP function against
//! both floors, and the power-tuning table — billed duration at each memory
//! size's CPU share (a cgroup CPU quota) and the cost of a million
//! invocations.
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

mod cost;
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
    // PAYCACHE_BENCH_HITS_ONLY: the cache-hit invocations against the
    // floors and nothing else; PAYCACHE_BENCH_COST_ONLY: those and the
    // power-tuning table.
    if std::env::var_os("PAYCACHE_BENCH_HITS_ONLY").is_some() {
        hit_invocations(&env, &dir);
        return;
    }
    if std::env::var_os("PAYCACHE_BENCH_COST_ONLY").is_some() {
        hit_invocations(&env, &dir);
        power_tuning(&env, &dir);
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
    // PAYCACHE_BENCH_SKIP_POWER_TUNING: not the table per memory size.
    if std::env::var_os("PAYCACHE_BENCH_SKIP_POWER_TUNING").is_none() {
        power_tuning(&env, &dir);
    }
    peak_memory(&env, &dir);
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

type Load = (String, PathBuf, Vec<Vec<u8>>);

/// The warm invocations measured: the two floors (a minimal `lambda_http`
/// function doing one Redis `GET`, examples/floor.rs, on the
/// multi-threaded and on the current-thread runtime) and every HTTP
/// function on a cache hit, each with `n` events. With
/// PAYCACHE_BIN_DIR_BEFORE, the two profile hits of the functions built
/// from another commit too.
fn hit_loads(env: &Env, dir: &std::path::Path, n: usize) -> Vec<Load> {
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
        vec![serde_json::to_vec(&e).unwrap(); n]
    };
    let mut loads: Vec<Load> = [
        (
            FLOOR_MULTI,
            "examples/floor",
            repeated("profile-read.json", n),
        ),
        (
            FLOOR_CURRENT,
            "examples/floor",
            repeated("profile-read.json", n),
        ),
        ("profile-read (hit)", "profile-read", one_user(n)),
        (SIGNED_IN, "profile-read", signed_in),
        (
            "balance-write GET (hit)",
            "balance-write",
            repeated("balance-get.json", n),
        ),
        (
            "rate-limit-check",
            "rate-limit-check",
            repeated("rate-limit-check.json", n),
        ),
        (
            "health-check",
            "health-check",
            repeated("health-check.json", n / 5),
        ),
        (
            "session-logout",
            "session-logout",
            repeated("session-logout.json", n),
        ),
        // The WebSocket API's: $connect's authorizer (the token's signature
        // verified, then no session: denied) and a ping.
        (
            "authorizer ($connect)",
            "authorizer",
            repeated("authorizer-no-session.json", n),
        ),
        (
            "ws-connections (ping)",
            "ws-connections",
            repeated("ws-ping.json", n),
        ),
    ]
    .into_iter()
    .map(|(label, program, events): (&str, &str, Vec<Vec<u8>>)| {
        (label.to_owned(), dir.join(program), events)
    })
    .collect();
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
    loads
}

const FLOOR_MULTI: &str = "floor: one Redis GET";
const FLOOR_CURRENT: &str = "floor, current-thread runtime";
const SIGNED_IN: &str = "profile-read, signed in";

/// The floor's own environment variables for `label`.
fn extra_env(label: &str, program: &std::path::Path) -> &'static [(&'static str, &'static str)] {
    if label == FLOOR_CURRENT {
        &[("FLOOR_KEY", "bench-floor"), ("FLOOR_CURRENT_THREAD", "1")]
    } else if program.ends_with("examples/floor") {
        &[("FLOOR_KEY", "bench-floor")]
    } else {
        &[]
    }
}

/// Cache-hit invocation time and CPU of every HTTP function, against both
/// floors in the same run, same Runtime API, same Redis. Rounds alternate
/// between the programs so that machine noise falls on all of them alike.
fn hit_invocations(env: &Env, dir: &std::path::Path) {
    const N: usize = 1500;
    const WARMUP: usize = 300;
    let loads = hit_loads(env, dir, N);
    let mut all: Vec<Vec<Duration>> = vec![Vec::new(); loads.len()];
    let mut cpu: Vec<Vec<Duration>> = vec![Vec::new(); loads.len()];
    let mut kernel: Vec<[f64; 3]> = vec![[0.0; 3]; loads.len()];
    for _round in 0..3 {
        for (i, (label, program, events)) in loads.iter().enumerate() {
            let name = program.file_name().unwrap().to_str().unwrap();
            let warmup = if events.len() < N { WARMUP / 5 } else { WARMUP };
            let extra = extra_env(label, program);
            let mut r = cost::run(
                program,
                name,
                env,
                extra,
                events.clone(),
                warmup,
                cost::Under::Plain,
            );
            assert!(!r.durations.is_empty(), "{label}: no invocation answered");
            all[i].append(&mut r.durations);
            cpu[i].push(r.cpu);
            kernel[i] = r.kernel;
        }
    }
    let medians: Vec<(Duration, Duration)> = all
        .iter_mut()
        .map(|t| {
            t.sort();
            (percentile(t, 0.5), percentile(t, 0.9))
        })
        .collect();
    // CPU per invocation: the median of the rounds.
    let cpu: Vec<Duration> = cpu
        .iter_mut()
        .map(|c| {
            c.sort();
            c[c.len() / 2]
        })
        .collect();
    let at = |label: &str| loads.iter().position(|(l, _, _)| l == label).unwrap();
    let (floor, single) = (at(FLOOR_MULTI), at(FLOOR_CURRENT));
    println!(
        "\nwarm invocations, 3 rounds: wall time (event handed out -> response received) and CPU time per invocation"
    );
    println!(
        "  {:<34} {:>10} {:>10} {:>8} {:>10} {:>9} {:>16} {:>18}",
        "function",
        "median",
        "p90",
        "/floor",
        "CPU",
        "CPU/floor",
        "CPU/current-thr.",
        "reads/writes/waits"
    );
    for (i, ((label, _, _), (median, p90))) in loads.iter().zip(&medians).enumerate() {
        println!(
            "  {label:<34} {:>7.1} µs {:>7.1} µs {:>7.2}× {:>7.1} µs {:>8.2}× {:>15.2}× {:>6.1}/{:.1}/{:.1}",
            median.as_secs_f64() * 1e6,
            p90.as_secs_f64() * 1e6,
            median.as_secs_f64() / medians[floor].0.as_secs_f64(),
            cpu[i].as_secs_f64() * 1e6,
            cpu[i].as_secs_f64() / cpu[floor].as_secs_f64(),
            cpu[i].as_secs_f64() / cpu[single].as_secs_f64(),
            kernel[i][0],
            kernel[i][1],
            kernel[i][2],
        );
    }
    // PAYCACHE_BENCH_PROFILE=<dir>: the signed-in hit and the
    // current-thread floor once more each, under `perf record`
    // (docs/operations.md: the flame graphs).
    if let Some(out) = std::env::var_os("PAYCACHE_BENCH_PROFILE").map(PathBuf::from) {
        std::fs::create_dir_all(&out).unwrap();
        for (label, file) in [(SIGNED_IN, "signed-in.perf"), (FLOOR_CURRENT, "floor.perf")] {
            let (_, program, events) = &loads[at(label)];
            let name = program.file_name().unwrap().to_str().unwrap();
            let perf = out.join(file);
            let extra = extra_env(label, program);
            cost::run(
                program,
                name,
                env,
                extra,
                events.clone(),
                WARMUP,
                cost::Under::Perf(&perf),
            );
        }
    }
    let ratio = cpu[at(SIGNED_IN)].as_secs_f64() / cpu[single].as_secs_f64();
    println!(
        "  the signed-in hit's CPU per invocation: {ratio:.2}× the current-thread floor's (budget 1.30×)"
    );
}

/// The local counterpart of AWS Lambda Power Tuning: every HTTP function
/// (and the current-thread floor) at each memory size's CPU share, one
/// execution environment kept busy; billed duration p50/p99, the highest
/// rate it sustains, and the cost of a million invocations on arm64.
fn power_tuning(env: &Env, dir: &std::path::Path) {
    const N: usize = 600;
    const WARMUP: usize = 150;
    let loads: Vec<Load> = hit_loads(env, dir, N)
        .into_iter()
        .filter(|(label, _, _)| label != FLOOR_MULTI && !label.ends_with("(before)"))
        .collect();
    let quotas: Vec<(u32, cost::Quota)> = match cost::MEMORY_SIZES
        .iter()
        .map(|&mb| Ok((mb, cost::Quota::new(&mb.to_string(), cost::share(mb))?)))
        .collect::<Result<Vec<_>, String>>()
    {
        Ok(q) => q,
        Err(e) => {
            println!("\npower tuning: skipped, no CPU quota can be set here ({e}); it needs root");
            return;
        }
    };
    // [load][size] -> billed ms of every invocation, and rates.
    let mut billed = vec![vec![Vec::<u64>::new(); quotas.len()]; loads.len()];
    let mut rates = vec![vec![Vec::<f64>::new(); quotas.len()]; loads.len()];
    for _round in 0..2 {
        for (s, (_, quota)) in quotas.iter().enumerate() {
            for (i, (label, program, events)) in loads.iter().enumerate() {
                let name = program.file_name().unwrap().to_str().unwrap();
                let warmup = if events.len() < N { WARMUP / 5 } else { WARMUP };
                let r = cost::run(
                    program,
                    name,
                    env,
                    extra_env(label, program),
                    events.clone(),
                    warmup,
                    cost::Under::Quota(quota),
                );
                billed[i][s].extend(r.durations.iter().map(|d| cost::billed_ms(*d)));
                rates[i][s].push(r.rate);
            }
        }
    }
    println!(
        "\npower tuning (CPU share emulated with a CFS quota per memory size; one execution environment kept busy; \
         x86_64 here, arm64 deployed; arm64 prices, us-east-1, read {}: ${}/GB-s, ${:.2}/M requests):",
        cost::PRICES_READ,
        cost::ARM64_PER_GB_SECOND,
        cost::PER_MILLION_REQUESTS
    );
    println!(
        "  {:<34} {:>7} {:>11} {:>11} {:>11} {:>10} {:>12}",
        "function", "memory", "billed p50", "billed p99", "billed mean", "max rate", "$ per 1M"
    );
    for (i, (label, _, _)) in loads.iter().enumerate() {
        let mut best: Option<(f64, u32)> = None;
        let mut rows = Vec::new();
        for (s, (mb, _)) in quotas.iter().enumerate() {
            let b = &mut billed[i][s];
            b.sort_unstable();
            let p = |q: f64| b[((b.len() - 1) as f64 * q).round() as usize];
            let mean = b.iter().sum::<u64>() as f64 / b.len() as f64;
            let cost = cost::cost_per_million(mean, *mb);
            let rate = rates[i][s].iter().cloned().fold(0.0, f64::max);
            if best.is_none_or(|(c, _)| cost < c) {
                best = Some((cost, *mb));
            }
            rows.push((*mb, p(0.5), p(0.99), mean, rate, cost));
        }
        for (mb, p50, p99, mean, rate, cost) in rows {
            let mark = if best.is_some_and(|(_, m)| m == mb) {
                " cheapest"
            } else {
                ""
            };
            println!(
                "  {label:<34} {mb:>4} MB {p50:>8} ms {p99:>8} ms {mean:>8.2} ms {rate:>7.0}/s {:>11.4}${mark}",
                cost
            );
        }
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
