//! API Gateway Lambda authorizer — see `paycache::auth`.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    paycache::init_logging();
    let metrics = paycache::telemetry::init("authorizer");
    let app = paycache::App::from_env().await?;
    let verifier = paycache::auth::Verifier::new(paycache::auth::AuthConfig::from_env()?)?;
    let (app, verifier) = (&app, &verifier);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let started = std::time::Instant::now();
        let answer = paycache::auth::authorize(app, verifier, &event.payload).await;
        paycache::telemetry::finish(metrics, started);
        Ok::<_, Error>(answer)
    }))
    .await
}
