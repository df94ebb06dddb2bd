//! The API Gateway Management API client: `PostToConnection` (a frame) and
//! `DeleteConnection` (a close), with the SDK's standard retry for throttled
//! calls; what each call's outcome means to the sender ([`Posted`]).

use crate::infra::aws::AwsError;
use crate::infra::aws::error as aws_error;
use crate::infra::aws::sdk_config;
use crate::infra::keys::ConnectionId;
use std::time::Duration;

/// `PostToConnection` and `DeleteConnection` (the Management API), by
/// `ws-sender`.
pub const AWS_CALLS: &[crate::infra::aws::AwsCall] = &[crate::infra::aws::AwsCall {
    site: "domain/delivery.rs",
    functions: &["ws-sender"],
    service: "execute-api",
    action: Some("execute-api:ManageConnections"),
    resources: &["/POST/@connections/*", "/DELETE/@connections/*"],
    when_env: None,
}];

/// The outcome of one post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// Delivered.
    Sent,
    /// 410: the connection is gone.
    Gone,
    /// Anything else, after the retries (throttled, unreachable, …).
    Failed(AwsError),
}

/// The API Gateway Management API (`PostToConnection`).
#[derive(Debug, Clone)]
pub struct Management {
    client: aws_sdk_apigatewaymanagement::Client,
    timeout: Duration,
}

impl Management {
    /// A client for `endpoint` (the API's
    /// `https://{api-id}.execute-api.{region}.amazonaws.com/{stage}`, or
    /// the development gateway), retrying throttled posts up to `attempts`
    /// times with exponential backoff and full jitter.
    pub async fn new(endpoint: &str, attempts: u32, timeout: Duration) -> Self {
        let sdk = sdk_config(timeout).await;
        let retry = aws_sdk_apigatewaymanagement::config::retry::RetryConfig::standard()
            .with_max_attempts(attempts.max(1))
            .with_initial_backoff(Duration::from_millis(20))
            .with_max_backoff(Duration::from_secs(1));
        let config = aws_sdk_apigatewaymanagement::config::Builder::from(sdk)
            .endpoint_url(endpoint)
            .retry_config(retry)
            .build();
        Self {
            client: aws_sdk_apigatewaymanagement::Client::from_conf(config),
            timeout,
        }
    }

    /// Posts `frame` to `connection`.
    pub async fn post(&self, connection: &ConnectionId, frame: &str) -> Posted {
        let sent = self
            .client
            .post_to_connection()
            .connection_id(connection.as_str())
            .data(aws_sdk_apigatewaymanagement::primitives::Blob::new(
                frame.as_bytes(),
            ))
            .send()
            .await;
        match sent {
            Ok(_) => Posted::Sent,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_gone_exception()) => Posted::Gone,
            Err(e) => Posted::Failed(aws_error("API Gateway Management API", self.timeout, &e)),
        }
    }
}

impl Management {
    /// Closes `connection` (`DeleteConnection`). A connection already gone
    /// is [`Posted::Gone`].
    pub async fn close(&self, connection: &ConnectionId) -> Posted {
        let closed = self
            .client
            .delete_connection()
            .connection_id(connection.as_str())
            .send()
            .await;
        match closed {
            Ok(_) => Posted::Sent,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_gone_exception()) => Posted::Gone,
            Err(e) => Posted::Failed(aws_error("API Gateway Management API", self.timeout, &e)),
        }
    }
}
