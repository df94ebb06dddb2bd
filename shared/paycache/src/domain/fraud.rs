//! Fraud signals: the design's `risk_score:{user_id}` (5 min) and
//! `device:{device_fingerprint}` (24 h), read and recorded by the
//! authorizer.
//!
//! - When a request carries `X-Device-Fingerprint`, the authorizer records
//!   the device as seen (first seen kept, last seen and TTL moved forward)
//!   and tells the route whether it is **new** for this user (never seen, or
//!   last seen with another user) — one script, one round trip.
//! - It reads the user's cached **risk score** (written by the fraud
//!   service with [`set_risk_score`]) and passes it on; at or above
//!   `FRAUD_ALERT_THRESHOLD` it publishes `{"type": "risk_alert", …}` on
//!   `fraud:<user_id>` — once per score, not once per request (a marker
//!   beside the score remembers which score alerted) — in the same script.
//!
//! Both run concurrently with the session and blacklist checks.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::infra::config::TtlConfig;
use crate::infra::connection::Redis;
use crate::infra::connection::RedisUnavailable;
use crate::infra::keys::Keyspace;
use crate::infra::keys::{DeviceFingerprint, KeyFamily, UserId};
use crate::patterns::pubsub;

/// What the fraud signals use: Redis, their TTLs and the alert threshold.
#[derive(Debug, Clone)]
pub struct Fraud {
    pub(crate) keys: Keyspace,
    pub(crate) redis: Redis,
    pub(crate) ttl: TtlConfig,
    pub(crate) alert_threshold: u32,
}

static DEVICE_SEEN: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("fraud/device_seen.lua")));
static RISK_CHECK: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("fraud/risk_check.lua")));

/// The design's risk score entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskScore {
    /// 0–100; alerts at `FRAUD_ALERT_THRESHOLD` and above.
    pub score: u32,
    /// What raised the score (`new_device`, …).
    pub factors: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    /// When the score was set.
    pub last_updated: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    /// When the cached score expires.
    pub expires_at: OffsetDateTime,
}

/// The design's device entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// The user who last used the device.
    pub user_id: String,
    /// RFC 3339 time of the first sighting.
    pub first_seen: String,
    /// RFC 3339 time of the latest sighting.
    pub last_seen: String,
    /// Whether the user marked the device trusted.
    pub trusted: bool,
    /// Where it was seen, when known.
    pub location: Option<String>,
}

fn ttl_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Stores a user's risk score for `CACHE_TTL_FRAUD_SCORES_SECS` (the fraud
/// service's side; one round trip).
#[tracing::instrument(skip_all, fields(user_id = %user))]
pub async fn set_risk_score(
    fraud: &Fraud,
    user: &UserId,
    score: u32,
    factors: &[&str],
) -> Result<RiskScore, RedisUnavailable> {
    let ttl = fraud
        .ttl
        .of(KeyFamily::RiskScore)
        .unwrap_or(Duration::from_secs(300));
    let now = OffsetDateTime::now_utc();
    let entry = RiskScore {
        score,
        factors: factors.iter().map(|f| f.to_string()).collect(),
        last_updated: now,
        expires_at: now + ttl,
    };
    let json = serde_json::to_string(&entry).map_err(|_| RedisUnavailable::Server)?;
    let key = fraud.keys.risk_score(user);
    fraud.redis.set_px(key.as_str(), json, ttl_ms(ttl)).await?;
    Ok(entry)
}

/// Records `device` as seen by `user`; returns whether it is new for them.
#[tracing::instrument(skip_all, fields(user_id = %user))]
pub(crate) async fn device_seen(
    fraud: &Fraud,
    user: &UserId,
    device: &DeviceFingerprint,
) -> Result<bool, RedisUnavailable> {
    let key = fraud.keys.device(device);
    let ttl = ttl_ms(
        fraud
            .ttl
            .of(KeyFamily::Device)
            .unwrap_or(Duration::from_secs(86_400)),
    );
    let now = OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|_| RedisUnavailable::Server)?;
    let (k, u) = (&key, user.to_string());
    let (new, _doc): (i64, String) = fraud
        .redis
        .run(|mut c| async move {
            DEVICE_SEEN
                .key(k)
                .arg(u)
                .arg(now)
                .arg(ttl)
                .invoke_async(&mut c)
                .await
        })
        .await?;
    Ok(new == 1)
}

/// Reads the user's cached risk score, publishing an alert when it is at or
/// above the threshold (once per score).
#[tracing::instrument(skip_all, fields(user_id = %user))]
pub async fn risk(fraud: &Fraud, user: &UserId) -> Result<Option<RiskScore>, RedisUnavailable> {
    let key = fraud.keys.risk_score(user);
    let marker = format!("{key}:alerted");
    let channel = pubsub::fraud(user);
    let threshold = fraud.alert_threshold;
    let (k, m, ch, u) = (&key, &marker, &channel, user.to_string());
    let ts = pubsub::unix_seconds(OffsetDateTime::now_utc());
    let raw: Option<String> = fraud
        .redis
        .run(|mut c| async move {
            RISK_CHECK
                .key(k)
                .key(m)
                .arg(threshold)
                .arg(ch)
                .arg(u)
                .arg(ts)
                .invoke_async(&mut c)
                .await
        })
        .await?;
    Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
}
