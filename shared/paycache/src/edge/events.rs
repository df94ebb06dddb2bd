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

use lambda_http::lambda_runtime::Context;
use serde_json::{Value, json};
use std::time::{Duration, Instant, SystemTime};

// One file per function family.
mod invalidator;
mod scheduled;
mod websocket;

pub use invalidator::{
    SystemAnnouncement, TransactionCompleted, UserProfileUpdated, cache_invalidation,
    handle_invalidation,
};
pub use scheduled::{
    audit_flush, cache_warm, emit_metrics, handle_audit_flush, handle_cache_warm, handle_metrics,
    handle_sender, metrics_client, sender_state,
};
pub use websocket::{handle_websocket, parse_resume, websocket};

/// An event as the runtime delivers it, before its handler types it.
pub type Json = Value;

fn rejected(reason: impl Into<String>) -> Value {
    let reason = reason.into();
    tracing::warn!(reason = %reason, "event rejected");
    json!({"status": "rejected", "reason": reason})
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
