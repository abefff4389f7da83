//! Channels (upstreams) and models with their price versions: what the routing catalog is built from.

use super::{Db, read_pool, write_pool};
use crate::clock::now_ms;
use crate::secrets::{Purpose, Secret, Secrets};

/// The columns of a [`ModelRow`].
macro_rules! model_columns {
    () => {
        "id, model, input_micros_per_mtok, output_micros_per_mtok, cached_input_micros_per_mtok, \
         max_output_tokens, price_version, status, rpm, tpm, created_at_ms, updated_at_ms, \
         cache_write_micros_per_mtok, request_micros, image_micros, image_prices, video_second_micros, \
         display_name, vendor, config"
    };
}

/// The columns of a [`ChannelRow`].
macro_rules! channel_columns {
    () => {
        "id, name, provider, base_url, api_key, models, model_map, priority, weight, status, \
         created_at_ms, updated_at_ms, disabled_reason, last_error, last_error_at_ms"
    };
}

/// An upstream channel as stored (`api_key` opened: the table holds it sealed). `models` and
/// `model_map` are JSON text.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChannelRow {
    pub id: i64,
    pub name: String,
    pub provider: String,
    pub base_url: String,
    pub api_key: Secret,
    pub models: String,
    pub model_map: String,
    pub priority: i64,
    pub weight: i64,
    pub status: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Why the gateway disabled it (an upstream 401/403), if it did.
    pub disabled_reason: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<i64>,
}

/// Fields of a channel, for create and full update (`api_key` in plain text: it is sealed here).
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
    /// `None`: 1.25 × the input price (Anthropic's five-minute cache write).
    pub cache_write_micros_per_mtok: Option<i64>,
    pub request_micros: i64,
    /// Default price per image, and JSON `{"<size>" or "<size>/<quality>": micros}`.
    pub image_micros: Option<i64>,
    pub image_prices: Option<String>,
    pub video_second_micros: Option<i64>,
    /// The registry's display name, vendor label and JSON config.
    pub display_name: Option<String>,
    pub vendor: Option<String>,
    pub config: Option<String>,
}

/// A model's prices: tokens in micro-credits per million, the rest in micro-credits each.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Prices {
    pub input: i64,
    pub output: i64,
    pub cached_input: i64,
    /// `None`: 1.25 × input.
    pub cache_write: Option<i64>,
    /// Per request that produced an answer.
    pub request: i64,
    pub image: Option<i64>,
    /// JSON `{"<size>[/<quality>]": micros}`.
    pub image_prices: Option<String>,
    pub video_second: Option<i64>,
}

impl Prices {
    /// The prices a stored model has now.
    pub fn of(m: &ModelRow) -> Prices {
        Prices {
            input: m.input_micros_per_mtok,
            output: m.output_micros_per_mtok,
            cached_input: m.cached_input_micros_per_mtok,
            cache_write: m.cache_write_micros_per_mtok,
            request: m.request_micros,
            image: m.image_micros,
            image_prices: m.image_prices.clone(),
            video_second: m.video_second_micros,
        }
    }
}

/// `row` with its credential opened.
fn opened(secrets: &Secrets, mut row: ChannelRow) -> Result<ChannelRow, sqlx::Error> {
    row.api_key = secrets
        .open(Purpose::ChannelCredential, row.api_key.expose())
        .map(Secret::from)
        .map_err(|e| {
            sqlx::Error::Decode(format!("channel {} ({}): {e}", row.id, row.name).into())
        })?;
    Ok(row)
}

pub async fn insert_channel(
    db: &Db,
    secrets: &Secrets,
    c: &ChannelFields<'_>,
) -> Result<ChannelRow, sqlx::Error> {
    let now = now_ms();
    let sealed = secrets.seal(Purpose::ChannelCredential, c.api_key);
    let row = write_pool!(db, p => sqlx::query_as::<_, ChannelRow>(concat!(
        "INSERT INTO channels (name, provider, base_url, api_key, models, model_map, priority, weight, status, created_at_ms, updated_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
         RETURNING ", channel_columns!()),
    )
    .bind(c.name)
    .bind(c.provider)
    .bind(c.base_url)
    .bind(&sealed)
    .bind(c.models)
    .bind(c.model_map)
    .bind(c.priority)
    .bind(c.weight)
    .bind(c.status)
    .bind(now)
    .fetch_one(p)
    .await)?;
    opened(secrets, row)
}

pub async fn update_channel(
    db: &Db,
    secrets: &Secrets,
    id: i64,
    c: &ChannelFields<'_>,
) -> Result<Option<ChannelRow>, sqlx::Error> {
    let sealed = secrets.seal(Purpose::ChannelCredential, c.api_key);
    let row = write_pool!(db, p => sqlx::query_as::<_, ChannelRow>(concat!(
        "UPDATE channels SET name = $2, provider = $3, base_url = $4, api_key = $5, models = $6, model_map = $7,
                priority = $8, weight = $9, status = $10, updated_at_ms = $11,
                disabled_reason = CASE WHEN $10 = 'active' THEN NULL ELSE disabled_reason END
         WHERE id = $1
         RETURNING ", channel_columns!()),
    )
    .bind(id)
    .bind(c.name)
    .bind(c.provider)
    .bind(c.base_url)
    .bind(&sealed)
    .bind(c.models)
    .bind(c.model_map)
    .bind(c.priority)
    .bind(c.weight)
    .bind(c.status)
    .bind(now_ms())
    .fetch_optional(p)
    .await)?;
    row.map(|r| opened(secrets, r)).transpose()
}

pub async fn delete_channel(db: &Db, id: i64) -> Result<bool, sqlx::Error> {
    let deleted = write_pool!(db, p => sqlx::query("DELETE FROM channels WHERE id = $1")
        .bind(id)
        .execute(p)
        .await?
        .rows_affected());
    Ok(deleted == 1)
}

pub async fn get_channel(
    db: &Db,
    secrets: &Secrets,
    id: i64,
) -> Result<Option<ChannelRow>, sqlx::Error> {
    let row = read_pool!(db, p => sqlx::query_as::<_, ChannelRow>(
        concat!("SELECT ", channel_columns!(), " FROM channels WHERE id = $1"),
    )
    .bind(id)
    .fetch_optional(p)
    .await)?;
    row.map(|r| opened(secrets, r)).transpose()
}

pub async fn list_channels(db: &Db, secrets: &Secrets) -> Result<Vec<ChannelRow>, sqlx::Error> {
    let rows = read_pool!(db, p => sqlx::query_as::<_, ChannelRow>(
        concat!("SELECT ", channel_columns!(), " FROM channels ORDER BY id"),
    )
    .fetch_all(p)
    .await)?;
    rows.into_iter().map(|r| opened(secrets, r)).collect()
}

/// Seals the credentials still stored in plain text (written before they were sealed);
/// returns how many. Each row is only rewritten if it still holds the value read.
pub async fn seal_plain_credentials(db: &Db, secrets: &Secrets) -> Result<u64, sqlx::Error> {
    let rows: Vec<(i64, String)> = read_pool!(db, p => sqlx::query_as(
        "SELECT id, api_key FROM channels ORDER BY id",
    )
    .fetch_all(p)
    .await)?;
    let mut sealed = 0;
    for (id, key) in rows {
        if crate::secrets::is_sealed(&key) {
            continue;
        }
        let value = secrets.seal(Purpose::ChannelCredential, &key);
        sealed += write_pool!(db, p => sqlx::query(
            "UPDATE channels SET api_key = $2 WHERE id = $1 AND api_key = $3",
        )
        .bind(id)
        .bind(&value)
        .bind(&key)
        .execute(p)
        .await?
        .rows_affected());
    }
    Ok(sealed)
}

pub async fn list_models(db: &Db) -> Result<Vec<ModelRow>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, ModelRow>(
        concat!("SELECT ", model_columns!(), " FROM models ORDER BY id"),
    )
    .fetch_all(p)
    .await)
}

pub async fn get_model(db: &Db, id: i64) -> Result<Option<ModelRow>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, ModelRow>(
        concat!("SELECT ", model_columns!(), " FROM models WHERE id = $1"),
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
    prices: &Prices,
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
        let existing = sqlx::query_as::<_, ModelRow>(concat!("SELECT ", model_columns!(), " FROM models WHERE model = $1"))
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
            Some(row) => {
                let changed = &Prices::of(&row) != prices;
                let version = if changed { row.price_version + 1 } else { row.price_version };
                sqlx::query(
                    "UPDATE models SET max_output_tokens = COALESCE($2, max_output_tokens),
                            price_version = $3, updated_at_ms = $4
                     WHERE id = $1",
                )
                .bind(row.id)
                .bind(max_output_tokens)
                .bind(version)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                (row.id, changed.then_some(version))
            }
        };
        sqlx::query(
            "UPDATE models SET input_micros_per_mtok = $2, output_micros_per_mtok = $3,
                    cached_input_micros_per_mtok = $4, cache_write_micros_per_mtok = $5, request_micros = $6,
                    image_micros = $7, image_prices = $8, video_second_micros = $9
             WHERE id = $1",
        )
        .bind(id)
        .bind(prices.input)
        .bind(prices.output)
        .bind(prices.cached_input)
        .bind(prices.cache_write)
        .bind(prices.request)
        .bind(prices.image)
        .bind(prices.image_prices.as_deref())
        .bind(prices.video_second)
        .execute(&mut *tx)
        .await?;
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
            concat!("SELECT ", model_columns!(), " FROM models WHERE id = $1"),
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
    write_pool!(db, p => sqlx::query_as::<_, ModelRow>(concat!(
        "UPDATE models SET status = $2, updated_at_ms = $3 WHERE id = $1
         RETURNING ", model_columns!()),
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
    write_pool!(db, p => sqlx::query_as::<_, ModelRow>(concat!(
        "UPDATE models SET rpm = CASE WHEN $2 = 1 THEN $3 ELSE rpm END,
                tpm = CASE WHEN $4 = 1 THEN $5 ELSE tpm END, updated_at_ms = $6
         WHERE id = $1
         RETURNING ", model_columns!()),
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

/// Disables a channel and says why (an upstream refused its credential).
pub async fn disable_channel(db: &Db, id: i64, reason: &str) -> Result<(), sqlx::Error> {
    let now = now_ms();
    write_pool!(db, p => sqlx::query(
        "UPDATE channels SET status = 'disabled', disabled_reason = $2, last_error = $2,
                last_error_at_ms = $3, updated_at_ms = $3
         WHERE id = $1",
    )
    .bind(id)
    .bind(reason)
    .bind(now)
    .execute(p)
    .await
    .map(|_| ()))
}

/// Remembers a channel's latest error (shown to admins on every instance).
pub async fn note_channel_error(db: &Db, id: i64, error: &str) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE channels SET last_error = $2, last_error_at_ms = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .bind(now_ms())
    .execute(p)
    .await
    .map(|_| ()))
}

/// Sets a model's registry fields (display name, vendor label, JSON config); `None` keeps one.
pub async fn set_registry_fields(
    db: &Db,
    id: i64,
    display_name: Option<&str>,
    vendor: Option<&str>,
    config: Option<&str>,
) -> Result<Option<ModelRow>, sqlx::Error> {
    write_pool!(db, p => sqlx::query_as::<_, ModelRow>(concat!(
        "UPDATE models SET display_name = COALESCE($2, display_name), vendor = COALESCE($3, vendor),
                config = COALESCE($4, config), updated_at_ms = $5
         WHERE id = $1
         RETURNING ", model_columns!()),
    )
    .bind(id)
    .bind(display_name)
    .bind(vendor)
    .bind(config)
    .bind(now_ms())
    .fetch_optional(p)
    .await)
}

/// A model by name.
pub async fn model_by_name(db: &Db, model: &str) -> Result<Option<ModelRow>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, ModelRow>(
        concat!("SELECT ", model_columns!(), " FROM models WHERE model = $1"),
    )
    .bind(model)
    .fetch_optional(p)
    .await)
}
