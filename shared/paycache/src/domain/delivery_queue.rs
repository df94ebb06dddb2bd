//! The publishing side of real-time delivery: what a function that made
//! a change appends to the delivery streams (`ws_deliveries:{d<p>}`, in
//! the durable Redis) for `ws-sender` to deliver (`crate::domain::delivery`
//! is the sending side; docs/realtime.md → Real-time delivery).
//!
//! Each entry is one `XADD` into the partition of its wallet (balance
//! kicks, reconnect catch-ups), its user (messages: one entry per
//! recipient) or its first connection (closes); an announcement is one
//! entry per registry shard. A separate module from the sender so that
//! what publishes — sign-outs included (`crate::domain::sessions`, which
//! queues the close of the sockets a sign-out ends) — needs nothing of
//! the sender, the registry or the sessions.

use serde::Serialize;
use serde_json::Value;

use crate::infra::connection::{Redis, RedisUnavailable};
use crate::infra::keys::{ConnectionId, Keyspace, REGISTRY_SHARDS, UserId, WalletId, partition_of};

/// Each delivery stream keeps about this many entries.
const STREAM_MAXLEN: usize = 100_000;

/// The publishing side: appends entries to the delivery streams.
#[derive(Debug, Clone)]
pub struct DeliveryQueue {
    pub(crate) keys: Keyspace,
    /// The durable Redis (the streams must not be evicted).
    pub(crate) durable: Redis,
    /// `WS_PARTITIONS`.
    pub(crate) partitions: u16,
}

/// Why a connection whose sign-in lives is closed (the `reason` of its
/// last frame, `"type": "closing"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// It pinged more often than `WS_PINGS_PER_MINUTE`.
    TooManyPings,
}

impl CloseReason {
    /// As the frame's `reason` says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooManyPings => "too_many_pings",
        }
    }

    /// From the frame's `reason` (an entry of a delivery stream).
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "too_many_pings" => Some(Self::TooManyPings),
            _ => None,
        }
    }
}

/// Who receives a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipients {
    /// Every open connection of these users.
    Users(Vec<UserId>),
    /// Every open connection.
    Everyone,
}

/// `message` as the frame a client receives: its fields plus `id` and
/// `channel` (CONTRACT → Real-time messages).
pub fn frame<T: Serialize>(id: &str, channel: &str, message: &T) -> Option<String> {
    let mut map = match serde_json::to_value(message).ok()? {
        Value::Object(map) => map,
        _ => return None,
    };
    map.insert("id".into(), Value::String(id.to_owned()));
    map.insert("channel".into(), Value::String(channel.to_owned()));
    serde_json::to_string(&map).ok()
}

impl DeliveryQueue {
    /// The partition of `id` (see [`partition_of`]).
    pub fn partition(&self, id: &str) -> u16 {
        partition_of(id, self.partitions)
    }

    async fn append(
        &self,
        partition: u16,
        fields: &[(&str, &str)],
    ) -> Result<(), RedisUnavailable> {
        let key = self.keys.ws_deliveries(partition);
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
    /// them to `owner`. In the wallet's partition.
    pub(crate) async fn balance(
        &self,
        wallet: &WalletId,
        owner: &UserId,
        from: u64,
    ) -> Result<(), RedisUnavailable> {
        let (w, u, f) = (wallet.to_string(), owner.to_string(), from.to_string());
        self.append(
            self.partition(&w),
            &[("k", "balance"), ("w", &w), ("u", &u), ("f", &f)],
        )
        .await
    }

    /// A reconnect: send `conn` (of `owner`) the versions of `wallet`
    /// after `after`. In the wallet's partition, behind the wallet's kicks.
    pub async fn catch_up(
        &self,
        wallet: &WalletId,
        owner: &UserId,
        conn: &ConnectionId,
        after: u64,
    ) -> Result<(), RedisUnavailable> {
        let (w, u, a) = (wallet.to_string(), owner.to_string(), after.to_string());
        self.append(
            self.partition(&w),
            &[
                ("k", "catchup"),
                ("w", &w),
                ("u", &u),
                ("c", conn.as_str()),
                ("a", &a),
            ],
        )
        .await
    }

    /// Close these connections (`DELETE @connections/{id}`) and forget
    /// them: a sign-out, or a `ping` that found its sign-in over. Nothing
    /// is sent to them first (their sign-in is over).
    pub async fn close(&self, connections: &[ConnectionId]) -> Result<(), RedisUnavailable> {
        self.close_entry(connections, None).await
    }

    /// Close these connections after telling each why, in a last frame
    /// `{"id", "channel": "connection", "type": "closing", "reason",
    /// "timestamp"}`: a limit they went past (their sign-in still lives).
    /// API Gateway closes a connection with code 1000 whatever the reason
    /// (`DeleteConnection` takes none), so the reason travels in the frame.
    pub async fn close_telling(
        &self,
        connections: &[ConnectionId],
        reason: CloseReason,
    ) -> Result<(), RedisUnavailable> {
        self.close_entry(connections, Some(reason)).await
    }

    async fn close_entry(
        &self,
        connections: &[ConnectionId],
        reason: Option<CloseReason>,
    ) -> Result<(), RedisUnavailable> {
        let Some(first) = connections.first() else {
            return Ok(());
        };
        let ids = connections
            .iter()
            .map(ConnectionId::as_str)
            .collect::<Vec<_>>()
            .join(",");
        let mut fields = vec![("k", "close"), ("c", ids.as_str())];
        if let Some(r) = reason {
            fields.push(("r", r.as_str()));
        }
        self.append(self.partition(first.as_str()), &fields).await
    }

    /// Deliver `message`, published on `channel`, to `to`: one entry per
    /// recipient user (in the user's partition), or one per registry shard
    /// for everyone — all with the same frame `id`.
    pub async fn message<T: Serialize>(
        &self,
        channel: &str,
        to: &Recipients,
        message: &T,
    ) -> Result<(), RedisUnavailable> {
        let id = uuid::Uuid::new_v4().to_string();
        let frame = frame(&id, channel, message).ok_or(RedisUnavailable::Server)?;
        let frame = frame.as_str();
        let names: Vec<String> = match to {
            Recipients::Users(users) => {
                let mut distinct: Vec<String> = users.iter().map(ToString::to_string).collect();
                distinct.sort();
                distinct.dedup();
                distinct
            }
            Recipients::Everyone => (0..REGISTRY_SHARDS).map(|s| s.to_string()).collect(),
        };
        let jobs: Vec<(u16, [(&str, &str); 4])> = names
            .iter()
            .enumerate()
            .map(|(i, name)| match to {
                Recipients::Users(_) => (
                    self.partition(name),
                    [
                        ("k", "message"),
                        ("c", channel),
                        ("u", name.as_str()),
                        ("m", frame),
                    ],
                ),
                // Shard i in partition i mod N: announcements spread over
                // every partition (and so every sender).
                Recipients::Everyone => (
                    (i as u16) % self.partitions.max(1),
                    [
                        ("k", "announce"),
                        ("c", channel),
                        ("s", name.as_str()),
                        ("m", frame),
                    ],
                ),
            })
            .collect();
        let appended =
            futures_util::future::join_all(jobs.iter().map(|(p, fields)| self.append(*p, fields)))
                .await;
        appended
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map(|_| ())
    }
}
