//! Real-time delivery: what the design publishes reaches the recipients'
//! open WebSocket connections (docs/realtime.md → Real-time delivery).
//!
//! # How a message travels
//! 1. **Publisher** (the function that made the change): besides its Redis
//!    Pub/Sub `PUBLISH` (kept for other subscribers), it appends an entry to
//!    one of `WS_PARTITIONS` **delivery streams** `ws_deliveries:{d<p>}`
//!    (in the durable Redis: they must not be evicted), each in its own
//!    slot. The partition is a hash of the wallet (balances, reconnect
//!    catch-ups) or of the user (other messages: one entry per recipient),
//!    so a wallet's or a user's entries always meet in one stream. A
//!    balance write appends only a *kick* (wallet, owner, first version):
//!    the messages themselves are in the wallet's log, which `apply.lua`
//!    writes in version order in the same script that publishes them. An
//!    announcement is one entry per registry shard (16, spread over the
//!    partitions), all carrying the same frame.
//! 2. **`ws-sender`s share the partitions**: each heartbeats into
//!    `ws_senders`, works out its share (partitions ÷ live senders, rounded
//!    up) and holds that many **leases** (`ws_lease:{d<p>}`, renewed every
//!    third of `WS_PARTITION_LEASE_MS`, also while a long delivery runs;
//!    given back at the end of a run, and a sender short of its share
//!    looks every 200 ms, so the overlapping next run takes them at once).
//!    Only a partition's holder reads it (`XREADGROUP`), so a wallet's
//!    kicks and catch-ups, and a user's messages, are handled by one sender
//!    at a time, in stream order. A sender that dies stops renewing; after
//!    the lease another takes the partition and its pending entries
//!    (`XAUTOCLAIM`).
//! 3. A fetched batch is delivered in **lanes** (one per wallet, one per
//!    user, one per announcement shard, each in order; lanes concurrently)
//!    with at most `WS_FAN_OUT` posts in flight per sender; entries fully
//!    handled are acknowledged (`XACK`) per partition.
//!
//! # Guarantees
//! - **At least once.** An entry is acknowledged only after every post for
//!   it succeeded or found its connection gone; otherwise it stays pending
//!   and is retried after `WS_REDELIVER_AFTER_MS`. Frames carry an `id`
//!   (`balance:<wallet>:<version>` for balances, a UUID fixed at
//!   publication otherwise) so a client drops repeats.
//! - **Balance versions in order, none skipped.** The sender delivers the
//!   wallet log's entries after the wallet's *delivered* cursor, in order,
//!   and moves the cursor only past versions that were sent: a failed post
//!   leaves it before the failed version, which the retry sends again.
//! - **Announcements resume where they stopped.** Each shard's fan-out
//!   reads the registry a page (`WS_FANOUT_PAGE`) at a time — never the
//!   whole set in memory — and checkpoints after every page (the scan
//!   cursor, and the connections whose post failed) in `ws_fanout:{d<p>}:
//!   <entry>`, only while the entry is still its own. A retry posts to the
//!   failed connections only; a takeover resumes at the last checkpoint, so
//!   a sender's death repeats at most one page.
//! - **Reconnect without a gap.** `$connect?resume=<wallet>:<version>,…`
//!   marks the connection as catching up on those wallets and queues a
//!   catch-up in the wallet's partition: the log's versions after the one
//!   the client saw, in order; a `resync` frame first when the log no
//!   longer reaches back that far. Until the catch-up is sent, the wallet's
//!   new frames skip that connection, so it sees every version once,
//!   ascending (docs/realtime.md → Reconnecting without a gap).
//! - **Gone connections are pruned** the first time a post answers 410.
//! - **Throttled posts** (429, `LimitExceededException`) are retried with
//!   exponential backoff and full jitter by the SDK's standard retry
//!   (`WS_SEND_ATTEMPTS`); still throttled, the entry stays pending (an
//!   announcement keeps the connection on its retry list).
//! - **Frames over 32 KB** (API Gateway's WebSocket frame limit) are not
//!   sent: the client receives `{"id", "channel", "type":
//!   "message_too_large", "original_type", "bytes", "timestamp"}` instead and
//!   reads the state through the HTTP API.
//! - **Nobody connected, no management calls**: recipients are looked up
//!   first; no live connection means no post.
//!
//! # Cost
//! Publisher: one `XADD` (one per recipient user, sent at once; sixteen
//! for an announcement). Sender, per batch: one round-trip time for the
//! recipients' liveness (one script per user, sent at once) and one per
//! partition for the `XACK`; per wallet lane one log read and one cursor
//! update per 64 versions; per announcement page one script (ids and entries), one read of
//! the page's distinct sessions (sent at once) and one checkpoint. Posts:
//! one per live connection. Leases: one heartbeat and one renewal per held
//! partition every third of the lease.
//!
//! # Metrics (EMF, once per run)
//! `WsFramesSent` (frames posted), `WsFramesPerSecond` (the run's rate
//! while it had work) and `WsBacklog` (entries waiting in the partitions
//! it held, at the end of the run).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::Script;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamInfoGroupsReply,
    StreamReadOptions, StreamReadReply,
};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::domain::realtime::{self, Connections};
use crate::domain::sessions;
use crate::infra::aws::{AwsError, error as aws_error, sdk_config};
use crate::infra::config::DeliveryConfig;
use crate::infra::connection::RedisUnavailable;
use crate::infra::keys::{ConnectionId, REGISTRY_SHARDS, UserId, WalletId};
use crate::patterns::pubsub;

pub use crate::domain::delivery_queue::{CloseReason, DeliveryQueue, Recipients, frame};
pub use crate::infra::keys::partition_of;

/// The consumer group every `ws-sender` reads the delivery streams in.
pub const GROUP: &str = "ws-senders";
/// API Gateway's WebSocket frame limit.
pub const FRAME_LIMIT: usize = 32 * 1024;
/// Entries fetched per read of one partition; also log entries per read.
const BATCH: usize = 64;
/// Lanes delivered at once.
const LANES: usize = 64;
/// How long an announcement's progress is kept.
const PROGRESS_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// Wallets one reconnect may resume (`$connect?resume=`).
pub const RESUME_MAX: usize = 16;

static LEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("delivery/lease.lua")));
static CHECKPOINT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("delivery/checkpoint.lua")));
static FINISH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("delivery/finish.lua")));
static LOG_RANGE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("delivery/log_range.lua")));

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

/// The sending side: the streams, the registry, the per-wallet logs.
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
    /// Move a wallet's delivered cursor before posting the versions.
    pub advance_before_post: bool,
    /// Move a wallet's delivered cursor past a version whose post failed.
    pub skip_failed_version: bool,
    /// Announcements keep no progress: a retry or takeover starts again.
    pub no_checkpoint: bool,
    /// An announcement with a failed post starts again from the first
    /// connection.
    pub resend_all_on_failure: bool,
    /// A reconnect's catch-up is dropped (the marks are cleared, nothing
    /// is sent).
    pub no_catch_up: bool,
    /// New frames do not wait for a reconnect's catch-up.
    pub ignore_resume_marks: bool,
    /// Read every partition, without leases.
    pub no_leases: bool,
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

/// One entry of a delivery stream.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its stream id.
    pub id: String,
    /// The partition it is in.
    pub partition: u16,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    Balance {
        wallet: WalletId,
        owner: UserId,
        from: u64,
    },
    CatchUp {
        wallet: WalletId,
        owner: UserId,
        conn: ConnectionId,
        after: u64,
    },
    Message {
        to: Vec<UserId>,
        frame: String,
    },
    Announcement {
        shard: u16,
        frame: String,
    },
    Close {
        connections: Vec<ConnectionId>,
        /// Told in a last frame before the close (a limit it went past).
        reason: Option<CloseReason>,
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
    fn parse(raw: &StreamId, partition: u16) -> Self {
        let m = &raw.map;
        let body = match field(m, "k").as_deref() {
            Some("balance") => (|| {
                Some(Body::Balance {
                    wallet: WalletId::parse(&field(m, "w")?).ok()?,
                    owner: UserId::parse(&field(m, "u")?).ok()?,
                    from: field(m, "f")?.parse().ok()?,
                })
            })(),
            Some("catchup") => (|| {
                Some(Body::CatchUp {
                    wallet: WalletId::parse(&field(m, "w")?).ok()?,
                    owner: UserId::parse(&field(m, "u")?).ok()?,
                    conn: ConnectionId::parse(&field(m, "c")?).ok()?,
                    after: field(m, "a")?.parse().ok()?,
                })
            })(),
            Some("message") => (|| {
                let to = field(m, "u")?
                    .split(',')
                    .map(|u| UserId::parse(u).ok())
                    .collect::<Option<Vec<_>>>()?;
                Some(Body::Message {
                    to,
                    frame: field(m, "m")?,
                })
            })(),
            Some("announce") => (|| {
                let shard: u16 = field(m, "s")?.parse().ok()?;
                (shard < REGISTRY_SHARDS).then_some(())?;
                Some(Body::Announcement {
                    shard,
                    frame: field(m, "m")?,
                })
            })(),
            Some("close") => field(m, "c").map(|ids| Body::Close {
                connections: ids
                    .split(',')
                    .filter_map(|c| ConnectionId::parse(c).ok())
                    .collect(),
                reason: field(m, "r").and_then(|r| CloseReason::parse(&r)),
            }),
            _ => None,
        };
        Self {
            id: raw.id.clone(),
            partition,
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
    /// `resync` frames sent to reconnecting clients whose gap is older
    /// than the wallet's log.
    pub resyncs: u64,
    /// Catch-ups that ran out of their lane's slice of a batch and were
    /// queued again from where they stopped.
    pub catch_ups_paused: u64,
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
        self.resyncs += other.resyncs;
        self.catch_ups_paused += other.catch_ups_paused;
    }
}

/// A sender: one consumer of the group, holding leases on a share of the
/// partitions.
#[derive(Debug)]
pub struct Sender {
    /// Its consumer name (one per execution environment).
    pub consumer: String,
    management: Management,
    faults: Faults,
    /// Posts in flight at once (`WS_FAN_OUT`), across every lane.
    fan_out: usize,
    permits: Arc<tokio::sync::Semaphore>,
    /// The partitions it holds.
    held: Vec<u16>,
    /// Partitions just taken: their pending entries are taken over first
    /// (`XAUTOCLAIM` from this cursor, without waiting).
    fresh: HashMap<u16, String>,
    /// Partitions whose consumer group is known to exist.
    grouped: HashSet<u16>,
    last_claim: Option<Instant>,
    maintained: Option<Instant>,
    /// It held fewer partitions than its share at the last maintenance:
    /// it looks again every 200 ms (a run that ends gives its partitions
    /// back; the overlapping next run takes them within moments).
    short: bool,
    /// The end of the current run: an announcement stops paging at it
    /// (its checkpoint is exact, so the next holder resumes without
    /// repeating a connection).
    until: Option<Instant>,
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
            fan_out: 64,
            permits: Arc::new(tokio::sync::Semaphore::new(64)),
            held: Vec::new(),
            fresh: HashMap::new(),
            grouped: HashSet::new(),
            last_claim: None,
            maintained: None,
            short: false,
            until: None,
        }
    }

    /// Posts in flight at once (`WS_FAN_OUT`; default 64).
    pub fn with_fan_out(mut self, n: usize) -> Self {
        self.fan_out = n.max(1);
        self.permits = Arc::new(tokio::sync::Semaphore::new(self.fan_out));
        self
    }

    /// One Management API call (`close`: `DeleteConnection`, otherwise
    /// `PostToConnection` of `frame`), within the sender's `WS_FAN_OUT`. A
    /// task of its own: the SDK's signing and HTTP work spreads over the
    /// runtime's threads (a sender given more than one vCPU uses them).
    async fn call(&self, conn: ConnectionId, frame: Option<Arc<str>>) -> Posted {
        let (management, permits) = (self.management.clone(), self.permits.clone());
        let task = tokio::spawn(async move {
            // The semaphore is never closed: a permit always comes.
            let _permit = permits.acquire_owned().await.ok();
            match frame {
                Some(frame) => management.post(&conn, &frame).await,
                None => management.close(&conn).await,
            }
        });
        // A sender stopped (its future dropped) stops its calls too, as a
        // process that dies does.
        let mut task = AbortOnDrop(task);
        (&mut task.0)
            .await
            .unwrap_or(Posted::Failed(AwsError::Body {
                service: "API Gateway Management API",
            }))
    }

    /// The partitions it holds now.
    pub fn partitions(&self) -> &[u16] {
        &self.held
    }
}

/// Aborts its task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn lease(
    deliveries: &Deliveries,
    consumer: &str,
    partition: u16,
    action: &str,
) -> Result<bool, RedisUnavailable> {
    let key = deliveries.queue.keys.ws_lease(partition);
    let ms = millis(deliveries.config.lease);
    let k = &key;
    deliveries
        .queue
        .durable
        .run(|mut c| async move {
            let v: i64 = LEASE
                .key(k)
                .arg(consumer)
                .arg(ms)
                .arg(action)
                .invoke_async(&mut c)
                .await?;
            Ok(v == 1)
        })
        .await
}

/// Renews the sender's leases and, with `heartbeat`, its heartbeat (all at
/// once); returns the partitions it lost (another sender holds them now).
async fn renew(deliveries: &Deliveries, sender: &Sender, heartbeat: bool) -> Vec<u16> {
    if sender.faults.no_leases {
        return Vec::new();
    }
    // The heartbeat too: a sender busy with a long announcement still
    // counts as live when the others work out their share.
    let key = deliveries.queue.keys.ws_senders();
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let (k, me) = (&key, sender.consumer.as_str());
    let (renewed, _) =
        tokio::join!(
            futures_util::future::join_all(sender.held.iter().map(|p| async move {
                (*p, lease(deliveries, &sender.consumer, *p, "renew").await)
            }),),
            async {
                if heartbeat {
                    let _ = deliveries
                        .queue
                        .durable
                        .run(|mut c| async move {
                            let _: i64 = c.zadd(k, me, now as i64).await?;
                            Ok(())
                        })
                        .await;
                }
            }
        );
    renewed
        .into_iter()
        // A Redis error keeps the partition: the lease may still hold.
        .filter(|(_, r)| matches!(r, Ok(false)))
        .map(|(p, _)| p)
        .collect()
}

/// Heartbeats, renews, and takes or gives back partitions so that the
/// sender holds its share: `ceil(partitions / live senders)`.
async fn maintain(deliveries: &Deliveries, sender: &mut Sender) {
    let n = deliveries.queue.partitions.max(1);
    if sender.faults.no_leases {
        sender.held = (0..n).collect();
        return;
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let expired = now - deliveries.config.lease.as_millis() as i128;
    let key = deliveries.queue.keys.ws_senders();
    let (k, me) = (&key, sender.consumer.as_str());
    let live: Result<u64, RedisUnavailable> = deliveries
        .queue
        .durable
        .run(|mut c| async move {
            let (_, _, live): (i64, i64, u64) = redis::pipe()
                .atomic()
                .zadd(k, me, now as i64)
                .zrembyscore(k, "-inf", expired as i64)
                .zcard(k)
                .query_async(&mut c)
                .await?;
            Ok(live)
        })
        .await;
    let Ok(live) = live else {
        return;
    };
    let live = live.max(1);
    let share = usize::from(n)
        .div_ceil(usize::try_from(live).unwrap_or(1))
        .max(1);
    // The heartbeat went with the count above.
    for lost in renew(deliveries, sender, false).await {
        tracing::info!(partition = lost, "partition lease lost to another sender");
        sender.held.retain(|p| *p != lost);
        sender.fresh.remove(&lost);
    }
    // More than the share: give back the extras (their pending entries go
    // with the partition: the next holder takes them over at once).
    while sender.held.len() > share {
        let Some(p) = sender.held.pop() else { break };
        sender.fresh.remove(&p);
        let _ = lease(deliveries, &sender.consumer, p, "release").await;
    }
    // Fewer: take free ones, starting at a place of its own so that
    // senders starting together do not all race for partition 0.
    let start = partition_of(&sender.consumer, n);
    for i in 0..n {
        if sender.held.len() >= share {
            break;
        }
        let p = (start + i) % n;
        if sender.held.contains(&p) {
            continue;
        }
        if let Ok(true) = lease(deliveries, &sender.consumer, p, "take").await {
            tracing::debug!(partition = p, consumer = %sender.consumer, "partition taken");
            sender.held.push(p);
            sender.fresh.insert(p, "0-0".into());
        }
    }
    sender.short = sender.held.len() < share;
}

/// Gives back every lease and leaves `ws_senders` (the end of a run).
async fn release_all(deliveries: &Deliveries, sender: &mut Sender) {
    if !sender.faults.no_leases {
        let me = sender.consumer.clone();
        futures_util::future::join_all(
            sender
                .held
                .iter()
                .map(|p| lease(deliveries, &me, *p, "release")),
        )
        .await;
        let key = deliveries.queue.keys.ws_senders();
        let (k, me) = (&key, me.as_str());
        let _ = deliveries
            .queue
            .durable
            .run(|mut c| async move {
                let _: i64 = c.zrem(k, me).await?;
                Ok(())
            })
            .await;
    }
    sender.held.clear();
    sender.fresh.clear();
    sender.maintained = None;
}

/// Creates the consumer group (and the stream) of `partition` if they do
/// not exist.
pub async fn ensure_group(deliveries: &Deliveries, partition: u16) -> Result<(), RedisUnavailable> {
    let key = deliveries.queue.keys.ws_deliveries(partition);
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

/// Creates every partition's consumer group (see [`ensure_group`]).
pub async fn ensure_groups(deliveries: &Deliveries) -> Result<(), RedisUnavailable> {
    for p in 0..deliveries.queue.partitions.max(1) {
        ensure_group(deliveries, p).await?;
    }
    Ok(())
}

/// Fetches the next entries of one held partition: those of a partition
/// just taken over first (its pending entries, at once), then — at most
/// every half of `WS_REDELIVER_AFTER_MS` — entries pending longer than
/// that (a failed post, a dead sender), then new ones. Blocks (up to
/// `WS_SENDER_BLOCK_MS`) only when it is the sender's one partition.
async fn fetch_partition(
    deliveries: &Deliveries,
    sender: &Sender,
    partition: u16,
    claim: Option<(String, u64)>,
    block: bool,
) -> Result<(Vec<Entry>, u64, Option<String>), RedisUnavailable> {
    let key = deliveries.queue.keys.ws_deliveries(partition);
    let (k, me) = (&key, sender.consumer.as_str());
    if let Some((from, idle)) = claim {
        let f = from.as_str();
        let claimed: StreamAutoClaimReply = deliveries
            .queue
            .durable
            .run(|mut c| async move {
                c.xautoclaim_options(
                    k,
                    GROUP,
                    me,
                    idle,
                    f,
                    StreamAutoClaimOptions::default().count(BATCH),
                )
                .await
            })
            .await?;
        let next = (claimed.next_stream_id != "0-0").then(|| claimed.next_stream_id.clone());
        if !claimed.claimed.is_empty() {
            let n = claimed.claimed.len() as u64;
            tracing::info!(partition, entries = n, "took over pending deliveries");
            let entries = claimed
                .claimed
                .iter()
                .map(|e| Entry::parse(e, partition))
                .collect();
            return Ok((entries, n, next));
        }
        if next.is_some() {
            return Ok((Vec::new(), 0, next));
        }
    }
    // The read blocks on the durable Redis: under half its response budget.
    let mut options = StreamReadOptions::default().group(GROUP, me).count(BATCH);
    if block {
        let block = deliveries
            .config
            .block
            .min(deliveries.queue.durable.response_timeout() / 2)
            .max(Duration::from_millis(1));
        options = options.block(usize::try_from(block.as_millis()).unwrap_or(100));
    }
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
                .flat_map(|k| k.ids.iter().map(|e| Entry::parse(e, partition)))
                .collect()
        })
        .unwrap_or_default();
    Ok((entries, 0, None))
}

/// Fetches from every partition the sender holds, all at once (see
/// [`fetch_partition`]). Returns the entries and how many were taken over.
pub async fn fetch(
    deliveries: &Deliveries,
    sender: &mut Sender,
) -> Result<(Vec<Entry>, u64), RedisUnavailable> {
    let every = if sender.short {
        Duration::from_millis(200).min(deliveries.config.lease / 3)
    } else {
        deliveries.config.lease / 3
    };
    if sender.maintained.is_none_or(|at| at.elapsed() >= every) {
        maintain(deliveries, sender).await;
        sender.maintained = Some(Instant::now());
    }
    for p in sender.held.clone() {
        if !sender.grouped.contains(&p) {
            ensure_group(deliveries, p).await?;
            sender.grouped.insert(p);
        }
    }
    let redeliver = deliveries.config.redeliver_after;
    let due = sender
        .last_claim
        .is_none_or(|at| at.elapsed() >= redeliver / 2);
    if due {
        sender.last_claim = Some(Instant::now());
    }
    let block = sender.held.len() == 1;
    let s: &Sender = sender;
    let fetched = futures_util::future::join_all(s.held.iter().map(|p| {
        let claim = match s.fresh.get(p) {
            Some(from) => Some((from.clone(), 0)),
            None if due => Some(("0-0".to_owned(), millis(redeliver))),
            None => None,
        };
        async move { (*p, fetch_partition(deliveries, s, *p, claim, block).await) }
    }))
    .await;
    let mut entries = Vec::new();
    let mut reclaimed = 0;
    let mut failed = None;
    for (p, result) in fetched {
        match result {
            Ok((e, n, next)) => {
                entries.extend(e);
                reclaimed += n;
                if let Some(cursor) = sender.fresh.get_mut(&p) {
                    match next {
                        Some(next) => *cursor = next,
                        None => {
                            sender.fresh.remove(&p);
                        }
                    }
                }
            }
            Err(e) => {
                sender.grouped.remove(&p);
                failed = Some(e);
            }
        }
    }
    match failed {
        Some(e) if entries.is_empty() => Err(e),
        _ => Ok((entries, reclaimed)),
    }
}

/// A lane: entries that must be delivered in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LaneKey {
    Wallet(WalletId),
    User(UserId),
    Alone(String),
    Other,
}

/// Delivers one lane's entries in order; returns what it did and the ids
/// fully handled (with their partition).
async fn deliver_lane(
    deliveries: &Deliveries,
    sender: &Sender,
    // Who may receive frames in the batch: the live connections of every
    // user it addresses, found in one round-trip time (`realtime::live`),
    // and the reconnects still catching up.
    found: Option<&realtime::Liveness>,
    lane: &[&Entry],
) -> (Report, Vec<(u16, String)>) {
    let mut report = Report::default();
    let mut done = Vec::new();
    // Every version a kick in this batch announces was logged before the
    // batch was fetched, so the first read of a wallet's log covers them
    // all — unless a catch-up in between let a connection in.
    let mut covered = false;
    // Connections whose catch-up this lane sent: the wallet's later frames
    // reach them (the batch's liveness was read before).
    let mut caught_up: HashSet<ConnectionId> = HashSet::new();
    // When this lane's catch-ups must stop (set at its first catch-up).
    let mut slice_end: Option<Instant> = None;
    for entry in lane {
        let ok = match (&entry.body, found) {
            (Body::Balance { .. }, _) if covered => true,
            (Body::Balance { .. } | Body::Message { .. } | Body::CatchUp { .. }, None) => false,
            (
                Body::Balance {
                    wallet,
                    owner,
                    from,
                },
                Some(found),
            ) => {
                let conns: Vec<ConnectionId> = found
                    .live
                    .get(owner)
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|c| {
                        sender.faults.ignore_resume_marks
                            || caught_up.contains(c)
                            || !found.resuming.contains(&(c.clone(), *wallet))
                    })
                    .collect();
                covered =
                    deliver_balance(deliveries, sender, wallet, conns, *from, &mut report).await;
                covered
            }
            (
                Body::CatchUp {
                    wallet,
                    owner,
                    conn,
                    after,
                },
                Some(found),
            ) => {
                let live = found
                    .live
                    .get(owner)
                    .is_some_and(|conns| conns.contains(conn));
                // A lane's catch-ups take at most `WS_CATCH_UP_SLICE_MS`
                // of the batch: the batch (every other lane's frames)
                // waits for its slowest lane.
                let until = *slice_end
                    .get_or_insert_with(|| Instant::now() + deliveries.config.catch_up_slice);
                let outcome = if !live || sender.faults.no_catch_up {
                    // Gone, or its sign-in is over: nothing to catch up.
                    CaughtUp::Done
                } else if Instant::now() >= until {
                    CaughtUp::Paused(*after)
                } else {
                    catch_up(deliveries, sender, wallet, conn, *after, until, &mut report).await
                };
                match outcome {
                    CaughtUp::Done if live => {
                        caught_up.insert(conn.clone());
                        covered = false;
                        realtime::caught_up(&deliveries.connections, owner, conn, wallet)
                            .await
                            .is_ok()
                    }
                    CaughtUp::Done => true,
                    CaughtUp::Failed => false,
                    // Behind the frames that came meanwhile, from where it
                    // stopped (the connection stays marked: the wallet's
                    // new frames skip it until its catch-up is done).
                    CaughtUp::Paused(at) => {
                        report.catch_ups_paused += 1;
                        deliveries
                            .queue
                            .catch_up(wallet, owner, conn, at)
                            .await
                            .is_ok()
                    }
                }
            }
            (Body::Message { to, frame }, Some(found)) => {
                let mut conns: Vec<ConnectionId> = to
                    .iter()
                    .flat_map(|u| found.live.get(u).cloned().unwrap_or_default())
                    .collect();
                conns.is_empty()
                    || post_all(deliveries, sender, &mut conns, frame, &mut report)
                        .await
                        .is_empty()
            }
            (Body::Announcement { shard, frame }, _) => {
                fan_out(deliveries, sender, entry, *shard, frame, &mut report).await
            }
            (
                Body::Close {
                    connections,
                    reason,
                },
                _,
            ) => {
                if let Some(reason) = reason {
                    tell_closing(sender, &entry.id, connections, *reason, &mut report).await;
                }
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
            done.push((entry.partition, entry.id.clone()));
        } else {
            report.failed += 1;
        }
    }
    (report, done)
}

/// Posts each connection about to be closed its last frame: why
/// (`"type": "closing"`). Best effort: a failed post does not keep the
/// connection open (the close follows whatever happens).
async fn tell_closing(
    sender: &Sender,
    entry: &str,
    connections: &[ConnectionId],
    reason: CloseReason,
    report: &mut Report,
) {
    let notice = serde_json::json!({
        "type": "closing",
        "reason": reason.as_str(),
        "timestamp": pubsub::unix_seconds(time::OffsetDateTime::now_utc()),
    });
    let Some(text) = frame(&format!("closing:{entry}"), "connection", &notice) else {
        return;
    };
    let text: Arc<str> = Arc::from(text);
    let results: Vec<Posted> = futures_util::stream::iter(connections.iter().cloned())
        .map(|conn| sender.call(conn, Some(text.clone())))
        .buffer_unordered(sender.fan_out)
        .collect()
        .await;
    report.sent += results.iter().filter(|p| **p == Posted::Sent).count() as u64;
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
        .map(|conn| sender.call(conn, None))
        .buffer_unordered(sender.fan_out)
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

/// Delivers `entries` (balances in version order per wallet, a user's
/// messages in stream order, each announcement shard on its own) and
/// acknowledges those fully handled, per partition.
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
            Body::Balance { owner, .. } | Body::CatchUp { owner, .. } => vec![*owner],
            Body::Message { to, .. } => to.clone(),
            _ => Vec::new(),
        })
        .collect();
    let found = if users.is_empty() {
        Some(realtime::Liveness::default())
    } else {
        let looked_up = if sender.faults.no_sign_in_check {
            realtime::registered(&deliveries.connections, &users).await
        } else {
            realtime::live(&deliveries.connections, &users).await
        };
        match looked_up {
            Ok(found) => {
                if !close_all(deliveries, sender, &found.dead, &mut report).await {
                    // Out of the registry already: retried from the stream.
                    let ids: Vec<ConnectionId> =
                        found.dead.iter().map(|(c, _)| c.clone()).collect();
                    if let Err(why) = deliveries.queue.close(&ids).await {
                        tracing::warn!(reason = why.as_str(), "could not queue closes");
                    }
                }
                Some(found)
            }
            Err(why) => {
                // Their entries stay pending and are redelivered.
                tracing::warn!(reason = why.as_str(), "could not look up the recipients");
                None
            }
        }
    };
    let mut order: Vec<LaneKey> = Vec::new();
    let mut lanes: HashMap<LaneKey, Vec<&Entry>> = HashMap::new();
    for entry in entries {
        let key = match &entry.body {
            Body::Balance { wallet, .. } | Body::CatchUp { wallet, .. } => LaneKey::Wallet(*wallet),
            Body::Message { to, .. } if to.len() == 1 => LaneKey::User(to[0]),
            Body::Announcement { .. } => LaneKey::Alone(entry.id.clone()),
            _ => LaneKey::Other,
        };
        if !lanes.contains_key(&key) {
            order.push(key.clone());
        }
        lanes.entry(key).or_default().push(entry);
    }
    let found = found.as_ref();
    let results: Vec<(Report, Vec<(u16, String)>)> = futures_util::stream::iter(order)
        .map(|key| {
            let lane = lanes.get(&key).cloned().unwrap_or_default();
            async move { deliver_lane(deliveries, sender, found, &lane).await }
        })
        .buffer_unordered(LANES)
        .collect()
        .await;
    let mut done: HashMap<u16, Vec<String>> = HashMap::new();
    for (r, d) in results {
        report.add(&r);
        for (p, id) in d {
            done.entry(p).or_default().push(id);
        }
    }
    report.entries = done.values().map(|d| d.len() as u64).sum();
    if !sender.faults.ack_on_fetch {
        futures_util::future::join_all(done.iter().map(|(p, ids)| async move {
            let key = deliveries.queue.keys.ws_deliveries(*p);
            let k = &key;
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
        }))
        .await;
    }
    report
}

/// Posts `frame` to every connection in `to`, `WS_FAN_OUT` at a time;
/// prunes gone ones. Returns the connections whose post failed.
async fn post_all(
    deliveries: &Deliveries,
    sender: &Sender,
    to: &mut Vec<ConnectionId>,
    frame: &str,
    report: &mut Report,
) -> Vec<ConnectionId> {
    let (frame, stubbed) = if sender.faults.no_size_check {
        (frame.to_owned(), false)
    } else {
        fit(frame.to_owned())
    };
    if stubbed {
        report.too_large += 1;
    }
    let frame: Arc<str> = Arc::from(frame);
    let results: Vec<(ConnectionId, Posted)> = futures_util::stream::iter(to.iter().cloned())
        .map(|conn| {
            let frame = frame.clone();
            async move {
                let posted = sender.call(conn.clone(), Some(frame)).await;
                (conn, posted)
            }
        })
        .buffer_unordered(sender.fan_out)
        .collect()
        .await;
    let mut failed = Vec::new();
    let mut gone = Vec::new();
    for (conn, posted) in results {
        match posted {
            Posted::Sent => report.sent += 1,
            Posted::Gone => {
                report.gone += 1;
                gone.push(conn);
            }
            Posted::Failed(e) => {
                tracing::warn!(connection_id = %conn, error = %e, "post to connection failed");
                failed.push(conn);
            }
        }
    }
    if !gone.is_empty() {
        to.retain(|c| !gone.contains(c));
        if !sender.faults.keep_gone {
            let forget: Vec<(ConnectionId, Option<UserId>)> =
                gone.into_iter().map(|c| (c, None)).collect();
            // The user's own registry is pruned too: `disconnect` finds the
            // user in the connection's metadata.
            for (conn, _) in &forget {
                if let Err(why) = realtime::disconnect(&deliveries.connections, conn, None).await {
                    tracing::warn!(reason = why.as_str(), "could not prune a gone connection");
                }
            }
        }
    }
    failed
}

async fn advance(deliveries: &Deliveries, cursor: &str, to: u64) -> bool {
    deliveries
        .connections
        .redis
        .run(|mut conn| async move {
            let _: i64 = ADVANCE.key(cursor).arg(to).invoke_async(&mut conn).await?;
            Ok(())
        })
        .await
        .is_ok()
}

/// The frame of one wallet log entry.
fn log_frame(
    channel: &str,
    id: &str,
    fields: &[(String, String)],
) -> Option<(u64, Option<String>)> {
    let version = id.split('-').next().and_then(|v| v.parse::<u64>().ok())?;
    let message = fields
        .iter()
        .find(|(f, _)| f == "m")
        .and_then(|(_, m)| serde_json::from_str::<Value>(m).ok());
    let frame = message.and_then(|m| frame(&format!("{channel}:{version}"), channel, &m));
    Some((version, frame))
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
        if sender.faults.advance_before_post
            && let Some(last) = entries
                .last()
                .and_then(|(id, f)| log_frame(&channel, id, f))
            && !advance(deliveries, &cursor, last.0).await
        {
            return false;
        }
        let mut delivered = None;
        let mut ok = true;
        for (id, fields) in &entries {
            let Some((version, frame)) = log_frame(&channel, id, fields) else {
                continue;
            };
            if let Some(frame) = frame
                && !conns.is_empty()
                && !post_all(deliveries, sender, &mut conns, &frame, report)
                    .await
                    .is_empty()
            {
                ok = false;
                if sender.faults.skip_failed_version {
                    delivered = Some(version);
                }
                break;
            }
            delivered = Some(version);
        }
        if let Some(v) = delivered
            && !advance(deliveries, &cursor, v).await
        {
            // Sent again next time: at least once.
            return false;
        }
        // A full batch may have more behind it.
        if !ok || entries.len() < BATCH {
            return ok;
        }
    }
}

/// How a catch-up ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CaughtUp {
    /// Everything sent (or the connection is gone).
    Done,
    /// A post or a read failed: sent again from the start of the entry.
    Failed,
    /// Its lane's slice of the batch ran out after this version was sent:
    /// the rest continues in a later batch.
    Paused(u64),
}

/// A reconnect's catch-up: the wallet log's versions after `after`, in
/// order, to `conn` only — after a `resync` frame when the log no longer
/// reaches back to `after + 1`. A client that missed more than
/// `WS_CATCH_UP_MAX` versions gets the `resync` alone (it reads the
/// balance over HTTP; new frames follow). Stops after the post that
/// passes `until` (its lane's slice of the batch).
async fn catch_up(
    deliveries: &Deliveries,
    sender: &Sender,
    wallet: &WalletId,
    conn: &ConnectionId,
    after: u64,
    until: Instant,
    report: &mut Report,
) -> CaughtUp {
    let keys = &deliveries.queue.keys;
    let (log, published) = (
        keys.wallet_balance_log(wallet),
        keys.wallet_balance_published(wallet),
    );
    let channel = pubsub::balance(wallet);
    let mut conns = vec![conn.clone()];
    let mut from = after;
    let mut first = true;
    loop {
        let (l, p) = (&log, &published);
        let read = deliveries
            .connections
            .redis
            .run(|mut c| async move {
                let (oldest, published, entries): (u64, u64, Vec<LogEntry>) = LOG_RANGE
                    .key(l)
                    .key(p)
                    .arg(from)
                    .arg(BATCH)
                    .invoke_async(&mut c)
                    .await?;
                Ok((oldest, published, entries))
            })
            .await;
        let Ok((oldest, published, entries)) = read else {
            return CaughtUp::Failed;
        };
        if first {
            first = false;
            // Missed versions the log no longer holds, or more than one
            // catch-up sends: the client must read the balance over HTTP.
            let gap = if oldest == 0 {
                published > after
            } else {
                oldest > after + 1
            };
            let too_many = published.saturating_sub(after) > deliveries.config.catch_up_max;
            if gap || too_many {
                let resync = serde_json::json!({
                    "type": "resync",
                    "wallet_id": wallet,
                    "after_version": after,
                    "oldest_version": oldest,
                    "timestamp": pubsub::unix_seconds(time::OffsetDateTime::now_utc()),
                });
                let Some(frame) = frame(&format!("resync:{wallet}:{after}"), &channel, &resync)
                else {
                    return CaughtUp::Failed;
                };
                if !post_all(deliveries, sender, &mut conns, &frame, report)
                    .await
                    .is_empty()
                {
                    return CaughtUp::Failed;
                }
                report.resyncs += 1;
                if conns.is_empty() || too_many {
                    return CaughtUp::Done;
                }
            }
        }
        for (id, fields) in &entries {
            let Some((version, frame)) = log_frame(&channel, id, fields) else {
                continue;
            };
            if let Some(frame) = frame
                && !post_all(deliveries, sender, &mut conns, &frame, report)
                    .await
                    .is_empty()
            {
                return CaughtUp::Failed;
            }
            if conns.is_empty() {
                return CaughtUp::Done;
            }
            from = version;
            if Instant::now() >= until {
                return CaughtUp::Paused(from);
            }
        }
        if entries.len() < BATCH {
            return CaughtUp::Done;
        }
    }
}

/// One announcement's fan-out through registry shard `shard`: page by page
/// (`WS_FANOUT_PAGE`), each page's sign-ins checked in one round-trip
/// time, its dead connections closed, the live ones posted to, then a
/// checkpoint (the last id done; connections to retry). Starts from the last
/// checkpoint: the retries first, then the rest of the scan. True when
/// every connection was handled (the entry is then acknowledged and its
/// progress dropped, in one step).
async fn fan_out(
    deliveries: &Deliveries,
    sender: &Sender,
    entry: &Entry,
    shard: u16,
    frame: &str,
    report: &mut Report,
) -> bool {
    let keys = &deliveries.queue.keys;
    let (stream, progress) = (
        keys.ws_deliveries(entry.partition),
        keys.ws_fanout(entry.partition, &entry.id),
    );
    let retry = format!("{progress}:retry");
    let (st, pr, rt) = (&stream, &progress, &retry);
    let page = deliveries.config.page;
    let faults = sender.faults;
    let state = if faults.no_checkpoint {
        Ok((None, Vec::new()))
    } else {
        deliveries
            .queue
            .durable
            .run(|mut c| async move {
                let (cursor, retries): (Option<String>, Vec<String>) = redis::pipe()
                    .hget(pr, "cursor")
                    .smembers(rt)
                    .query_async(&mut c)
                    .await?;
                Ok((cursor, retries))
            })
            .await
    };
    let Ok((cursor, retries)) = state else {
        return false;
    };
    let checkpoint = |cursor: String, failed: Vec<ConnectionId>, retried: Vec<ConnectionId>| async move {
        if faults.no_checkpoint {
            return true;
        }
        let (me, id) = (sender.consumer.as_str(), entry.id.as_str());
        let r: Result<i64, RedisUnavailable> = deliveries
            .queue
            .durable
            .run(|mut c| async move {
                let mut call = CHECKPOINT.prepare_invoke();
                call.key(st)
                    .key(pr)
                    .key(rt)
                    .arg(GROUP)
                    .arg(me)
                    .arg(id)
                    .arg(&cursor)
                    .arg(PROGRESS_TTL_MS)
                    .arg(failed.len());
                for c in failed.iter().chain(retried.iter()) {
                    call.arg(c.as_str());
                }
                call.invoke_async(&mut c).await
            })
            .await;
        matches!(r, Ok(1))
    };
    // The retries: only the connections whose post failed before.
    let retries: Vec<ConnectionId> = retries
        .iter()
        .filter_map(|c| ConnectionId::parse(c).ok())
        .collect();
    let mut failed_any = false;
    if !retries.is_empty() {
        let (live, dead) = match realtime::entries(&deliveries.connections, shard, &retries).await {
            Ok(found) => found,
            Err(_) => return false,
        };
        let closed = close_all(deliveries, sender, &dead, report).await;
        let mut to = live;
        let failed = post_all(deliveries, sender, &mut to, frame, report).await;
        failed_any |= !failed.is_empty() || !closed;
        let settled: Vec<ConnectionId> = retries
            .iter()
            .filter(|c| !failed.contains(c))
            .cloned()
            .collect();
        let at = cursor.clone().unwrap_or_default();
        if !checkpoint(at, Vec::new(), settled).await {
            return false;
        }
    }
    // The rest of the scan.
    // The cursor: the last connection id done ("" before the first;
    // `done` — not a valid connection id — after the last page).
    let mut at: String = match cursor {
        Some(c) if c == "done" => {
            return !failed_any && finish(deliveries, sender, st, pr, rt, &entry.id).await;
        }
        Some(c) => c,
        None => String::new(),
    };
    loop {
        if sender.until.is_some_and(|u| Instant::now() >= u) {
            // The run is over: the next holder resumes at this checkpoint.
            return false;
        }
        // A page read that fails (a timeout under load) is tried again
        // twice, 100 ms apart, before the entry is left to the redelivery.
        let mut read = realtime::everyone_page(&deliveries.connections, shard, &at, page).await;
        for _ in 0..2 {
            if read.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            read = realtime::everyone_page(&deliveries.connections, shard, &at, page).await;
        }
        let Ok((next, live, dead)) = read else {
            return false;
        };
        let closed = close_all(deliveries, sender, &dead, report).await;
        let mut to = live;
        let failed = if to.is_empty() {
            Vec::new()
        } else {
            post_all(deliveries, sender, &mut to, frame, report).await
        };
        if !failed.is_empty() && faults.resend_all_on_failure {
            // The broken variant: the whole shard again, from the start.
            let _ = checkpoint(String::new(), Vec::new(), Vec::new()).await;
            return false;
        }
        failed_any |= !failed.is_empty() || !closed;
        let mark = next.clone().unwrap_or_else(|| "done".to_owned());
        if !checkpoint(mark, failed, Vec::new()).await {
            // No longer this sender's entry (taken over): stop.
            return false;
        }
        match next {
            Some(n) => at = n,
            None => break,
        }
    }
    !failed_any && finish(deliveries, sender, st, pr, rt, &entry.id).await
}

/// Acknowledges a finished announcement shard and drops its progress.
async fn finish(
    deliveries: &Deliveries,
    sender: &Sender,
    stream: &str,
    progress: &str,
    retry: &str,
    id: &str,
) -> bool {
    if sender.faults.no_checkpoint {
        return true;
    }
    let r: Result<i64, RedisUnavailable> = deliveries
        .queue
        .durable
        .run(|mut c| async move {
            FINISH
                .key(stream)
                .key(progress)
                .key(retry)
                .arg(GROUP)
                .arg(id)
                .invoke_async(&mut c)
                .await
        })
        .await;
    matches!(r, Ok(1))
}

/// Delivers `entries`, renewing the sender's leases while it runs (an
/// announcement may take longer than a lease).
async fn deliver_renewing(
    deliveries: &Deliveries,
    sender: &mut Sender,
    entries: &[Entry],
) -> Report {
    let every = deliveries.config.lease / 3;
    let mut lost = Vec::new();
    let report = {
        let s: &Sender = sender;
        let work = deliver(deliveries, s, entries);
        tokio::pin!(work);
        loop {
            tokio::select! {
                r = &mut work => break r,
                () = tokio::time::sleep(every) => lost.extend(renew(deliveries, s, true).await),
            }
        }
    };
    for p in lost {
        tracing::warn!(partition = p, "partition lease lost while delivering");
        sender.held.retain(|h| *h != p);
        sender.fresh.remove(&p);
    }
    report
}

/// Entries waiting in `partitions` (not yet read, plus read and not yet
/// acknowledged), from `XINFO GROUPS`.
pub async fn backlog(deliveries: &Deliveries, partitions: &[u16]) -> u64 {
    let counts = futures_util::future::join_all(partitions.iter().map(|p| async move {
        let key = deliveries.queue.keys.ws_deliveries(*p);
        let k = &key;
        let groups: Result<StreamInfoGroupsReply, RedisUnavailable> = deliveries
            .queue
            .durable
            .run(|mut c| async move { c.xinfo_groups(k).await })
            .await;
        groups.map_or(0, |g| {
            g.groups
                .iter()
                .filter(|g| g.name == GROUP)
                .map(|g| (g.lag.unwrap_or(0) + g.pending) as u64)
                .sum()
        })
    }))
    .await;
    counts.into_iter().sum()
}

/// Reads and delivers until `until`, and sweeps sign-outs made while
/// Redis was unreachable into it every [`sessions::SWEEP_EVERY`] (the
/// sender runs all the time: docs/security.md → A sign-out during a Redis
/// outage). Returns what it delivered.
pub async fn run(deliveries: &Deliveries, sender: &mut Sender, until: Instant) -> Report {
    let running: std::pin::Pin<Box<dyn std::future::Future<Output = Report> + Send + '_>> =
        Box::pin(run_until(deliveries, sender, until));
    let sweeping: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> =
        Box::pin(sweep_until(&deliveries.connections.sessions, until));
    let (report, ()) = tokio::join!(running, sweeping);
    report
}

/// [`sessions::apply_pending`] every [`sessions::SWEEP_EVERY`] until
/// `until` (one PostgreSQL query each time when nothing is pending).
async fn sweep_until(sessions: &sessions::Sessions, until: Instant) {
    while Instant::now() < until {
        match sessions::apply_pending(sessions).await {
            Ok(r) if r.sessions + r.tokens > 0 => {
                tracing::info!(report = ?r, "pending sign-outs applied to Redis");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not sweep pending sign-outs"),
        }
        let left = until.saturating_duration_since(Instant::now());
        tokio::time::sleep(sessions::SWEEP_EVERY.min(left)).await;
    }
}

async fn run_until(deliveries: &Deliveries, sender: &mut Sender, until: Instant) -> Report {
    let mut total = Report::default();
    let run_started = Instant::now();
    let mut busy = Duration::ZERO;
    let mut idle = Duration::from_millis(1);
    sender.until = Some(until);
    tracing::debug!(consumer = %sender.consumer, left_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64, "delivery run starts");
    while Instant::now() < until {
        let (entries, reclaimed) = match fetch(deliveries, sender).await {
            Ok(e) => e,
            Err(why) => {
                tracing::warn!(reason = why.as_str(), "could not read the delivery streams");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if entries.is_empty() && sender.held.is_empty() {
            // Every partition is held by others: wait for a share.
            let wait = (deliveries.config.lease / 3)
                .min(until.saturating_duration_since(Instant::now()))
                .min(Duration::from_millis(500));
            tokio::time::sleep(wait).await;
            continue;
        }
        if entries.is_empty() {
            if sender.held.len() > 1 {
                // No blocking read across partitions: back off while idle
                // (at most 25 ms, the added latency of a quiet sender).
                tokio::time::sleep(idle).await;
                idle = (idle * 2).min(Duration::from_millis(25));
            }
            continue;
        }
        idle = Duration::from_millis(1);
        let started = Instant::now();
        tracing::debug!(
            entries = entries.len(),
            elapsed_ms = run_started.elapsed().as_millis() as u64,
            "delivering"
        );
        let r = deliver_renewing(deliveries, sender, &entries).await;
        busy += started.elapsed();
        tracing::debug!(report = ?r, "delivered");
        total.add(&r);
        total.reclaimed += reclaimed;
    }
    let waiting = backlog(deliveries, &sender.held).await;
    release_all(deliveries, sender).await;
    sender.until = None;
    metrics::counter!("WsFramesSent").increment(total.sent);
    if !busy.is_zero() {
        metrics::histogram!("WsFramesPerSecond").record(total.sent as f64 / busy.as_secs_f64());
    }
    metrics::histogram!("WsBacklog").record(waiting as f64);
    total
}
