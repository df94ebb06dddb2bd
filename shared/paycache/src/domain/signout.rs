//! Signing a user out at the issuer, so that logout also ends the ability
//! to mint new tokens: Cognito's `AdminUserGlobalSignOut` revokes every
//! refresh token of the user (each refresh would otherwise run the sign-in
//! trigger again and create a new session). Configured by
//! `COGNITO_USER_POOL_ID` (the template sets it with `UserPool=create`);
//! without it, logout ends the session and the token only, and docs/security.md
//! says so.
//!
//! The user's Cognito username is their `sub` (the template's pool signs
//! users in by e-mail, so Cognito names them by `sub`). One request to
//! Cognito, sent together with the blacklist and session requests.

use std::time::Duration;

use crate::infra::aws::AwsError;
use crate::infra::keys::UserId;

/// Budget of one Cognito request, retries included.
const TIMEOUT: Duration = Duration::from_secs(3);

/// `AdminUserGlobalSignOut`, by `session-logout` when a user pool is
/// configured.
pub const AWS_CALLS: &[crate::infra::aws::AwsCall] = &[crate::infra::aws::AwsCall {
    site: "domain/signout.rs",
    functions: &["session-logout"],
    service: "cognito-idp",
    action: Some("cognito-idp:AdminUserGlobalSignOut"),
    resources: &[],
    when_env: Some("COGNITO_USER_POOL_ID"),
}];

/// The user pool to sign users out of; its client is built at the first
/// logout (a cold start does not pay for it).
#[derive(Debug, Clone)]
pub struct IssuerSignOut {
    user_pool_id: String,
    client: std::sync::Arc<tokio::sync::OnceCell<aws_sdk_cognitoidentityprovider::Client>>,
}

impl IssuerSignOut {
    /// From `COGNITO_USER_POOL_ID`, when set.
    pub fn from_env() -> Option<Self> {
        std::env::var("COGNITO_USER_POOL_ID")
            .ok()
            .filter(|p| !p.trim().is_empty())
            .map(|p| Self::new(p.trim()))
    }

    /// For the user pool `user_pool_id`.
    pub fn new(user_pool_id: &str) -> Self {
        Self {
            user_pool_id: user_pool_id.to_owned(),
            client: Default::default(),
        }
    }

    async fn sdk(&self) -> Result<&aws_sdk_cognitoidentityprovider::Client, AwsError> {
        let client = self
            .client
            .get_or_init(|| async {
                aws_sdk_cognitoidentityprovider::Client::new(
                    crate::infra::aws::sdk_config(TIMEOUT).await,
                )
            })
            .await;
        match client.config().region() {
            Some(_) => Ok(client),
            None => Err(AwsError::Config("AWS_REGION")),
        }
    }

    /// Revokes every refresh token of `user` (idempotent). A user the pool
    /// does not know has none: that is a success.
    #[tracing::instrument(skip_all, fields(user_id = %user))]
    pub async fn sign_out(&self, user: &UserId) -> Result<(), AwsError> {
        let client = self.sdk().await?;
        match client
            .admin_user_global_sign_out()
            .user_pool_id(&self.user_pool_id)
            .username(user.to_string())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_user_not_found_exception()) =>
            {
                tracing::info!("not a user of the pool: no refresh token to revoke");
                Ok(())
            }
            Err(e) => Err(crate::infra::aws::error("cognito-idp", TIMEOUT, &e)),
        }
    }
}
