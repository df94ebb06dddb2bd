//! The floor of the functions benchmark (`benches/functions/`): the least
//! an HTTP function that reads Redis can do — a minimal `lambda_http`
//! function that does one `GET` of `FLOOR_KEY` on `REDIS_URL` and returns
//! the value. No configuration, no validation, no metrics, no logging.
//! Every HTTP function's cache-hit invocation time is reported as a ratio
//! to this one's, measured in the same run. Not deployed.

use lambda_http::{Body, Error, Request, Response, run, service_fn};

/// `#[tokio::main]`'s runtime (multi-threaded), or with
/// `FLOOR_CURRENT_THREAD` set the single-threaded one the HTTP functions
/// use: the benchmark reports the functions against both floors.
fn main() -> Result<(), Error> {
    let mut runtime = if std::env::var_os("FLOOR_CURRENT_THREAD").is_some() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    runtime.enable_all().build()?.block_on(serve())
}

async fn serve() -> Result<(), Error> {
    let client = redis::Client::open(std::env::var("REDIS_URL")?)?;
    let conn = redis::aio::ConnectionManager::new(client).await?;
    let key = std::env::var("FLOOR_KEY").unwrap_or_else(|_| "floor".to_owned());
    let (conn, key) = (&conn, key.as_str());
    run(service_fn(move |_request: Request| async move {
        let mut conn = conn.clone();
        let value: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut conn).await?;
        Ok::<_, Error>(
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from(value.unwrap_or_default()))?,
        )
    }))
    .await
}
