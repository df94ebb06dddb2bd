//! One entry of a delivery stream, typed: a balance kick, a reconnect's
//! catch-up, a message to users, an announcement shard, a close. An entry
//! that does not parse is `Malformed` (acknowledged and dropped).

use crate::domain::delivery_queue::CloseReason;
use crate::infra::keys::ConnectionId;
use crate::infra::keys::REGISTRY_SHARDS;
use crate::infra::keys::UserId;
use crate::infra::keys::WalletId;
use redis::streams::StreamId;
use std::collections::HashMap;

/// One entry of a delivery stream.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its stream id.
    pub id: String,
    /// The partition it is in.
    pub partition: u16,
    pub(super) body: Body,
}

#[derive(Debug, Clone)]
pub(super) enum Body {
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

pub(super) fn field(map: &HashMap<String, redis::Value>, name: &str) -> Option<String> {
    match map.get(name)? {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

impl Entry {
    pub(super) fn parse(raw: &StreamId, partition: u16) -> Self {
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
