//! User profiles: the seed's `get_user_profile`, cache-aside over PostgreSQL.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::infra::db::{Db, DbError, query_error};
use crate::infra::keys::{Keyspace, UserId};
use crate::patterns::cache_aside::{CacheAside, Cached};

/// What profile reads use: the cache engine over PostgreSQL.
#[derive(Debug, Clone)]
pub struct Profiles {
    pub(crate) keys: Keyspace,
    pub(crate) cache: CacheAside,
    pub(crate) db: Db,
}

/// The profile as the contract shows it (RFC 3339 times).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserProfile {
    /// The user.
    pub user_id: UserId,
    /// Their e-mail address.
    pub email: String,
    /// The name shown to others.
    pub display_name: String,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
    /// Whether their identity is verified.
    pub verified: bool,
    #[serde(with = "time::serde::rfc3339")]
    /// When the user was created.
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    /// When the profile last changed.
    pub updated_at: OffsetDateTime,
}

const COLUMNS: &str = "user_id, email, display_name, country, verified, created_at, updated_at";

/// Reads one profile from the database (no cache).
pub async fn load_profile(db: &Db, user: &UserId) -> Result<Option<UserProfile>, DbError> {
    let client = db.client().await?;
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM users WHERE user_id = $1"),
            &[&user.as_uuid()],
        )
        .await?;
    row.map(|r| from_row(&r)).transpose()
}

/// Reads many profiles in one query; the answer is in the order of `users`.
pub(crate) async fn load_profiles(
    db: &Db,
    users: &[UserId],
) -> Result<Vec<Option<UserProfile>>, DbError> {
    let ids: Vec<uuid::Uuid> = users.iter().map(UserId::as_uuid).collect();
    let client = db.client().await?;
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM users WHERE user_id = ANY($1)"),
            &[&ids],
        )
        .await?;
    let mut found = std::collections::HashMap::new();
    for r in &rows {
        let p = from_row(r)?;
        found.insert(p.user_id, p);
    }
    Ok(users.iter().map(|u| found.remove(u)).collect())
}

fn from_row(row: &tokio_postgres::Row) -> Result<UserProfile, DbError> {
    let user_id: uuid::Uuid = row.try_get(0).map_err(query_error)?;
    let country: String = row.try_get(3).map_err(query_error)?;
    Ok(UserProfile {
        user_id: UserId::from(user_id),
        email: row.try_get(1).map_err(query_error)?,
        display_name: row.try_get(2).map_err(query_error)?,
        country: country.trim_end().to_owned(),
        verified: row.try_get(4).map_err(query_error)?,
        created_at: row.try_get(5).map_err(query_error)?,
        updated_at: row.try_get(6).map_err(query_error)?,
    })
}

/// The profile through the cache: `user_profile:{user_id}`, TTL
/// `CACHE_TTL_USER_PROFILE_SECS`, "not found" cached negatively.
#[tracing::instrument(skip_all, fields(user_id = %user))]
pub async fn get_profile(
    profiles: &Profiles,
    user: &UserId,
) -> Result<Cached<UserProfile>, DbError> {
    profiles
        .cache
        .get_or_load(&profiles.keys.user_profile(user), || {
            load_profile(&profiles.db, user)
        })
        .await
}
