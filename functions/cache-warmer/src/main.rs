//! Scheduled every 5 minutes, or invoked with `{"user_ids": [...]}` — see
//! `paycache::events::cache_warm`.

use std::time::Duration;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    paycache::init_logging();
    let metrics = paycache::telemetry::init("cache-warmer");
    let app = paycache::App::from_env().await?;
    let app = &app;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let started = std::time::Instant::now();
        let deadline = paycache::events::deadline_from_epoch_ms(
            event.context.deadline,
            Duration::from_secs(60),
        );
        let summary = paycache::events::cache_warm(app, &event.payload, deadline).await;
        paycache::telemetry::finish(metrics, started);
        Ok::<_, Error>(summary)
    }))
    .await
}
