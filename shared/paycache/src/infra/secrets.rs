//! Secrets from AWS Secrets Manager: the Redis auth token and the database
//! credentials.
//!
//! In AWS, configuration names the secrets (`REDIS_AUTH_TOKEN_SECRET_ARN`,
//! `REDIS_DURABLE_AUTH_TOKEN_SECRET_ARN`, `DATABASE_SECRET_ARN`) instead of
//! carrying their values; [`crate::App::from_env`] fetches each once at init.
//! The Redis token is fetched again when Redis refuses it (`WRONGPASS`,
//! after an ElastiCache token rotation), at most once per
//! [`REFETCH_COOLDOWN`] per execution environment (see
//! [`crate::infra::connection::Redis`]).
//!
//! Secret formats:
//! - Redis token: the plain token, or a JSON object with the token under
//!   `token` (what `template.yaml` generates) or `password`.
//! - Database: the JSON object RDS and RDS Proxy use (`username`,
//!   `password`, optionally `host`, `port`, `dbname`); the user name and
//!   password replace those of `DATABASE_URL`, which keeps naming the
//!   endpoint (the RDS Proxy) and the TLS mode.
//!
//! Secret values are held in [`Secret`] and never logged; errors name the
//! configuration variable and the service's error code only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::infra::aws::AwsError;
pub use crate::infra::config::DatabaseCredentials;
use crate::infra::config::Secret;

/// A failed fetch does not retry for this long; a rotation is found again
/// by the next refused connection after it.
pub const REFETCH_COOLDOWN: Duration = Duration::from_secs(5);

/// `GetSecretValue`, by every function configured with a secret's ARN.
pub const AWS_CALLS: &[crate::infra::aws::AwsCall] = &[crate::infra::aws::AwsCall {
    site: "infra/secrets.rs",
    functions: &["*"],
    service: "secretsmanager",
    action: Some("secretsmanager:GetSecretValue"),
    resources: &[],
    when_env: Some("DATABASE_SECRET_ARN"),
}];

#[derive(Debug, Clone, thiserror::Error)]
/// Why a secret could not be used. The text never contains the secret.
pub enum SecretError {
    #[error("{variable}: the secret could not be fetched: {source}")]
    /// Secrets Manager did not give it.
    Fetch {
        /// The variable naming the secret's ARN.
        variable: &'static str,
        #[source]
        /// Why.
        source: AwsError,
    },
    #[error("{variable}: the secret has no SecretString in a supported format ({expected})")]
    /// The secret is not in the expected format.
    Format {
        /// The variable naming the secret's ARN.
        variable: &'static str,
        /// What was expected.
        expected: &'static str,
    },
}

/// One secret: where it is and who asks for it; counts its fetches.
#[derive(Clone)]
pub struct SecretSource {
    client: aws_sdk_secretsmanager::Client,
    /// The operation timeout the client was configured with (for errors).
    timeout: Duration,
    arn: String,
    /// The configuration variable that named it, for error messages.
    variable: &'static str,
    fetches: Arc<AtomicU64>,
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSource")
            .field("variable", &self.variable)
            .field("fetches", &self.fetches())
            .finish_non_exhaustive()
    }
}

impl SecretSource {
    /// A source for the secret `arn`, named by `variable` in errors.
    pub fn new(
        client: aws_sdk_secretsmanager::Client,
        timeout: Duration,
        arn: impl Into<String>,
        variable: &'static str,
    ) -> Self {
        Self {
            client,
            timeout,
            arn: arn.into(),
            variable,
            fetches: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many times `GetSecretValue` was sent for this secret.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// `GetSecretValue` (current version): the `SecretString`.
    pub(crate) async fn fetch_string(&self) -> Result<Secret, SecretError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let answer = self
            .client
            .get_secret_value()
            .secret_id(&self.arn)
            .send()
            .await
            .map_err(|e| SecretError::Fetch {
                variable: self.variable,
                source: crate::infra::aws::error("secretsmanager", self.timeout, &e),
            })?;
        match answer.secret_string {
            Some(s) => Ok(Secret::new(s)),
            None => Err(self.format_error("a SecretString")),
        }
    }

    /// The Redis auth token held by the secret.
    pub(crate) async fn fetch_redis_token(&self) -> Result<Secret, SecretError> {
        let raw = self.fetch_string().await?;
        redis_token(raw.expose()).ok_or_else(|| {
            self.format_error(
                "the token, or JSON with `token` or `password`: 16–128 printable characters",
            )
        })
    }

    /// The database user name and password held by the secret.
    pub(crate) async fn fetch_database_credentials(
        &self,
    ) -> Result<DatabaseCredentials, SecretError> {
        let raw = self.fetch_string().await?;
        database_credentials(raw.expose())
            .ok_or_else(|| self.format_error("JSON with `username` and `password`"))
    }

    fn format_error(&self, expected: &'static str) -> SecretError {
        SecretError::Format {
            variable: self.variable,
            expected,
        }
    }
}

/// Reads a Redis token secret: the token itself, or JSON with `token` or
/// `password`. `None` when neither gives a valid ElastiCache token.
pub(crate) fn redis_token(raw: &str) -> Option<Secret> {
    let token = match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Object(map)) => ["token", "password"]
            .iter()
            .find_map(|k| map.get(*k)?.as_str().map(str::to_owned))?,
        _ => raw.trim().to_owned(),
    };
    crate::infra::config::is_valid_auth_token(&token).then(|| Secret::new(token))
}

/// Reads an RDS-style database secret.
pub(crate) fn database_credentials(raw: &str) -> Option<DatabaseCredentials> {
    let value: serde_json::Value = serde_json::from_str(raw).ok()?;
    let username = value.get("username")?.as_str()?;
    let password = value.get("password")?.as_str()?;
    let ok = !username.is_empty()
        && username.len() <= 63
        && !password.is_empty()
        && password.len() <= 1024;
    ok.then(|| DatabaseCredentials {
        username: username.to_owned(),
        password: Secret::new(password),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_token_formats() {
        let t = "abcdefghijklmnop-0123";
        assert_eq!(redis_token(t).unwrap().expose(), t);
        assert_eq!(
            redis_token(&format!(r#"{{"token":"{t}"}}"#))
                .unwrap()
                .expose(),
            t
        );
        assert_eq!(
            redis_token(&format!(r#"{{"password":"{t}"}}"#))
                .unwrap()
                .expose(),
            t
        );
        assert!(redis_token("short").is_none());
        assert!(redis_token(r#"{"other":"abcdefghijklmnop-0123"}"#).is_none());
        assert!(redis_token("has a space in the middle").is_none());
    }

    #[test]
    fn database_secret_format() {
        let c = database_credentials(
            r#"{"username":"app","password":"p@ss w0rd","engine":"postgres","host":"h","port":5432}"#,
        )
        .unwrap();
        assert_eq!(c.username, "app");
        assert_eq!(c.password.expose(), "p@ss w0rd");
        assert!(!format!("{c:?}").contains("p@ss"));
        assert!(database_credentials(r#"{"username":"app"}"#).is_none());
        assert!(database_credentials("not json").is_none());
    }
}
