//! Scheduled every minute — see `paycache::events::emit_metrics`.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    paycache::init_logging();
    let metrics = paycache::telemetry::init("metrics-emitter");
    let app = paycache::App::from_env().await?;
    let cloudwatch = paycache::cloudwatch::client();
    let (app, cloudwatch) = (&app, &cloudwatch);
    lambda_runtime::run(service_fn(move |_event: LambdaEvent<Value>| async move {
        let started = std::time::Instant::now();
        let summary = paycache::events::emit_metrics(app, cloudwatch).await;
        paycache::telemetry::finish(metrics, started);
        Ok::<_, Error>(summary)
    }))
    .await
}
