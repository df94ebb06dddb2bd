//! Scheduled every minute — see `paycache::events::audit_flush`.

use std::time::Duration;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    paycache::init_logging();
    let metrics = paycache::telemetry::init("audit-flush");
    let app = paycache::App::from_env().await?;
    let app = &app;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let deadline = paycache::events::deadline_from_epoch_ms(
            event.context.deadline,
            Duration::from_secs(30),
        );
        let started = std::time::Instant::now();
        let summary = paycache::events::audit_flush(app, deadline).await;
        paycache::telemetry::finish(metrics, started);
        Ok::<_, Error>(summary)
    }))
    .await
}
