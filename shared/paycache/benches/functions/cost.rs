//! What Lambda bills: CPU per invocation, and billed durations at each
//! memory size's CPU share.
//!
//! **CPU per invocation** is the process's CPU time (every thread's, from
//! `/proc/<pid>/task/*/schedstat`, in nanoseconds) between the end of the
//! warm-up and the last answer, divided by the invocations in between:
//! init and the first connections apart.
//!
//! **Lambda's CPU share, emulated.** Lambda gives a function CPU in
//! proportion to its memory: 1,769 MB is one vCPU (AWS Lambda Developer
//! Guide, "Configure Lambda function memory": "At 1,769 MB, a function has
//! the equivalent of one vCPU"). Here the process runs in a cgroup whose
//! CFS quota is that share of one CPU per 100 ms period (`cpu.cfs_quota_us`
//! with cgroup v1, `cpu.max` with v2): 256 MB may run 14.47 ms in every
//! 100 ms. This **emulates** Firecracker's CPU share; it does not reproduce
//! it — how Lambda enforces the share inside its microVMs is not published,
//! and deployed functions run on arm64 (Graviton), measured here on this
//! machine's x86_64. What it shows is the shape: when an execution
//! environment is kept busy, the quota runs out part-way through a period
//! and the invocation waits for the next one.
//!
//! **Billed duration** is each invocation's time from the event handed out
//! to the response received, rounded up to the millisecond, as Lambda
//! bills it ("Duration is calculated from the time your code begins
//! executing until it returns or otherwise terminates, rounded up to the
//! nearest 1 ms", AWS Lambda pricing).

use super::fixtures::{Env, kill};
use super::runtime_api::runtime_api;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The memory sizes of the power-tuning table, in MB.
pub(super) const MEMORY_SIZES: [u32; 5] = [128, 256, 512, 1024, 1769];
/// Lambda's price per GB-second of duration on arm64, and per million
/// requests: US East (N. Virginia), first pricing tier, as read on
/// [`PRICES_READ`] (aws.amazon.com/lambda/pricing). A GB is 1,024 MB.
pub(super) const ARM64_PER_GB_SECOND: f64 = 0.000_013_333_4;
pub(super) const PER_MILLION_REQUESTS: f64 = 0.20;
pub(super) const PRICES_READ: &str = "2026-12-07";

/// The CPU share of one vCPU that `mb` of memory buys.
pub(super) fn share(mb: u32) -> f64 {
    f64::from(mb) / 1769.0
}

/// Every thread's CPU time of process `pid` so far.
pub(super) fn cpu_time(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// System calls that read and that write (`/proc/<pid>/io`: `syscr`,
/// `syscw`) and times the process went to sleep waiting
/// (`voluntary_ctxt_switches`, every thread) so far.
pub(super) fn kernel_counts(pid: u32) -> [u64; 3] {
    let field = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let waits: u64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
                .map(|s| field(&s, "voluntary_ctxt_switches:"))
                .sum()
        })
        .unwrap_or(0);
    [field(&io, "syscr:"), field(&io, "syscw:"), waits]
}

/// A cgroup with a CPU quota: a memory size's share of one CPU.
pub(super) struct Quota {
    dir: PathBuf,
}

impl Quota {
    const PERIOD_US: u64 = 100_000;

    /// A new cgroup limited to `share` of one CPU, or why there is none
    /// (cgroups not writable: not root, or no `cpu` controller).
    pub(super) fn new(label: &str, share: f64) -> Result<Self, String> {
        let quota = ((share * Self::PERIOD_US as f64).round() as u64).max(1000);
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let v2_root = Path::new("/sys/fs/cgroup");
        let name = format!("paycache-bench-{}-{label}", std::process::id());
        let write = |p: PathBuf, v: String| {
            std::fs::write(&p, &v).map_err(|e| format!("{}: {e}", p.display()))
        };
        if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(name);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            write(dir.join("cpu.cfs_period_us"), Self::PERIOD_US.to_string())?;
            write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
            return Ok(Self { dir });
        }
        let controllers =
            std::fs::read_to_string(v2_root.join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "cpu") {
            // The root must hand the cpu controller to its children.
            let _ = std::fs::write(v2_root.join("cgroup.subtree_control"), "+cpu");
            let dir = v2_root.join(name);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            write(dir.join("cpu.max"), format!("{quota} {}", Self::PERIOD_US))?;
            return Ok(Self { dir });
        }
        Err("no cgroup cpu controller (v1 /sys/fs/cgroup/cpu or v2 cpu.max)".into())
    }

    fn add(&self, pid: u32) -> Result<(), String> {
        let procs = self.dir.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(|e| format!("{}: {e}", procs.display()))
    }
}

impl Drop for Quota {
    fn drop(&mut self) {
        // Empty once its processes were killed (and reaped).
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One process serving a run of events.
pub(super) struct Run {
    /// Event handed out → response received, after the warm-up.
    pub(super) durations: Vec<Duration>,
    /// CPU time per invocation after the warm-up.
    pub(super) cpu: Duration,
    /// Invocations a second, back to back, after the warm-up.
    pub(super) rate: f64,
    /// Per invocation after the warm-up: read and write system calls,
    /// sleeps (see [`kernel_counts`]).
    pub(super) kernel: [f64; 3],
}

/// How a measured process runs.
#[derive(Clone, Copy)]
pub(super) enum Under<'a> {
    /// As it is.
    Plain,
    /// Inside a cgroup CPU quota.
    Quota(&'a Quota),
    /// Under `perf record` writing this file (a call graph from DWARF, for
    /// a flame graph); the CPU time measured is then perf's.
    Perf(&'a Path),
}

/// Runs `events` through one process of `program`, the first `warmup`
/// apart.
pub(super) fn run(
    program: &Path,
    name: &str,
    env: &Env,
    extra: &[(&str, &str)],
    events: Vec<Vec<u8>>,
    warmup: usize,
    under: Under,
) -> Run {
    let count = events.len();
    assert!(warmup < count, "{name}: the warm-up is every event");
    let api = runtime_api(events);
    let (quota, perf) = match under {
        Under::Plain => (None, None),
        Under::Quota(q) => (Some(q), None),
        Under::Perf(p) => (None, Some(p)),
    };
    let mut command = match perf {
        Some(out) => {
            // PAYCACHE_BENCH_PERF_EVENT: another event than CPU time, e.g.
            // `syscalls:sys_enter_write` (where the system calls come from).
            let event = std::env::var("PAYCACHE_BENCH_PERF_EVENT")
                .unwrap_or_else(|_| "cpu-clock".to_owned());
            let mut c = Command::new("perf");
            c.args([
                "record",
                "-q",
                "-e",
                &event,
                "-F",
                "15000",
                "--call-graph",
                "dwarf,32768",
                "-o",
            ])
            .arg(out)
            .arg("--")
            .arg(program);
            c
        }
        None => Command::new(program),
    };
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
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
    let pid = child.id();
    if let Some(q) = quota
        && let Err(e) = q.add(pid)
    {
        kill(child);
        panic!("{name}: cannot put the process under its CPU quota: {e}");
    }
    let until = Instant::now() + Duration::from_secs(300);
    let mut marked: Option<(usize, Duration, [u64; 3])> = None;
    loop {
        let done = api.answered.load(Ordering::SeqCst);
        if marked.is_none() && done >= warmup {
            // The invocations answered so far, and the CPU they took (an
            // invocation at most apart: the mark is polled).
            let cpu = cpu_time(pid);
            let counts = kernel_counts(pid);
            marked = Some((api.answered.load(Ordering::SeqCst), cpu, counts));
        }
        if done >= count || Instant::now() > until {
            break;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let cpu_end = cpu_time(pid);
    let counts_end = kernel_counts(pid);
    let answered = api.answered.load(Ordering::SeqCst);
    if perf.is_some() {
        // perf writes its file when the program ends: stop it gently.
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
        std::thread::sleep(Duration::from_secs(3));
    }
    kill(child);
    assert_eq!(
        answered, count,
        "{name}: {answered} of {count} answered in 300 s"
    );
    let (from, cpu_from, counts_from) = marked.unwrap_or((0, Duration::ZERO, [0; 3]));
    let n = (count - from).max(1);
    let timings = api.timings.lock().unwrap();
    let warm: Vec<(Instant, Instant)> = timings
        .iter()
        .skip(warmup)
        .filter_map(|(out, back)| Some(((*out)?, (*back)?)))
        .collect();
    let durations = warm.iter().map(|(o, b)| b.duration_since(*o)).collect();
    let span = match (warm.first(), warm.last()) {
        (Some((first, _)), Some((_, last))) => last.duration_since(*first),
        _ => Duration::ZERO,
    };
    Run {
        durations,
        cpu: (cpu_end.saturating_sub(cpu_from)) / u32::try_from(n).unwrap_or(1),
        rate: warm.len() as f64 / span.as_secs_f64().max(1e-9),
        kernel: std::array::from_fn(|i| {
            counts_end[i].saturating_sub(counts_from[i]) as f64 / n as f64
        }),
    }
}

/// Billed milliseconds of `d`: rounded up to the millisecond.
pub(super) fn billed_ms(d: Duration) -> u64 {
    (d.as_nanos().div_ceil(1_000_000)) as u64
}

/// Cost of a million invocations of mean billed duration `mean_billed_ms`
/// at `mb`, on arm64.
pub(super) fn cost_per_million(mean_billed_ms: f64, mb: u32) -> f64 {
    1e6 * (mean_billed_ms / 1000.0) * (f64::from(mb) / 1024.0) * ARM64_PER_GB_SECOND
        + PER_MILLION_REQUESTS
}
