//! API keys: stored only as SHA-256 hashes, with status, expiry and an allowed-model list.

use super::{Db, read_pool, write_pool};
use crate::clock::now_ms;

/// An API key as stored (never the key itself).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub key_prefix: String,
    pub status: String,
    /// JSON array of model names, or NULL for every model.
    pub models: Option<String>,
    pub expires_at_ms: Option<i64>,
    #[sqlx(flatten)]
    pub limits: KeyLimits,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A key's own limits; `None` means the configured default (or, for the plan, no plan).
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyLimits {
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub max_concurrency: Option<i64>,
    /// `free`, `pro` or `custom` (platform API requests per hour).
    pub plan: Option<String>,
    /// The hourly limit of a `custom` plan.
    pub plan_per_hour: Option<i64>,
}

/// What authentication needs about a key and its owner, in one query.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyAuthRow {
    pub key_id: i64,
    pub user_id: i64,
    pub key_status: String,
    pub models: Option<String>,
    pub expires_at_ms: Option<i64>,
    pub user_status: String,
    pub role: String,
    pub membership_expires_at_ms: Option<i64>,
    #[sqlx(flatten)]
    pub limits: KeyLimits,
}

/// Fields of a new key.
pub struct NewKey<'a> {
    pub user_id: i64,
    pub name: &'a str,
    pub key_hash: &'a str,
    pub key_prefix: &'a str,
    pub models: Option<String>,
    pub expires_at_ms: Option<i64>,
    pub limits: KeyLimits,
}

/// A partial update; `None` leaves a field as it is. `models`/`expires_at_ms` use an inner
/// `None` to clear the field.
#[derive(Default)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub status: Option<String>,
    pub models: Option<Option<String>>,
    pub expires_at_ms: Option<Option<i64>>,
    /// Each limit: outer `None` keeps it, inner `None` goes back to the default.
    pub rpm: Option<Option<i64>>,
    pub tpm: Option<Option<i64>>,
    pub max_concurrency: Option<Option<i64>>,
    /// The plan and its hourly limit, set together.
    pub plan: Option<(Option<String>, Option<i64>)>,
}

pub async fn create(db: &Db, key: NewKey<'_>) -> Result<ApiKeyRow, sqlx::Error> {
    let now = now_ms();
    write_pool!(db, p => sqlx::query_as::<_, ApiKeyRow>(
        "INSERT INTO api_keys (user_id, name, key_hash, key_prefix, status, models, expires_at_ms, rpm, tpm, max_concurrency, plan, plan_per_hour, created_at_ms, updated_at_ms)
         VALUES ($1, $2, $3, $4, 'active', $5, $6, $8, $9, $10, $11, $12, $7, $7)
         RETURNING id, user_id, name, key_prefix, status, models, expires_at_ms, rpm, tpm, max_concurrency, plan, plan_per_hour, created_at_ms, updated_at_ms",
    )
    .bind(key.user_id)
    .bind(key.name)
    .bind(key.key_hash)
    .bind(key.key_prefix)
    .bind(key.models)
    .bind(key.expires_at_ms)
    .bind(now)
    .bind(key.limits.rpm)
    .bind(key.limits.tpm)
    .bind(key.limits.max_concurrency)
    .bind(&key.limits.plan)
    .bind(key.limits.plan_per_hour)
    .fetch_one(p)
    .await)
}

/// The key with this hash and its owner, if any.
pub async fn find_for_auth(db: &Db, key_hash: &str) -> Result<Option<KeyAuthRow>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, KeyAuthRow>(
        "SELECT k.id AS key_id, k.user_id, k.status AS key_status, k.models, k.expires_at_ms,
                u.status AS user_status, u.role, u.membership_expires_at_ms,
                k.rpm, k.tpm, k.max_concurrency, k.plan, k.plan_per_hour
         FROM api_keys k JOIN users u ON u.id = k.user_id
         WHERE k.key_hash = $1",
    )
    .bind(key_hash)
    .fetch_optional(p)
    .await)
}

pub async fn get(db: &Db, id: i64) -> Result<Option<ApiKeyRow>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, ApiKeyRow>(
        "SELECT id, user_id, name, key_prefix, status, models, expires_at_ms, rpm, tpm, max_concurrency, plan, plan_per_hour, created_at_ms, updated_at_ms
         FROM api_keys WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(p)
    .await)
}

pub async fn list_for_user(db: &Db, user_id: i64) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, ApiKeyRow>(
        "SELECT id, user_id, name, key_prefix, status, models, expires_at_ms, rpm, tpm, max_concurrency, plan, plan_per_hour, created_at_ms, updated_at_ms
         FROM api_keys WHERE user_id = $1 ORDER BY id",
    )
    .bind(user_id)
    .fetch_all(p)
    .await)
}

/// Applies `patch`; `None` when the key does not exist.
pub async fn update(db: &Db, id: i64, patch: KeyPatch) -> Result<Option<ApiKeyRow>, sqlx::Error> {
    let (set_models, models) = match patch.models {
        Some(m) => (1_i64, m),
        None => (0, None),
    };
    let (set_expiry, expiry) = match patch.expires_at_ms {
        Some(e) => (1_i64, e),
        None => (0, None),
    };
    let set = |v: Option<Option<i64>>| match v {
        Some(v) => (1_i64, v),
        None => (0, None),
    };
    let (set_rpm, rpm) = set(patch.rpm);
    let (set_tpm, tpm) = set(patch.tpm);
    let (set_conc, conc) = set(patch.max_concurrency);
    let (set_plan, (plan, plan_per_hour)) = match patch.plan {
        Some(p) => (1_i64, p),
        None => (0, (None, None)),
    };
    write_pool!(db, p => sqlx::query_as::<_, ApiKeyRow>(
        "UPDATE api_keys SET
            name = COALESCE($2, name),
            status = COALESCE($3, status),
            models = CASE WHEN $4 = 1 THEN $5 ELSE models END,
            expires_at_ms = CASE WHEN $6 = 1 THEN $7 ELSE expires_at_ms END,
            updated_at_ms = $8,
            rpm = CASE WHEN $9 = 1 THEN $10 ELSE rpm END,
            tpm = CASE WHEN $11 = 1 THEN $12 ELSE tpm END,
            max_concurrency = CASE WHEN $13 = 1 THEN $14 ELSE max_concurrency END,
            plan = CASE WHEN $15 = 1 THEN $16 ELSE plan END,
            plan_per_hour = CASE WHEN $15 = 1 THEN $17 ELSE plan_per_hour END
         WHERE id = $1
         RETURNING id, user_id, name, key_prefix, status, models, expires_at_ms, rpm, tpm, max_concurrency, plan, plan_per_hour, created_at_ms, updated_at_ms",
    )
    .bind(id)
    .bind(patch.name)
    .bind(patch.status)
    .bind(set_models)
    .bind(models)
    .bind(set_expiry)
    .bind(expiry)
    .bind(now_ms())
    .bind(set_rpm)
    .bind(rpm)
    .bind(set_tpm)
    .bind(tpm)
    .bind(set_conc)
    .bind(conc)
    .bind(set_plan)
    .bind(plan)
    .bind(plan_per_hour)
    .fetch_optional(p)
    .await)
}
