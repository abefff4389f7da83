//! Reservations, settlement (ledger debit + usage record in one transaction) and the usage log.
//!
//! A reservation raises `users.reserved_micros`; the spendable balance is
//! `balance_micros - reserved_micros`. Settlement drops the reservation, debits the actual cost
//! (never more than the user has), and writes exactly one usage record per request id: the
//! unique index on `usage_records.request_id` makes a second settlement roll back whole.

use super::{Db, read_pool, write_pool};
use crate::billing::{Micros, TokenUsage, UsageSource, UsageStatus};
use crate::clock::now_ms;

/// The columns a settlement writes to `usage_records`, in the order the inserts bind them.
macro_rules! usage_columns {
    () => {
        "request_id, user_id, key_id, model, upstream_model, channel_id, endpoint, stream, status, http_status, \
         prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, usage_source, reserved_micros, \
         cost_micros, unbilled_micros, price_version, latency_ms, ttft_ms, error, created_at_ms, \
         cache_write_tokens, units"
    };
}

/// The usage-record insert both settlement paths share. Parameters: $1 charged, $2 now,
/// $3 user, $4 request id, then the record's fields in [`bind_usage!`]'s order.
macro_rules! usage_insert {
    () => {
        concat!(
            "INSERT INTO usage_records (",
            usage_columns!(),
            ") VALUES ($4, $3, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $1, $19, $20, $21, $22, $23, $2, $24, $25)"
        )
    };
}

/// Parameters of the settlement statements, in the order [`usage_insert!`] numbers them.
const SETTLE_PARAMS: usize = 25;

/// Binds a settlement's [`SETTLE_PARAMS`] parameters (`$1`..`$25`) to `$query`.
macro_rules! bind_usage {
    ($query:expr, $charged:expr, $now:expr, $rec:expr) => {{
        let rec: &UsageRecord = $rec;
        let charged: i64 = $charged;
        $query
            .bind(charged)
            .bind($now)
            .bind(rec.user_id)
            .bind(rec.request_id.clone())
            .bind(rec.key_id)
            .bind(rec.model.clone())
            .bind(rec.upstream_model.clone())
            .bind(rec.channel_id)
            .bind(rec.endpoint)
            .bind(i64::from(rec.stream))
            .bind(rec.status.as_str())
            .bind(i64::from(rec.http_status))
            .bind(rec.usage.prompt_tokens)
            .bind(rec.usage.completion_tokens)
            .bind(rec.usage.cached_tokens)
            .bind(rec.usage.reasoning_tokens)
            .bind(rec.usage_source.as_str())
            .bind(rec.reserved.0)
            .bind(rec.cost.0 - charged)
            .bind(rec.price_version)
            .bind(rec.latency_ms)
            .bind(rec.ttft_ms)
            .bind(rec.error.clone())
            .bind(rec.usage.cache_write_tokens)
            .bind(rec.units)
    }};
}

pub(crate) use {bind_usage, usage_columns, usage_insert};

/// Why a reservation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("insufficient balance: needed {needed}, available {available}")]
    Insufficient { needed: Micros, available: Micros },
    #[error("user is not active")]
    UserInactive,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What is held for one request.
pub struct NewReservation<'a> {
    pub request_id: &'a str,
    pub user_id: i64,
    pub key_id: Option<i64>,
    pub model: &'a str,
    pub amount: Micros,
    pub price_version: i64,
    pub expires_at_ms: i64,
}

/// Atomically holds `amount` of the user's spendable balance; returns the reservation id.
pub async fn reserve(db: &Db, r: &NewReservation<'_>) -> Result<i64, ReserveError> {
    let now = now_ms();
    write_pool!(db, p => {
        let mut tx = p.begin().await?;
        let held: Option<i64> = sqlx::query_scalar(
            "UPDATE users SET reserved_micros = reserved_micros + $2
             WHERE id = $1 AND status = 'active' AND balance_micros - reserved_micros >= $2
             RETURNING id",
        )
        .bind(r.user_id)
        .bind(r.amount.0)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_none() {
            let row: Option<(String, i64, i64)> =
                sqlx::query_as("SELECT status, balance_micros, reserved_micros FROM users WHERE id = $1")
                    .bind(r.user_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(match row {
                Some((status, b, res)) if status == "active" => ReserveError::Insufficient {
                    needed: r.amount,
                    available: Micros(b - res),
                },
                _ => ReserveError::UserInactive,
            });
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO reservations (request_id, user_id, key_id, model, amount_micros, price_version, created_at_ms, expires_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(r.request_id)
        .bind(r.user_id)
        .bind(r.key_id)
        .bind(r.model)
        .bind(r.amount.0)
        .bind(r.price_version)
        .bind(now)
        .bind(r.expires_at_ms)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    })
}

/// One request's outcome, as written to `usage_records`.
#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub request_id: String,
    pub user_id: i64,
    pub key_id: Option<i64>,
    pub model: String,
    pub upstream_model: Option<String>,
    pub channel_id: Option<i64>,
    pub endpoint: &'static str,
    pub stream: bool,
    pub status: UsageStatus,
    pub http_status: u16,
    pub usage: TokenUsage,
    pub usage_source: UsageSource,
    pub reserved: Micros,
    /// The price of the usage; what is charged is at most this and at most what the user has.
    pub cost: Micros,
    pub price_version: Option<i64>,
    pub latency_ms: i64,
    pub ttft_ms: Option<i64>,
    pub error: Option<String>,
    /// Images returned or video seconds billed (0 for token-metered endpoints).
    pub units: i64,
}

impl UsageRecord {
    /// The most this request may be charged: its cost, but never more than was reserved for it
    /// (a runaway upstream cannot spend past the reservation; the excess is recorded as
    /// unbilled). What is charged is also at most what the user has.
    pub fn chargeable(&self, spendable: i64) -> i64 {
        self.cost.0.min(self.reserved.0).min(spendable.max(0))
    }
}

/// What settlement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub charged: Micros,
    /// False when this request id had been settled before (nothing was changed).
    pub first_time: bool,
}

/// Drops the reservation (if any), debits the cost, appends the ledger row and the usage record,
/// all in one transaction. Idempotent on `request_id`.
pub async fn settle(
    db: &Db,
    reservation_id: Option<i64>,
    rec: &UsageRecord,
) -> Result<Settled, sqlx::Error> {
    let now = now_ms();
    let result: Result<Settled, sqlx::Error> = write_pool!(db, p => {
        let mut tx = p.begin().await?;
        let released: Option<i64> = match reservation_id {
            Some(id) => sqlx::query_scalar("DELETE FROM reservations WHERE id = $1 RETURNING amount_micros")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?,
            None => None,
        };
        let mut charged = 0_i64;
        if released.is_some() || rec.cost.0 > 0 {
            let (balance, reserved): (i64, i64) = sqlx::query_as(
                "UPDATE users SET reserved_micros = reserved_micros - $2, updated_at_ms = $3
                 WHERE id = $1 RETURNING balance_micros, reserved_micros",
            )
            .bind(rec.user_id)
            .bind(released.unwrap_or(0))
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            charged = rec.chargeable(balance - reserved);
            if charged > 0 {
                let balance_after: i64 = sqlx::query_scalar(
                    "UPDATE users SET balance_micros = balance_micros - $2 WHERE id = $1 RETURNING balance_micros",
                )
                .bind(rec.user_id)
                .bind(charged)
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO ledger_entries (user_id, kind, amount_micros, balance_after_micros, description, request_id, created_at_ms)
                     VALUES ($1, 'charge', $2, $3, $4, $5, $6)",
                )
                .bind(rec.user_id)
                .bind(-charged)
                .bind(balance_after)
                .bind(format!("{} {}", rec.endpoint, rec.model))
                .bind(&rec.request_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        bind_usage!(sqlx::query(usage_insert!()), charged, now, rec)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Settled { charged: Micros(charged), first_time: true })
    });
    match result {
        Err(e) if super::is_unique_violation(&e) => Ok(Settled {
            charged: Micros::ZERO,
            first_time: false,
        }),
        other => other,
    }
}

/// Releases reservations whose expiry has passed (a crashed instance's leftovers). Each is
/// deleted and subtracted in its own transaction, so instances running this concurrently
/// release each reservation once. Returns how many were released.
pub async fn release_expired(db: &Db, now: i64, batch: i64) -> Result<u64, sqlx::Error> {
    let expired: Vec<i64> = read_pool!(db, p => sqlx::query_scalar(
        "SELECT id FROM reservations WHERE expires_at_ms < $1 ORDER BY expires_at_ms LIMIT $2",
    )
    .bind(now)
    .bind(batch)
    .fetch_all(p)
    .await)?;
    let mut released = 0;
    for id in expired {
        let done: bool = write_pool!(db, p => {
            let mut tx = p.begin().await?;
            let row: Option<(i64, i64)> = sqlx::query_as(
                "DELETE FROM reservations WHERE id = $1 AND expires_at_ms < $2 RETURNING user_id, amount_micros",
            )
            .bind(id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((user_id, amount)) = row {
                sqlx::query("UPDATE users SET reserved_micros = reserved_micros - $2 WHERE id = $1")
                    .bind(user_id)
                    .bind(amount)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok::<bool, sqlx::Error>(row.is_some())
        })?;
        released += u64::from(done);
    }
    Ok(released)
}

/// A usage record as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UsageRow {
    pub id: i64,
    pub request_id: String,
    pub user_id: i64,
    pub key_id: Option<i64>,
    pub model: String,
    pub upstream_model: Option<String>,
    pub channel_id: Option<i64>,
    pub endpoint: String,
    pub stream: i64,
    pub status: String,
    pub http_status: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    pub usage_source: String,
    pub reserved_micros: i64,
    pub cost_micros: i64,
    pub unbilled_micros: i64,
    pub price_version: Option<i64>,
    pub latency_ms: i64,
    pub ttft_ms: Option<i64>,
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub cache_write_tokens: i64,
    pub units: i64,
}

/// A page of usage records (all users, or one), newest first, and the total count.
pub async fn list_usage(
    db: &Db,
    user_id: Option<i64>,
    limit: i64,
    offset: i64,
) -> Result<(i64, Vec<UsageRow>), sqlx::Error> {
    read_pool!(db, p => {
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM usage_records WHERE ($1 IS NULL OR user_id = $1)",
        )
        .bind(user_id)
        .fetch_one(p)
        .await?;
        let rows = sqlx::query_as::<_, UsageRow>(
            concat!(
                "SELECT id, ",
                usage_columns!(),
                " FROM usage_records WHERE ($1 IS NULL OR user_id = $1) ORDER BY id DESC LIMIT $2 OFFSET $3"
            ),
        )
        .bind(user_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(p)
        .await?;
        Ok((total, rows))
    })
}

/// Usage summed for one user, model or channel over a time range.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UsageTotals {
    /// The user id, model name or channel id (as text; empty for "no channel").
    pub group_key: String,
    pub requests: i64,
    pub failed: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    pub cache_write_tokens: i64,
    pub units: i64,
    pub cost_micros: i64,
}

/// What usage can be summed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    User,
    Model,
    Channel,
}

macro_rules! usage_totals_sql {
    ($key:literal) => {
        concat!(
            "SELECT COALESCE(CAST(",
            $key,
            " AS TEXT), '') AS group_key, COUNT(*) AS requests,
                    CAST(SUM(CASE WHEN status = 'ok' THEN 0 ELSE 1 END) AS BIGINT) AS failed,
                    CAST(SUM(prompt_tokens) AS BIGINT) AS prompt_tokens,
                    CAST(SUM(completion_tokens) AS BIGINT) AS completion_tokens,
                    CAST(SUM(cached_tokens) AS BIGINT) AS cached_tokens,
                    CAST(SUM(cache_write_tokens) AS BIGINT) AS cache_write_tokens,
                    CAST(SUM(units) AS BIGINT) AS units,
                    CAST(SUM(cost_micros) AS BIGINT) AS cost_micros
             FROM usage_records WHERE created_at_ms >= $1 AND created_at_ms < $2
             GROUP BY ",
            $key,
            " ORDER BY cost_micros DESC, group_key LIMIT 1000"
        )
    };
}

/// Usage in `[start_ms, end_ms)` summed by `group`, dearest first (at most 1000 groups).
pub async fn usage_totals(
    db: &Db,
    group: UsageGroup,
    start_ms: i64,
    end_ms: i64,
) -> Result<Vec<UsageTotals>, sqlx::Error> {
    let sql = match group {
        UsageGroup::User => usage_totals_sql!("user_id"),
        UsageGroup::Model => usage_totals_sql!("model"),
        UsageGroup::Channel => usage_totals_sql!("channel_id"),
    };
    read_pool!(db, p => sqlx::query_as::<_, UsageTotals>(sql)
        .bind(start_ms)
        .bind(end_ms)
        .fetch_all(p)
        .await)
}

/// One settlement whose charge was already decided (by the in-memory
/// [`crate::billing::book::Book`]), waiting to be written.
pub struct Decided {
    pub charged: Micros,
    pub record: UsageRecord,
}

/// The statements of one decided settlement; its `$n` placeholders are shifted per batch member.
const DECIDED_SQL: &str = concat!(
    "
    UPDATE users SET balance_micros = balance_micros - $1, updated_at_ms = $2 WHERE id = $3;
    INSERT INTO ledger_entries (user_id, kind, amount_micros, balance_after_micros, description, request_id, created_at_ms)
        SELECT id, 'charge', -$1, balance_micros, $9 || ' ' || $6, $4, $2 FROM users WHERE id = $3 AND $1 > 0;
    ",
    usage_insert!(),
    ";"
);

/// The SQL of a batch of `members` (1 to `MAX_BATCH`), built once per size.
fn decided_batch(members: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| (0..=MAX_BATCH).map(decided_batch_sql).collect());
    all.get(members).map_or("", String::as_str)
}

/// Settlements one batch writes at most.
pub const MAX_BATCH: usize = 64;

/// The SQL of a batch: one transaction holding each member's statements.
fn decided_batch_sql(members: usize) -> String {
    let mut sql = String::from("BEGIN IMMEDIATE;");
    for i in 0..members {
        let offset = i * SETTLE_PARAMS;
        let mut part = String::with_capacity(DECIDED_SQL.len() + 64);
        let mut rest = DECIDED_SQL;
        while let Some(at) = rest.find('$') {
            part.push_str(&rest[..at]);
            let digits = rest[at + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            let n: usize = rest[at + 1..at + 1 + digits].parse().unwrap_or(0);
            part.push_str(&format!("${}", n + offset));
            rest = &rest[at + 1 + digits..];
        }
        part.push_str(rest);
        sql.push_str(&part);
    }
    sql.push_str("COMMIT;");
    sql
}

/// SQLite only: writes decided settlements as one transaction in one round trip (debit,
/// ledger row with `balance_after`, usage record, for each). Any failure rolls back all of them;
/// a duplicate request id fails with a unique violation.
pub async fn settle_decided(db: &Db, batch: &[Decided]) -> Result<(), sqlx::Error> {
    let Db::Sqlite { writer, .. } = db else {
        return Err(sqlx::Error::Configuration(
            "settle_decided is for SQLite".into(),
        ));
    };
    let mut query = match batch.len() {
        n @ 1..=MAX_BATCH => sqlx::query(decided_batch(n)),
        n => sqlx::query(sqlx::AssertSqlSafe(decided_batch_sql(n))),
    };
    let now = now_ms();
    for Decided { charged, record } in batch {
        query = bind_usage!(query, charged.0, now, record);
    }
    let mut conn = writer.acquire().await?;
    match query.execute(&mut *conn).await {
        Ok(_) => Ok(()),
        Err(e) => {
            // The statements stopped part-way inside BEGIN: undo them on this same connection.
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}

/// Every user's balance, for the in-memory book.
pub async fn all_balances(db: &Db) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    write_pool!(db, p => sqlx::query_as("SELECT id, balance_micros FROM users").fetch_all(p).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_members_get_their_own_placeholders() {
        let sql = decided_batch_sql(2);
        assert!(sql.starts_with("BEGIN IMMEDIATE;") && sql.ends_with("COMMIT;"));
        assert!(sql.contains("WHERE id = $3;") && sql.contains("WHERE id = $28;"));
        assert!(sql.contains("$50") && !sql.contains("$51"));
        assert_eq!(sql.matches("INSERT INTO usage_records").count(), 2);
    }
}
