//! Rate limiting (`RATE_LIMIT_*`): the policies (`RATE_LIMIT_POLICIES`,
//! `RATE_LIMIT_DEFAULT` — what each named policy allows, parsed and
//! validated with the rest of the configuration), the decision's time
//! budget and the remembered denials. The limiter that enforces them is
//! `crate::patterns::ratelimit`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::env::Env;
use crate::infra::keys::Endpoint;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
/// The rate-limiting algorithms.
pub enum Algorithm {
    /// Counter per fixed window.
    FixedWindow,
    /// Exact log of request times.
    SlidingLog,
    /// Weighted current and previous windows.
    SlidingWindow,
    /// Generic cell rate algorithm.
    Gcra,
}

impl Algorithm {
    /// Its name in `RATE_LIMIT_POLICIES` and in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FixedWindow => "fixed_window",
            Self::SlidingLog => "sliding_log",
            Self::SlidingWindow => "sliding_window",
            Self::Gcra => "gcra",
        }
    }

    /// Every algorithm.
    pub const ALL: [Algorithm; 4] = [
        Self::FixedWindow,
        Self::SlidingLog,
        Self::SlidingWindow,
        Self::Gcra,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
/// What the limiter answers when Redis cannot decide.
pub enum FailMode {
    /// Admit.
    Open,
    /// Deny.
    Closed,
}

/// A policy's parameters, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Requests (cost units) per window.
    pub limit: u64,
    /// The window.
    pub window_secs: u64,
    /// GCRA only: units that may arrive at once (default: `limit`).
    #[serde(default)]
    pub burst: Option<u64>,
    /// What to answer when Redis cannot decide.
    pub fail: FailMode,
}

/// A named policy (the contract's `endpoint`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The endpoint it applies to.
    pub name: Endpoint,
    /// Its settings.
    pub spec: PolicySpec,
}

impl Policy {
    /// The most cost admitted at once: `burst`, or the limit.
    pub fn burst(&self) -> u64 {
        self.spec.burst.unwrap_or(self.spec.limit)
    }

    pub(crate) fn window_ms(&self) -> u64 {
        self.spec.window_secs.saturating_mul(1000)
    }

    /// The most a single request may cost and still be admissible.
    pub(crate) fn max_cost(&self) -> u64 {
        match self.spec.algorithm {
            Algorithm::Gcra => self.burst(),
            _ => self.spec.limit,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedSpec {
    name: String,
    #[serde(flatten)]
    spec: PolicySpec,
}

/// Policies by name, and the default for names without one.
#[derive(Debug, Clone)]
pub struct Policies {
    named: HashMap<String, PolicySpec>,
    default: PolicySpec,
}

impl Policies {
    /// `policies`: JSON array of `{"name", "algorithm", "limit",
    /// "window_secs", "burst"?, "fail"}`; `default`: the same without `name`.
    pub fn parse(policies: Option<&str>, default: Option<&str>) -> Result<Self, ConfigError> {
        let default = match default {
            None => PolicySpec {
                algorithm: Algorithm::Gcra,
                limit: 100,
                window_secs: 60,
                burst: None,
                fail: FailMode::Open,
            },
            Some(raw) => serde_json::from_str(raw).map_err(|_| ConfigError {
                variable: "RATE_LIMIT_DEFAULT",
                problem: "must be a JSON object {\"algorithm\": \"fixed_window|sliding_log|sliding_window|gcra\", \"limit\": N, \"window_secs\": N, \"burst\": N (gcra, optional), \"fail\": \"open|closed\"}".into(),
            })?,
        };
        validate(&default, "RATE_LIMIT_DEFAULT")?;
        let mut named = HashMap::new();
        // Built in, overridable: sign-outs per principal (each "all" reaches
        // the identity provider; a stolen token must not loop a victim
        // through forced re-logins). Fail open: Redis being down must not
        // stop anyone from signing out.
        named.insert(
            "sessions.logout".to_owned(),
            PolicySpec {
                algorithm: Algorithm::Gcra,
                limit: 10,
                window_secs: 60,
                burst: Some(5),
                fail: FailMode::Open,
            },
        );
        if let Some(raw) = policies {
            let list: Vec<NamedSpec> = serde_json::from_str(raw).map_err(|_| ConfigError {
                variable: "RATE_LIMIT_POLICIES",
                problem: "must be a JSON array of {\"name\", \"algorithm\", \"limit\", \"window_secs\", \"burst\"?, \"fail\"}".into(),
            })?;
            for p in list {
                if Endpoint::parse(&p.name).is_err() {
                    return Err(ConfigError {
                        variable: "RATE_LIMIT_POLICIES",
                        problem: "policy names must be 1–64 of a-z 0-9 _ . -".into(),
                    });
                }
                validate(&p.spec, "RATE_LIMIT_POLICIES")?;
                named.insert(p.name, p.spec);
            }
        }
        Ok(Self { named, default })
    }

    /// The policy for `name`: its own, or the default under that name (each
    /// name gets its own counters).
    pub fn get(&self, name: &Endpoint) -> Policy {
        Policy {
            name: name.clone(),
            spec: self
                .named
                .get(name.as_str())
                .unwrap_or(&self.default)
                .clone(),
        }
    }
}

fn validate(spec: &PolicySpec, variable: &'static str) -> Result<(), ConfigError> {
    let ok = (1..=1_000_000).contains(&spec.limit)
        && (1..=86_400).contains(&spec.window_secs)
        && spec.burst.is_none_or(|b| (1..=1_000_000).contains(&b))
        && (spec.burst.is_none() || spec.algorithm == Algorithm::Gcra);
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            variable,
            problem:
                "limit and burst must be 1–1000000, window_secs 1–86400, and burst is for gcra only"
                    .into(),
        })
    }
}

/// Rate limiting.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// `RATE_LIMIT_POLICIES` over the defaults.
    pub policies: Policies,
    /// The decision comes within this, whatever Redis does.
    pub timeout: Duration,
    /// Remembered denials per execution environment.
    pub local_capacity: usize,
}

/// Rate limiting (`RATE_LIMIT_*`).
pub(super) fn read(env: &Env<'_>) -> Result<RateLimitConfig, ConfigError> {
    Ok(RateLimitConfig {
        policies: Policies::parse(
            env.get("RATE_LIMIT_POLICIES").as_deref(),
            env.get("RATE_LIMIT_DEFAULT").as_deref(),
        )?,
        timeout: env.millis("RATE_LIMIT_TIMEOUT_MS", 50, 1, 10_000)?,
        local_capacity: env.number("RATE_LIMIT_LOCAL_CACHE_ENTRIES", 10_000, 0, 1_000_000)?,
    })
}
