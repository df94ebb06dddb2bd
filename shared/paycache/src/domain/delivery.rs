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

use serde::Serialize;

use crate::domain::realtime::Connections;
use crate::infra::config::DeliveryConfig;

pub use crate::domain::delivery_queue::{CloseReason, DeliveryQueue, Recipients, frame};
pub use crate::infra::keys::partition_of;

// The concerns, one file each (the whole is described above).
mod announcements;
mod catch_up;
mod entry;
mod lanes;
mod management;
mod run;
mod sender;
mod wallet_log;

pub use entry::Entry;
pub use lanes::deliver;
pub use management::{AWS_CALLS, Management, Posted};
pub use run::{backlog, run};
pub use sender::{Sender, ensure_group, ensure_groups, fetch};

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

/// The sending side: the streams, the registry, the per-wallet logs.
#[derive(Debug, Clone)]
pub struct Deliveries {
    pub(crate) queue: DeliveryQueue,
    /// The registry; its Redis (the cache one) also holds the wallet logs
    /// and cursors.
    pub(crate) connections: Connections,
    pub(crate) config: DeliveryConfig,
}

/// Real alternative designs, for the tests that prove the one built
/// (`test-variants` only: never in a function).
#[cfg(feature = "test-variants")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Variants {
    /// Send to every registered connection without checking that its
    /// sign-in lives (the registry before sign-ins were tracked).
    pub no_sign_in_check: bool,
    /// Read every partition, without leases (senders before partitions
    /// were leased).
    pub no_leases: bool,
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
