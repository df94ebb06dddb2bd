//! `session-signin`: the Cognito user pool's Pre Token Generation trigger
//! (event version 2, which may customize access tokens).
//!
//! Every time the user pool issues tokens — a sign-in by any flow, and a
//! refresh — this creates the design's session (`session:{sid}`: user id,
//! e-mail, roles and permissions from the user's groups, creation time)
//! through [`sessions::sign_in`] and adds its id as the `sid` claim of the
//! access token. The API then admits the token only while the session
//! exists (see `crate::edge::routes::gate`).
//!
//! - **Refresh** issues a new session each time; the previous one idles
//!   out with its sliding TTL. A logout ends the current session,
//!   blacklists the token, and signs the user out at the user pool (its
//!   refresh tokens are revoked), so no new session can be minted from the
//!   old sign-in.
//! - A user whose `sub` is not a user id, or a Redis that cannot store the
//!   session, fails the trigger: Cognito then refuses the sign-in rather
//!   than issuing a token the API would refuse anyway.
//! - Only the access token gets `sid`; the ID token is not for the API
//!   (`token_use: id` is refused there). The response carries that claim
//!   and nothing else ([`only_what_changes`]).
//! - `sid` may be added: the claims a V2 trigger may not add or override
//!   are `acr`, `amr`, `aud`, `at_hash`, `auth_time`, `azp`,
//!   `cognito:username`, `exp`, `iat`, `identities`, `iss`, `jti`, `nbf`,
//!   `nonce`, `origin_jti`, `sub`, `token_use` (Cognito Developer Guide,
//!   "Pre token generation Lambda trigger": claims you can't modify).
//!   Access-token customization needs the Essentials (or Plus) feature
//!   plan and the V2 event, which the template sets.
//! - The session's user is the Cognito user's `sub`; their `users` row
//!   (profile) belongs to the platform's user service, keyed by that same
//!   id — created when the platform creates the user (it creates them:
//!   self sign-up is off by default), or by a Post Confirmation trigger for
//!   a pool that allows sign-up (docs/deploying.md -> Deploying).

use aws_lambda_events::event::cognito::{
    CognitoAccessTokenGenerationV2, CognitoEventUserPoolsPreTokenGenV2,
};
use serde_json::Value;

use crate::app::App;
use crate::domain::sessions::{self, SignIn};
use crate::infra::keys::UserId;

/// Why a trigger event was refused (the sign-in fails).
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// Not a Pre Token Generation event.
    #[error("not a Pre Token Generation (V2) event")]
    Malformed,
    /// The user's `sub` attribute is missing or not a user id.
    #[error("the user's sub is not a user id")]
    NoUserId,
    /// The session could not be stored (PostgreSQL, its source of truth).
    #[error("the session could not be created: {0}")]
    Unavailable(crate::domain::sessions::SessionError),
}

/// Creates the session and returns the event with `sid` added to the
/// access token's claims.
pub async fn pre_token_generation(
    sessions: &sessions::Sessions,
    event: Value,
) -> Result<Value, SignInError> {
    let mut event: CognitoEventUserPoolsPreTokenGenV2 =
        serde_json::from_value(event).map_err(|_| SignInError::Malformed)?;
    let attrs = &event.request.user_attributes;
    let user = attrs
        .get("sub")
        .and_then(|s| UserId::parse(s).ok())
        .ok_or(SignInError::NoUserId)?;
    let sign_in = SignIn {
        user,
        email: attrs.get("email").cloned().unwrap_or_default(),
        groups: event.request.group_configuration.groups_to_override.clone(),
        ip_address: None,
        device_info: event
            .cognito_event_user_pools_header
            .caller_context
            .client_id
            .clone(),
    };
    let sid = sessions::sign_in(sessions, &sign_in)
        .await
        .map_err(SignInError::Unavailable)?;
    let trigger = event
        .cognito_event_user_pools_header
        .trigger_source
        .as_ref()
        .map(|t| format!("{t:?}"))
        .unwrap_or_default();
    tracing::info!(user_id = %user, trigger = %trigger, "session created for a token issuance");
    let mut access = CognitoAccessTokenGenerationV2::default();
    access
        .claims_to_add_or_override
        .insert("sid".into(), Value::String(sid.to_string()));
    let mut details = event
        .response
        .claims_and_scope_override_details
        .take()
        .unwrap_or_default();
    details.access_token_generation = Some(access);
    event.response.claims_and_scope_override_details = Some(details);
    let mut answer = serde_json::to_value(&event).map_err(|_| SignInError::Malformed)?;
    only_what_changes(&mut answer);
    Ok(answer)
}

/// Keeps in the response only what the trigger changes: the access
/// token's added claims. `aws_lambda_events` serializes every member, and
/// Cognito reads an empty `groupOverrideDetails` as "suppress the user's
/// groups" in both tokens ("If you provide an empty or null object in the
/// response, then the groups are suppressed", Cognito Developer Guide, Pre
/// token generation Lambda trigger); empty `claimsToSuppress` and scope
/// lists are dropped for the same reason.
pub(crate) fn only_what_changes(answer: &mut Value) {
    let Some(details) = answer
        .pointer_mut("/response/claimsAndScopeOverrideDetails")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    details.retain(|k, _| k == "accessTokenGeneration");
    if let Some(access) = details
        .get_mut("accessTokenGeneration")
        .and_then(Value::as_object_mut)
    {
        access.retain(|k, _| k == "claimsToAddOrOverride");
    }
}

/// `session-signin`'s handler (see [`pre_token_generation`]).
pub async fn handle_pre_token(
    app: &App,
    _: &(),
    event: Value,
    _: lambda_http::lambda_runtime::Context,
) -> crate::edge::events::Answer {
    pre_token_generation(&app.sessions, event)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "sign-in refused");
            e.into()
        })
}
