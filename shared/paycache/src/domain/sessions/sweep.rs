//! Sign-outs made while Redis was unreachable, applied to it (the
//! sweep), and each execution environment's recovery from an outage it
//! saw: it trusts Redis's session and blacklist answers again only after a
//! complete sweep (module documentation of `sessions`).

use super::store;

use super::SessionError;
use super::Sessions;
use super::sign_out::Ending;
use super::sign_out::Insist;
use super::sign_out::blacklist_in_redis;
use super::sign_out::end_in_redis;
use super::sign_out::queue_closes;
use crate::domain::identity::Principal;
use crate::infra::connection::RedisUnavailable;
use crate::infra::keys::ClientId;
use crate::infra::keys::SessionId;
use crate::infra::keys::UserId;
use serde::Serialize;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often `ws-sender` sweeps pending sign-outs into Redis (see the
/// module documentation): the bound on how long an execution environment
/// that did not see an outage may still admit a token signed out during
/// it, once Redis is reachable from the sender.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Pending sign-outs read and applied per page of a sweep.
pub(super) const SWEEP_PAGE: i64 = 500;

/// An execution environment's state of recovery from Redis outages.
#[derive(Debug, Default)]
pub struct Recovery {
    /// What [`outage_marks`] was when the last complete sweep began.
    swept: AtomicU64,
    /// Sign-outs this environment marked pending (they count as a failure
    /// seen: a sweep that began before the mark did not apply it).
    pub(super) marked: AtomicU64,
    /// One sweep at a time.
    sweeping: tokio::sync::Mutex<()>,
}

/// Everything this environment saw that may have left Redis behind
/// PostgreSQL: its Redis calls that failed, and its own pending marks.
pub(super) fn outage_marks(sessions: &Sessions) -> u64 {
    sessions
        .redis
        .failures()
        .wrapping_add(sessions.durable.failures())
        .wrapping_add(sessions.recovery.marked.load(Ordering::Acquire))
}

/// Whether Redis's session and blacklist answers may be trusted in this
/// execution environment: yes, unless it saw Redis fail (or marked a
/// sign-out pending) since its last complete sweep — then it sweeps now
/// ([`apply_pending`], one PostgreSQL query when nothing is pending) and
/// answers whether the sweep completed. While the breaker is cooling down
/// nothing is tried (no): PostgreSQL decides. Costs three atomic loads
/// when nothing failed (and no allocation: the sweep's future, large and
/// deep, is boxed and made only when needed).
pub async fn recovered(sessions: &Sessions) -> bool {
    match recovering(sessions) {
        None => true,
        Some(sweep) => sweep.await,
    }
}

/// A boxed future that decides [`recovered`] — `None` when nothing was
/// seen to fail (the common path, without a future to nest: the routes'
/// futures are near the compiler's layout depth).
pub(super) fn recovering(
    sessions: &Sessions,
) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>> {
    if outage_marks(sessions) == sessions.recovery.swept.load(Ordering::Acquire) {
        return None;
    }
    Some(Box::pin(recover(sessions)))
}

pub(super) async fn recover(sessions: &Sessions) -> bool {
    let recovery = &sessions.recovery;
    if sessions.redis.breaker().denies() || sessions.durable.breaker().denies() {
        return false;
    }
    let _one = recovery.sweeping.lock().await;
    let seen = outage_marks(sessions);
    if seen == recovery.swept.load(Ordering::Acquire) {
        return true;
    }
    match apply_pending(sessions).await {
        Ok(report) if report.complete => {
            recovery.swept.store(seen, Ordering::Release);
            if report.sessions + report.tokens > 0 {
                tracing::info!(
                    sessions = report.sessions,
                    tokens = report.tokens,
                    "Redis told of sign-outs made while this environment could not reach it"
                );
            }
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(error = %e, "could not sweep pending sign-outs: PostgreSQL decides");
            false
        }
    }
}

/// What the sweep applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Sessions ended while Redis was unavailable, now tombstoned there.
    pub sessions: u64,
    /// Tokens revoked while Redis was unavailable, now blacklisted there.
    pub tokens: u64,
    /// Connections those sessions had opened, taken out of the registry
    /// and queued to be closed.
    pub connections: u64,
    /// Everything pending was applied (nothing failed).
    pub complete: bool,
}

/// Applies to Redis the sign-outs and revocations recorded while it was
/// unavailable — every one pending, page by page — and queues the close
/// of the connections their sessions had opened. Run by an execution environment that saw Redis
/// fail ([`recovered`]), by `ws-sender` every [`SWEEP_EVERY`] and by
/// `audit-flush` every minute. One PostgreSQL query when nothing is
/// pending; otherwise per page one query, one script per user (sent at
/// once), one `SET` per token and one update.
pub async fn apply_pending(sessions: &Sessions) -> Result<SweepReport, SessionError> {
    let mut report = SweepReport {
        complete: true,
        ..SweepReport::default()
    };
    loop {
        let pending = store::pending(&sessions.db, SWEEP_PAGE).await?;
        let full = pending.sessions.len() as i64 >= SWEEP_PAGE
            || pending.tokens.len() as i64 >= SWEEP_PAGE;
        let mut by_user: Vec<(UserId, Vec<SessionId>)> = Vec::new();
        for (user, sid) in pending.sessions {
            match by_user.iter_mut().find(|(u, _)| *u == user) {
                Some((_, list)) => list.push(sid),
                None => by_user.push((user, vec![sid])),
            }
        }
        let ended = futures_util::future::join_all(by_user.iter().map(|(user, ids)| async move {
            // `One` per id keeps the user's other sessions (signed in
            // since) untouched.
            let mut closed = Vec::new();
            for id in ids {
                let e = end_in_redis(
                    sessions,
                    user,
                    &Ending::One(id.clone()),
                    std::slice::from_ref(id),
                    Insist::No,
                )
                .await?;
                closed.extend(e.connections);
            }
            Ok::<_, RedisUnavailable>(closed)
        }))
        .await;
        let mut done_sessions = Vec::new();
        let mut closed = Vec::new();
        for ((_, ids), result) in by_user.iter().zip(ended) {
            match result {
                Ok(c) => {
                    done_sessions.extend(ids.iter().cloned());
                    closed.extend(c);
                }
                Err(_) => report.complete = false,
            }
        }
        queue_closes(sessions, &closed).await;
        let revoked =
            futures_util::future::join_all(pending.tokens.iter().map(|(jti, until)| async move {
                let principal = Principal::Service {
                    client: ClientId::parse("revoked").map_err(|_| RedisUnavailable::Server)?,
                };
                blacklist_in_redis(sessions, jti, &principal, *until, "logout", Insist::No).await
            }))
            .await;
        let mut done_tokens = Vec::new();
        for ((jti, _), result) in pending.tokens.iter().zip(revoked) {
            match result {
                Ok(()) => done_tokens.push(jti.clone()),
                Err(_) => report.complete = false,
            }
        }
        store::applied(&sessions.db, &done_sessions, &done_tokens).await?;
        report.sessions += done_sessions.len() as u64;
        report.tokens += done_tokens.len() as u64;
        report.connections += closed.len() as u64;
        // A page with failures stops the sweep (the next one retries it).
        if !full || !report.complete {
            return Ok(report);
        }
    }
}

/// Deletes the revocations no verifier could need any more (past their
/// token's `exp` plus [`REVOCATION_GRACE`]); `audit-flush`, every minute.
pub async fn delete_expired_revocations(sessions: &Sessions) -> Result<u64, SessionError> {
    Ok(store::delete_expired(&sessions.db).await?)
}
