//! Real-time: delivery partitions, senders' leases and fan-out, catch-ups,
//! the limits one sign-in and one connection meet, and who may announce.

use super::ConfigError;
use super::env::Env;
use std::time::Duration;

/// Who may announce to every open connection: a `SystemAnnouncement`
/// event is acted on only with this `source` (and, when set, from this
/// account). The template's rule matches the same, so this is the second
/// of two checks; neither authenticates the publisher (docs/security.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnouncementTrust {
    /// `ANNOUNCEMENT_SOURCE` (default `payments.operations`).
    pub source: String,
    /// `PLATFORM_ACCOUNT_ID`: the account events must come from (the
    /// template sets its own).
    pub account: Option<String>,
}

/// Real-time delivery (`ws-sender`; docs/realtime.md → Real-time delivery).
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// `WS_MANAGEMENT_ENDPOINT`: the WebSocket API's management endpoint
    /// (`https://{api-id}.execute-api.{region}.amazonaws.com/{stage}`;
    /// locally the development gateway's URL). Required by `ws-sender` only.
    pub management_endpoint: Option<String>,
    /// `WS_REDELIVER_AFTER_MS`: a delivery fetched by a sender that has not
    /// acknowledged it this long after is taken over by another sender (the
    /// first one died between fetching and sending).
    pub redeliver_after: Duration,
    /// `WS_SENDER_BLOCK_MS`: how long one read of the delivery stream waits
    /// for new entries; kept under half the response timeout of the Redis
    /// that holds the stream (the durable one when configured).
    pub block: Duration,
    /// `WS_SENDER_RUN_SECS`: how long one `ws-sender` invocation reads
    /// (0: until 5 s before its deadline).
    pub run_for: Duration,
    /// `WS_SEND_ATTEMPTS`: attempts of one post, retrying throttled ones
    /// with exponential backoff and full jitter (the SDK's standard retry).
    pub send_attempts: u32,
    /// `WS_PARTITIONS` (1–256, default 8): delivery streams, each in its
    /// own slot; a wallet's kicks and a user's messages always go to the
    /// same one. Lowering it strands what the dropped partitions hold:
    /// drain first (docs/realtime.md → Real-time delivery).
    pub partitions: u16,
    /// `WS_PARTITION_LEASE_MS` (1000–60000, default 10000): how long a
    /// sender's hold on a partition lasts without renewal; a dead sender's
    /// partitions are taken over after it.
    pub lease: Duration,
    /// `WS_FAN_OUT` (1–1024, default 64): posts in flight at once per
    /// sender (API Gateway's account limit is 10,000 requests per second
    /// across every API: docs/realtime.md → Real-time delivery).
    pub fan_out: usize,
    /// `WS_FANOUT_PAGE` (10–5000, default 500): registry entries an
    /// announcement reads, checks and posts per checkpoint.
    pub page: usize,
    /// `WS_CATCH_UP_MAX` (1–10000, default 100): the most versions a
    /// reconnect's catch-up sends; a client that missed more receives
    /// `resync` and reads the balance over HTTP.
    pub catch_up_max: u64,
    /// `WS_CATCH_UP_SLICE_MS` (10–10000, default 250): what one lane's
    /// catch-ups may take of a batch; the rest continue in a later batch,
    /// behind the frames that arrived meanwhile (docs/realtime.md →
    /// Limits).
    pub catch_up_slice: Duration,
    /// What one sign-in and one connection may use.
    pub limits: ConnectionLimits,
}

/// Limits a person never meets and a script always does
/// (docs/realtime.md → Limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `WS_MAX_CONNECTIONS_PER_SESSION` (1–1000, default 8): open
    /// connections of one sign-in (a browser's tabs); one more is refused
    /// at `$connect` (429).
    pub per_session: u32,
    /// `WS_MAX_CONNECTIONS_PER_USER` (1–10000, default 16): open
    /// connections of one user, every sign-in together (their devices).
    pub per_user: u32,
    /// `WS_PINGS_PER_MINUTE` (1–10000, default 10): pings one connection
    /// may send in a minute (a client pings at most every few minutes);
    /// the next closes it.
    pub pings_per_minute: u32,
}

pub(super) fn delivery_config(env: &Env<'_>) -> Result<DeliveryConfig, ConfigError> {
    let management_endpoint = match env.get("WS_MANAGEMENT_ENDPOINT") {
        None => None,
        Some(url)
            if (url.starts_with("https://") || url.starts_with("http://"))
                && url.len() <= 512
                && url.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Some(url.trim_end_matches('/').to_owned())
        }
        Some(_) => {
            return Err(ConfigError::new(
                "WS_MANAGEMENT_ENDPOINT",
                "must be an http(s) URL: https://{api-id}.execute-api.{region}.amazonaws.com/{stage}",
            ));
        }
    };
    Ok(DeliveryConfig {
        management_endpoint,
        redeliver_after: env.millis("WS_REDELIVER_AFTER_MS", 10_000, 100, 900_000)?,
        // Capped where the read happens, by the stream's own Redis.
        block: env.millis("WS_SENDER_BLOCK_MS", 100, 1, 10_000)?,
        run_for: Duration::from_secs(env.number("WS_SENDER_RUN_SECS", 0, 0, 900)?),
        send_attempts: env.number("WS_SEND_ATTEMPTS", 5, 1, 10)?,
        partitions: env.number("WS_PARTITIONS", 8, 1, 256)?,
        lease: env.millis("WS_PARTITION_LEASE_MS", 10_000, 1_000, 60_000)?,
        fan_out: env.number("WS_FAN_OUT", 64, 1, 1024)?,
        page: env.number("WS_FANOUT_PAGE", 500, 10, 5000)?,
        catch_up_max: env.number("WS_CATCH_UP_MAX", 100, 1, 10_000)?,
        catch_up_slice: env.millis("WS_CATCH_UP_SLICE_MS", 250, 10, 10_000)?,
        limits: ConnectionLimits {
            per_session: env.number("WS_MAX_CONNECTIONS_PER_SESSION", 8, 1, 1000)?,
            per_user: env.number("WS_MAX_CONNECTIONS_PER_USER", 16, 1, 10_000)?,
            pings_per_minute: env.number("WS_PINGS_PER_MINUTE", 10, 1, 10_000)?,
        },
    })
}

/// Who may announce (`ANNOUNCEMENT_SOURCE`, `PLATFORM_ACCOUNT_ID`).
pub(super) fn announcements(env: &Env<'_>) -> Result<AnnouncementTrust, ConfigError> {
    Ok(AnnouncementTrust {
        source: match env.get("ANNOUNCEMENT_SOURCE") {
            None => "payments.operations".to_owned(),
            Some(s) if (1..=256).contains(&s.trim().len()) && !s.trim().starts_with("aws.") => {
                s.trim().to_owned()
            }
            Some(_) => {
                return Err(ConfigError::new(
                    "ANNOUNCEMENT_SOURCE",
                    "must be an EventBridge source of 1–256 characters, not aws.*",
                ));
            }
        },
        account: match env.get("PLATFORM_ACCOUNT_ID") {
            None => None,
            Some(a) if a.trim().len() == 12 && a.trim().bytes().all(|b| b.is_ascii_digit()) => {
                Some(a.trim().to_owned())
            }
            Some(_) => {
                return Err(ConfigError::new(
                    "PLATFORM_ACCOUNT_ID",
                    "must be a 12-digit AWS account id",
                ));
            }
        },
    })
}
