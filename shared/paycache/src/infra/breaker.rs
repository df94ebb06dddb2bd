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
use std::time::Instant;

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
    /// Which probe is in flight (see [`ProbeGuard`]).
    probe: u64,
}

/// What the breaker says about the next Redis call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Closed: go ahead.
    Allowed,
    /// Half-open: go ahead; this call decides the breaker's next state
    /// (hold its [`Breaker::guard`] until it has).
    Probe(u64),
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
                s.probe = s.probe.wrapping_add(1);
                Permit::Probe(s.probe)
            }
        }
    }

    /// Held while a probe's call runs: a call dropped before it recorded
    /// an outcome — cancelled by its caller's own timeout, as the rate
    /// limiter's is — counts as a failed probe. Without it the breaker
    /// would wait forever for that probe and refuse every call after.
    pub(crate) fn guard(&self, permit: Permit) -> ProbeGuard<'_> {
        ProbeGuard {
            breaker: self,
            probe: match permit {
                Permit::Probe(id) => Some(id),
                _ => None,
            },
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

    /// The probe `id` ended without an outcome: re-open, as a failed probe
    /// does (unless its outcome was recorded, or another probe has begun).
    fn abandon(&self, id: u64) {
        let mut s = self.state();
        if s.probe_in_flight && s.probe == id {
            s.probe_in_flight = false;
            s.open_until = Some(Instant::now() + self.config.cooldown);
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
}

/// See [`Breaker::guard`].
pub(crate) struct ProbeGuard<'a> {
    breaker: &'a Breaker,
    probe: Option<u64>,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.probe {
            self.breaker.abandon(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        assert!(matches!(b.permit(), Permit::Probe(_)));
        assert_eq!(b.permit(), Permit::Denied, "only one probe at a time");
        b.record_failure();
        assert_eq!(b.permit(), Permit::Denied, "a failed probe re-opens");
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(b.permit(), Permit::Probe(_)));
        b.record_success();
        assert_eq!(b.permit(), Permit::Allowed);
        assert!(!b.is_open());
    }

    #[test]
    fn a_probe_dropped_without_an_outcome_does_not_wedge_the_breaker() {
        let b = breaker(1);
        for _ in 0..3 {
            b.record_failure();
        }
        std::thread::sleep(Duration::from_millis(5));
        let probe = b.permit();
        assert!(matches!(probe, Permit::Probe(_)));
        // The call is cancelled (its caller timed out) before any outcome.
        drop(b.guard(probe));
        assert_eq!(b.permit(), Permit::Denied, "re-opened, as a failed probe");
        std::thread::sleep(Duration::from_millis(5));
        let next = b.permit();
        assert!(
            matches!(next, Permit::Probe(_)),
            "another probe after the cooldown (was: denied forever)"
        );
        // A probe that recorded its outcome is not undone by its guard.
        let guard = b.guard(next);
        b.record_success();
        drop(guard);
        assert_eq!(b.permit(), Permit::Allowed);
    }

    #[test]
    fn a_stale_probes_guard_does_not_end_the_next_probe() {
        let b = breaker(1);
        for _ in 0..3 {
            b.record_failure();
        }
        std::thread::sleep(Duration::from_millis(5));
        let first = b.permit();
        assert!(matches!(first, Permit::Probe(_)));
        let stale = b.guard(first);
        b.record_failure();
        std::thread::sleep(Duration::from_millis(5));
        let second = b.permit();
        assert!(matches!(second, Permit::Probe(_)));
        // The first probe's guard is dropped while the second runs.
        drop(stale);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            b.permit(),
            Permit::Denied,
            "the second probe is still the only one (an abandoned second probe lets a third start)"
        );
        assert!(b.denies());
    }

    #[test]
    fn denies_while_cooling_down_or_probing_only() {
        let b = breaker(30);
        assert!(!b.denies(), "closed");
        for _ in 0..3 {
            b.record_failure();
        }
        assert!(b.denies(), "open, cooling down");
        std::thread::sleep(Duration::from_millis(40));
        assert!(!b.denies(), "cooled down: the next call may probe");
        let probe = b.permit();
        assert!(matches!(probe, Permit::Probe(_)));
        assert!(b.denies(), "its one probe under way");
        b.record_success();
        assert!(!b.denies(), "closed again");
    }
}
