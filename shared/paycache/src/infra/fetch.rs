//! One HTTPS `GET` of a small document (the issuer's JWKS): hyper with
//! rustls (ring) and the system's trusted roots — certificate verification
//! always on, as for Redis and PostgreSQL. Plain `http://` is accepted for
//! loopback addresses only (tests and local issuers).

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Why a fetch failed (no URL text beyond the host, no body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Not an `https://` URL (or `http://` to a loopback address).
    #[error("not an https:// URL")]
    Url,
    /// Not reached, refused, or TLS verification failed.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No answer within the budget.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Answered with another status than 200.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// The body is over the size limit.
    #[error("the document is larger than {0} bytes")]
    TooLarge(usize),
}

/// The largest document accepted.
const LIMIT: usize = 256 * 1024;

/// `GET url`, its body as text, within `timeout`.
pub async fn get(url: &str, timeout: Duration) -> Result<String, FetchError> {
    let uri: http::Uri = url.parse().map_err(|_| FetchError::Url)?;
    let loopback = matches!(
        uri.host(),
        Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
    );
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if loopback => {}
        _ => return Err(FetchError::Url),
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| FetchError::Unreachable(format!("no trusted roots: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let request = http::Request::get(uri)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|_| FetchError::Url)?;
    let answer = tokio::time::timeout(timeout, async {
        let response = client.request(request).await.map_err(|e| {
            FetchError::Unreachable(crate::infra::telemetry::ErrorChain(&e).to_string())
        })?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(FetchError::Status(status));
        }
        let body = Limited::new(response.into_body(), LIMIT)
            .collect()
            .await
            .map_err(|_| FetchError::TooLarge(LIMIT))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| FetchError::Status(status))
    })
    .await;
    answer.unwrap_or(Err(FetchError::Timeout(timeout)))
}
