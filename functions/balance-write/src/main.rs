//! `GET`/`PUT /wallets/{wallet_id}/balance` — see `paycache::routes::balance`.

use lambda_http::{Error, Request, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    paycache::init_logging();
    let app = paycache::App::from_env()?;
    let app = &app;
    lambda_http::run(service_fn(move |req: Request| async move {
        Ok::<_, std::convert::Infallible>(paycache::routes::balance::handle(app, req).await)
    }))
    .await
}
