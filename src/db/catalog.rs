//! Channels (upstreams) and models with their price versions: what the routing catalog is built from.

use super::{Db, now_ms, read_pool, write_pool};

/// An upstream channel as stored. `models` and `model_map` are JSON text.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChannelRow {
    pub id: i64,
    pub name: String,
    pub provider: String,
    pub base_url: String,
    pub api_key: String,
    pub models: String,
    pub model_map: String,
    pub priority: i64,
    pub weight: i64,
    pub status: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Fields of a channel, for create and full update.
pub struct ChannelFields<'a> {
    pub name: &'a str,
    pub provider: &'a str,
    pub base_url: &'a str,
    pub api_key: &'a str,
    pub models: &'a str,
    pub model_map: &'a str,
    pub priority: i64,
    pub weight: i64,
    pub status: &'a str,
}

/// A model with its current price, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ModelRow {
    pub id: i64,
    pub model: String,
    pub input_micros_per_mtok: i64,
    pub output_micros_per_mtok: i64,
    pub cached_input_micros_per_mtok: i64,
    pub max_output_tokens: Option<i64>,
    pub price_version: i64,
    pub status: String,
    /// Requests and tokens per window each key (or login) gets on this model; `None`: no
    /// model-level limit.
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A model's prices in micro-credits per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prices {
    pub input: i64,
    pub output: i64,
    pub cached_input: i64,
}

pub async fn insert_channel(db: &Db, c: &ChannelFields<'_>) -> Result<ChannelRow, sqlx::Error> {
    let now = now_ms();
    write_pool!(db, p => sqlx::query_as::<_, ChannelRow>(
        "INSERT INTO channels (name, provider, base_url, api_key, models, model_map, priority, weight, status, created_at_ms, updated_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
         RETURNING id, name, provider, base_url, api_key, models, model_map, priority, weight, status, created_at_ms, updated_at_ms",
    )
    .bind(c.name)
    .bind(c.provider)
    .bind(c.base_url)
    .bind(c.api_key)
    .bind(c.models)
    .bind(c.model_map)
    .bind(c.priority)
    .bind(c.weight)
    .bind(c.status)
    .bind(now)
    .fetch_one(p)
    .await)
}

pub async fn update_channel(
    db: &Db,
    id: i64,
    c: &ChannelFields<'_>,
) -> Result<Option<ChannelRow>, sqlx::Error> {
    write_pool!(db, p => sqlx::query_as::<_, ChannelRow>(
        "UPDATE channels SET name = $2, provider = $3, base_url = $4, api_key = $5, models = $6, model_map = $7,
                priority = $8, weight = $9, status = $10, updated_at_ms = $11
         WHERE id = $1
         RETURNING id, name, provider, base_url, api_key, models, model_map, priority, weight, status, created_at_ms, updated_at_ms",
    )
    .bind(id)
    .bind(c.name)
    .bind(c.provider)
    .bind(c.base_url)
    .bind(c.api_key)
    .bind(c.models)
    .bind(c.model_map)
    .bind(c.priority)
    .bind(c.weight)
    .bind(c.status)
    .bind(now_ms())
    .fetch_optional(p)
    .await)
}

pub async fn delete_channel(db: &Db, id: i64) -> Result<bool, sqlx::Error> {
    let deleted = write_pool!(db, p => sqlx::query("DELETE FROM channels WHERE id = $1")
        .bind(id)
        .execute(p)
        .await?
        .rows_affected());
    Ok(deleted == 1)
}

pub async fn get_channel(db: &Db, id: i64) -> Result<Option<ChannelRow>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, ChannelRow>(
        "SELECT id, name, provider, base_url, api_key, models, model_map, priority, weight, status, created_at_ms, updated_at_ms
         FROM channels WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(p)
    .await)
}

pub async fn list_channels(db: &Db) -> Result<Vec<ChannelRow>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, ChannelRow>(
        "SELECT id, name, provider, base_url, api_key, models, model_map, priority, weight, status, created_at_ms, updated_at_ms
         FROM channels ORDER BY id",
    )
    .fetch_all(p)
    .await)
}

pub async fn list_models(db: &Db) -> Result<Vec<ModelRow>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, ModelRow>(
        "SELECT id, model, input_micros_per_mtok, output_micros_per_mtok, cached_input_micros_per_mtok,
                max_output_tokens, price_version, status, rpm, tpm, created_at_ms, updated_at_ms
         FROM models ORDER BY id",
    )
    .fetch_all(p)
    .await)
}

pub async fn get_model(db: &Db, id: i64) -> Result<Option<ModelRow>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, ModelRow>(
        "SELECT id, model, input_micros_per_mtok, output_micros_per_mtok, cached_input_micros_per_mtok,
                max_output_tokens, price_version, status, rpm, tpm, created_at_ms, updated_at_ms
         FROM models WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(p)
    .await)
}

/// Creates a model at price version 1, or gives an existing one of that name new prices (a new
/// version when they differ). Settled usage keeps the version it was charged at.
pub async fn upsert_model(
    db: &Db,
    model: &str,
    prices: Prices,
    max_output_tokens: Option<i64>,
) -> Result<ModelRow, sqlx::Error> {
    let now = now_ms();
    write_pool!(db, p => {
        let mut tx = p.begin().await?;
        // A no-op write first, so that on SQLite this transaction holds the write lock before it reads.
        sqlx::query("UPDATE models SET updated_at_ms = updated_at_ms WHERE model = $1")
            .bind(model)
            .execute(&mut *tx)
            .await?;
        let existing: Option<(i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT id, input_micros_per_mtok, output_micros_per_mtok, cached_input_micros_per_mtok, price_version
             FROM models WHERE model = $1",
        )
        .bind(model)
        .fetch_optional(&mut *tx)
        .await?;
        let (id, version) = match existing {
            None => {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO models (model, input_micros_per_mtok, output_micros_per_mtok, cached_input_micros_per_mtok,
                                         max_output_tokens, price_version, status, created_at_ms, updated_at_ms)
                     VALUES ($1, $2, $3, $4, $5, 1, 'active', $6, $6) RETURNING id",
                )
                .bind(model)
                .bind(prices.input)
                .bind(prices.output)
                .bind(prices.cached_input)
                .bind(max_output_tokens)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                (id, Some(1))
            }
            Some((id, i, o, c, v)) => {
                let changed = (i, o, c) != (prices.input, prices.output, prices.cached_input);
                let version = if changed { v + 1 } else { v };
                sqlx::query(
                    "UPDATE models SET input_micros_per_mtok = $2, output_micros_per_mtok = $3,
                            cached_input_micros_per_mtok = $4, max_output_tokens = COALESCE($5, max_output_tokens),
                            price_version = $6, updated_at_ms = $7
                     WHERE id = $1",
                )
                .bind(id)
                .bind(prices.input)
                .bind(prices.output)
                .bind(prices.cached_input)
                .bind(max_output_tokens)
                .bind(version)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                (id, changed.then_some(version))
            }
        };
        if let Some(version) = version {
            sqlx::query(
                "INSERT INTO model_prices (model_id, version, input_micros_per_mtok, output_micros_per_mtok,
                                           cached_input_micros_per_mtok, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(version)
            .bind(prices.input)
            .bind(prices.output)
            .bind(prices.cached_input)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let row = sqlx::query_as::<_, ModelRow>(
            "SELECT id, model, input_micros_per_mtok, output_micros_per_mtok, cached_input_micros_per_mtok,
                    max_output_tokens, price_version, status, rpm, tpm, created_at_ms, updated_at_ms
             FROM models WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    })
}

/// Sets a model's status (`active`/`disabled`); `None` when it does not exist.
pub async fn set_model_status(
    db: &Db,
    id: i64,
    status: &str,
) -> Result<Option<ModelRow>, sqlx::Error> {
    write_pool!(db, p => sqlx::query_as::<_, ModelRow>(
        "UPDATE models SET status = $2, updated_at_ms = $3 WHERE id = $1
         RETURNING id, model, input_micros_per_mtok, output_micros_per_mtok, cached_input_micros_per_mtok,
                   max_output_tokens, price_version, status, rpm, tpm, created_at_ms, updated_at_ms",
    )
    .bind(id)
    .bind(status)
    .bind(now_ms())
    .fetch_optional(p)
    .await)
}

/// Sets or clears (inner `None`) a model's per-key rpm and tpm; an outer `None` keeps one.
pub async fn set_model_limits(
    db: &Db,
    id: i64,
    rpm: Option<Option<i64>>,
    tpm: Option<Option<i64>>,
) -> Result<Option<ModelRow>, sqlx::Error> {
    let (set_rpm, rpm) = rpm.map_or((0_i64, None), |v| (1, v));
    let (set_tpm, tpm) = tpm.map_or((0_i64, None), |v| (1, v));
    write_pool!(db, p => sqlx::query_as::<_, ModelRow>(
        "UPDATE models SET rpm = CASE WHEN $2 = 1 THEN $3 ELSE rpm END,
                tpm = CASE WHEN $4 = 1 THEN $5 ELSE tpm END, updated_at_ms = $6
         WHERE id = $1
         RETURNING id, model, input_micros_per_mtok, output_micros_per_mtok, cached_input_micros_per_mtok,
                   max_output_tokens, price_version, status, rpm, tpm, created_at_ms, updated_at_ms",
    )
    .bind(id)
    .bind(set_rpm)
    .bind(rpm)
    .bind(set_tpm)
    .bind(tpm)
    .bind(now_ms())
    .fetch_optional(p)
    .await)
}
