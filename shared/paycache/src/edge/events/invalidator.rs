//! `cache-invalidator`: EventBridge's `UserProfileUpdated`,
//! `TransactionCompleted` and `SystemAnnouncement` (the last only from the
//! platform's own source and account), typed, then applied.

use super::Answer;
use super::rejected;
use crate::app::App;
use crate::domain::invalidation;
use crate::domain::invalidation::Invalidation;
use crate::domain::invalidation::InvalidationError;
use crate::infra::config::AnnouncementTrust;
use crate::infra::keys::TransactionId;
use crate::infra::keys::UserId;
use crate::infra::keys::WalletId;
use lambda_http::lambda_runtime::Context;
use serde::Deserialize;
use serde_json::Value;
use serde_json::json;
use std::time::Instant;

/// The EventBridge envelope: what routing needs.
#[derive(Debug, Deserialize)]
pub(super) struct Envelope {
    #[serde(rename = "detail-type")]
    detail_type: String,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    account: Option<String>,
}

/// The events `cache-invalidator` acts on: EventBridge's `detail-type`
/// names the variant, `detail` holds its fields (other envelope fields are
/// ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "detail-type", content = "detail")]
pub(crate) enum InvalidationEvent {
    UserProfileUpdated(UserProfileUpdated),
    TransactionCompleted(TransactionCompleted),
    SystemAnnouncement(SystemAnnouncement),
}

/// `SystemAnnouncement`'s detail: a message for every connected client
/// (`system:announcements`), 1 to 65 536 characters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SystemAnnouncement {
    /// The announcement's text.
    pub message: String,
}

/// `UserProfileUpdated`'s detail.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UserProfileUpdated {
    /// The user whose profile changed.
    pub user_id: UserId,
}

/// `TransactionCompleted`'s detail. The wallets are read from the
/// transaction's row; the event's copies are validated, not trusted.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TransactionCompleted {
    /// The transaction.
    pub transaction_id: TransactionId,
    /// The paying wallet.
    pub sender_wallet_id: WalletId,
    /// The receiving wallet.
    pub receiver_wallet_id: WalletId,
}

impl InvalidationEvent {
    /// The typed event, or the summary to answer with: `ignored` for a
    /// detail-type this function does not handle, `rejected` (with serde's
    /// reason, which names the field) for a malformed one.
    pub fn parse(event: &Value, trust: &AnnouncementTrust) -> Result<Self, Value> {
        let envelope =
            Envelope::deserialize(event).map_err(|_| rejected("the event has no detail-type"))?;
        // An announcement reaches every open connection: only the
        // platform's own source (and account) may send one.
        if envelope.detail_type == "SystemAnnouncement"
            && (envelope.source.as_deref() != Some(trust.source.as_str())
                || trust
                    .account
                    .as_ref()
                    .is_some_and(|a| envelope.account.as_deref() != Some(a.as_str())))
        {
            return Err(rejected(
                "SystemAnnouncement is accepted only from the platform's own source and account",
            ));
        }
        if !matches!(
            envelope.detail_type.as_str(),
            "UserProfileUpdated" | "TransactionCompleted" | "SystemAnnouncement"
        ) {
            tracing::info!(detail_type = %envelope.detail_type.chars().take(64).collect::<String>(), "event ignored");
            return Err(json!({"status": "ignored"}));
        }
        if !event.get("detail").is_some_and(Value::is_object) {
            return Err(rejected("the event has no detail object"));
        }
        let parsed = Self::deserialize(event).map_err(|e| rejected(format!("detail: {e}")))?;
        if let Self::SystemAnnouncement(a) = &parsed
            && !(1..=65_536).contains(&a.message.chars().count())
        {
            return Err(rejected("detail: message must be 1 to 65536 characters"));
        }
        Ok(parsed)
    }
}

/// `cache-invalidator`: `UserProfileUpdated` and `TransactionCompleted`.
pub async fn cache_invalidation(
    invalidation: &Invalidation,
    event: &Value,
) -> Result<Value, InvalidationError> {
    let started = Instant::now();
    let event = match InvalidationEvent::parse(event, &invalidation.announcements) {
        Ok(e) => e,
        Err(answer) => return Ok(answer),
    };
    let (kind, report) = match &event {
        InvalidationEvent::UserProfileUpdated(e) => (
            "UserProfileUpdated",
            invalidation::user_profile_updated(invalidation, &e.user_id).await?,
        ),
        InvalidationEvent::TransactionCompleted(e) => (
            "TransactionCompleted",
            invalidation::transaction_completed(invalidation, &e.transaction_id).await?,
        ),
        InvalidationEvent::SystemAnnouncement(e) => (
            "SystemAnnouncement",
            invalidation::announce(invalidation, &e.message).await?,
        ),
    };
    let summary = json!({
        "status": "ok",
        "detail_type": kind,
        "outcome": report.outcome,
        "keys_deleted": report.keys_deleted,
        "wallets_invalidated": report.wallets_invalidated,
        "published": report.published,
        "duration_ms": started.elapsed().as_millis() as u64,
    });
    tracing::info!(summary = %summary, "invalidation done");
    Ok(summary)
}

/// `cache-invalidator`'s handler (see [`cache_invalidation`]).
pub async fn handle_invalidation(app: &App, _: &(), event: Value, _: Context) -> Answer {
    cache_invalidation(&app.invalidation, &event)
        .await
        .map_err(Into::into)
}
