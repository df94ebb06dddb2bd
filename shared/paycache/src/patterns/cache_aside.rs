//! Cache-aside reads (`get_or_load`), the seed's pattern 1, made safe for a
//! fleet of Lambda execution environments that share nothing but Redis.
//! One file on purpose: the read, the lease, the store and the
//! invalidation below are one protocol whose guarantees hold only together
//! (the stored entry's format is `entry`).
//!
//! # What a read does
//! 1. `GET key` — a hit costs exactly **one round trip** and returns.
//! 2. On a miss, one script (`get_or_lease.lua`) either returns a value that
//!    appeared meanwhile, or takes the key's **load lease** (`SET lock token NX
//!    PX lease`), or reports that another invocation holds it.
//! 3. The lease holder loads from PostgreSQL and stores with
//!    `store_if_leased.lua` (value + TTL + lease release, one round trip).
//!    Everyone else polls step 2 with a short backoff until the value appears
//!    or `CACHE_LOCK_WAIT_MS` passes (then loads from the database itself,
//!    without storing).
//!
//! A miss that takes the lease costs three round trips plus the load; a
//! waiter costs one round trip per poll.
//!
//! # Guarantees, and why they hold
//! - **Stampede protection:** while a lease is live, only its holder loads.
//!   `SET NX` is atomic in Redis, so of N concurrent misses exactly one gets
//!   the lease; the lease lives in Redis because Lambda invocations share no
//!   memory. If the holder dies, the lease expires after `CACHE_LOCK_LEASE_MS`
//!   and the next poller takes it.
//! - **No stale write-back:** a value is stored only while its loader still
//!   holds the lease (checked inside the same script that stores). Invalidation
//!   ([`CacheAside::invalidate`]) deletes value and lease together, so a load
//!   that read the database before an update cannot overwrite the invalidation
//!   with the old row. (This is the lease idea of Nishtala et al., "Scaling
//!   Memcache at Facebook", NSDI 2013.)
//! - **Availability:** any Redis error or timeout — or an open circuit
//!   breaker — makes the read fall through to the database. A Redis outage
//!   costs latency (at most one response timeout per call until the breaker
//!   opens, then nothing), never an error.
//! - **Early refresh (XFetch):** with β > 0 a hit refreshes the value early
//!   with probability rising as expiry nears, following Vattani, Chierichetti
//!   and Lowenstein, "Optimal Probabilistic Cache Stampede Prevention" (VLDB
//!   2015): refresh when `now − δ·β·ln(u) ≥ expiry`, u uniform in (0, 1], δ the
//!   time the last load took. Only the request that wins the lease refreshes;
//!   the others keep serving the cached value.
//! - **Negative caching:** "not found" is stored for `CACHE_NEGATIVE_TTL_SECS`
//!   so that probing unknown ids does not reach the database every time.
//! - **TTL jitter:** each TTL is shortened by a random 0–`CACHE_TTL_JITTER_PERCENT`
//!   so keys filled together (e.g. by the warmer) do not expire together.
//!
//! # Stored format
//! `1:F:<δ ms>:<expiry unix ms>:<version>:<JSON>` for a value,
//! `1:N:<δ ms>:<expiry unix ms>:0:` for "not found". `version` is the
//! entity's version for versioned families (wallet balances) and 0 otherwise;
//! Lua scripts read it to refuse to move a cached value backwards. The expiry is the writer's clock; Lambda clocks are
//! NTP-disciplined, and the expiry only steers the early-refresh heuristic —
//! Redis's own TTL decides when a value is gone.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use redis::{AsyncCommands, Script, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::infra::config::{CacheAsideConfig, TtlConfig};
use crate::infra::connection::{Redis, RedisUnavailable};
use crate::infra::keys::CacheKey;

mod entry;
use entry::{Entry, decode, millis, now_ms};
pub use entry::{encode, jittered};

static GET_OR_LEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("cache_aside/get_or_lease.lua")));
static STORE_IF_LEASED: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("cache_aside/store_if_leased.lua")));
static RELEASE_LEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("cache_aside/release_lease.lua")));

/// How a response was produced, rendered as an RFC 9211 `Cache-Status` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from Redis.
    Hit,
    /// Another invocation loaded it while this one waited on the lease.
    Coalesced,
    /// Not in Redis; loaded from the database and stored (or not, when the
    /// lease was lost to an invalidation).
    Miss {
        /// Whether it was stored.
        stored: bool,
    },
    /// Waited the full `CACHE_LOCK_WAIT_MS` for another loader, then loaded
    /// from the database without storing.
    LeaseTimeout,
    /// A hit that XFetch chose to refresh early; served fresh from the database.
    EarlyRefresh {
        /// Whether it was stored.
        stored: bool,
    },
    /// A writer holds the key's fence; served from the database, not stored.
    WriteInProgress,
    /// Redis was unavailable; served from the database.
    Bypass(RedisUnavailable),
}

impl CacheStatus {
    /// The per-invocation metric this outcome counts under.
    pub fn metric(&self) -> &'static str {
        match self {
            Self::Hit | Self::Coalesced => "CacheHit",
            Self::Bypass(_) => "CacheBypass",
            Self::Miss { .. }
            | Self::LeaseTimeout
            | Self::EarlyRefresh { .. }
            | Self::WriteInProgress => "CacheMiss",
        }
    }

    /// True when the answer came from Redis without a database load.
    pub fn is_hit(&self) -> bool {
        matches!(self, Self::Hit | Self::Coalesced)
    }
}

/// What a batch fill did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct FillReport {
    /// Entries loaded and stored.
    pub filled: u64,
    /// Entries already cached, being loaded elsewhere, fenced, or whose
    /// lease was lost to an invalidation.
    pub skipped: u64,
    /// Entries not filled because Redis failed.
    pub failed: u64,
}

/// A value (or a cached "not found") and how it was obtained.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached<T> {
    /// The value; `None` when it does not exist.
    pub value: Option<T>,
    /// Where it came from.
    pub status: CacheStatus,
}

/// The cache-aside engine: one per execution environment.
#[derive(Debug, Clone)]
pub struct CacheAside {
    redis: Redis,
    ttl: TtlConfig,
    config: CacheAsideConfig,
}

enum LeaseReply {
    Value(Vec<u8>),
    Leased,
    Busy,
    WriterFence,
}

impl CacheAside {
    /// An engine over `redis`.
    pub fn new(redis: Redis, ttl: TtlConfig, config: CacheAsideConfig) -> Self {
        Self { redis, ttl, config }
    }

    /// The Redis it uses.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// Returns the value for `key`, loading it with `load` on a miss.
    ///
    /// `load` returns `Ok(None)` for "does not exist" (cached negatively) and
    /// `Err` when the source of truth failed; the error is passed through and
    /// nothing is cached.
    pub async fn get_or_load<T, E, F, Fut>(&self, key: &CacheKey, load: F) -> Result<Cached<T>, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        self.get_or_load_versioned(key, |_| 0, load).await
    }

    /// [`Self::get_or_load`] for a versioned entity: `version_of` gives the
    /// version stored in the entry's header, which write-through scripts
    /// compare so that a cached value never moves backwards.
    pub(crate) async fn get_or_load_versioned<T, E, F, Fut>(
        &self,
        key: &CacheKey,
        version_of: impl Fn(&T) -> u64,
        load: F,
    ) -> Result<Cached<T>, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let result = self.lookup(key, version_of, load).await;
        if let Ok(cached) = &result {
            crate::infra::telemetry::cache_outcome(cached.status.metric());
        }
        result
    }

    async fn lookup<T, E, F, Fut>(
        &self,
        key: &CacheKey,
        version_of: impl Fn(&T) -> u64,
        load: F,
    ) -> Result<Cached<T>, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let mut load = Some(load);
        let mut run_load = || {
            let f = load.take();
            async move {
                let started = Instant::now();
                // `take` runs at most once per call path below; the `None`
                // arm is unreachable but answered safely rather than panicking.
                let value = match f {
                    Some(f) => f().await?,
                    None => None,
                };
                Ok::<_, E>((value, started.elapsed()))
            }
        };

        let raw: Option<Vec<u8>> = match self
            .redis
            .run(|mut c| async move { c.get(key).await })
            .await
        {
            Ok(raw) => raw,
            Err(why) => {
                let (value, _) = run_load().await?;
                return Ok(Cached {
                    value,
                    status: CacheStatus::Bypass(why),
                });
            }
        };

        if let Some(entry) = raw.and_then(|r| decode::<T>(&r)) {
            if !self.should_refresh_early(&entry) {
                return Ok(Cached {
                    value: entry.value,
                    status: CacheStatus::Hit,
                });
            }
            // XFetch picked this request: refresh if it wins the lease,
            // otherwise serve what is cached.
            let token = lease_token();
            let lock = key.lock_key();
            let lease_ms = millis(self.config.lock_lease);
            let token_ref = token.as_str();
            let won: Result<bool, _> = self
                .redis
                .run(|mut c| async move {
                    let r: Option<String> = redis::cmd("SET")
                        .arg(&lock)
                        .arg(token_ref)
                        .arg("NX")
                        .arg("PX")
                        .arg(lease_ms)
                        .query_async(&mut c)
                        .await?;
                    Ok(r.is_some())
                })
                .await;
            if won != Ok(true) {
                // Another request is refreshing: serve what is cached.
                crate::infra::telemetry::stale_serve();
                return Ok(Cached {
                    value: entry.value,
                    status: CacheStatus::Hit,
                });
            }
            let (value, stored) = self
                .fill_leased(key, &token, run_load(), &version_of)
                .await?;
            return Ok(Cached {
                value,
                status: CacheStatus::EarlyRefresh { stored },
            });
        }

        // Miss (or an undecodable entry, which is overwritten).
        let token = lease_token();
        let deadline = Instant::now() + self.config.lock_wait;
        let mut backoff = Duration::from_millis(5);
        let mut waited = false;
        loop {
            let reply = self.get_or_lease(key, &token).await;
            match reply {
                Err(why) => {
                    let (value, _) = run_load().await?;
                    return Ok(Cached {
                        value,
                        status: CacheStatus::Bypass(why),
                    });
                }
                Ok(LeaseReply::Value(raw)) => {
                    if let Some(entry) = decode::<T>(&raw) {
                        return Ok(Cached {
                            value: entry.value,
                            status: if waited {
                                CacheStatus::Coalesced
                            } else {
                                CacheStatus::Hit
                            },
                        });
                    }
                    // Undecodable: load without the lease, and do not store
                    // over a value we do not understand (a newer format).
                    let (value, _) = run_load().await?;
                    return Ok(Cached {
                        value,
                        status: CacheStatus::Miss { stored: false },
                    });
                }
                Ok(LeaseReply::Leased) => {
                    let (value, stored) = self
                        .fill_leased(key, &token, run_load(), &version_of)
                        .await?;
                    return Ok(Cached {
                        value,
                        status: CacheStatus::Miss { stored },
                    });
                }
                Ok(LeaseReply::WriterFence) => {
                    // A write is between its fence and its cache update: the
                    // database already has (or is about to have) the newer
                    // row, and only the writer may fill the cache.
                    let (value, _) = run_load().await?;
                    return Ok(Cached {
                        value,
                        status: CacheStatus::WriteInProgress,
                    });
                }
                Ok(LeaseReply::Busy) => {
                    let now = Instant::now();
                    if now >= deadline {
                        let (value, _) = run_load().await?;
                        return Ok(Cached {
                            value,
                            status: CacheStatus::LeaseTimeout,
                        });
                    }
                    waited = true;
                    let jitter =
                        Duration::from_micros(fastrand::u64(0..=backoff.as_micros() as u64 / 2));
                    tokio::time::sleep((backoff + jitter).min(deadline - now)).await;
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    /// Fills many entries of one family at once, with the same lease
    /// protocol as [`Self::get_or_load`] (so it is as safe against
    /// invalidations and balance writes): every key's value-or-lease script
    /// is sent at once, `load` reads the leased ones from the database in one
    /// batch (it gets their indexes in `keys` and answers in that order), and
    /// every store is sent at once. Entries that are present, being loaded,
    /// or fenced by a writer are skipped.
    ///
    /// The requests of each phase go out concurrently on the multiplexed
    /// connection(s), which write them back to back: a batch costs about one
    /// round-trip time per phase, whatever its size. (redis-rs pipelines
    /// cannot span cluster slots, and a batch's keys are in many.)
    pub(crate) async fn fill_batch<T, E, F, Fut>(
        &self,
        keys: &[CacheKey],
        version_of: impl Fn(&T) -> u64,
        load: F,
    ) -> Result<FillReport, E>
    where
        T: Serialize,
        F: FnOnce(Vec<usize>) -> Fut,
        Fut: Future<Output = Result<Vec<Option<T>>, E>>,
    {
        let mut report = FillReport::default();
        if keys.is_empty() {
            return Ok(report);
        }
        let tokens: Vec<String> = keys.iter().map(|_| lease_token()).collect();
        let lease_ms = millis(self.config.lock_lease);
        let (k, t) = (keys, &tokens);
        let replies = self
            .redis
            .run(|c| async move {
                let calls = k.iter().zip(t).map(|(key, token)| {
                    let mut c = c.clone();
                    async move {
                        GET_OR_LEASE
                            .key(key)
                            .key(key.lock_key())
                            .arg(token)
                            .arg(lease_ms)
                            .invoke_async::<Value>(&mut c)
                            .await
                    }
                });
                Ok(futures_util::future::join_all(calls).await)
            })
            .await
            .unwrap_or_default();
        let leased: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter_map(|(i, r)| matches!(r, Ok(Value::Int(1))).then_some(i))
            .collect();
        let answered = replies.iter().filter(|r| r.is_ok()).count();
        report.failed = (keys.len() - answered) as u64;
        if let Some(Err(e)) = replies.iter().find(|r| r.is_err()) {
            tracing::warn!(failed = report.failed, error_kind = ?e.kind(), "warming: lease requests failed");
        }
        report.skipped = (answered - leased.len()) as u64;
        if leased.is_empty() {
            return Ok(report);
        }
        let started = Instant::now();
        let values = load(leased.clone()).await?;
        let took = started.elapsed();
        let mut stores = Vec::with_capacity(leased.len());
        for (slot, value) in leased.iter().zip(values.iter()) {
            let key = &keys[*slot];
            let ttl = match value {
                Some(_) => self.ttl.of(key.family()),
                None => Some(self.ttl.negative),
            };
            let encoded = ttl.and_then(|ttl| {
                let ttl = jittered(ttl, self.ttl.jitter_percent);
                let version = value.as_ref().map(&version_of).unwrap_or(0);
                encode(value.as_ref(), version, took, ttl).map(|e| (e, millis(ttl)))
            });
            match encoded {
                Some((e, ttl_ms)) => stores.push((*slot, e, ttl_ms)),
                None => report.failed += 1,
            }
        }
        let st = &stores;
        let stored = self
            .redis
            .run(|c| async move {
                let calls = st.iter().map(|(slot, encoded, ttl_ms)| {
                    let mut c = c.clone();
                    let key = &k[*slot];
                    async move {
                        STORE_IF_LEASED
                            .key(key)
                            .key(key.lock_key())
                            .arg(encoded.as_slice())
                            .arg(*ttl_ms)
                            .arg(&t[*slot])
                            .invoke_async::<i64>(&mut c)
                            .await
                    }
                });
                Ok(futures_util::future::join_all(calls).await)
            })
            .await
            .unwrap_or_default();
        for r in &stored {
            match r {
                Ok(1) => report.filled += 1,
                Ok(_) => report.skipped += 1,
                Err(_) => report.failed += 1,
            }
        }
        if let Some(Err(e)) = stored.iter().find(|r| r.is_err()) {
            tracing::warn!(error_kind = ?e.kind(), "warming: stores failed");
        }
        report.failed += (stores.len() - stored.len()) as u64;
        Ok(report)
    }

    /// Deletes a cached value and any in-flight load lease for it, in one
    /// round trip (both keys share a hash tag). A load that was in flight
    /// will not store its result.
    pub async fn invalidate(&self, key: &CacheKey) -> Result<(), RedisUnavailable> {
        let lock = key.lock_key();
        self.redis
            .run(|mut c| async move {
                let _: i64 = c.del(&[key.as_str(), lock.as_str()]).await?;
                Ok(())
            })
            .await
    }

    fn should_refresh_early<T>(&self, entry: &Entry<T>) -> bool {
        let beta = self.config.xfetch_beta;
        if beta <= 0.0 || entry.delta_ms == 0 {
            return false;
        }
        // u in (0, 1]; -ln(u) in [0, ∞).
        let u = 1.0 - fastrand::f64();
        let gap = -(entry.delta_ms as f64) * beta * u.ln();
        now_ms() as f64 + gap >= entry.expires_at_ms as f64
    }

    async fn get_or_lease(
        &self,
        key: &CacheKey,
        token: &str,
    ) -> Result<LeaseReply, RedisUnavailable> {
        let lock = key.lock_key();
        let lease_ms = millis(self.config.lock_lease);
        self.redis
            .run(|mut c| async move {
                let reply: Value = GET_OR_LEASE
                    .key(key)
                    .key(&lock)
                    .arg(token)
                    .arg(lease_ms)
                    .invoke_async(&mut c)
                    .await?;
                Ok(match reply {
                    Value::BulkString(bytes) => LeaseReply::Value(bytes),
                    Value::Int(1) => LeaseReply::Leased,
                    Value::Int(-1) => LeaseReply::WriterFence,
                    _ => LeaseReply::Busy,
                })
            })
            .await
    }

    /// Stores a loaded value if the lease is still ours. Returns whether it
    /// was stored; a Redis failure here only costs the next reader a miss.
    async fn store<T: Serialize>(
        &self,
        key: &CacheKey,
        token: &str,
        value: Option<&T>,
        version: u64,
        took: Duration,
    ) -> bool {
        let ttl = match value {
            Some(_) => self.ttl.of(key.family()),
            None => Some(self.ttl.negative),
        };
        let Some(ttl) = ttl else {
            return false;
        };
        let ttl = jittered(ttl, self.ttl.jitter_percent);
        let Some(encoded) = encode(value, version, took, ttl) else {
            return false;
        };
        let lock = key.lock_key();
        let ttl_ms = millis(ttl);
        self.redis
            .run(|mut c| async move {
                let stored: i64 = STORE_IF_LEASED
                    .key(key)
                    .key(&lock)
                    .arg(encoded)
                    .arg(ttl_ms)
                    .arg(token)
                    .invoke_async(&mut c)
                    .await?;
                Ok(stored == 1)
            })
            .await
            .unwrap_or(false)
    }

    /// Runs the load of a leaseholder and stores its result while the lease
    /// holds; a failed load releases the lease so waiters need not wait it out.
    async fn fill_leased<T: Serialize, E>(
        &self,
        key: &CacheKey,
        token: &str,
        load: impl Future<Output = Result<(Option<T>, Duration), E>>,
        version_of: &impl Fn(&T) -> u64,
    ) -> Result<(Option<T>, bool), E> {
        let (value, took) = match load.await {
            Ok(loaded) => loaded,
            Err(e) => {
                self.release(key, token).await;
                return Err(e);
            }
        };
        let version = value.as_ref().map(version_of).unwrap_or(0);
        let stored = self.store(key, token, value.as_ref(), version, took).await;
        Ok((value, stored))
    }

    async fn release(&self, key: &CacheKey, token: &str) {
        release_lease(&self.redis, &key.lock_key(), token).await;
    }
}

/// Deletes a lease (`lock`) if `token` still holds it; best effort (an
/// unreleased lease expires by itself).
pub(crate) async fn release_lease(redis: &Redis, lock: &str, token: &str) {
    let _ = redis
        .run(|mut c| async move {
            let _: i64 = RELEASE_LEASE
                .key(lock)
                .arg(token)
                .invoke_async(&mut c)
                .await?;
            Ok(())
        })
        .await;
}

fn lease_token() -> String {
    format!("{:032x}", fastrand::u128(..))
}
