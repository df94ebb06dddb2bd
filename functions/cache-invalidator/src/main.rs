//! EventBridge rule — see `paycache::events::cache_invalidation`.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    paycache::init_logging();
    let metrics = paycache::telemetry::init("cache-invalidator");
    let app = paycache::App::from_env().await?;
    let app = &app;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let started = std::time::Instant::now();
        let result = paycache::events::cache_invalidation(app, &event.payload).await;
        paycache::telemetry::finish(metrics, started);
        result.map_err(Error::from)
    }))
    .await
}
