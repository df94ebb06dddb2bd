//! A test world: an `App` of a real Redis (either mode) under its own key
//! prefix and its own PostgreSQL schema, with the sign-ins a test makes
//! through the same session code the functions use; helpers that run one
//! test in both Redis modes and watch Pub/Sub.

use crate::tokens::{SignedIn, auth_env, token_id};
use crate::{TestDb, TestRedis};
use paycache::App;
use paycache::config::RedisMode;

/// A test world: its own key prefix on a real Redis of the given mode, its
/// own PostgreSQL schema, and the `App` every function would build.
pub struct World {
    pub app: App,
    pub redis: TestRedis,
    pub db: TestDb,
}

impl World {
    pub async fn new(mode: RedisMode, extra: &[(&str, &str)]) -> Self {
        Self::with_redis(TestRedis::of_mode(mode), extra).await
    }

    pub async fn with_redis(redis: TestRedis, extra: &[(&str, &str)]) -> Self {
        let db = TestDb::create().await;
        let app = App::new(crate::config(&redis, &db, extra)).unwrap();
        Self { app, redis, db }
    }

    /// A world whose `App` reaches PostgreSQL through PgBouncer in
    /// transaction mode, as the functions reach it through RDS Proxy
    /// ([`TestDb::pooled`]).
    pub async fn pooled(mode: RedisMode, extra: &[(&str, &str)]) -> Self {
        Self::with_redis_pooled(TestRedis::of_mode(mode), extra).await
    }

    /// [`World::with_redis`], through PgBouncer ([`World::pooled`]).
    pub async fn with_redis_pooled(redis: TestRedis, extra: &[(&str, &str)]) -> Self {
        let db = TestDb::pooled().await;
        let app = App::new(crate::config(&redis, &db, extra)).unwrap();
        Self { app, redis, db }
    }

    /// Another execution environment: same configuration, its own
    /// connection, its own circuit breaker.
    pub fn another_environment(&self) -> App {
        App::new(self.app.config.clone()).unwrap()
    }

    /// Keys under this world's prefix (SCAN on every primary in cluster mode).
    pub async fn keys(&self) -> Vec<String> {
        let pattern = format!("{}:*", self.app.keys.prefix());
        let mut conn = self.redis.raw().await;
        let mut found = Vec::new();
        match &mut conn {
            crate::RawRedis::Standalone(c) => {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(&pattern)
                    .query_async(c)
                    .await
                    .unwrap();
                found.extend(keys);
            }
            crate::RawRedis::Cluster(c) => {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(&pattern)
                    .route_command_all_primaries(c)
                    .await;
                found.extend(keys);
            }
        }
        found.sort();
        found
    }
}

/// Runs one test body against standalone Redis and against the cluster.
#[macro_export]
macro_rules! both_modes {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn standalone() {
                super::$name(paycache::config::RedisMode::Standalone).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$name(paycache::config::RedisMode::Cluster).await;
            }
        }
    };
}

/// Extension to run `KEYS` on every primary of a cluster connection.
pub trait AllPrimaries {
    fn route_command_all_primaries(
        &self,
        conn: &mut redis::cluster_async::ClusterConnection,
    ) -> impl std::future::Future<Output = Vec<String>>;
}

impl AllPrimaries for redis::Cmd {
    async fn route_command_all_primaries(
        &self,
        conn: &mut redis::cluster_async::ClusterConnection,
    ) -> Vec<String> {
        use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
        let value = conn
            .route_command(
                self.clone(),
                RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::CombineArrays),
                )),
            )
            .await
            .unwrap();
        redis::from_redis_value(value).unwrap()
    }
}

/// Asserts that no message is pending on `channel`: waits `quiet`, then
/// publishes a sentinel and requires it to be the next message. A bare
/// quiet window passes when delivery is merely slow or the subscriber is
/// dead; the sentinel proves the subscriber was live and delivering, and
/// one channel's messages reach a subscriber in order.
pub async fn assert_no_message_before_sentinel<S>(
    redis: &TestRedis,
    channel: &str,
    messages: &mut S,
    what: &str,
) where
    S: futures_util::Stream<Item = redis::Msg> + Unpin,
{
    use futures_util::StreamExt;
    let quiet = std::time::Duration::from_millis(300);
    if let Ok(Some(msg)) = tokio::time::timeout(quiet, messages.next()).await {
        panic!("{what}: unexpected {:?}", msg.get_payload::<String>());
    }
    let sentinel = format!("sentinel-{:08x}", crate::random_u32());
    let mut conn = redis.raw().await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(&sentinel)
        .query_async(&mut conn)
        .await
        .unwrap();
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), messages.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: the sentinel never arrived (subscriber dead?)"))
        .unwrap();
    assert_eq!(
        next.get_payload::<String>().unwrap(),
        sentinel,
        "{what}: a message came before the sentinel"
    );
}

/// A subscriber to `channel` on the first node (classic Pub/Sub reaches
/// every node of a cluster), and its messages.
pub async fn subscribe(
    redis: &TestRedis,
    channel: &str,
) -> impl futures_util::Stream<Item = redis::Msg> + Unpin + use<> {
    let first_node = redis.urls().split(',').next().unwrap().to_owned();
    let mut pubsub = redis::Client::open(first_node)
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub.subscribe(channel).await.unwrap();
    pubsub.into_on_message()
}

/// Every permission a service may hold.
impl World {
    /// Signs `user` in with `permissions` (a session through the same code
    /// the sign-in uses).
    pub async fn sign_in(&self, user: &str, permissions: &[&str]) -> SignedIn {
        let session = paycache::sessions::Session {
            user_id: paycache::keys::UserId::parse(user).unwrap(),
            email: format!("{user}@example.test"),
            roles: vec!["customer".into()],
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
            last_activity: time::OffsetDateTime::now_utc(),
            ip_address: None,
            device_info: None,
        };
        let sid = paycache::sessions::create(&self.app.sessions, &session)
            .await
            .unwrap();
        SignedIn {
            user: user.to_owned(),
            session: sid.to_string(),
            jti: token_id(),
        }
    }
}

impl World {
    /// This world's `App` with the test key pair's verifier (as
    /// `App::from_env` builds it when `AUTH_ISSUER` is set).
    pub fn with_verifier(&self) -> App {
        let vars: std::collections::HashMap<String, String> = auth_env().into_iter().collect();
        let config = paycache::auth::AuthConfig::from_lookup(|k| vars.get(k).cloned()).unwrap();
        let mut app = self.app.clone();
        app.verifier = Some(std::sync::Arc::new(
            paycache::auth::Verifier::new(config).unwrap(),
        ));
        app
    }
}

impl World {
    /// `who`'s session idles out: Redis no longer holds it (its TTL ran out)
    /// and PostgreSQL last saw it longer ago than the idle timeout.
    pub async fn idle_out(&self, who: &SignedIn) {
        let user = paycache::keys::UserId::parse(&who.user).unwrap();
        let sid = paycache::keys::SessionId::parse(&who.session).unwrap();
        let mut raw = self.redis.raw().await;
        let _: i64 = redis::cmd("DEL")
            .arg(self.app.keys.session(&user, &sid).to_string())
            .query_async(&mut raw)
            .await
            .unwrap();
        self.db
            .client()
            .await
            .execute(
                "UPDATE sessions SET last_seen_at = now() - interval '1 day' WHERE session_id = $1",
                &[&who.session],
            )
            .await
            .unwrap();
    }
}
