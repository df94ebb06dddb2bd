//! The scheduled functions' handlers: `audit-flush`, `cache-warmer`,
//! `metrics-emitter` and `ws-sender` (each returns and logs a summary).

use super::Answer;
use super::deadline;
use super::rejected;
use crate::app::App;
use crate::domain::audit;
use crate::domain::audit::AuditLog;
use crate::domain::balance;
use crate::domain::balance::Balances;
use crate::domain::health::Health;
use crate::domain::sessions;
use crate::domain::sessions::Sessions;
use crate::domain::warming::Warmer;
use crate::infra::keys::UserId;
use lambda_http::lambda_runtime::Context;
use serde::Deserialize;
use serde::Deserializer;
use serde_json::Value;
use serde_json::json;
use std::time::Duration;
use std::time::Instant;

/// `audit-flush`: applies to Redis the sign-outs recorded while it was
/// down (`sessions::apply_pending`); drains every configured service's buffer, applies pending
/// balance outbox rows, and reconciles outbox audit events, stopping before
/// `deadline`.
pub async fn audit_flush(
    audit_log: &AuditLog,
    balances: &Balances,
    sessions: &Sessions,
    deadline: Instant,
) -> Value {
    let started = Instant::now();
    let mut errors = Vec::new();
    let mut flushed = Vec::new();
    for service in &audit_log.config.services {
        match audit::flush(audit_log, service, deadline, u64::MAX).await {
            Ok(report) => flushed.push(serde_json::to_value(report).unwrap_or(Value::Null)),
            Err(e) => errors.push(format!("{service}: {e}")),
        }
    }
    let outbox = match balance::apply_pending(balances, 1000).await {
        Ok(report) => serde_json::to_value(report).unwrap_or(Value::Null),
        Err(e) => {
            errors.push(format!("outbox: {e}"));
            Value::Null
        }
    };
    let reconciled = match audit::reconcile_outbox(audit_log, 1000).await {
        Ok(n) => n,
        Err(e) => {
            errors.push(format!("reconcile: {e}"));
            0
        }
    };
    // Sign-outs and revocations recorded while Redis was unavailable (the
    // backstop: ws-sender sweeps every second), and revocations no verifier
    // needs any more.
    let signed_out = match sessions::apply_pending(sessions).await {
        Ok(report) => serde_json::to_value(report).unwrap_or(Value::Null),
        Err(e) => {
            errors.push(format!("sessions: {e}"));
            Value::Null
        }
    };
    let expired = match sessions::delete_expired_revocations(sessions).await {
        Ok(n) => n,
        Err(e) => {
            errors.push(format!("revocations: {e}"));
            0
        }
    };
    let summary = json!({
        "status": if errors.is_empty() { "ok" } else { "degraded" },
        "flushed": flushed,
        "outbox": outbox,
        "reconciled": reconciled,
        "sessions": signed_out,
        "expired_revocations": expired,
        "errors": errors,
        "duration_ms": started.elapsed().as_millis() as u64,
    });
    if errors.is_empty() {
        tracing::info!(summary = %summary, "audit flush done");
    } else {
        tracing::error!(summary = %summary, "audit flush degraded");
    }
    summary
}

/// `cache-warmer`'s event: a schedule's (no `user_ids`: the `WARM_USERS`
/// most recently active users) or `{"user_ids": [...]}`.
#[derive(Debug, Deserialize)]
pub(super) struct WarmRequest {
    #[serde(default, deserialize_with = "present")]
    user_ids: Option<Vec<UserId>>,
}

/// A field that, when present, must hold a value (`null` is refused).
pub(super) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// At most this many users in one `user_ids` list.
pub(super) const MAX_WARM_USERS: usize = 10_000;

/// `cache-warmer`: a scheduled event warms the `WARM_USERS` most recently
/// active users; `{"user_ids": [...]}` (at most 10,000) warms those.
pub async fn cache_warm(warmer: &Warmer, event: &Value, deadline: Instant) -> Value {
    let users = match WarmRequest::deserialize(event) {
        Ok(WarmRequest {
            user_ids: Some(list),
        }) if list.len() > MAX_WARM_USERS => {
            return rejected("user_ids must be an array of at most 10000 user ids");
        }
        Ok(request) => request.user_ids,
        Err(_) => {
            return rejected(
                "user_ids must be an array of at most 10000 user ids (UUIDs in canonical form)",
            );
        }
    };
    // Boxed: warming's future nests deeply (batches of loads through the
    // cache engine); boxing keeps its callers' futures within the
    // compiler's layout depth.
    let report = Box::pin(crate::domain::warming::warm(warmer, users, deadline)).await;
    let mut summary = serde_json::to_value(&report).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut summary {
        m.insert(
            "status".into(),
            json!(if report.failed == 0 { "ok" } else { "degraded" }),
        );
    }
    tracing::info!(summary = %summary, "cache warming done");
    summary
}

/// `metrics-emitter`: reads `INFO` from every node and publishes the
/// design's cache metrics, per node and for the cluster.
pub async fn emit_metrics(
    health: &Health,
    cloudwatch: &crate::domain::cloudwatch::CloudWatch,
) -> Value {
    let started = Instant::now();
    let collected =
        match crate::domain::node_metrics::collect(health, health.config.node_timeout).await {
            Ok(c) => c,
            Err(why) => {
                tracing::error!(reason = why.as_str(), "could not read the cluster's nodes");
                return json!({"status": "failed", "error": "Redis is unavailable", "published": 0});
            }
        };
    let (status, published, error) =
        match crate::domain::cloudwatch::publish(cloudwatch, &collected.data).await {
            Ok(n) => ("ok", n, None),
            Err(e) => {
                tracing::error!(error = %e.0, "PutMetricData failed");
                ("failed", 0, Some("CloudWatch PutMetricData failed"))
            }
        };
    let summary = json!({
        "status": status,
        "error": error,
        "nodes": collected.nodes,
        "nodes_unreachable": collected.nodes_unreachable,
        "restarted": collected.restarted,
        "published": published,
        "duration_ms": started.elapsed().as_millis() as u64,
    });
    tracing::info!(summary = %summary, "node metrics emitted");
    summary
}

/// `audit-flush`'s handler: runs until 2 s before the invocation's deadline.
pub async fn handle_audit_flush(app: &App, _: &(), _event: Value, context: Context) -> Answer {
    Ok(audit_flush(
        &app.audit,
        &app.balances,
        &app.sessions,
        deadline(&context, Duration::from_secs(30)),
    )
    .await)
}

/// `cache-warmer`'s handler (see [`cache_warm`]).
pub async fn handle_cache_warm(app: &App, _: &(), event: Value, context: Context) -> Answer {
    Ok(cache_warm(
        &app.warmer,
        &event,
        deadline(&context, Duration::from_secs(60)),
    )
    .await)
}

/// `metrics-emitter`'s handler (see [`emit_metrics`]).
/// `metrics-emitter`'s CloudWatch client (the `init` of its
/// `event_function!`; built at the first publish).
pub fn metrics_client(
    _: &App,
) -> Result<crate::domain::cloudwatch::CloudWatch, crate::app::InitError> {
    Ok(crate::domain::cloudwatch::client())
}

/// `metrics-emitter`'s handler (see [`emit_metrics`]).
pub async fn handle_metrics(
    app: &App,
    cloudwatch: &crate::domain::cloudwatch::CloudWatch,
    _event: Value,
    _: Context,
) -> Answer {
    Ok(emit_metrics(&app.health, cloudwatch).await)
}

/// `ws-sender`'s state: its sender (one consumer of the delivery group per
/// execution environment), built at the first invocation. Init fails
/// without `WS_MANAGEMENT_ENDPOINT`.
pub fn sender_state(
    app: &App,
) -> Result<tokio::sync::Mutex<Option<crate::domain::delivery::Sender>>, crate::app::InitError> {
    if app.config.delivery.management_endpoint.is_none() {
        return Err(crate::infra::config::ConfigError::new(
            "WS_MANAGEMENT_ENDPOINT",
            "is required by ws-sender (the WebSocket API's https://{api-id}.execute-api.{region}.amazonaws.com/{stage})",
        )
        .into());
    }
    Ok(tokio::sync::Mutex::new(None))
}

/// `ws-sender`: reads the delivery stream and posts to connections until
/// 5 s before the invocation's deadline (or for `WS_SENDER_RUN_SECS`, or
/// the event's `detail.run_secs`, whichever ends first).
/// Scheduled every minute with a longer timeout, so that one invocation
/// always reads (docs/realtime.md → Real-time delivery).
pub async fn handle_sender(
    app: &App,
    state: &tokio::sync::Mutex<Option<crate::domain::delivery::Sender>>,
    event: Value,
    context: Context,
) -> Answer {
    use crate::domain::delivery;
    let started = Instant::now();
    let config = &app.config.delivery;
    let mut until = deadline(&context, Duration::from_secs(60))
        .checked_sub(Duration::from_secs(5))
        .unwrap_or(started);
    if !config.run_for.is_zero() {
        until = until.min(started + config.run_for);
    }
    // `detail.run_secs` (0–900) shortens one run: for `sam local invoke`,
    // `cargo lambda invoke` and operators.
    if let Some(secs) = event
        .get("detail")
        .and_then(|d| d.get("run_secs"))
        .and_then(Value::as_u64)
        .filter(|s| *s <= 900)
    {
        until = until.min(started + Duration::from_secs(secs));
    }
    let mut guard = state.lock().await;
    if guard.is_none() {
        let endpoint = config.management_endpoint.as_deref().unwrap_or_default();
        let management =
            delivery::Management::new(endpoint, config.send_attempts, app.config.secrets_timeout)
                .await;
        *guard = Some(delivery::Sender::new(management).with_fan_out(config.fan_out));
    }
    let Some(sender) = guard.as_mut() else {
        return Ok(json!({"status": "failed"}));
    };
    let report = delivery::run(&app.deliveries, sender, until).await;
    let summary = json!({
        "status": "ok",
        "report": report,
        "duration_ms": started.elapsed().as_millis() as u64,
    });
    tracing::info!(summary = %summary, "delivery run done");
    Ok(summary)
}
