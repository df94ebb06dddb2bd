//! The typed builders for every key in the design, over the validated
//! identifiers of [`ids`].
//!
//! **Guarantee:** no request can choose a key's hash slot or make two keys
//! collide. Every identifier is parsed into a type whose alphabet excludes
//! `{`, `}` and `:` before it reaches a key, so the only braces in a key are
//! the hash tag this module puts there and the only colons are its separators.
//!
//! **Layout:** `<prefix>:<family>:{<tag>}[:<rest>]`. The hash tag is always
//! the entity the key belongs to, so every key a Lua script or pipeline
//! touches together (a value and its lock, the two keys of a rate-limit
//! window, an audit buffer and its processing list) lands in one cluster slot.
//! The prefix is validated configuration (`CACHE_KEY_PREFIX`), never input.
//!
//! One file on purpose: every key builder side by side is the layout a
//! reviewer checks for slot collisions, and the tests at its end check the
//! whole layout against the rule above (with a real cluster's `CLUSTER
//! KEYSLOT` in the integration tests).

use std::fmt;

mod ids;

pub use ids::{
    ClientId, ConnectionId, DeviceFingerprint, Endpoint, InvalidId, Jti, ServiceName, SessionId,
    TransactionId, UserId, WalletId,
};

/// Whose rate limit: a user's (the hash tag is the user id, as in the
/// design) or a service principal's (`svc:<client_id>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateSubject {
    /// A signed-in user.
    User(UserId),
    /// A service (client credentials).
    Service(ClientId),
}

impl From<UserId> for RateSubject {
    fn from(user: UserId) -> Self {
        Self::User(user)
    }
}

impl From<&UserId> for RateSubject {
    fn from(user: &UserId) -> Self {
        Self::User(*user)
    }
}

impl fmt::Display for RateSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(u) => write!(f, "{u}"),
            Self::Service(c) => write!(f, "svc:{c}"),
        }
    }
}

/// The key families of the design, each with the TTL the seed gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFamily {
    /// `user_profile:{user_id}`.
    UserProfile,
    /// `user_permissions:{user_id}`.
    UserPermissions,
    /// `user_preferences:{user_id}`.
    UserPreferences,
    /// `wallet_balance:{wallet_id}`.
    WalletBalance,
    /// `session:{user_id}:<session_id>` (the design's `session:{session_id}`,
    /// tagged by its user: see [`Keyspace::session`]).
    Session,
    /// `user_sessions:{user_id}`: the ids of a user's sessions (not in the
    /// design; "sign out everywhere" reads it).
    UserSessions,
    /// `blacklist:{token_jti}`.
    Blacklist,
    /// `txn:{transaction_id}`.
    Transaction,
    /// `txn_status:{transaction_id}`.
    TransactionStatus,
    /// `rate_limit:{user_id}:{endpoint}`.
    RateLimit,
    /// `sliding_window:{user_id}:{endpoint}`.
    SlidingWindow,
    /// `risk_score:{user_id}`.
    RiskScore,
    /// `device:{fingerprint}`.
    Device,
    /// `ws_conn:{user_id}`.
    WsConnections,
    /// `ws_meta:{connection_id}`.
    WsMeta,
    /// `audit_buffer:{service}`.
    AuditBuffer,
}

impl KeyFamily {
    /// The family's name as it appears in keys (the seed's spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserProfile => "user_profile",
            Self::UserPermissions => "user_permissions",
            Self::UserPreferences => "user_preferences",
            Self::WalletBalance => "wallet_balance",
            Self::Session => "session",
            Self::UserSessions => "user_sessions",
            Self::Blacklist => "blacklist",
            Self::Transaction => "txn",
            Self::TransactionStatus => "txn_status",
            Self::RateLimit => "rate_limit",
            Self::SlidingWindow => "sliding",
            Self::RiskScore => "risk_score",
            Self::Device => "device",
            Self::WsConnections => "ws_conn",
            Self::WsMeta => "ws_meta",
            Self::AuditBuffer => "audit_buffer",
        }
    }
}

/// A complete Redis key, built only by [`Keyspace`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    key: String,
    family: KeyFamily,
}

impl CacheKey {
    /// The full key.
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// Its family.
    pub fn family(&self) -> KeyFamily {
        self.family
    }

    /// The companion key holding this key's load lease; same hash tag, so a
    /// script may touch both in cluster mode.
    pub fn lock_key(&self) -> String {
        format!("{}:lock", self.key)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

impl redis::ToRedisArgs for CacheKey {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg(self.key.as_bytes());
    }
}

impl redis::ToSingleRedisArg for CacheKey {}

/// Builds every key of the design under one namespace prefix.
#[derive(Debug, Clone)]
pub struct Keyspace {
    prefix: String,
}

impl Keyspace {
    /// `prefix` must already be validated (it is, when it comes from
    /// [`crate::infra::config::Config`]).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// `KEY_PREFIX`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, family: KeyFamily, tag: &dyn fmt::Display, rest: Option<&str>) -> CacheKey {
        let key = match rest {
            None => format!("{}:{}:{{{}}}", self.prefix, family.as_str(), tag),
            Some(rest) => format!("{}:{}:{{{}}}:{}", self.prefix, family.as_str(), tag, rest),
        };
        CacheKey { key, family }
    }

    /// `user_profile:{user_id}`
    pub fn user_profile(&self, id: &UserId) -> CacheKey {
        self.key(KeyFamily::UserProfile, id, None)
    }

    /// `user_permissions:{user_id}` (invalidated with the profile).
    pub(crate) fn user_permissions(&self, id: &UserId) -> CacheKey {
        self.key(KeyFamily::UserPermissions, id, None)
    }

    /// `user_preferences:{user_id}` (invalidated with the profile).
    pub(crate) fn user_preferences(&self, id: &UserId) -> CacheKey {
        self.key(KeyFamily::UserPreferences, id, None)
    }

    /// `wallet_balance:{wallet_id}`
    pub fn wallet_balance(&self, id: &WalletId) -> CacheKey {
        self.key(KeyFamily::WalletBalance, id, None)
    }

    /// `wallet_balance:{wallet_id}:published` — the highest version whose
    /// `balance:{wallet_id}` message has been sent; same slot as the balance.
    pub fn wallet_balance_published(&self, id: &WalletId) -> String {
        format!("{}:published", self.wallet_balance(id).as_str())
    }

    /// `wallet_balance:{wallet_id}:log` — the wallet's published balance
    /// messages, a stream whose entry ids are `<version>-1` (the last
    /// 1000, 24 hours), read by real-time delivery; same slot as the balance.
    pub fn wallet_balance_log(&self, id: &WalletId) -> String {
        format!("{}:log", self.wallet_balance(id).as_str())
    }

    /// `wallet_balance:{wallet_id}:delivered` — the highest version
    /// delivered to the owner's WebSocket connections; same slot.
    pub fn wallet_balance_delivered(&self, id: &WalletId) -> String {
        format!("{}:delivered", self.wallet_balance(id).as_str())
    }

    /// `ws_deliveries:{d<p>}` — delivery partition `p`'s stream, which
    /// `ws-sender` reads: each partition in its own slot (`{d<p>}`), so
    /// partitions spread over the cluster's shards.
    pub fn ws_deliveries(&self, partition: u16) -> String {
        format!("{}:ws_deliveries:{{d{partition}}}", self.prefix)
    }

    /// `ws_lease:{d<p>}` — which sender holds partition `p` (a value with
    /// a TTL, renewed while the sender runs); same slot as the partition.
    pub fn ws_lease(&self, partition: u16) -> String {
        format!("{}:ws_lease:{{d{partition}}}", self.prefix)
    }

    /// `ws_senders` — a sorted set of live senders (score: last heartbeat,
    /// Unix milliseconds), from which each sender works out its share of
    /// the partitions.
    pub fn ws_senders(&self) -> String {
        format!("{}:ws_senders", self.prefix)
    }

    /// `ws_fanout:{d<p>}:<entry>` — an announcement's progress (a hash:
    /// the last connection id done in the registry shard, `done` at its
    /// end); with
    /// `…:retry`, the connections whose post failed. Same slot as the
    /// partition the entry is in.
    pub fn ws_fanout(&self, partition: u16, entry: &str) -> String {
        format!("{}:ws_fanout:{{d{partition}}}:{entry}", self.prefix)
    }

    /// `ws_all:{a<s>}` — registry shard `s` of every connection
    /// (`connection id → "<user> <sid> <exp>"`), for announcements: 16
    /// shards, each its own slot, fanned out in parallel.
    pub fn ws_all(&self, shard: u16) -> String {
        format!("{}:ws_all:{{a{shard}}}", self.prefix)
    }

    /// `ws_all:{a<s>}:ids` — shard `s`'s connection ids in a sorted set
    /// (every score 0), paged in id order by announcements; same slot.
    pub fn ws_all_ids(&self, shard: u16) -> String {
        format!("{}:ids", self.ws_all(shard))
    }

    /// `ws_conn:{user_id}:pings:<connection>` — the connection's pings in
    /// the current minute (a counter that lapses a minute after the
    /// first); same slot as the user's connections, so the `ping` script
    /// counts it in the same step.
    pub fn ws_pings(&self, user: &UserId, conn: &ConnectionId) -> String {
        format!(
            "{}:pings:{}",
            self.ws_connections(user).as_str(),
            conn.as_str()
        )
    }

    /// `ws_conn:{user_id}:resume` — connections catching up after a
    /// reconnect (`"<connection> <wallet>" → version`); same slot as the
    /// user's connections, so the liveness script reads it too.
    pub fn ws_resume(&self, user: &UserId) -> String {
        format!("{}:resume", self.ws_connections(user).as_str())
    }

    /// `session:{user_id}:<session_id>`. The design tags a session by its
    /// own id; here it carries its user's tag, so that the user's session
    /// index ([`Self::user_sessions`]), their sessions and their WebSocket
    /// connections ([`Self::ws_connections`]) share a slot and one script
    /// can end them all atomically. Every token names both (`sub`, `sid`).
    pub fn session(&self, user: &UserId, id: &SessionId) -> CacheKey {
        self.key(KeyFamily::Session, user, Some(id.as_str()))
    }

    /// What precedes a session id in [`Self::session`]'s keys of `user`
    /// (scripts that walk a user's sessions append the validated ids).
    pub(crate) fn session_prefix(&self, user: &UserId) -> String {
        format!(
            "{}:{}:{{{}}}:",
            self.prefix,
            KeyFamily::Session.as_str(),
            user
        )
    }

    /// `user_sessions:{user_id}`: the set of the user's session ids.
    pub fn user_sessions(&self, user: &UserId) -> CacheKey {
        self.key(KeyFamily::UserSessions, user, None)
    }

    /// `blacklist:{jti}`
    pub fn blacklist(&self, jti: &Jti) -> CacheKey {
        self.key(KeyFamily::Blacklist, jti, None)
    }

    /// `txn:{transaction_id}`; shares its tag with [`Self::transaction_status`].
    pub fn transaction(&self, id: &TransactionId) -> CacheKey {
        self.key(KeyFamily::Transaction, id, None)
    }

    /// `txn_status:{transaction_id}`
    pub(crate) fn transaction_status(&self, id: &TransactionId) -> CacheKey {
        self.key(KeyFamily::TransactionStatus, id, None)
    }

    /// `rate_limit:{user_id}:{endpoint}`: tagged by user, so all of one
    /// user's limiter keys share a slot. `consulted`: the counters services
    /// consult through `POST /rate-limit/check`,
    /// `rate_limit:{user_id}:consulted:{endpoint}` — a policy name has no
    /// `:`, so no name reaches the routes' own counters.
    pub fn rate_limit(
        &self,
        subject: &RateSubject,
        endpoint: &Endpoint,
        consulted: bool,
    ) -> CacheKey {
        self.key(
            KeyFamily::RateLimit,
            subject,
            Some(&Self::counter(endpoint, consulted)),
        )
    }

    /// `sliding:{user_id}:{endpoint}` (and its `consulted:` twin).
    pub(crate) fn sliding_window(
        &self,
        subject: &RateSubject,
        endpoint: &Endpoint,
        consulted: bool,
    ) -> CacheKey {
        self.key(
            KeyFamily::SlidingWindow,
            subject,
            Some(&Self::counter(endpoint, consulted)),
        )
    }

    fn counter(endpoint: &Endpoint, consulted: bool) -> String {
        if consulted {
            format!("consulted:{}", endpoint.as_str())
        } else {
            endpoint.as_str().to_owned()
        }
    }

    /// `risk_score:{user_id}`
    pub fn risk_score(&self, user: &UserId) -> CacheKey {
        self.key(KeyFamily::RiskScore, user, None)
    }

    /// `device:{device_fingerprint}`
    pub fn device(&self, fingerprint: &DeviceFingerprint) -> CacheKey {
        self.key(KeyFamily::Device, fingerprint, None)
    }

    /// `ws_conn:{user_id}`
    pub fn ws_connections(&self, user: &UserId) -> CacheKey {
        self.key(KeyFamily::WsConnections, user, None)
    }

    /// `ws_meta:{connection_id}`
    pub fn ws_meta(&self, connection: &ConnectionId) -> CacheKey {
        self.key(KeyFamily::WsMeta, connection, None)
    }

    /// `audit_buffer:{service}`
    pub fn audit_buffer(&self, service: &ServiceName) -> CacheKey {
        self.key(KeyFamily::AuditBuffer, service, None)
    }
}

/// Shards of `ws_all` (fixed: a connection's shard is a hash of its id,
/// and changing the count would lose track of registered connections).
pub const REGISTRY_SHARDS: u16 = 16;

/// The `ws_all` shard ([`Keyspace::ws_all`]) of `conn` (FNV-1a of its id).
pub fn shard_of(conn: &ConnectionId) -> u16 {
    (fnv1a(conn.as_str().as_bytes()) % u64::from(REGISTRY_SHARDS)) as u16
}

/// The delivery partition ([`Keyspace::ws_deliveries`], of `partitions`)
/// that `id` — a wallet, a user or a connection id — is delivered
/// through: a wallet's or a user's entries always meet in one stream.
pub fn partition_of(id: &str, partitions: u16) -> u16 {
    (fnv1a(id.as_bytes()) % u64::from(partitions.max(1))) as u16
}

/// FNV-1a, 64 bits: stable across processes and releases (partitions and
/// shards are chosen with it).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The part of a key Redis Cluster hashes: the text between the first `{`
/// and the next `}` when that is non-empty, else the whole key. Two keys with
/// the same hash tag are in the same slot (integration tests also check this
/// against a real cluster with `CLUSTER KEYSLOT`).
#[cfg(test)]
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const USER: &str = "00000000-0000-4000-8000-000000000001";

    fn ks() -> Keyspace {
        Keyspace::new("paycache")
    }

    #[test]
    fn uuids_are_accepted_in_any_case_and_keyed_in_lowercase() {
        let upper = UserId::parse(&USER.to_uppercase()).unwrap();
        let lower = UserId::parse(USER).unwrap();
        assert_eq!(upper, lower);
        assert_eq!(
            ks().user_profile(&upper).as_str(),
            format!("paycache:user_profile:{{{USER}}}")
        );
    }

    #[test]
    fn hostile_uuids_are_rejected() {
        for raw in [
            "",
            "1",
            "{00000000-0000-4000-8000-000000000001}",
            "urn:uuid:00000000-0000-4000-8000-000000000001",
            "00000000000040008000000000000001",
            "00000000-0000-4000-8000-00000000000g",
            "00000000-0000-4000-8000-000000000001:x",
            "00000000-0000-4000-8000-0000000000}1",
            "00000000-0000-4000-8000-000000000001\n",
            "00000000+0000-4000-8000-000000000001",
            "ÿ0000000-0000-4000-8000-000000000001",
        ] {
            assert!(UserId::parse(raw).is_err(), "accepted {raw:?}");
        }
    }

    #[test]
    fn hostile_tokens_are_rejected() {
        let long = "a".repeat(129);
        for raw in [
            "", "=", "a:b", "a{b", "a}b", "a b", "a/b", "a+b", "a=b", "é", &long, "a\0",
        ] {
            assert!(SessionId::parse(raw).is_err(), "accepted {raw:?}");
            assert!(Jti::parse(raw).is_err(), "accepted {raw:?}");
        }
        for ok in ["abc", "A-z_09", "YWJj==", &"a".repeat(128)] {
            assert!(SessionId::parse(ok).is_ok(), "rejected {ok:?}");
        }
        for raw in ["", "Transfers", "a:b", "a{b}", "a b", &"a".repeat(65)] {
            assert!(Endpoint::parse(raw).is_err(), "accepted {raw:?}");
        }
        assert!(Endpoint::parse("transfers.create").is_ok());
    }

    #[test]
    fn every_key_has_exactly_one_server_chosen_hash_tag() {
        let user = UserId::parse(USER).unwrap();
        let wallet = WalletId::parse("00000000-0000-4000-9000-000000000004").unwrap();
        let txn = TransactionId::parse("00000000-0000-4000-a000-000000000001").unwrap();
        let ep = Endpoint::parse("transfers.create").unwrap();
        let tok = SessionId::parse("c2Vzc2lvbg==").unwrap();
        let keys = [
            ks().user_profile(&user),
            ks().user_permissions(&user),
            ks().user_preferences(&user),
            ks().wallet_balance(&wallet),
            ks().session(&user, &tok),
            ks().user_sessions(&user),
            ks().blacklist(&Jti::parse("jti-1").unwrap()),
            ks().transaction(&txn),
            ks().transaction_status(&txn),
            ks().rate_limit(&RateSubject::User(user), &ep, false),
            ks().sliding_window(&RateSubject::User(user), &ep, false),
            ks().risk_score(&user),
            ks().device(&DeviceFingerprint::parse("fp_1").unwrap()),
            ks().ws_connections(&user),
            ks().ws_meta(&ConnectionId::parse("conn1").unwrap()),
            ks().audit_buffer(&ServiceName::parse("balance-write").unwrap()),
        ];
        for key in &keys {
            let k = key.as_str();
            assert_eq!(k.matches('{').count(), 1, "{k}");
            assert_eq!(k.matches('}').count(), 1, "{k}");
            assert!(k.starts_with(&format!("paycache:{}:{{", key.family().as_str())));
            assert_eq!(hash_tag(k), hash_tag(&key.lock_key()), "{k}");
            assert_eq!(hash_tag(k), hash_tag(&format!("{k}:published")), "{k}");
        }
        // All keys of one entity share a slot, whatever family or suffix.
        assert_eq!(
            hash_tag(ks().transaction(&txn).as_str()),
            hash_tag(ks().transaction_status(&txn).as_str())
        );
        assert_eq!(
            hash_tag(
                ks().rate_limit(&RateSubject::User(user), &ep, false)
                    .as_str()
            ),
            hash_tag(ks().user_profile(&user).as_str())
        );
        assert_eq!(
            ks().rate_limit(&RateSubject::User(user), &ep, false)
                .as_str(),
            format!("paycache:rate_limit:{{{USER}}}:transfers.create")
        );
    }

    #[test]
    fn distinct_identifiers_never_collide() {
        let ep1 = Endpoint::parse("a.b").unwrap();
        let ep2 = Endpoint::parse("a-b").unwrap();
        let user = UserId::parse(USER).unwrap();
        assert_ne!(
            ks().rate_limit(&RateSubject::User(user), &ep1, false),
            ks().rate_limit(&RateSubject::User(user), &ep2, false)
        );
        assert_ne!(
            ks().transaction(&TransactionId::parse(USER).unwrap())
                .as_str(),
            ks().transaction_status(&TransactionId::parse(USER).unwrap())
                .as_str()
        );
    }

    /// The property every parsed identifier must have: the key built from
    /// it has exactly the one hash tag this module chose, holding exactly
    /// the identifier (rate-limit keys: the user's), and no separator or
    /// brace of the input leaks into the key's structure.
    fn keys_keep_their_shape(
        candidate: &str,
    ) -> Result<usize, proptest::test_runner::TestCaseError> {
        let mut parsed = 0;
        if let Ok(id) = UserId::parse(candidate) {
            parsed += 1;
            let k = ks().user_profile(&id);
            proptest::prop_assert_eq!(hash_tag(k.as_str()), id.to_string());
            proptest::prop_assert_eq!(k.as_str().matches('{').count(), 1);
        }
        if let Ok(s) = SessionId::parse(candidate) {
            parsed += 1;
            let user = UserId::parse(USER).unwrap();
            let k = ks().session(&user, &s);
            proptest::prop_assert_eq!(hash_tag(k.as_str()), user.to_string());
            let tail = format!(":{}", s.as_str());
            proptest::prop_assert!(k.as_str().ends_with(&tail));
            proptest::prop_assert!(k.as_str().starts_with(&ks().session_prefix(&user)));
            let clean = !s.as_str().contains([':', '{', '}']);
            proptest::prop_assert!(clean, "session id with a separator or brace");
        }
        if let Ok(e) = Endpoint::parse(candidate) {
            parsed += 1;
            let user = UserId::parse(USER).unwrap();
            let k = ks().rate_limit(&RateSubject::User(user), &e, false);
            proptest::prop_assert_eq!(k.as_str().matches(':').count(), 3);
            proptest::prop_assert_eq!(hash_tag(k.as_str()), USER);
        }
        Ok(parsed)
    }

    proptest::proptest! {
        /// Whatever the input, parsing never panics, and whatever parses
        /// keeps its shape.
        #[test]
        fn hostile_input_never_chooses_a_slot(raw in "\\PC{0,200}", bytes in proptest::collection::vec(0u8..=255, 0..80)) {
            let lossy = String::from_utf8_lossy(&bytes).into_owned();
            for candidate in [raw.as_str(), lossy.as_str()] {
                keys_keep_their_shape(candidate)?;
            }
        }

        /// Valid identifiers of each kind (generated, not hoped for among
        /// random text) parse, and keep their shape.
        #[test]
        fn valid_identifiers_parse_and_keep_their_shape(
            uuid in proptest::array::uniform16(0u8..=255),
            session in "[A-Za-z0-9_-]{1,126}={0,2}",
            endpoint in "[a-z0-9_.-]{1,64}",
        ) {
            let user = uuid::Builder::from_random_bytes(uuid).into_uuid().to_string();
            for valid in [user.as_str(), session.as_str(), endpoint.as_str()] {
                let parsed = keys_keep_their_shape(valid)?;
                proptest::prop_assert!(parsed >= 1, "{:?} parsed as nothing", valid);
            }
            proptest::prop_assert!(UserId::parse(&user).is_ok());
            proptest::prop_assert!(SessionId::parse(&session).is_ok());
            proptest::prop_assert!(Endpoint::parse(&endpoint).is_ok());
        }
    }

    #[test]
    fn the_audit_buffer_never_expires() {
        let ttl = crate::infra::config::Config::from_lookup(|k| match k {
            "REDIS_URL" => Some("redis://x".into()),
            "DATABASE_URL" => Some("postgres://x".into()),
            _ => None,
        })
        .unwrap()
        .ttl;
        assert_eq!(ttl.of(KeyFamily::AuditBuffer), None);
        assert_eq!(
            ttl.of(KeyFamily::UserProfile),
            Some(Duration::from_secs(3600))
        );
    }
}
