//! Real-time delivery: what the design publishes reaches the recipients'
//! open WebSocket connections (README → Real-time delivery).
//!
//! # How a message travels
//! 1. **Publisher** (the function that made the change): besides its Redis
//!    Pub/Sub `PUBLISH` (kept for other subscribers), it appends one entry
//!    to the **delivery stream** `ws_deliveries` (in the durable Redis: it
//!    must not be evicted). A balance write appends only a *kick* (wallet,
//!    owner, first version): the messages themselves are in the wallet's
//!    log, which `apply.lua` writes in version order in the same script that
//!    publishes them. Other messages (transaction status, notifications,
//!    announcements) carry their frame, with its `id`.
//! 2. **`ws-sender`** reads the stream through a consumer group
//!    (`XREADGROUP`, blocking briefly), a batch at a time in concurrent
//!    lanes (one per wallet, one for every other message, each in order),
//!    and for each entry finds the recipients' live connections and posts
//!    the frame to each through the API Gateway Management API; then
//!    acknowledges the entry (`XACK`).
//!
//! # Guarantees
//! - **At least once.** An entry is acknowledged only after every post for
//!   it succeeded or found its connection gone. A sender that dies between
//!   fetching and sending leaves its entries pending; after
//!   `WS_REDELIVER_AFTER_MS` another sender claims them (`XAUTOCLAIM`) and
//!   sends them again. Each frame carries an `id` (`balance:<wallet>:<version>`
//!   for balances, a UUID fixed at publication otherwise) so a client drops
//!   repeats.
//! - **Balance versions in order, none skipped.** The wallet's log is
//!   written by the script that sequences versions; the sender delivers the
//!   log's entries after the wallet's *delivered* cursor, in order, and
//!   moves the cursor only after they were sent. Two senders may send the
//!   same versions twice; each sends them in ascending order, so a client
//!   that drops repeated ids sees every version once, ascending.
//! - **Gone connections are pruned** the first time a post answers 410.
//! - **Throttled posts** (429, `LimitExceededException`) are retried with
//!   exponential backoff and full jitter by the SDK's standard retry
//!   (`WS_SEND_ATTEMPTS`); still throttled, the entry stays pending and is
//!   redelivered.
//! - **Frames over 32 KB** (API Gateway's WebSocket frame limit) are not
//!   sent: the client receives `{"id", "channel", "type":
//!   "message_too_large", "original_type", "bytes", "timestamp"}` instead and
//!   reads the state through the HTTP API.
//! - **Nobody connected, no management calls**: recipients are looked up
//!   first; no live connection means no post.
//!
//! # Cost
//! Publisher: one `XADD` (a balance write sends it after its apply step,
//! before it marks the outbox row applied). Sender, per entry: one round
//! trip for the recipients' connections (a balance's log read goes with
//! it), one post per connection, one `XACK` per batch and, for balances,
//! one cursor update.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::Script;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::LazyLock;

use crate::domain::realtime::{self, Connections};
use crate::infra::aws::{AwsError, error as aws_error, sdk_config};
use crate::infra::config::DeliveryConfig;
use crate::infra::connection::{Redis, RedisUnavailable};
use crate::infra::keys::{ConnectionId, Keyspace, UserId, WalletId};
use crate::patterns::pubsub;

/// The consumer group every `ws-sender` reads the delivery stream in.
pub const GROUP: &str = "ws-senders";
/// API Gateway's WebSocket frame limit.
pub const FRAME_LIMIT: usize = 32 * 1024;
/// The delivery stream keeps about this many entries.
const STREAM_MAXLEN: usize = 100_000;
/// Entries fetched per read.
const BATCH: usize = 64;
/// Posts in flight at once for one message (announcements).
const FAN_OUT: usize = 32;
/// Lanes (wallets, and the other messages) delivered at once.
const LANES: usize = 8;

static LOG_AFTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS[1] the wallet's log, KEYS[2] its delivered cursor.
-- ARGV[1] how many, ARGV[2] where to start when there is no cursor.
local d = redis.call('GET', KEYS[2]) or ARGV[2]
return {d, redis.call('XRANGE', KEYS[1], '(' .. d .. '-1', '+', 'COUNT', ARGV[1])}
",
    )
});

static ADVANCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS[1] the wallet's delivered cursor; it only moves forwards.
local d = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > d then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', 86400000)
end
return 1
",
    )
});

/// A wallet log entry as `XRANGE` returns it: id, field/value pairs.
type LogEntry = (String, Vec<(String, String)>);

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

/// The publishing side: appends entries to the delivery stream.
#[derive(Debug, Clone)]
pub struct DeliveryQueue {
    pub(crate) keys: Keyspace,
    /// The durable Redis (the stream must not be evicted).
    pub(crate) durable: Redis,
}

/// Who receives a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipients {
    /// Every open connection of these users.
    Users(Vec<UserId>),
    /// Every open connection.
    Everyone,
}

impl Recipients {
    fn encode(&self) -> String {
        match self {
            Self::Everyone => "*".into(),
            Self::Users(users) => users
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    fn decode(raw: &str) -> Option<Self> {
        if raw == "*" {
            return Some(Self::Everyone);
        }
        raw.split(',')
            .map(|u| UserId::parse(u).ok())
            .collect::<Option<Vec<_>>>()
            .map(Self::Users)
    }
}

/// `message` as the frame a client receives: its fields plus `id` and
/// `channel` (CONTRACT → Real-time messages).
pub(crate) fn frame<T: Serialize>(id: &str, channel: &str, message: &T) -> Option<String> {
    let mut map = match serde_json::to_value(message).ok()? {
        Value::Object(map) => map,
        _ => return None,
    };
    map.insert("id".into(), Value::String(id.to_owned()));
    map.insert("channel".into(), Value::String(channel.to_owned()));
    serde_json::to_string(&map).ok()
}

/// A frame over [`FRAME_LIMIT`] replaced by what the client can act on.
fn fit(frame: String) -> (String, bool) {
    if frame.len() <= FRAME_LIMIT {
        return (frame, false);
    }
    let parsed: Map<String, Value> = serde_json::from_str(&frame).unwrap_or_default();
    let field = |k: &str| parsed.get(k).cloned().unwrap_or(Value::Null);
    let stub = serde_json::json!({
        "id": field("id"),
        "channel": field("channel"),
        "type": "message_too_large",
        "original_type": field("type"),
        "bytes": frame.len(),
        "timestamp": pubsub::unix_seconds(time::OffsetDateTime::now_utc()),
    });
    (stub.to_string(), true)
}

impl DeliveryQueue {
    async fn append(&self, fields: &[(&str, &str)]) -> Result<(), RedisUnavailable> {
        let key = self.keys.ws_deliveries();
        let k = &key;
        self.durable
            .run(|mut c| async move {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(k)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(STREAM_MAXLEN)
                    .arg("*");
                for (f, v) in fields {
                    cmd.arg(*f).arg(*v);
                }
                let _: String = cmd.query_async(&mut c).await?;
                Ok(())
            })
            .await
    }

    /// A balance write published versions `from..` of `wallet`: deliver
    /// them to `owner`.
    pub(crate) async fn balance(
        &self,
        wallet: &WalletId,
        owner: &UserId,
        from: u64,
    ) -> Result<(), RedisUnavailable> {
        let (w, u, f) = (wallet.to_string(), owner.to_string(), from.to_string());
        self.append(&[("k", "balance"), ("w", &w), ("u", &u), ("f", &f)])
            .await
    }

    /// Close these connections (`DELETE @connections/{id}`) and forget
    /// them: a sign-out, or a `ping` that found its sign-in over.
    pub async fn close(&self, connections: &[ConnectionId]) -> Result<(), RedisUnavailable> {
        if connections.is_empty() {
            return Ok(());
        }
        let ids = connections
            .iter()
            .map(ConnectionId::as_str)
            .collect::<Vec<_>>()
            .join(",");
        self.append(&[("k", "close"), ("c", &ids)]).await
    }

    /// Deliver `message`, published on `channel`, to `to`.
    pub async fn message<T: Serialize>(
        &self,
        channel: &str,
        to: &Recipients,
        message: &T,
    ) -> Result<(), RedisUnavailable> {
        let id = uuid::Uuid::new_v4().to_string();
        let frame = frame(&id, channel, message).ok_or(RedisUnavailable::Server)?;
        let to = to.encode();
        self.append(&[("k", "message"), ("c", channel), ("u", &to), ("m", &frame)])
            .await
    }
}

/// The sending side: the stream, the registry, the per-wallet logs.
#[derive(Debug, Clone)]
pub struct Deliveries {
    pub(crate) queue: DeliveryQueue,
    /// The registry; its Redis (the cache one) also holds the wallet logs
    /// and cursors.
    pub(crate) connections: Connections,
    pub(crate) config: DeliveryConfig,
}

/// Deliberately broken variants, for the tests that prove the guarantees
/// (each test runs the real sender and one of these through the same
/// check, and the check must catch the broken one).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Acknowledge entries as they are fetched (`XREADGROUP … NOACK`): a
    /// sender that dies before sending loses them.
    pub ack_on_fetch: bool,
    /// Keep connections that answered 410 in the registry.
    pub keep_gone: bool,
    /// Send frames over the limit as they are.
    pub no_size_check: bool,
    /// Send to every registered connection, without checking that its
    /// sign-in lives (token not expired, session not ended).
    pub no_sign_in_check: bool,
}

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

/// One entry of the delivery stream.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its stream id.
    pub id: String,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    Balance {
        wallet: WalletId,
        owner: UserId,
        from: u64,
    },
    Message {
        to: Recipients,
        frame: String,
    },
    Close {
        connections: Vec<ConnectionId>,
    },
    Malformed,
}

fn field(map: &HashMap<String, redis::Value>, name: &str) -> Option<String> {
    match map.get(name)? {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

impl Entry {
    fn parse(raw: &StreamId) -> Self {
        let m = &raw.map;
        let body = match field(m, "k").as_deref() {
            Some("balance") => (|| {
                Some(Body::Balance {
                    wallet: WalletId::parse(&field(m, "w")?).ok()?,
                    owner: UserId::parse(&field(m, "u")?).ok()?,
                    from: field(m, "f")?.parse().ok()?,
                })
            })(),
            Some("message") => (|| {
                Some(Body::Message {
                    to: Recipients::decode(&field(m, "u")?)?,
                    frame: field(m, "m")?,
                })
            })(),
            Some("close") => field(m, "c").map(|ids| Body::Close {
                connections: ids
                    .split(',')
                    .filter_map(|c| ConnectionId::parse(c).ok())
                    .collect(),
            }),
            _ => None,
        };
        Self {
            id: raw.id.clone(),
            body: body.unwrap_or(Body::Malformed),
        }
    }
}

/// What a sender did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Entries handled and acknowledged.
    pub entries: u64,
    /// Entries taken over from a sender that did not acknowledge them.
    pub reclaimed: u64,
    /// Frames posted.
    pub sent: u64,
    /// Connections found gone (and pruned).
    pub gone: u64,
    /// Frames replaced because they were over the frame limit.
    pub too_large: u64,
    /// Entries left pending after a failure (redelivered later).
    pub failed: u64,
    /// Connections closed because their sign-in was over (signed out,
    /// session ended, token expired).
    pub closed: u64,
}

impl Report {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Report) {
        self.entries += other.entries;
        self.reclaimed += other.reclaimed;
        self.sent += other.sent;
        self.gone += other.gone;
        self.too_large += other.too_large;
        self.failed += other.failed;
        self.closed += other.closed;
    }
}

/// A sender: one consumer of the group.
#[derive(Debug)]
pub struct Sender {
    /// Its consumer name (one per execution environment).
    pub consumer: String,
    management: Management,
    faults: Faults,
    last_claim: Option<Instant>,
}

impl Sender {
    /// A sender posting through `management`.
    pub fn new(management: Management) -> Self {
        Self::with_faults(management, Faults::default())
    }

    /// A deliberately broken sender (tests only).
    #[doc(hidden)]
    pub fn with_faults(management: Management, faults: Faults) -> Self {
        Self {
            consumer: format!("sender-{}", uuid::Uuid::new_v4().simple()),
            management,
            faults,
            last_claim: None,
        }
    }
}

/// Creates the consumer group (and the stream) if they do not exist.
pub async fn ensure_group(deliveries: &Deliveries) -> Result<(), RedisUnavailable> {
    let key = deliveries.queue.keys.ws_deliveries();
    let k = &key;
    deliveries
        .queue
        .durable
        .run(|mut c| async move {
            let created: Result<(), redis::RedisError> =
                c.xgroup_create_mkstream(k, GROUP, "0").await;
            match created {
                Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                other => other,
            }
        })
        .await
}

/// Fetches the next entries: first those another sender fetched and did
/// not acknowledge within `WS_REDELIVER_AFTER_MS` (checked at most every
/// half of that), then new ones, waiting up to `WS_SENDER_BLOCK_MS`.
pub async fn fetch(
    deliveries: &Deliveries,
    sender: &mut Sender,
) -> Result<(Vec<Entry>, u64), RedisUnavailable> {
    let key = deliveries.queue.keys.ws_deliveries();
    let redeliver = deliveries.config.redeliver_after;
    let due = sender
        .last_claim
        .is_none_or(|at| at.elapsed() >= redeliver / 2);
    let (k, me) = (&key, sender.consumer.as_str());
    if due {
        sender.last_claim = Some(Instant::now());
        let idle = u64::try_from(redeliver.as_millis()).unwrap_or(u64::MAX);
        let claimed: StreamAutoClaimReply = deliveries
            .queue
            .durable
            .run(|mut c| async move {
                c.xautoclaim_options(
                    k,
                    GROUP,
                    me,
                    idle,
                    "0-0",
                    StreamAutoClaimOptions::default().count(BATCH),
                )
                .await
            })
            .await?;
        if !claimed.claimed.is_empty() {
            let n = claimed.claimed.len() as u64;
            tracing::info!(
                entries = n,
                "took over deliveries another sender did not finish"
            );
            return Ok((claimed.claimed.iter().map(Entry::parse).collect(), n));
        }
    }
    // The read blocks on the durable Redis: under half its response budget.
    let block = deliveries
        .config
        .block
        .min(deliveries.queue.durable.response_timeout() / 2)
        .max(Duration::from_millis(1));
    let block = usize::try_from(block.as_millis()).unwrap_or(100);
    let mut options = StreamReadOptions::default()
        .group(GROUP, me)
        .count(BATCH)
        .block(block);
    if sender.faults.ack_on_fetch {
        options = options.noack();
    }
    let opts = &options;
    let read: Option<StreamReadReply> = deliveries
        .queue
        .durable
        .run(|mut c| async move { c.xread_options(&[k], &[">"], opts).await })
        .await?;
    let entries = read
        .map(|r| {
            r.keys
                .iter()
                .flat_map(|k| k.ids.iter().map(Entry::parse))
                .collect()
        })
        .unwrap_or_default();
    Ok((entries, 0))
}

/// Who may receive frames in one batch: the live connections of every
/// user the batch addresses, found in one round-trip time (one script per
/// user, sent at once: `realtime::live`).
type LiveRecipients = HashMap<UserId, Vec<ConnectionId>>;

/// Delivers one lane's entries in order; returns what it did and the ids
/// fully handled.
async fn deliver_lane(
    deliveries: &Deliveries,
    sender: &Sender,
    live: Option<&LiveRecipients>,
    lane: &[&Entry],
) -> (Report, Vec<String>) {
    let mut report = Report::default();
    let mut done = Vec::new();
    // Every version a kick in this batch announces was logged before the
    // batch was fetched, so the first read of a wallet's log covers them
    // all: its other kicks in the batch need no work.
    let mut covered = false;
    for entry in lane {
        let ok = match (&entry.body, live) {
            (Body::Balance { .. }, _) if covered => true,
            (Body::Balance { .. } | Body::Message { .. }, None) => false,
            (
                Body::Balance {
                    wallet,
                    owner,
                    from,
                },
                Some(live),
            ) => {
                let conns = live.get(owner).cloned().unwrap_or_default();
                covered =
                    deliver_balance(deliveries, sender, wallet, conns, *from, &mut report).await;
                covered
            }
            (Body::Message { to, frame, .. }, Some(live)) => {
                deliver_message(deliveries, sender, to, live, frame, &mut report).await
            }
            (Body::Close { connections }, _) => {
                let conns: Vec<(ConnectionId, Option<UserId>)> =
                    connections.iter().map(|c| (c.clone(), None)).collect();
                close_all(deliveries, sender, &conns, &mut report).await
            }
            (Body::Malformed, _) => {
                tracing::warn!(entry = %entry.id, "malformed delivery entry dropped");
                true
            }
        };
        if ok {
            done.push(entry.id.clone());
        } else {
            report.failed += 1;
        }
    }
    (report, done)
}

/// Closes connections whose sign-in is over (`DELETE @connections`) and
/// forgets them. True when every close succeeded or found its connection
/// already gone.
async fn close_all(
    deliveries: &Deliveries,
    sender: &Sender,
    conns: &[(ConnectionId, Option<UserId>)],
    report: &mut Report,
) -> bool {
    if conns.is_empty() {
        return true;
    }
    let ids: Vec<ConnectionId> = conns.iter().map(|(c, _)| c.clone()).collect();
    let results: Vec<Posted> = futures_util::stream::iter(ids)
        .map(|conn| async move { sender.management.close(&conn).await })
        .buffer_unordered(FAN_OUT)
        .collect()
        .await;
    let mut ok = true;
    for posted in results {
        match posted {
            Posted::Sent => report.closed += 1,
            Posted::Gone => report.gone += 1,
            Posted::Failed(e) => {
                ok = false;
                tracing::warn!(error = %e, "could not close a connection");
            }
        }
    }
    if let Err(why) = realtime::forget(&deliveries.connections, conns).await {
        tracing::warn!(reason = why.as_str(), "could not forget closed connections");
        ok = false;
    }
    ok
}

/// Delivers `entries` (balances in version order per wallet, the rest in
/// stream order) and acknowledges those fully handled.
///
/// The batch's recipients are looked up once, before any post: the live
/// connections of every user it addresses, each connection's sign-in
/// checked (token not expired, session not ended) — one round-trip time
/// for the batch, not one per frame. Connections found dead are closed.
pub async fn deliver(deliveries: &Deliveries, sender: &Sender, entries: &[Entry]) -> Report {
    let mut report = Report::default();
    let users: Vec<UserId> = entries
        .iter()
        .flat_map(|e| match &e.body {
            Body::Balance { owner, .. } => vec![*owner],
            Body::Message {
                to: Recipients::Users(users),
                ..
            } => users.clone(),
            _ => Vec::new(),
        })
        .collect();
    let live = if users.is_empty() {
        Some(HashMap::new())
    } else {
        let found = if sender.faults.no_sign_in_check {
            realtime::registered(&deliveries.connections, &users).await
        } else {
            realtime::live(&deliveries.connections, &users).await
        };
        match found {
            Ok(found) => {
                if !close_all(deliveries, sender, &found.dead, &mut report).await {
                    // Out of the registry already: retried from the stream.
                    let ids: Vec<ConnectionId> =
                        found.dead.iter().map(|(c, _)| c.clone()).collect();
                    if let Err(why) = deliveries.queue.close(&ids).await {
                        tracing::warn!(reason = why.as_str(), "could not queue closes");
                    }
                }
                Some(found.live)
            }
            Err(why) => {
                // Their entries stay pending and are redelivered.
                tracing::warn!(reason = why.as_str(), "could not look up the recipients");
                None
            }
        }
    };
    // Lanes: one per wallet (its versions must go out in order) and one for
    // every other message (in stream order); lanes run concurrently.
    let mut lanes: Vec<(Option<WalletId>, Vec<&Entry>)> = vec![(None, Vec::new())];
    for entry in entries {
        let wallet = match &entry.body {
            Body::Balance { wallet, .. } => Some(*wallet),
            _ => None,
        };
        match lanes.iter_mut().find(|(w, _)| *w == wallet) {
            Some((_, lane)) => lane.push(entry),
            None => lanes.push((wallet, vec![entry])),
        }
    }
    let mut done = Vec::new();
    for chunk in lanes.chunks(LANES) {
        let results = futures_util::future::join_all(
            chunk
                .iter()
                .map(|(_, lane)| deliver_lane(deliveries, sender, live.as_ref(), lane)),
        )
        .await;
        for (r, d) in results {
            report.add(&r);
            done.extend(d);
        }
    }
    if !done.is_empty() && !sender.faults.ack_on_fetch {
        let key = deliveries.queue.keys.ws_deliveries();
        let (k, ids) = (&key, &done);
        let acked = deliveries
            .queue
            .durable
            .run(|mut c| async move {
                let _: usize = c.xack(k, GROUP, ids).await?;
                Ok(())
            })
            .await;
        if let Err(why) = acked {
            // They stay pending and are sent again: at least once.
            tracing::warn!(reason = why.as_str(), "could not acknowledge deliveries");
        }
    }
    report.entries = done.len() as u64;
    report
}

/// Posts `frame` to every connection in `to`, concurrently (bounded);
/// prunes gone ones. True when nothing failed.
async fn post_all(
    deliveries: &Deliveries,
    sender: &Sender,
    to: &mut Vec<ConnectionId>,
    frame: &str,
    report: &mut Report,
) -> bool {
    let (frame, stubbed) = if sender.faults.no_size_check {
        (frame.to_owned(), false)
    } else {
        fit(frame.to_owned())
    };
    if stubbed {
        report.too_large += 1;
    }
    let frame = frame.as_str();
    let results: Vec<(ConnectionId, Posted)> = futures_util::stream::iter(to.iter().cloned())
        .map(|conn| async move {
            let posted = sender.management.post(&conn, frame).await;
            (conn, posted)
        })
        .buffer_unordered(FAN_OUT)
        .collect()
        .await;
    let mut ok = true;
    for (conn, posted) in results {
        match posted {
            Posted::Sent => report.sent += 1,
            Posted::Gone => {
                report.gone += 1;
                to.retain(|c| c != &conn);
                if !sender.faults.keep_gone
                    && let Err(why) =
                        realtime::disconnect(&deliveries.connections, &conn, None).await
                {
                    tracing::warn!(reason = why.as_str(), "could not prune a gone connection");
                }
            }
            Posted::Failed(e) => {
                ok = false;
                tracing::warn!(connection_id = %conn, error = %e, "post to connection failed");
            }
        }
    }
    ok
}

async fn deliver_message(
    deliveries: &Deliveries,
    sender: &Sender,
    to: &Recipients,
    live: &LiveRecipients,
    frame: &str,
    report: &mut Report,
) -> bool {
    match to {
        Recipients::Users(users) => {
            let mut conns: Vec<ConnectionId> = users
                .iter()
                .flat_map(|u| live.get(u).cloned().unwrap_or_default())
                .collect();
            if conns.is_empty() {
                return true;
            }
            post_all(deliveries, sender, &mut conns, frame, report).await
        }
        Recipients::Everyone => announce(deliveries, sender, frame, report).await,
    }
}

/// An announcement: `ws_all` page by page; each page's connections are
/// checked (token, session) in one round-trip time, the dead ones closed.
async fn announce(
    deliveries: &Deliveries,
    sender: &Sender,
    frame: &str,
    report: &mut Report,
) -> bool {
    let mut cursor = 0;
    let mut ok = true;
    loop {
        let (next, mut live, dead) =
            match realtime::everyone_page(&deliveries.connections, cursor, 500).await {
                Ok(page) => page,
                Err(_) => return false,
            };
        ok &= close_all(deliveries, sender, &dead, report).await;
        if !live.is_empty() {
            ok &= post_all(deliveries, sender, &mut live, frame, report).await;
        }
        cursor = next;
        if cursor == 0 {
            return ok;
        }
    }
}

async fn deliver_balance(
    deliveries: &Deliveries,
    sender: &Sender,
    wallet: &WalletId,
    mut conns: Vec<ConnectionId>,
    from: u64,
    report: &mut Report,
) -> bool {
    let keys = &deliveries.queue.keys;
    let (log, cursor) = (
        keys.wallet_balance_log(wallet),
        keys.wallet_balance_delivered(wallet),
    );
    let channel = pubsub::balance(wallet);
    loop {
        let (l, c, start) = (&log, &cursor, from.saturating_sub(1));
        let read = deliveries
            .connections
            .redis
            .run(|mut conn| async move {
                let (_, entries): (String, Vec<LogEntry>) = LOG_AFTER
                    .key(l)
                    .key(c)
                    .arg(BATCH)
                    .arg(start)
                    .invoke_async(&mut conn)
                    .await?;
                Ok(entries)
            })
            .await;
        let Ok(entries) = read else {
            return false;
        };
        let mut delivered = None;
        let mut ok = true;
        for (id, fields) in &entries {
            let Some(version) = id.split('-').next().and_then(|v| v.parse::<u64>().ok()) else {
                continue;
            };
            let message = fields
                .iter()
                .find(|(f, _)| f == "m")
                .and_then(|(_, m)| serde_json::from_str::<Value>(m).ok());
            let frame = message.and_then(|m| frame(&format!("{channel}:{version}"), &channel, &m));
            if let Some(frame) = frame
                && !conns.is_empty()
                && !post_all(deliveries, sender, &mut conns, &frame, report).await
            {
                ok = false;
                break;
            }
            delivered = Some(version);
        }
        if let Some(v) = delivered {
            let c = &cursor;
            let advanced = deliveries
                .connections
                .redis
                .run(|mut conn| async move {
                    let _: i64 = ADVANCE.key(c).arg(v).invoke_async(&mut conn).await?;
                    Ok(())
                })
                .await;
            if advanced.is_err() {
                // Sent again next time: at least once.
                return false;
            }
        }
        // A full batch may have more behind it.
        if !ok || entries.len() < BATCH {
            return ok;
        }
    }
}

/// Reads and delivers until `until`. Returns what it did.
pub async fn run(deliveries: &Deliveries, sender: &mut Sender, until: Instant) -> Report {
    let mut total = Report::default();
    let mut grouped = false;
    let run_started = Instant::now();
    tracing::debug!(consumer = %sender.consumer, left_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64, "delivery run starts");
    while Instant::now() < until {
        if !grouped {
            match ensure_group(deliveries).await {
                Ok(()) => grouped = true,
                Err(why) => {
                    tracing::warn!(reason = why.as_str(), "delivery stream unavailable");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let (entries, reclaimed) = match fetch(deliveries, sender).await {
            Ok(e) => e,
            Err(why) => {
                tracing::warn!(reason = why.as_str(), "could not read the delivery stream");
                grouped = false;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if entries.is_empty() {
            continue;
        }
        tracing::debug!(
            entries = entries.len(),
            elapsed_ms = run_started.elapsed().as_millis() as u64,
            "delivering"
        );
        let r = deliver(deliveries, sender, &entries).await;
        tracing::debug!(report = ?r, "delivered");
        total.add(&r);
        total.reclaimed += reclaimed;
    }
    total
}
