//! Handlers for the event-driven functions (EventBridge rules, schedules,
//! the WebSocket API). Each deserializes its event into a typed struct —
//! `aws_lambda_events`' where `lambda_http` already carries the type (the
//! WebSocket proxy request), a small local envelope for EventBridge (the
//! crate's `eventbridge` feature is not compiled in) — never panics on any
//! input, and returns a JSON summary that it also logs.
//!
//! Malformed events are answered with `{"status": "rejected", "reason": …}`
//! and not retried (retrying cannot fix them): the runtime hands each
//! handler the raw JSON and the handler deserializes it, so a bad event is
//! an answer, not an invocation error. Failures that a retry can fix (Redis
//! or PostgreSQL unavailable during an invalidation) are returned as
//! errors, so that Lambda's asynchronous retries and the dead-letter queue
//! take over: an invalidation must not be dropped.

use std::time::{Duration, Instant, SystemTime};

use lambda_http::aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use lambda_http::lambda_runtime::Context;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::app::App;
use crate::domain::audit::{self, AuditLog};
use crate::domain::balance::{self, Balances};
use crate::domain::delivery_queue::CloseReason;
use crate::domain::health::Health;
use crate::domain::invalidation::{self, Invalidation, InvalidationError};
use crate::domain::realtime::{ConnectRefused, Ping, SignedIn};
use crate::domain::sessions::{self, Sessions};
use crate::domain::warming::Warmer;
use crate::infra::config::AnnouncementTrust;
use crate::infra::keys::{SessionId, TransactionId, UserId, WalletId};

/// An event as the runtime delivers it, before its handler types it.
pub type Json = Value;

fn rejected(reason: impl Into<String>) -> Value {
    let reason = reason.into();
    tracing::warn!(reason = %reason, "event rejected");
    json!({"status": "rejected", "reason": reason})
}

/// The EventBridge envelope: what routing needs.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "detail-type")]
    detail_type: String,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    account: Option<String>,
}

/// The events `cache-invalidator` acts on: EventBridge's `detail-type`
/// names the variant, `detail` holds its fields (other envelope fields are
/// ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "detail-type", content = "detail")]
pub(crate) enum InvalidationEvent {
    UserProfileUpdated(UserProfileUpdated),
    TransactionCompleted(TransactionCompleted),
    SystemAnnouncement(SystemAnnouncement),
}

/// `SystemAnnouncement`'s detail: a message for every connected client
/// (`system:announcements`), 1 to 65 536 characters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SystemAnnouncement {
    /// The announcement's text.
    pub message: String,
}

/// `UserProfileUpdated`'s detail.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UserProfileUpdated {
    /// The user whose profile changed.
    pub user_id: UserId,
}

/// `TransactionCompleted`'s detail. The wallets are read from the
/// transaction's row; the event's copies are validated, not trusted.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TransactionCompleted {
    /// The transaction.
    pub transaction_id: TransactionId,
    /// The paying wallet.
    pub sender_wallet_id: WalletId,
    /// The receiving wallet.
    pub receiver_wallet_id: WalletId,
}

impl InvalidationEvent {
    /// The typed event, or the summary to answer with: `ignored` for a
    /// detail-type this function does not handle, `rejected` (with serde's
    /// reason, which names the field) for a malformed one.
    pub fn parse(event: &Value, trust: &AnnouncementTrust) -> Result<Self, Value> {
        let envelope =
            Envelope::deserialize(event).map_err(|_| rejected("the event has no detail-type"))?;
        // An announcement reaches every open connection: only the
        // platform's own source (and account) may send one.
        if envelope.detail_type == "SystemAnnouncement"
            && (envelope.source.as_deref() != Some(trust.source.as_str())
                || trust
                    .account
                    .as_ref()
                    .is_some_and(|a| envelope.account.as_deref() != Some(a.as_str())))
        {
            return Err(rejected(
                "SystemAnnouncement is accepted only from the platform's own source and account",
            ));
        }
        if !matches!(
            envelope.detail_type.as_str(),
            "UserProfileUpdated" | "TransactionCompleted" | "SystemAnnouncement"
        ) {
            tracing::info!(detail_type = %envelope.detail_type.chars().take(64).collect::<String>(), "event ignored");
            return Err(json!({"status": "ignored"}));
        }
        if !event.get("detail").is_some_and(Value::is_object) {
            return Err(rejected("the event has no detail object"));
        }
        let parsed = Self::deserialize(event).map_err(|e| rejected(format!("detail: {e}")))?;
        if let Self::SystemAnnouncement(a) = &parsed
            && !(1..=65_536).contains(&a.message.chars().count())
        {
            return Err(rejected("detail: message must be 1 to 65536 characters"));
        }
        Ok(parsed)
    }
}

/// `cache-invalidator`: `UserProfileUpdated` and `TransactionCompleted`.
pub async fn cache_invalidation(
    invalidation: &Invalidation,
    event: &Value,
) -> Result<Value, InvalidationError> {
    let started = Instant::now();
    let event = match InvalidationEvent::parse(event, &invalidation.announcements) {
        Ok(e) => e,
        Err(answer) => return Ok(answer),
    };
    let (kind, report) = match &event {
        InvalidationEvent::UserProfileUpdated(e) => (
            "UserProfileUpdated",
            invalidation::user_profile_updated(invalidation, &e.user_id).await?,
        ),
        InvalidationEvent::TransactionCompleted(e) => (
            "TransactionCompleted",
            invalidation::transaction_completed(invalidation, &e.transaction_id).await?,
        ),
        InvalidationEvent::SystemAnnouncement(e) => (
            "SystemAnnouncement",
            invalidation::announce(invalidation, &e.message).await?,
        ),
    };
    let summary = json!({
        "status": "ok",
        "detail_type": kind,
        "outcome": report.outcome,
        "keys_deleted": report.keys_deleted,
        "wallets_invalidated": report.wallets_invalidated,
        "published": report.published,
        "duration_ms": started.elapsed().as_millis() as u64,
    });
    tracing::info!(summary = %summary, "invalidation done");
    Ok(summary)
}

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
struct WarmRequest {
    #[serde(default, deserialize_with = "present")]
    user_ids: Option<Vec<UserId>>,
}

/// A field that, when present, must hold a value (`null` is refused).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// At most this many users in one `user_ids` list.
const MAX_WARM_USERS: usize = 10_000;

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

/// `ws-connections`: the WebSocket API's `$connect`, `$disconnect` and
/// `ping` routes. The sign-in (user, session, token expiry) comes from the
/// authorizer's context (WebSocket authorizers put it in
/// `requestContext.authorizer`); `$connect` without it is refused (401), so
/// is a malformed connection id (400), and so is one more connection than
/// the sign-in or the user may have open (429, `WS_MAX_CONNECTIONS_PER_*`).
/// A `ping` whose sign-in is over (session ended, token expired) is
/// answered 410, one past `WS_PINGS_PER_MINUTE` 429; either way its
/// connection is taken out of the registry and queued to be closed (the
/// latter after a last frame saying why).
pub async fn websocket(app: &App, event: &Value) -> Value {
    let (connections, queue) = (&app.connections, &app.delivery);
    let status = |code: u16, body: Value| json!({"statusCode": code, "body": body.to_string()});
    let Ok(request) = ApiGatewayWebsocketProxyRequest::deserialize(event) else {
        return status(400, json!({"error": "not a WebSocket API event"}));
    };
    let ctx = &request.request_context;
    let route = ctx.route_key.as_deref().unwrap_or("");
    let Some(conn) = ctx
        .connection_id
        .as_deref()
        .and_then(|c| crate::infra::keys::ConnectionId::parse(c).ok())
    else {
        return status(
            400,
            json!({"error": "connectionId is missing or malformed"}),
        );
    };
    let fields = &ctx.authorizer.fields;
    let text = |k: &str| match fields.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let user = text("user_id").and_then(|u| UserId::parse(&u).ok());
    let result = match route {
        "$connect" => {
            let signed_in = (|| {
                Some(SignedIn {
                    user: user?,
                    session: SessionId::parse(&text("session_id")?).ok()?,
                    expires_at: time::OffsetDateTime::from_unix_timestamp(
                        text("exp")?.parse().ok()?,
                    )
                    .ok()?,
                })
            })();
            let Some(by) = signed_in else {
                return status(401, json!({"error": "not authenticated"}));
            };
            let client = request
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok());
            let resume = match request.query_string_parameters.first("resume") {
                None => Vec::new(),
                Some(raw) => match parse_resume(raw) {
                    Ok(r) => r,
                    Err(why) => return status(400, json!({"error": why})),
                },
            };
            // Only the user's own wallets: each one's owner, through the
            // cache (one round-trip time for all on hits).
            let owners = futures_util::future::join_all(
                resume
                    .iter()
                    .map(|(w, _)| crate::domain::balance::get_balance(&app.balances, w)),
            )
            .await;
            for owned in owners {
                match owned {
                    Ok(b) if b.value.as_ref().and_then(|b| b.owner) == Some(by.user) => {}
                    Ok(_) => {
                        return status(
                            404,
                            json!({"error": "a wallet to resume does not exist or is not yours"}),
                        );
                    }
                    Err(_) => {
                        return status(503, json!({"error": "the wallets could not be read"}));
                    }
                }
            }
            match crate::domain::realtime::connect(connections, &by, &conn, client, &resume).await {
                Err(ConnectRefused::Unavailable(why)) => Err(why),
                Err(limit) => {
                    tracing::info!(reason = %limit, "connection refused");
                    return status(
                        429,
                        json!({"error": limit.to_string(), "reason": match limit {
                            ConnectRefused::SessionLimit => "connections_per_session",
                            _ => "connections_per_user",
                        }}),
                    );
                }
                Ok(()) => {
                    // Queued behind the wallet's kicks; a failure leaves the
                    // mark, which lapses (docs/realtime.md → Reconnecting without a gap).
                    for (wallet, after) in &resume {
                        if let Err(why) = queue.catch_up(wallet, &by.user, &conn, *after).await {
                            tracing::warn!(reason = why.as_str(), "could not queue a catch-up");
                            return status(
                                503,
                                json!({"error": "the catch-up could not be queued"}),
                            );
                        }
                    }
                    Ok(200)
                }
            }
        }
        "$disconnect" => crate::domain::realtime::disconnect(connections, &conn, user.as_ref())
            .await
            .map(|_| 200),
        "ping" => match crate::domain::realtime::ping(connections, &conn).await {
            Ok(Ping::Alive) => Ok(200),
            Ok(Ping::Unknown) => Ok(410),
            Ok(Ping::Ended) => {
                if let Err(why) = queue.close(std::slice::from_ref(&conn)).await {
                    tracing::warn!(reason = why.as_str(), "could not queue the close");
                }
                Ok(410)
            }
            Ok(Ping::TooMany) => {
                tracing::info!("connection closed: too many pings");
                if let Err(why) = queue
                    .close_telling(std::slice::from_ref(&conn), CloseReason::TooManyPings)
                    .await
                {
                    tracing::warn!(reason = why.as_str(), "could not queue the close");
                }
                Ok(429)
            }
            Err(e) => Err(e),
        },
        _ => Ok(400),
    };
    match result {
        Ok(200) => status(200, json!({"route": route})),
        Ok(410) => status(
            410,
            json!({"error": "the connection is not registered (expired, or its sign-in is over)"}),
        ),
        Ok(429) => status(
            429,
            json!({"error": "too many pings: the connection is closed", "reason": "too_many_pings"}),
        ),
        Ok(_) => status(400, json!({"error": "unknown route"})),
        Err(why) => {
            tracing::error!(route = %route, reason = why.as_str(), "websocket registry unavailable");
            status(
                503,
                json!({"error": "the connection registry is unavailable"}),
            )
        }
    }
}

/// `$connect`'s `resume` parameter: `<wallet_id>:<version>` pairs,
/// comma-separated, at most [`RESUME_MAX`](crate::domain::delivery::RESUME_MAX),
/// each wallet once (the version is the last the client saw; `balance:`
/// before the wallet — a frame's `channel` — is accepted too).
pub fn parse_resume(raw: &str) -> Result<Vec<(WalletId, u64)>, String> {
    let mut out: Vec<(WalletId, u64)> = Vec::new();
    for part in raw.split(',') {
        let part = part.strip_prefix("balance:").unwrap_or(part);
        let parsed = part
            .rsplit_once(':')
            .and_then(|(w, v)| Some((WalletId::parse(w).ok()?, v.parse::<u64>().ok()?)));
        let Some((wallet, version)) = parsed else {
            return Err("resume must be <wallet_id>:<version>[,<wallet_id>:<version>…]".into());
        };
        if out.iter().any(|(w, _)| *w == wallet) {
            return Err("resume names a wallet twice".into());
        }
        out.push((wallet, version));
        if out.len() > crate::domain::delivery::RESUME_MAX {
            return Err(format!(
                "resume names more than {} wallets",
                crate::domain::delivery::RESUME_MAX
            ));
        }
    }
    Ok(out)
}

/// The invocation's deadline (`Context::deadline`) as an `Instant`, or
/// `fallback` from now when it is missing or already past.
pub fn deadline(context: &Context, fallback: Duration) -> Instant {
    match context.deadline().duration_since(SystemTime::now()) {
        Ok(left) if !left.is_zero() => Instant::now() + left,
        _ => Instant::now() + fallback,
    }
}

/// What every event-driven handler returns to the runtime.
pub(crate) type Answer = Result<Value, lambda_http::lambda_runtime::Error>;

/// `cache-invalidator`'s handler (see [`cache_invalidation`]).
pub async fn handle_invalidation(app: &App, _: &(), event: Value, _: Context) -> Answer {
    cache_invalidation(&app.invalidation, &event)
        .await
        .map_err(Into::into)
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

/// `ws-connections`' handler (see [`websocket`]).
pub async fn handle_websocket(app: &App, _: &(), event: Value, _: Context) -> Answer {
    Ok(websocket(app, &event).await)
}

/// The whole `main` of an event-driven function, as [`crate::http_function!`] is
/// for HTTP ones: logging, metrics, `App` built once from the environment,
/// the function's own state built once from it (`init`, optional), then
/// `handler(&app, &state, event, context)` per invocation with its EMF line
/// written after it. The runtime hands the handler the raw JSON; the
/// handler deserializes it into its typed event, so a malformed event is an
/// answer (`rejected`), never an invocation error that Lambda would retry.
///
/// ```ignore
/// paycache::event_function!("cache-invalidator", paycache::events::handle_invalidation);
/// paycache::event_function!("authorizer", paycache::auth::Verifier::for_app, paycache::auth::handle_authorizer);
/// ```
#[macro_export]
macro_rules! event_function {
    ($name:literal, $handler:path) => {
        $crate::event_function!(
            $name,
            |_: &$crate::app::App| Ok::<(), $crate::app::InitError>(()),
            $handler
        );
    };
    ($name:literal, $init:expr, $handler:path) => {
        #[tokio::main]
        async fn main() -> Result<(), $crate::lambda_runtime::Error> {
            $crate::app::init_logging();
            let metrics = $crate::infra::telemetry::init($name);
            let app = $crate::app::App::from_env().await?;
            let state = ($init)(&app)?;
            let (app, state) = (&app, &state);
            $crate::lambda_runtime::run($crate::lambda_runtime::service_fn(
                move |event: $crate::lambda_runtime::LambdaEvent<$crate::edge::events::Json>| async move {
                    let started = std::time::Instant::now();
                    // Boxed: the handlers' futures nest deeply enough (the
                    // warmer's especially) to exceed the compiler's layout
                    // depth in release builds; one allocation per event.
                    let answer =
                        Box::pin($handler(app, state, event.payload, event.context)).await;
                    $crate::infra::telemetry::finish(metrics, started);
                    answer
                },
            ))
            .await
        }
    };
}
