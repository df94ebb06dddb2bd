//! Rate limiting: four algorithms, one Redis round trip per check.
//!
//! Every check is one `EVALSHA` (loaded on `NOSCRIPT`) of a script that
//! reads the Redis server's clock (`TIME`) — so Lambda clock skew cannot
//! matter — decides, records, and sets the key's expiry in the same atomic
//! step (there is no `INCR`-then-`EXPIRE` gap that could leave a counter
//! without a TTL). All keys of one check carry the calling user's id as hash
//! tag, built from the validated id only. Requests have a `cost` (1–1000).
//! A denied request consumes nothing.
//!
//! | algorithm | guarantee | memory per key |
//! |---|---|---|
//! | `fixed_window` | at most `limit` units per clock-aligned window, exactly; up to 2×`limit` across a window boundary | one small hash |
//! | `sliding_log` | at most `limit` units in **any** window of length `window`, exactly | one sorted-set entry per admitted unit in the window (≈ `limit` entries) |
//! | `sliding_window` | Cloudflare's weighted two-counter estimate: exact within a window; across a boundary at most 2×`limit` − 1 in any window in the worst case (all of the previous window's traffic at its very end), close to `limit` for evenly spread traffic | one small hash |
//! | `gcra` | `limit` units per `window` sustained, at most `burst` at once, exactly; a denial says exactly when the next unit is due | one string |
//!
//! # Redis down or slow
//! Each policy says `fail: open` (admit) or `fail: closed` (deny). The
//! decision comes within `RATE_LIMIT_TIMEOUT_MS` (default 50 ms) whatever
//! Redis does, says `reason: "cache-unavailable"`, and is logged.
//!
//! # Zero-round-trip denials
//! An execution environment remembers "denied until T" for a key it has just
//! seen denied, and answers repeat checks (of the same or a higher cost)
//! before T without calling Redis — Upstash's ephemeral cache. **It cannot
//! admit more than the limit**: the memory only ever denies; every admission
//! still goes through the atomic script. T is the script's own retry time,
//! so it does not deny longer than Redis would (with one exception: with a
//! `sliding_window` policy, traffic from other environments cannot make T
//! earlier, only later, so the memory is conservative).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use redis::Script;
use serde::Serialize;

use crate::infra::connection::{Redis, RedisUnavailable};
use crate::infra::keys::{Endpoint, Keyspace, RateSubject};

static FIXED_WINDOW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("ratelimit/fixed_window.lua")));
static SLIDING_LOG: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("ratelimit/sliding_log.lua")));
static SLIDING_WINDOW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("ratelimit/sliding_window.lua")));
static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("ratelimit/gcra.lua")));
static REFUND: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("ratelimit/refund.lua")));

pub use crate::infra::config::rate_limit::{Algorithm, FailMode, Policies, Policy, PolicySpec};

/// The answer to a check; rendered as the contract's body and headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimitDecision {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// The policy's name (the endpoint).
    pub policy: String,
    /// Its algorithm.
    pub algorithm: &'static str,
    /// Requests (cost units) per window.
    pub limit: u64,
    /// What is left in the window.
    pub remaining: u64,
    /// When the window (or the bucket) is full again.
    pub reset_after_ms: u64,
    /// When to retry (0 when admitted).
    pub retry_after_ms: u64,
    /// `cache-unavailable` when Redis could not decide (the policy's fail
    /// mode did); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// How the decision was made: `redis`, `local` (remembered denial) or
    /// `fail-open` / `fail-closed`.
    #[serde(skip)]
    pub source: DecisionSource,
    #[serde(skip)]
    /// The window.
    pub window_secs: u64,
    /// What [`RateLimiter::refund`] needs to give an admission back.
    #[serde(skip)]
    pub(crate) ticket: Option<Ticket>,
}

/// An admission's record, to give it back ([`RateLimiter::refund`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ticket {
    key: String,
    algorithm: Algorithm,
    window_ms: u64,
    cost: u64,
    request_id: String,
    limit: u64,
    /// Where the check charged: its window's start (server milliseconds;
    /// `fixed_window`, `sliding_window`) or the TAT it set (server
    /// microseconds; `gcra`). A refund undoes the unit there, never a unit
    /// charged later.
    charged: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
/// Who decided.
pub enum DecisionSource {
    #[default]
    /// Redis.
    Redis,
    /// The execution environment's memory of a denial still in force.
    LocalDenial,
    /// Nobody: Redis failed, the policy's fail mode answered.
    Failed(RedisUnavailable),
}

struct Remembered {
    until: Instant,
    cost: u64,
    remaining: u64,
    reset_at: Instant,
}

/// Whose counters a check counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counters {
    /// The routes' own (`rate_limit:{subject}:<policy>`): what a caller of
    /// this API spends.
    Routes,
    /// Those services consult through `POST /rate-limit/check`
    /// (`rate_limit:{subject}:consulted:<policy>`): a service may spend a
    /// user's budget for its own endpoints, never the routes' budgets.
    Consulted,
}

/// The limiter of one execution environment.
#[derive(Debug)]
pub struct RateLimiter {
    redis: Redis,
    keys: Keyspace,
    policies: Policies,
    timeout: Duration,
    local: Mutex<HashMap<String, Remembered>>,
    local_capacity: usize,
}

impl std::fmt::Debug for Remembered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remembered")
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter with `policies`; each check waits at most `timeout` for
    /// Redis, and up to `local_capacity` denials are remembered locally.
    pub fn new(
        redis: Redis,
        keys: Keyspace,
        policies: Policies,
        timeout: Duration,
        local_capacity: usize,
    ) -> Self {
        Self {
            redis,
            keys,
            policies,
            timeout,
            local: Mutex::new(HashMap::new()),
            local_capacity,
        }
    }

    /// The policy for `name` (the default when none is configured).
    pub fn policy(&self, name: &Endpoint) -> Policy {
        self.policies.get(name)
    }

    fn key_for(&self, policy: &Policy, user: &RateSubject, counters: Counters) -> String {
        let consulted = counters == Counters::Consulted;
        let base = match policy.spec.algorithm {
            Algorithm::SlidingLog => self.keys.sliding_window(user, &policy.name, consulted),
            _ => self.keys.rate_limit(user, &policy.name, consulted),
        };
        let base = base.as_str().to_owned();
        match policy.spec.algorithm {
            Algorithm::FixedWindow | Algorithm::SlidingLog => base,
            Algorithm::SlidingWindow => format!("{base}:swc"),
            Algorithm::Gcra => format!("{base}:gcra"),
        }
    }

    /// Checks (and, if admitted, records) `cost` units for `user` under the
    /// policy named `endpoint`, in the routes' own counters: one round trip,
    /// none for a remembered denial.
    pub async fn check(
        &self,
        subject: impl Into<RateSubject>,
        endpoint: &Endpoint,
        cost: u64,
    ) -> RateLimitDecision {
        self.check_in(Counters::Routes, subject, endpoint, cost)
            .await
    }

    /// [`RateLimiter::check`] in the given counters.
    pub async fn check_in(
        &self,
        counters: Counters,
        subject: impl Into<RateSubject>,
        endpoint: &Endpoint,
        cost: u64,
    ) -> RateLimitDecision {
        let subject = subject.into();
        let policy = self.policy(endpoint);
        let key = self.key_for(&policy, &subject, counters);
        let decision =
            |allowed, remaining, reset_after_ms, retry_after_ms, source| RateLimitDecision {
                allowed,
                policy: policy.name.to_string(),
                algorithm: policy.spec.algorithm.as_str(),
                limit: policy.spec.limit,
                remaining,
                reset_after_ms,
                retry_after_ms,
                reason: None,
                source,
                window_secs: policy.spec.window_secs,
                ticket: None,
            };

        if let Some(d) = self.remembered(&key, cost) {
            crate::infra::telemetry::rate_limit_denied();
            return decision(false, d.0, d.1, d.2, DecisionSource::LocalDenial);
        }

        let window_ms = policy.window_ms();
        let (k, p) = (&key, &policy);
        let request_id = format!("{:032x}", fastrand::u128(..));
        let rid = &request_id;
        let outcome = tokio::time::timeout(
            self.timeout,
            self.redis.run(|mut c| async move {
                let mut inv = match p.spec.algorithm {
                    Algorithm::FixedWindow => FIXED_WINDOW.key(k),
                    Algorithm::SlidingLog => SLIDING_LOG.key(k),
                    Algorithm::SlidingWindow => SLIDING_WINDOW.key(k),
                    Algorithm::Gcra => GCRA.key(k),
                };
                inv.arg(p.spec.limit).arg(window_ms).arg(cost);
                match p.spec.algorithm {
                    Algorithm::SlidingLog => {
                        inv.arg(rid);
                    }
                    Algorithm::Gcra => {
                        inv.arg(p.burst());
                    }
                    _ => {}
                }
                let r: (i64, i64, i64, i64, i64) = inv.invoke_async(&mut c).await?;
                Ok(r)
            }),
        )
        .await
        .unwrap_or(Err(RedisUnavailable::Timeout));

        match outcome {
            Ok((allowed, remaining, reset, retry, charged)) => {
                let (remaining, reset, retry) = (nonneg(remaining), nonneg(reset), nonneg(retry));
                if allowed == 1 {
                    let mut d = decision(true, remaining, reset, 0, DecisionSource::Redis);
                    d.ticket = Some(Ticket {
                        key: key.clone(),
                        algorithm: policy.spec.algorithm,
                        window_ms,
                        cost,
                        request_id: request_id.clone(),
                        limit: policy.spec.limit,
                        charged: nonneg(charged),
                    });
                    d
                } else {
                    crate::infra::telemetry::rate_limit_denied();
                    self.remember(key, cost, remaining, reset, retry);
                    decision(false, remaining, reset, retry.max(1), DecisionSource::Redis)
                }
            }
            Err(why) => {
                let allowed = policy.spec.fail == FailMode::Open;
                tracing::warn!(policy = %policy.name, reason = why.as_str(), allowed,
                    "rate limit decided without Redis (fail {})", if allowed { "open" } else { "closed" });
                let mut d = decision(
                    allowed,
                    if allowed { policy.spec.limit } else { 0 },
                    window_ms,
                    if allowed { 0 } else { 1000 },
                    DecisionSource::Failed(why),
                );
                d.reason = Some("cache-unavailable");
                d
            }
        }
    }

    /// Gives back what the admitted `decision` consumed: its request was
    /// refused as unauthenticated, and a refusal costs its subject nothing.
    /// One round trip, on the refusal path only; nothing for a decision
    /// that consumed nothing (denied, or decided without Redis). Between
    /// the check and the refund the units are held: at most the refused
    /// requests in flight at that moment. The unit is given back in the
    /// window it was charged in, never a later one (`refund.lua`): a
    /// request charged just before a boundary and refused just after it
    /// cannot make room in the new window.
    pub async fn refund(&self, decision: &RateLimitDecision) {
        let Some(t) = &decision.ticket else {
            return;
        };
        let refunded = tokio::time::timeout(
            self.timeout,
            self.redis.run(|mut c| async move {
                let n: i64 = REFUND
                    .key(&t.key)
                    .arg(t.algorithm.as_str())
                    .arg(t.window_ms)
                    .arg(t.cost)
                    .arg(&t.request_id)
                    .arg(t.limit)
                    .arg(t.charged)
                    .invoke_async(&mut c)
                    .await?;
                Ok(n)
            }),
        )
        .await
        .unwrap_or(Err(RedisUnavailable::Timeout));
        match refunded {
            // A denial remembered since the check counted the unit now
            // given back: Redis decides the next check.
            Ok(1) => {
                self.local
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&t.key);
            }
            Ok(_) => {}
            Err(why) => {
                tracing::warn!(policy = %decision.policy, reason = why.as_str(), "could not refund a refused request's rate-limit units");
            }
        }
    }

    fn remembered(&self, key: &str, cost: u64) -> Option<(u64, u64, u64)> {
        let now = Instant::now();
        let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let r = local.get(key)?;
        (r.until > now && cost >= r.cost).then(|| {
            (
                r.remaining,
                millis(r.reset_at.saturating_duration_since(now)),
                millis(r.until - now).max(1),
            )
        })
    }

    fn remember(&self, key: String, cost: u64, remaining: u64, reset_ms: u64, retry_ms: u64) {
        let now = Instant::now();
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if local.len() >= self.local_capacity {
            local.retain(|_, r| r.until > now);
            if local.len() >= self.local_capacity {
                return;
            }
        }
        local.insert(
            key,
            Remembered {
                until: now + Duration::from_millis(retry_ms),
                cost,
                remaining,
                reset_at: now + Duration::from_millis(reset_ms),
            },
        );
    }
}

fn nonneg(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RateLimitDecision {
    fn secs_up(ms: u64) -> u64 {
        ms.div_ceil(1000)
    }

    /// `RateLimit-Policy`, e.g. `"transfers.create";q=100;w=60`.
    pub(crate) fn policy_header(&self) -> String {
        format!(
            "\"{}\";q={};w={}",
            self.policy, self.limit, self.window_secs
        )
    }

    /// `RateLimit`, e.g. `"transfers.create";r=57;t=23`.
    pub(crate) fn limit_header(&self) -> String {
        format!(
            "\"{}\";r={};t={}",
            self.policy,
            self.remaining,
            Self::secs_up(self.reset_after_ms)
        )
    }

    /// `Retry-After` in whole seconds, rounded up (at least 1).
    pub(crate) fn retry_after_secs(&self) -> u64 {
        Self::secs_up(self.retry_after_ms).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_validate() {
        let p = Policies::parse(
            Some(r#"[{"name": "transfers.create", "algorithm": "sliding_log", "limit": 10, "window_secs": 60, "fail": "closed"}]"#),
            None,
        )
        .unwrap();
        let named = p.get(&Endpoint::parse("transfers.create").unwrap());
        assert_eq!(named.spec.algorithm, Algorithm::SlidingLog);
        assert_eq!(named.spec.fail, FailMode::Closed);
        let other = p.get(&Endpoint::parse("other").unwrap());
        assert_eq!(other.spec.algorithm, Algorithm::Gcra);
        assert_eq!(other.name.as_str(), "other");
        for bad in [
            r#"[{"name": "A", "algorithm": "gcra", "limit": 1, "window_secs": 1, "fail": "open"}]"#,
            r#"[{"name": "a", "algorithm": "leaky", "limit": 1, "window_secs": 1, "fail": "open"}]"#,
            r#"[{"name": "a", "algorithm": "gcra", "limit": 0, "window_secs": 1, "fail": "open"}]"#,
            r#"[{"name": "a", "algorithm": "fixed_window", "limit": 1, "window_secs": 1, "burst": 5, "fail": "open"}]"#,
            r#"[{"name": "a", "algorithm": "gcra", "limit": 1, "window_secs": 1, "fail": "open", "x": 1}]"#,
            r#"{"name": "a"}"#,
        ] {
            assert_eq!(
                Policies::parse(Some(bad), None).unwrap_err().variable,
                "RATE_LIMIT_POLICIES",
                "{bad}"
            );
        }
        assert_eq!(
            Policies::parse(None, Some(r#"{"algorithm": "gcra"}"#))
                .unwrap_err()
                .variable,
            "RATE_LIMIT_DEFAULT"
        );
    }

    #[test]
    fn headers_follow_the_draft() {
        let d = RateLimitDecision {
            allowed: false,
            policy: "transfers.create".into(),
            algorithm: "gcra",
            limit: 100,
            remaining: 0,
            reset_after_ms: 22_001,
            retry_after_ms: 1_500,
            ticket: None,
            reason: None,
            source: DecisionSource::Redis,
            window_secs: 60,
        };
        assert_eq!(d.policy_header(), r#""transfers.create";q=100;w=60"#);
        assert_eq!(d.limit_header(), r#""transfers.create";r=0;t=23"#);
        assert_eq!(d.retry_after_secs(), 2);
    }
}
