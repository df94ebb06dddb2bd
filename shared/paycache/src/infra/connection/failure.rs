//! Why a Redis call or the client's set-up failed: the kinds callers
//! and metrics tell apart, classified from redis-rs errors, and the words
//! `paycache-dev check` prints — never a server reply, a URL or a token.

use redis::RedisError;

/// Why a Redis call did not produce an answer. Callers treat every variant
/// the same way — fall through to the database — but logs and metrics tell
/// them apart. The text never contains server replies or addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RedisUnavailable {
    #[error("the Redis circuit breaker is open")]
    /// The circuit breaker is open.
    BreakerOpen,
    #[error("Redis did not answer within the response timeout")]
    /// No answer within the response timeout.
    Timeout,
    #[error("the Redis connection failed")]
    /// No connection.
    Connection,
    #[error("Redis answered with an error")]
    /// Redis answered with an error.
    Server,
}

impl RedisUnavailable {
    /// Short token for `Cache-Status` details and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BreakerOpen => "breaker-open",
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::Server => "server-error",
        }
    }
}

/// Why the Redis client could not be built from configuration.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("REDIS_URL: not a valid Redis URL")]
    /// The URL is not a Redis URL.
    InvalidUrl,
    #[error("REDIS_CA_CERT: the file cannot be read")]
    /// The CA file could not be read.
    CaCert,
}

/// A connection failure in words, without the error's own text where it
/// could carry more than a kind (the URL is never part of it).
pub(super) fn describe_failure(at: &str, err: &RedisError) -> String {
    let chain = crate::infra::telemetry::ErrorChain(err).to_string();
    let lower = chain.to_lowercase();
    if is_auth_refusal(err) {
        format!(
            "Redis at {at} refused the password (AUTH failed): check the token (REDIS_AUTH_TOKEN, its secret, or the URL's password)"
        )
    } else if matches!(err.code(), Some("NOAUTH")) || lower.contains("noauth") {
        format!("Redis at {at} requires a password and none was given")
    } else if lower.contains("connection refused") {
        format!("Redis at {at} is unreachable: connection refused (nothing listens there)")
    } else if lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
        || lower.contains("invalidcertificate")
    {
        format!(
            "the TLS handshake with Redis at {at} failed ({}): check REDIS_CA_CERT and that the host name matches the certificate",
            tls_reason(&lower)
        )
    } else if err.is_io_error() {
        format!("Redis at {at} is unreachable ({:?})", err.kind())
    } else {
        format!("Redis at {at} answered an error ({:?})", err.kind())
    }
}

/// The TLS failure's kind, from rustls' wording.
pub(super) fn tls_reason(lower: &str) -> &'static str {
    if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        "the certificate's issuer is not trusted"
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        "the certificate is not valid for this host name"
    } else if lower.contains("expired") {
        "the certificate has expired"
    } else {
        "the server's certificate or TLS settings"
    }
}

/// `WRONGPASS`, `NOAUTH` or a failed handshake: the token is not (or no
/// longer) accepted.
pub(super) fn is_auth_refusal(err: &RedisError) -> bool {
    err.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("WRONGPASS" | "NOAUTH"))
}

pub(super) fn classify(err: &RedisError) -> RedisUnavailable {
    use redis::{ErrorKind, ServerErrorKind};
    let unavailable_kind = matches!(
        err.kind(),
        ErrorKind::AuthenticationFailed
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
            )
    );
    if err.is_timeout() {
        RedisUnavailable::Timeout
    } else if err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_cluster_error()
        || err.is_unrecoverable_error()
        || unavailable_kind
    {
        RedisUnavailable::Connection
    } else {
        RedisUnavailable::Server
    }
}
