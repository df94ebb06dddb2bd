//! A small signed client for the two AWS APIs this project calls:
//! Secrets Manager `GetSecretValue` (every function, once at init and again
//! when Redis refuses a rotated token) and, for tests, the calls that create
//! and rotate a secret.
//!
//! Why not `aws-sdk-secretsmanager`: every function would carry the SDK's
//! runtime (config loading, credential chain, retry and endpoint machinery),
//! about 2 MB of each `bootstrap` and tens of milliseconds of cold start, for
//! one request at init. What is kept from the SDK is the part that must be
//! exactly right — the request signature, `aws-sigv4`, AWS's own signer —
//! and the HTTP client is the `hyper` that `lambda_runtime` already carries,
//! with rustls (ring) and the system's roots, like every other TLS connection
//! here.
//!
//! Credentials come from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
//! `AWS_SESSION_TOKEN`, which Lambda sets from the function's role (and which
//! `cargo lambda watch` passes through); the region from `AWS_REGION`; the
//! endpoint from `AWS_ENDPOINT_URL_<SERVICE>` or `AWS_ENDPOINT_URL` when set
//! (a local endpoint such as `moto_server`), `https://<service>.<region>.amazonaws.com`
//! otherwise. Errors name the service's error code, never a response body (a
//! body may hold a secret).

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The largest response read (a secret is at most 64 KiB).
const MAX_RESPONSE: usize = 1 << 20;

/// Why an AWS call failed. The text is safe to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwsError {
    #[error("AWS configuration: {0} is not set or not valid")]
    Config(&'static str),
    #[error("the AWS request could not be signed")]
    Signing,
    #[error("{service} did not answer within {timeout_ms} ms")]
    Timeout {
        service: &'static str,
        timeout_ms: u64,
    },
    #[error("{service} could not be reached")]
    Transport { service: &'static str },
    #[error("{service} answered HTTP {status} ({code})")]
    Status {
        service: &'static str,
        status: u16,
        /// The service's error code (`ResourceNotFoundException`, ...), or
        /// "unknown"; never the message or the body.
        code: String,
    },
    #[error("{service} answered with a body that could not be read")]
    Body { service: &'static str },
}

/// One AWS API: its signing name, the suffix of its `AWS_ENDPOINT_URL_*`
/// variable and its host prefix.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    pub signing_name: &'static str,
    pub endpoint_env: &'static str,
    pub host_prefix: &'static str,
}

pub const SECRETS_MANAGER: Service = Service {
    signing_name: "secretsmanager",
    endpoint_env: "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    host_prefix: "secretsmanager",
};

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// A signed HTTPS client for one region. Cheap to clone.
#[derive(Clone)]
pub struct AwsClient {
    http: Client<Https, Full<Bytes>>,
    region: String,
    timeout: Duration,
}

impl std::fmt::Debug for AwsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsClient")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl AwsClient {
    /// Reads the region from the environment and builds the HTTPS client
    /// (with the system's trusted roots, shared with the PostgreSQL client);
    /// does not touch the network.
    pub fn from_env(timeout: Duration) -> Result<Self, AwsError> {
        let region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .ok()
            .filter(|r| {
                !r.is_empty()
                    && r.len() <= 32
                    && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
            .ok_or(AwsError::Config("AWS_REGION"))?;
        let tls = crate::tls::client_config(crate::tls::native_roots().clone());
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let http = Client::builder(TokioExecutor::new()).build(https);
        Ok(Self {
            http,
            region,
            timeout,
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    fn endpoint(&self, service: Service) -> String {
        let configured = std::env::var(service.endpoint_env)
            .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            .ok()
            .filter(|e| !e.is_empty());
        match configured {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!(
                "https://{}.{}.amazonaws.com",
                service.host_prefix, self.region
            ),
        }
    }

    /// POSTs an AWS JSON 1.1 request (`X-Amz-Target: <target>`) and returns
    /// the response body of a 2xx answer.
    pub async fn json_call(
        &self,
        service: Service,
        target: &str,
        body: &serde_json::Value,
    ) -> Result<Bytes, AwsError> {
        let body = serde_json::to_vec(body).map_err(|_| AwsError::Signing)?;
        self.post(
            service,
            "application/x-amz-json-1.1",
            Some(target),
            Bytes::from(body),
        )
        .await
    }

    /// Signs and sends one POST to the service's endpoint, within the
    /// client's timeout.
    pub async fn post(
        &self,
        service: Service,
        content_type: &str,
        target: Option<&str>,
        body: Bytes,
    ) -> Result<Bytes, AwsError> {
        let timeout_ms = self.timeout.as_millis() as u64;
        match tokio::time::timeout(
            self.timeout,
            self.post_unbounded(service, content_type, target, body),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(AwsError::Timeout {
                service: service.signing_name,
                timeout_ms,
            }),
        }
    }

    async fn post_unbounded(
        &self,
        service: Service,
        content_type: &str,
        target: Option<&str>,
        body: Bytes,
    ) -> Result<Bytes, AwsError> {
        let uri = format!("{}/", self.endpoint(service));
        let mut builder = http::Request::builder()
            .method("POST")
            .uri(&uri)
            .header("content-type", content_type);
        if let Some(target) = target {
            builder = builder.header("x-amz-target", target);
        }
        let mut request = builder
            .body(Full::new(body.clone()))
            .map_err(|_| AwsError::Config("AWS_ENDPOINT_URL"))?;
        self.sign(service, &mut request, &body)?;
        let service_name = service.signing_name;
        let response = self.http.request(request).await.map_err(|e| {
            tracing::warn!(service = service_name, error = %e, "AWS request failed");
            AwsError::Transport {
                service: service_name,
            }
        })?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|_| AwsError::Body {
                service: service_name,
            })?
            .to_bytes();
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(AwsError::Status {
                service: service_name,
                status: status.as_u16(),
                code: error_code(&bytes),
            })
        }
    }

    fn sign(
        &self,
        service: Service,
        request: &mut http::Request<Full<Bytes>>,
        body: &[u8],
    ) -> Result<(), AwsError> {
        let access_key = env_credential("AWS_ACCESS_KEY_ID")?;
        let secret_key = env_credential("AWS_SECRET_ACCESS_KEY")?;
        let session_token = std::env::var("AWS_SESSION_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        let identity: Identity =
            Credentials::new(access_key, secret_key, session_token, None, "environment").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(service.signing_name)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|_| AwsError::Signing)?
            .into();
        let uri = request.uri().to_string();
        let headers: Vec<(&str, &str)> = request
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
            .collect();
        let signable = SignableRequest::new(
            "POST",
            uri.as_str(),
            headers.into_iter(),
            SignableBody::Bytes(body),
        )
        .map_err(|_| AwsError::Signing)?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|_| AwsError::Signing)?
            .into_parts();
        instructions.apply_to_request_http1x(request);
        Ok(())
    }
}

fn env_credential(name: &'static str) -> Result<String, AwsError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or(AwsError::Config(name))
}

/// The error code of an AWS JSON (`__type`) or query (`<Code>`) error body:
/// only a short identifier is kept, never a message.
fn error_code(body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("__type")?.as_str().map(str::to_owned))
        .map(|t| t.rsplit('#').next().unwrap_or_default().to_owned());
    let from_xml = || {
        let text = std::str::from_utf8(body).ok()?;
        let start = text.find("<Code>")? + "<Code>".len();
        let end = start + text[start..].find("</Code>")?;
        Some(text[start..end].to_owned())
    };
    from_json
        .or_else(from_xml)
        .filter(|c| {
            !c.is_empty()
                && c.len() <= 64
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_identifiers_only() {
        assert_eq!(
            error_code(br#"{"__type":"com.amazonaws#ResourceNotFoundException","message":"x"}"#),
            "ResourceNotFoundException"
        );
        assert_eq!(
            error_code(b"<ErrorResponse><Error><Code>Throttling</Code></Error></ErrorResponse>"),
            "Throttling"
        );
        assert_eq!(error_code(br#"{"__type":"a b <script>"}"#), "unknown");
        assert_eq!(error_code(b"secret-value-here"), "unknown");
    }
}
