//! A circuit breaker in front of Redis, one per execution environment.
//!
//! **Guarantee:** once Redis has failed `failure_threshold` times in a row,
//! requests stop paying the Redis timeout for `cooldown`; after the cooldown
//! exactly one request (the probe) tries Redis again, and its outcome closes
//! or re-opens the breaker.
//!
//! The state is in process memory on purpose: it describes what this
//! execution environment sees of the network, and sharing it through Redis
//! would need the very service that is failing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::infra::config::BreakerConfig;

#[derive(Debug)]
/// A circuit breaker: open after `CACHE_BREAKER_FAILURES` consecutive
/// failures, for `CACHE_BREAKER_COOLDOWN_MS`; then one trial request.
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probe_in_flight: bool,
}

/// What the breaker says about the next Redis call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Closed: go ahead.
    Allowed,
    /// Half-open: go ahead; this call decides the breaker's next state.
    Probe,
    /// Open: skip Redis.
    Denied,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The critical sections below cannot panic, so a poisoned lock still
        // holds consistent counters.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn permit(&self) -> Permit {
        let mut s = self.state();
        match s.open_until {
            None => Permit::Allowed,
            Some(until) if Instant::now() < until => Permit::Denied,
            Some(_) if s.probe_in_flight => Permit::Denied,
            Some(_) => {
                s.probe_in_flight = true;
                Permit::Probe
            }
        }
    }

    pub(crate) fn record_success(&self) {
        let mut s = self.state();
        *s = State::default();
    }

    pub(crate) fn record_failure(&self) {
        let mut s = self.state();
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        if s.probe_in_flight || s.consecutive_failures >= self.config.failure_threshold {
            s.open_until = Some(Instant::now() + self.config.cooldown);
            s.probe_in_flight = false;
        }
    }

    /// Whether requests are being refused now.
    pub fn is_open(&self) -> bool {
        self.state().open_until.is_some()
    }

    /// Whether a call now would be refused without trying Redis: open and
    /// still cooling down, or its one probe already under way.
    pub fn denies(&self) -> bool {
        let s = self.state();
        s.open_until
            .is_some_and(|until| s.probe_in_flight || Instant::now() < until)
    }

    /// How long it stays open.
    pub fn cooldown(&self) -> Duration {
        self.config.cooldown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(cooldown_ms: u64) -> Breaker {
        Breaker::new(BreakerConfig {
            failure_threshold: 3,
            cooldown: Duration::from_millis(cooldown_ms),
        })
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let b = breaker(60_000);
        b.record_failure();
        b.record_failure();
        assert_eq!(b.permit(), Permit::Allowed);
        b.record_success();
        b.record_failure();
        b.record_failure();
        assert_eq!(b.permit(), Permit::Allowed, "a success resets the count");
        b.record_failure();
        assert_eq!(b.permit(), Permit::Denied);
        assert!(b.is_open());
    }

    #[test]
    fn one_probe_after_cooldown_decides() {
        let b = breaker(1);
        for _ in 0..3 {
            b.record_failure();
        }
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(b.permit(), Permit::Probe);
        assert_eq!(b.permit(), Permit::Denied, "only one probe at a time");
        b.record_failure();
        assert_eq!(b.permit(), Permit::Denied, "a failed probe re-opens");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(b.permit(), Permit::Probe);
        b.record_success();
        assert_eq!(b.permit(), Permit::Allowed);
        assert!(!b.is_open());
    }
}
