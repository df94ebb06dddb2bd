//! `GET /health` — see `paycache::routes::health`.

use lambda_http::{Error, Request, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    paycache::init_logging();
    let app = paycache::App::from_env()?;
    let app = &app;
    lambda_http::run(service_fn(move |req: Request| async move {
        Ok::<_, std::convert::Infallible>(paycache::routes::health::handle(app, req).await)
    }))
    .await
}
