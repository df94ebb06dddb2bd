//! The sender and its partitions: heartbeats in `ws_senders`, leases on
//! its share of the partitions (`ws_lease:{d<p>}`), takeover of a dead
//! sender's partitions and pending entries (`XAUTOCLAIM`), and fetching
//! the next entries of every partition it holds.

use redis::AsyncCommands;

use super::BATCH;
use super::Deliveries;
use super::GROUP;
#[cfg(feature = "test-variants")]
use super::Variants;
use super::entry::Entry;
use super::management::Management;
use super::management::Posted;
use crate::infra::aws::AwsError;
use crate::infra::connection::RedisUnavailable;
use crate::infra::keys::ConnectionId;
use crate::infra::keys::partition_of;
use redis::Script;
use redis::streams::StreamAutoClaimOptions;
use redis::streams::StreamAutoClaimReply;
use redis::streams::StreamReadOptions;
use redis::streams::StreamReadReply;
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;
use std::time::Instant;

pub(super) static LEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lease.lua")));

/// A sender: one consumer of the group, holding leases on a share of the
/// partitions.
#[derive(Debug)]
pub struct Sender {
    /// Its consumer name (one per execution environment).
    pub consumer: String,
    pub(super) management: Management,
    #[cfg(feature = "test-variants")]
    pub(super) variants: Variants,
    /// Posts in flight at once (`WS_FAN_OUT`), across every lane.
    pub(super) fan_out: usize,
    pub(super) permits: Arc<tokio::sync::Semaphore>,
    /// The partitions it holds.
    pub(super) held: Vec<u16>,
    /// Partitions just taken: their pending entries are taken over first
    /// (`XAUTOCLAIM` from this cursor, without waiting).
    pub(super) fresh: HashMap<u16, String>,
    /// Partitions whose consumer group is known to exist.
    pub(super) grouped: HashSet<u16>,
    pub(super) last_claim: Option<Instant>,
    pub(super) maintained: Option<Instant>,
    /// It held fewer partitions than its share at the last maintenance:
    /// it looks again every 200 ms (a run that ends gives its partitions
    /// back; the overlapping next run takes them within moments).
    pub(super) short: bool,
    /// The end of the current run: an announcement stops paging at it
    /// (its checkpoint is exact, so the next holder resumes without
    /// repeating a connection).
    pub(super) until: Option<Instant>,
}

impl Sender {
    /// A sender posting through `management`.
    pub fn new(management: Management) -> Self {
        Self {
            consumer: format!("sender-{}", uuid::Uuid::new_v4().simple()),
            management,
            #[cfg(feature = "test-variants")]
            variants: Variants::default(),
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
    pub(super) async fn call(&self, conn: ConnectionId, frame: Option<Arc<str>>) -> Posted {
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

    /// This sender, built as an alternative design (`test-variants` only).
    #[cfg(feature = "test-variants")]
    pub fn with_variants(mut self, variants: Variants) -> Self {
        self.variants = variants;
        self
    }

    /// Whether it is the tests' sender without leases; always false in a
    /// function.
    pub(super) fn without_leases(&self) -> bool {
        #[cfg(feature = "test-variants")]
        {
            self.variants.no_leases
        }
        #[cfg(not(feature = "test-variants"))]
        {
            false
        }
    }
}

/// Aborts its task when dropped.
pub(super) struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) async fn lease(
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
pub(super) async fn renew(deliveries: &Deliveries, sender: &Sender, heartbeat: bool) -> Vec<u16> {
    if sender.without_leases() {
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
pub(super) async fn maintain(deliveries: &Deliveries, sender: &mut Sender) {
    let n = deliveries.queue.partitions.max(1);
    if sender.without_leases() {
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
pub(super) async fn release_all(deliveries: &Deliveries, sender: &mut Sender) {
    if !sender.without_leases() {
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
pub(super) async fn fetch_partition(
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
