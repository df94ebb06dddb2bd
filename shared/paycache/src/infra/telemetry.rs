//! Per-invocation metrics in CloudWatch Embedded Metric Format (EMF).
//!
//! Every function writes one EMF line to stdout after each invocation; the
//! Lambda log pipeline turns it into CloudWatch metrics with no API call on
//! the request path. Namespace `paycache`, dimension `function`.
//!
//! Built on the `metrics` facade with `metrics_cloudwatch_embedded` as its
//! recorder — a maintained crate that serialises EMF documents with serde —
//! rather than hand-written EMF. Its `lambda` feature (a tower layer) is not
//! used: each function flushes explicitly after its handler returns, which
//! keeps the entry points plain and works for HTTP and EventBridge
//! functions alike. Without [`init`] (tests, tools) every recording is a
//! no-op.
//!
//! | metric | unit | counted when |
//! |---|---|---|
//! | `CacheHit` | Count | a read was served from Redis |
//! | `CacheMiss` | Count | a read loaded from PostgreSQL (and filled the cache, or was not allowed to) |
//! | `CacheStaleServe` | Count | an entry near expiry was served while another request refreshed it (XFetch) |
//! | `CacheBypass` | Count | Redis was unavailable and the read went to PostgreSQL |
//! | `RedisError` | Count | a Redis call failed or timed out |
//! | `RateLimitDenied` | Count | a rate-limit check denied |
//! | `Latency` | Milliseconds | the invocation, end to end |
//! | `WsFramesSent` | Count | `ws-sender`: frames posted in the run |
//! | `WsFramesPerSecond` | Count/Second | `ws-sender`: the run's posting rate while it had work |
//! | `WsBacklog` | Count | `ws-sender`: entries waiting (unread or unacknowledged) in the partitions it held, at the end of the run |

use std::time::Instant;

use metrics_cloudwatch_embedded::Collector;

/// The CloudWatch namespace of the functions' metrics.
pub const NAMESPACE: &str = "paycache";

/// Installs the EMF recorder for `function`. Returns `None` (and logs) if a
/// recorder is already installed in this process.
pub fn init(function: &'static str) -> Option<&'static Collector> {
    let result = metrics_cloudwatch_embedded::Builder::new()
        .cloudwatch_namespace(NAMESPACE)
        .with_dimension("function", function)
        .init();
    if let Ok(collector) = result {
        describe();
        Some(collector)
    } else {
        tracing::warn!("metrics recorder already installed; EMF output disabled");
        None
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    for name in [
        "CacheHit",
        "CacheMiss",
        "CacheStaleServe",
        "CacheBypass",
        "RedisError",
        "RateLimitDenied",
        "WsFramesSent",
    ] {
        describe_counter!(name, Unit::Count, "");
    }
    describe_histogram!("Latency", Unit::Milliseconds, "");
    describe_histogram!("WsFramesPerSecond", Unit::CountPerSecond, "");
    describe_histogram!("WsBacklog", Unit::Count, "");
}

/// Records the invocation's latency and writes the EMF line: to stdout
/// (Lambda's log pipeline turns it into metrics), or appended to the file
/// `PAYCACHE_METRICS_FILE` names — `make run` sets it, so that the lines
/// do not interleave with what a person reads in the terminal.
pub fn finish(collector: Option<&'static Collector>, started: Instant) {
    metrics::histogram!("Latency").record(started.elapsed().as_secs_f64() * 1000.0);
    let Some(c) = collector else {
        return;
    };
    let file = std::env::var_os("PAYCACHE_METRICS_FILE").and_then(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    });
    match file {
        // One write per line: concurrent processes append whole lines.
        Some(f) => flush_to(c, std::io::LineWriter::new(f)),
        None => flush_to(c, std::io::stdout()),
    }
}

/// Writes the collected metrics as EMF to `out` and resets the counters.
pub fn flush_to(collector: &Collector, out: impl std::io::Write) {
    if let Err(e) = collector.flush(out) {
        tracing::warn!(error = %e, "could not write EMF metrics");
    }
}

/// Counts one cache lookup under its outcome's metric (`CacheHit`,
/// `CacheMiss` or `CacheBypass`; the cache engine names the outcome).
pub(crate) fn cache_outcome(metric: &'static str) {
    metrics::counter!(metric).increment(1);
}

pub(crate) fn stale_serve() {
    metrics::counter!("CacheStaleServe").increment(1);
}

pub(crate) fn redis_error() {
    metrics::counter!("RedisError").increment(1);
}

pub(crate) fn rate_limit_denied() {
    metrics::counter!("RateLimitDenied").increment(1);
}

/// An error and its sources, `outer: inner: …`, for logs: the cause of a
/// failed TLS handshake ("invalid peer certificate: UnknownIssuer") sits
/// several sources below "error performing TLS handshake". Drivers' error
/// texts carry no credentials (connection strings are never part of them).
pub(crate) struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut last = self.0.to_string();
        let mut source = self.0.source();
        while let Some(e) = source {
            let text = e.to_string();
            // Some errors repeat their source's text in their own.
            if !last.contains(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
            source = e.source();
        }
        Ok(())
    }
}
