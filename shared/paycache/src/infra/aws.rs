//! The AWS SDK for Rust, set up once per execution environment, for the two
//! AWS APIs this project calls: Secrets Manager `GetSecretValue` (at init,
//! and again when Redis refuses a rotated token) and CloudWatch
//! `PutMetricData` (`metrics-emitter`).
//!
//! One [`SdkConfig`] per execution environment ([`sdk_config`]): the standard
//! AWS configuration chain (`AWS_REGION`, the Lambda role's credentials from
//! the environment, `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` for a
//! local endpoint such as `moto_server`), the SDK's retries, an operation
//! timeout, and its HTTP client on rustls with ring — the TLS stack of
//! every other connection here — verifying against the system's roots.
//!
//! Errors keep the service's error code (`ResourceNotFoundException`) and
//! never a message or body (a body may hold a secret).

use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;

/// Why an AWS call failed. The text is safe to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwsError {
    #[error("AWS configuration: {0} is not set or not valid")]
    /// Configuration (the variable's name).
    Config(&'static str),
    #[error("{service} did not answer within {timeout_ms} ms")]
    /// No answer in time.
    Timeout {
        /// The AWS service called.
        service: &'static str,
        /// The time allowed.
        timeout_ms: u64,
    },
    #[error("{service} could not be reached")]
    /// No connection (DNS, TCP, TLS).
    Transport {
        /// The AWS service called.
        service: &'static str,
    },
    #[error("{service} answered HTTP {status} ({code})")]
    /// An error answer.
    Status {
        /// The AWS service called.
        service: &'static str,
        /// The HTTP status.
        status: u16,
        /// The service's error code (`ResourceNotFoundException`, ...), or
        /// "unknown"; never the message or the body.
        code: String,
    },
    #[error("{service} answered with a body that could not be read")]
    /// An answer that could not be read.
    Body {
        /// The AWS service called.
        service: &'static str,
    },
}

/// The shared AWS configuration of this execution environment, loaded at
/// the first call (region and endpoint resolved then; credentials at the
/// first request). `timeout` bounds each operation, retries included; the
/// first caller's value is kept.
pub async fn sdk_config(timeout: Duration) -> &'static SdkConfig {
    static CONFIG: tokio::sync::OnceCell<SdkConfig> = tokio::sync::OnceCell::const_new();
    CONFIG
        .get_or_init(|| async move {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https();
            aws_config::defaults(BehaviorVersion::latest())
                .http_client(http)
                .timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .operation_timeout(timeout)
                        .build(),
                )
                .load()
                .await
        })
        .await
}

/// The region of `config`, or the error that names the variable to set.
pub(crate) fn require_region(config: &SdkConfig) -> Result<(), AwsError> {
    match config.region() {
        Some(r) if !r.as_ref().is_empty() => Ok(()),
        _ => Err(AwsError::Config("AWS_REGION")),
    }
}

/// Maps an SDK error to [`AwsError`], keeping only the service's error
/// code and the HTTP status.
pub fn error<E>(
    service: &'static str,
    timeout: Duration,
    err: &SdkError<E, HttpResponse>,
) -> AwsError
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::TimeoutError(_) => AwsError::Timeout {
            service,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        },
        SdkError::DispatchFailure(f) if f.is_timeout() => AwsError::Timeout {
            service,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        },
        SdkError::ServiceError(e) => AwsError::Status {
            service,
            status: e.raw().status().as_u16(),
            code: code(e.err().code()),
        },
        SdkError::ResponseError(_) => AwsError::Body { service },
        _ => AwsError::Transport { service },
    }
}

/// Only identifier characters of a service's error code are kept.
fn code(code: Option<&str>) -> String {
    match code {
        Some(c)
            if !c.is_empty()
                && c.len() <= 64
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_') =>
        {
            c.to_owned()
        }
        _ => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_identifiers_only() {
        assert_eq!(
            code(Some("ResourceNotFoundException")),
            "ResourceNotFoundException"
        );
        assert_eq!(code(Some("not a code: secret=abc")), "unknown");
        assert_eq!(code(None), "unknown");
    }
}

/// One AWS operation the code can call, declared next to the call: the
/// deployment contract test (`tests/deploy/contract.py`) checks that the
/// template lets each function make it (its role) and reach it (its
/// subnets). `paycache-dev aws-calls` prints them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsCall {
    /// Where in the code.
    pub site: &'static str,
    /// The functions (crate names) that can make it; `*` is every one.
    pub functions: &'static [&'static str],
    /// The endpoint's service (`secretsmanager`, `monitoring`,
    /// `cognito-idp`, `execute-api`; `jwks` for the issuer's keys, not an
    /// AWS API).
    pub service: &'static str,
    /// The IAM action, if the call is signed.
    pub action: Option<&'static str>,
    /// The resource ARNs' endings the action is needed on (empty: any).
    pub resources: &'static [&'static str],
    /// Made only when this variable is set.
    pub when_env: Option<&'static str>,
}
