//! Write-behind audit log: events are appended to a Redis buffer per service
//! and moved to PostgreSQL's `audit_log` by `audit-flush`.
//!
//! # Guarantee
//! Every appended event reaches `audit_log` **at least once and exactly
//! once as a row**, whenever a flusher runs to completion, however many
//! flushers died before it at whatever step.
//!
//! # Why it holds
//! - The buffer has **no TTL** (the design's `EXPIRE 300` would drop a quiet
//!   buffer) and is bounded: past `AUDIT_BUFFER_MAX_EVENTS` an append is
//!   refused with [`AppendError::Full`], never silently dropped.
//! - A flusher takes the service's flush lock, then **claims** a batch with
//!   `LMOVE` from the buffer into a processing list in one script: an event
//!   is always in exactly one of the two lists.
//! - It **inserts** the batch with `ON CONFLICT (event_id) DO NOTHING`, then
//!   **acknowledges** by deleting the processing list — only while it still
//!   holds the lock.
//! - A flusher that dies after claiming leaves the batch in the processing
//!   list; its lock expires; the next flusher's claim returns that batch
//!   first. If the dead one had already inserted, the re-insert does nothing.
//!
//! Cost: an append is one round trip; a flush is one round trip per batch to
//! claim and one to acknowledge, plus one `INSERT`.
//!
//! # Where the buffers live
//! In the *durable* Redis (`REDIS_DURABLE_URL`; the main one when unset): a
//! small replication group with `maxmemory-policy noeviction`, so memory
//! pressure can refuse an append (which then reaches PostgreSQL through the
//! outbox) but never evict a buffered event.
//!
//! # Replication
//! An append is acknowledged when the primary has it. ElastiCache replicates
//! asynchronously, so a primary failure in the next instant can lose it. For
//! balance writes that does not matter: every balance write also stores its
//! audit event in the PostgreSQL outbox in the same transaction, and
//! [`reconcile_outbox`] inserts any of those that are not in `audit_log`
//! after `AUDIT_RECONCILE_AFTER_SECS`. Other services that need the same
//! should follow an append with `WAIT 1 <ms>` (one more round trip).

use std::ops::ControlFlow;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use redis::Script;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::infra::config::AuditConfig;
use crate::infra::connection::Redis;
use crate::infra::connection::RedisUnavailable;
use crate::infra::db::Db;
use crate::infra::db::{DbError, query_error};
use crate::infra::keys::Keyspace;
use crate::infra::keys::{CacheKey, ServiceName};

/// What the audit log uses: the durable Redis (buffers), PostgreSQL
/// (`audit_log`, the balance outbox) and the audit settings.
#[derive(Debug, Clone)]
pub struct AuditLog {
    pub(crate) keys: Keyspace,
    pub(crate) durable: Redis,
    pub(crate) db: Db,
    pub(crate) config: AuditConfig,
}

static APPEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("audit/append.lua")));
static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("audit/claim.lua")));
static ACK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("audit/ack.lua")));

/// One audit event, as buffered and as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unique per event: the idempotency key of the insert into `audit_log`.
    pub event_id: Uuid,
    /// The service whose buffer holds the event.
    pub service: ServiceName,
    /// What happened (`balance_updated`, …).
    pub event_type: String,
    #[serde(with = "time::serde::rfc3339")]
    /// When it happened.
    pub occurred_at: OffsetDateTime,
    /// The event's details (JSON).
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
/// Why an append was refused.
pub enum AppendError {
    #[error("the audit buffer is full")]
    /// The buffer holds `AUDIT_BUFFER_MAX_EVENTS` already.
    Full,
    #[error("the audit buffer is unavailable: {0}")]
    /// Redis could not be reached.
    Unavailable(RedisUnavailable),
}

fn buffer_key(audit_log: &AuditLog, service: &ServiceName) -> CacheKey {
    audit_log.keys.audit_buffer(service)
}

/// Appends `event` to its service's buffer: one round trip. Returns the
/// buffer's length afterwards.
#[tracing::instrument(skip_all, fields(service = %event.service))]
pub async fn append(audit_log: &AuditLog, event: &AuditEvent) -> Result<u64, AppendError> {
    let key = buffer_key(audit_log, &event.service);
    let json = serde_json::to_string(event)
        .map_err(|_| AppendError::Unavailable(RedisUnavailable::Server))?;
    let max = audit_log.config.max_buffered;
    let len: i64 = audit_log
        .durable
        .run(|mut c| async move {
            APPEND
                .key(&key)
                .arg(max)
                .arg(json)
                .invoke_async(&mut c)
                .await
        })
        .await
        .map_err(AppendError::Unavailable)?;
    u64::try_from(len).map_err(|_| AppendError::Full)
}

/// A point in a flush, for the failure-injection hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushStep {
    /// The flush lock is held.
    Locked,
    /// A batch is in the processing list.
    Claimed,
    /// The batch is committed in PostgreSQL, not yet acknowledged.
    Inserted,
    /// The batch is acknowledged.
    Acked,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
/// What a flush did, for the function's JSON summary.
pub struct FlushReport {
    /// The service whose buffer was flushed.
    pub service: String,
    /// False when another flusher held the lock.
    pub ran: bool,
    /// Batches claimed.
    pub batches: u64,
    /// Events read from processing lists (including re-deliveries).
    pub events_seen: u64,
    /// Rows actually added to `audit_log`.
    pub inserted: u64,
    /// Events that could not be parsed, moved to the dead-letter list.
    pub dead_lettered: u64,
    /// True if the flusher stopped because its hook said so (tests).
    pub interrupted: bool,
}

#[derive(Debug, thiserror::Error)]
/// Why a flush stopped with an error (what it had done stays done).
pub enum FlushError {
    #[error("the audit buffer is unavailable: {0}")]
    /// The durable Redis could not be reached.
    Redis(RedisUnavailable),
    #[error(transparent)]
    /// PostgreSQL failed.
    Db(#[from] DbError),
}

/// Drains `service`'s buffer until it is empty, `max_batches` are done, or
/// `deadline` is near.
pub async fn flush(
    audit_log: &AuditLog,
    service: &ServiceName,
    deadline: Instant,
    max_batches: u64,
) -> Result<FlushReport, FlushError> {
    flush_with_hook(audit_log, service, deadline, max_batches, &mut |_| {
        ControlFlow::Continue(())
    })
    .await
}

/// [`flush`] with a hook called after each step; `Break` makes the flusher
/// stop on the spot, as if its process had been killed (no clean-up, the
/// lock stays until it expires). Tests use it to interrupt every step.
#[tracing::instrument(skip_all, fields(service = %service))]
pub async fn flush_with_hook(
    audit_log: &AuditLog,
    service: &ServiceName,
    deadline: Instant,
    max_batches: u64,
    hook: &mut (dyn FnMut(FlushStep) -> ControlFlow<()> + Send),
) -> Result<FlushReport, FlushError> {
    let mut report = FlushReport {
        service: service.to_string(),
        ..FlushReport::default()
    };
    let buffer = buffer_key(audit_log, service);
    let processing = format!("{buffer}:processing");
    let lock = format!("{buffer}:flushlock");
    let dead = format!("{buffer}:dead");
    let token = format!("{:032x}", fastrand::u128(..));
    let lock_ms = u64::try_from(audit_log.config.flush_lock.as_millis()).unwrap_or(u64::MAX);

    let (l, t) = (&lock, &token);
    let locked: Option<String> = audit_log
        .durable
        .run(|mut c| async move {
            redis::cmd("SET")
                .arg(l)
                .arg(t)
                .arg("NX")
                .arg("PX")
                .arg(lock_ms)
                .query_async(&mut c)
                .await
        })
        .await
        .map_err(FlushError::Redis)?;
    if locked.is_none() {
        return Ok(report);
    }
    report.ran = true;
    let lock_deadline = Instant::now() + audit_log.config.flush_lock / 2;
    if hook(FlushStep::Locked).is_break() {
        report.interrupted = true;
        return Ok(report);
    }

    let batch_size = audit_log.config.batch_size;
    while report.batches < max_batches {
        // Stop while there is time to finish a batch: before the caller's
        // deadline and well before the lock could expire under us.
        let now = Instant::now();
        if now + Duration::from_secs(2) >= deadline || now >= lock_deadline {
            break;
        }
        let (b, p, l, t) = (&buffer, &processing, &lock, &token);
        let claimed: Option<Vec<String>> = audit_log
            .durable
            .run(|mut c| async move {
                CLAIM
                    .key(b)
                    .key(p)
                    .key(l)
                    .arg(t)
                    .arg(batch_size)
                    .invoke_async(&mut c)
                    .await
            })
            .await
            .map_err(FlushError::Redis)?;
        let Some(batch) = claimed else {
            break; // the lock expired under us; the next flusher carries on
        };
        if batch.is_empty() {
            break;
        }
        report.batches += 1;
        report.events_seen += batch.len() as u64;
        if hook(FlushStep::Claimed).is_break() {
            report.interrupted = true;
            return Ok(report);
        }

        let mut events = Vec::with_capacity(batch.len());
        let mut malformed = Vec::new();
        for raw in batch {
            match serde_json::from_str::<AuditEvent>(&raw) {
                Ok(e) => events.push(e),
                Err(_) => malformed.push(raw),
            }
        }
        report.inserted += insert_events(audit_log, &events).await?;
        if hook(FlushStep::Inserted).is_break() {
            report.interrupted = true;
            return Ok(report);
        }

        if !malformed.is_empty() {
            tracing::error!(
                count = malformed.len(),
                "unparseable audit events moved to the dead-letter list"
            );
        }
        report.dead_lettered += malformed.len() as u64;
        let (p, l, d, t) = (&processing, &lock, &dead, &token);
        let acked: i64 = audit_log
            .durable
            .run(|mut c| async move {
                let mut inv = ACK.key(p);
                inv.key(l).key(d).arg(t);
                for m in &malformed {
                    inv.arg(m);
                }
                inv.invoke_async(&mut c).await
            })
            .await
            .map_err(FlushError::Redis)?;
        if acked != 1 {
            break;
        }
        if hook(FlushStep::Acked).is_break() {
            report.interrupted = true;
            return Ok(report);
        }
    }
    crate::patterns::cache_aside::release_lease(&audit_log.durable, &lock, &token).await;
    Ok(report)
}

/// Inserts events idempotently (by `event_id`) and marks the matching outbox
/// rows as recorded, in one transaction. Returns the rows added.
async fn insert_events(audit_log: &AuditLog, events: &[AuditEvent]) -> Result<u64, DbError> {
    if events.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let services: Vec<&str> = events.iter().map(|e| e.service.as_str()).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let times: Vec<OffsetDateTime> = events.iter().map(|e| e.occurred_at).collect();
    let payloads: Vec<&serde_json::Value> = events.iter().map(|e| &e.payload).collect();
    let mut client = audit_log.db.client().await?;
    let tx = client.transaction().await?;
    let inserted = tx
        .execute(
            "INSERT INTO audit_log (event_id, service, event_type, occurred_at, payload)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::jsonb[])
             ON CONFLICT (event_id) DO NOTHING",
            &[&ids, &services, &types, &times, &payloads],
        )
        .await?;
    tx.execute(
        "UPDATE balance_outbox SET audit_recorded_at = now()
          WHERE audit_event_id = ANY($1) AND audit_recorded_at IS NULL",
        &[&ids],
    )
    .await?;
    tx.commit().await?;
    Ok(inserted)
}

/// Inserts into `audit_log` the audit events of balance writes older than
/// `AUDIT_RECONCILE_AFTER_SECS` that are not recorded yet — those whose
/// Redis append failed, was refused, or was lost in a failover. Returns the
/// rows added (normally 0).
#[tracing::instrument(skip_all)]
pub async fn reconcile_outbox(audit_log: &AuditLog, limit: i64) -> Result<u64, DbError> {
    let after = audit_log.config.reconcile_after.as_secs_f64();
    let client = audit_log.db.client().await?;
    let row = client
        .query_one(
            "WITH due AS (
                 SELECT audit_event_id, audit_event FROM balance_outbox
                  WHERE audit_recorded_at IS NULL
                    AND committed_at < now() - make_interval(secs => $1)
                  ORDER BY committed_at
                  LIMIT $2
                    FOR UPDATE SKIP LOCKED
             ), ins AS (
                 INSERT INTO audit_log (event_id, service, event_type, occurred_at, payload)
                 SELECT audit_event_id, audit_event->>'service', audit_event->>'event_type',
                        (audit_event->>'occurred_at')::timestamptz, audit_event->'payload'
                   FROM due
                 ON CONFLICT (event_id) DO NOTHING
                 RETURNING 1
             ), upd AS (
                 UPDATE balance_outbox SET audit_recorded_at = now()
                  WHERE audit_event_id IN (SELECT audit_event_id FROM due)
                 RETURNING 1
             )
             SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM upd)",
            &[&after, &limit],
        )
        .await?;
    let inserted: i64 = row.try_get(0).map_err(query_error)?;
    Ok(u64::try_from(inserted).unwrap_or(0))
}
