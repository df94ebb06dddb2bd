//! WebSocket API routes — see `paycache::events::websocket`.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    paycache::init_logging();
    let metrics = paycache::telemetry::init("ws-connections");
    let app = paycache::App::from_env().await?;
    let app = &app;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let started = std::time::Instant::now();
        let answer = paycache::events::websocket(app, &event.payload).await;
        paycache::telemetry::finish(metrics, started);
        Ok::<_, Error>(answer)
    }))
    .await
}
