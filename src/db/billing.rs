//! Reservations, settlement (ledger debit + usage record in one transaction) and the usage log.
//!
//! A reservation raises `users.reserved_micros`; the spendable balance is
//! `balance_micros - reserved_micros`. Settlement drops the reservation, debits the actual cost
//! (never more than the user has), and writes exactly one usage record per request id: the
//! unique index on `usage_records.request_id` makes a second settlement roll back whole.

use super::{Db, read_pool, write_pool};
use crate::billing::{Micros, PaidBy, TokenUsage, UsageSource, UsageStatus};
use crate::clock::now_ms;

/// The columns a settlement writes to `usage_records`, in the order the inserts bind them.
macro_rules! usage_columns {
    () => {
        "request_id, user_id, key_id, model, upstream_model, channel_id, endpoint, stream, status, http_status, \
         prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, usage_source, reserved_micros, \
         cost_micros, unbilled_micros, price_version, latency_ms, ttft_ms, error, created_at_ms, \
         cache_write_tokens, units, paid_by"
    };
}

/// The values of a usage-record row, numbered as [`bind_usage!`] binds them, with what was
/// charged given as an SQL expression (`$26` where it is bound, a CTE column where the
/// statement decides it). The record's price is `$18`; what it did not charge is unbilled.
macro_rules! usage_values {
    ($charged:expr) => {
        concat!(
            "$3, $2, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, ",
            $charged,
            ", $18 - ",
            $charged,
            ", $19, $20, $21, $22, $1, $23, $24, $25"
        )
    };
}

/// The usage-record insert with the charge bound as `$26` (after [`bind_usage!`]'s parameters).
macro_rules! usage_insert {
    () => {
        concat!(
            "INSERT INTO usage_records (",
            $crate::db::billing::usage_columns!(),
            ") VALUES (",
            $crate::db::billing::usage_values!("$26"),
            ")"
        )
    };
}

/// Parameters of one settlement: [`bind_usage!`]'s 25 and the one its caller binds after them.
const SETTLE_PARAMS: usize = 26;

/// Binds a usage record's parameters `$1`..`$25` to `$query`: `$1` now, `$2` user, `$3` request
/// id, `$5` model, `$8` endpoint, `$17` reserved, `$18` price, then the rest of its fields.
macro_rules! bind_usage {
    ($query:expr, $now:expr, $rec:expr) => {{
        let rec: &UsageRecord = $rec;
        $query
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
            .bind(rec.cost.0)
            .bind(rec.price_version)
            .bind(rec.latency_ms)
            .bind(rec.ttft_ms)
            .bind(rec.error.clone())
            .bind(rec.usage.cache_write_tokens)
            .bind(rec.units)
            .bind(rec.paid_by.as_str())
    }};
}

/// Takes a durable hold inside transaction `$tx`: debits `$amount` from `$user`'s spendable
/// balance (an active user's only) and writes the `hold` ledger row under `$request_id`, so the
/// money is set aside whatever happens to the process. Evaluates to `Result<(), ReserveError>`.
/// The hold ends with [`settle_hold!`].
macro_rules! take_hold {
    ($tx:expr, $user:expr, $amount:expr, $request_id:expr, $description:expr, $now:expr) => {{
        let (user, amount): (i64, i64) = ($user, $amount);
        let balance: Option<i64> = sqlx::query_scalar(
            "UPDATE users SET balance_micros = balance_micros - $2, updated_at_ms = $3
             WHERE id = $1 AND status = 'active' AND balance_micros - reserved_micros >= $2
             RETURNING balance_micros",
        )
        .bind(user)
        .bind(amount)
        .bind($now)
        .fetch_optional(&mut *$tx)
        .await?;
        match balance {
            None => {
                let row: Option<(String, i64, i64)> = sqlx::query_as(
                    "SELECT status, balance_micros, reserved_micros FROM users WHERE id = $1",
                )
                .bind(user)
                .fetch_optional(&mut *$tx)
                .await?;
                Err(match row {
                    Some((s, b, r)) if s == "active" => $crate::db::billing::ReserveError::Insufficient {
                        needed: $crate::billing::Micros(amount),
                        available: $crate::billing::Micros(b - r),
                    },
                    _ => $crate::db::billing::ReserveError::UserInactive,
                })
            }
            Some(balance) => {
                sqlx::query(
                    "INSERT INTO ledger_entries (user_id, kind, amount_micros, balance_after_micros, description, request_id, created_at_ms)
                     VALUES ($1, 'hold', $2, $3, $4, $5, $6)",
                )
                .bind(user)
                .bind(-amount)
                .bind(balance)
                .bind($description)
                .bind($request_id)
                .bind($now)
                .execute(&mut *$tx)
                .await?;
                Ok(())
            }
        }
    }};
}

/// Ends a [`take_hold!`] hold inside transaction `$tx`: gives the `$held` amount back
/// (`release`, at most once per `$request_id`: a second release fails on the unique index),
/// charges `$cost` (`charge`, when positive) and writes usage record `$record` with it.
/// `$what` describes both ledger rows. Evaluates to `Result<(), sqlx::Error>`.
macro_rules! settle_hold {
    ($tx:expr, $user:expr, $held:expr, $cost:expr, $request_id:expr, $what:expr, $now:expr, $record:expr) => {{
        let (user, held, cost): (i64, i64, i64) = ($user, $held, $cost);
        let what: &str = $what;
        let after_release: i64 = sqlx::query_scalar(
            "UPDATE users SET balance_micros = balance_micros + $2, updated_at_ms = $3 WHERE id = $1 RETURNING balance_micros",
        )
        .bind(user)
        .bind(held)
        .bind($now)
        .fetch_one(&mut *$tx)
        .await?;
        sqlx::query(
            "INSERT INTO ledger_entries (user_id, kind, amount_micros, balance_after_micros, description, request_id, created_at_ms)
             VALUES ($1, 'release', $2, $3, $4, $5, $6)",
        )
        .bind(user)
        .bind(held)
        .bind(after_release)
        .bind(format!("{what} hold released"))
        .bind($request_id)
        .bind($now)
        .execute(&mut *$tx)
        .await?;
        if cost > 0 {
            sqlx::query(
                "INSERT INTO ledger_entries (user_id, kind, amount_micros, balance_after_micros, description, request_id, created_at_ms)
                 VALUES ($1, 'charge', $2, $3, $4, $5, $6)",
            )
            .bind(user)
            .bind(-cost)
            .bind(after_release - cost)
            .bind(what)
            .bind($request_id)
            .bind($now)
            .execute(&mut *$tx)
            .await?;
            sqlx::query("UPDATE users SET balance_micros = balance_micros - $2 WHERE id = $1")
                .bind(user)
                .bind(cost)
                .execute(&mut *$tx)
                .await?;
        }
        $crate::db::billing::bind_usage!(sqlx::query($crate::db::billing::usage_insert!()), $now, $record)
            .bind(cost)
            .execute(&mut *$tx)
            .await?;
        Ok::<(), sqlx::Error>(())
    }};
}

pub(crate) use {bind_usage, settle_hold, take_hold, usage_columns, usage_insert, usage_values};

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

/// PostgreSQL: the hold and its row in one statement. The outer `SELECT` reads the user as the
/// statement found it, to say why a hold was refused.
const RESERVE_SQL: &str = "
    WITH held AS (
        UPDATE users SET reserved_micros = reserved_micros + $2
        WHERE id = $1 AND status = 'active' AND balance_micros - reserved_micros >= $2
        RETURNING id
    ), reservation AS (
        INSERT INTO reservations (request_id, user_id, key_id, model, amount_micros, price_version, created_at_ms, expires_at_ms)
        SELECT $3, $1, $4, $5, $2, $6, $7, $8 FROM held
        RETURNING id
    )
    SELECT (SELECT id FROM reservation), status, balance_micros, reserved_micros FROM users WHERE id = $1";

/// PostgreSQL only: atomically holds `amount` of the user's spendable balance and records the
/// reservation, in one round trip; returns the reservation id. (On SQLite the in-memory
/// [`crate::billing::book::Book`] holds reservations.)
pub async fn reserve(db: &Db, r: &NewReservation<'_>) -> Result<i64, ReserveError> {
    let Db::Postgres(p) = db else {
        return Err(
            sqlx::Error::Configuration("database reservations are for PostgreSQL".into()).into(),
        );
    };
    let row: Option<(Option<i64>, String, i64, i64)> = sqlx::query_as(RESERVE_SQL)
        .bind(r.user_id)
        .bind(r.amount.0)
        .bind(r.request_id)
        .bind(r.key_id)
        .bind(r.model)
        .bind(r.price_version)
        .bind(now_ms())
        .bind(r.expires_at_ms)
        .fetch_optional(p)
        .await?;
    match row {
        Some((Some(id), ..)) => Ok(id),
        Some((None, status, b, res)) if status == "active" => Err(ReserveError::Insufficient {
            needed: r.amount,
            available: Micros(b - res),
        }),
        _ => Err(ReserveError::UserInactive),
    }
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
    pub paid_by: PaidBy,
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

/// PostgreSQL: a whole settlement in one statement, numbered as [`bind_usage!`] binds, with
/// the reservation id as `$26`. The user's row is locked first (`FOR UPDATE` reads the newest
/// committed balance), so the charge is decided from the balance it is taken from; a second
/// settlement of a request id fails on the unique indexes and changes nothing.
const SETTLE_SQL: &str = concat!(
    "
    WITH released AS (
        DELETE FROM reservations WHERE id = $26 RETURNING amount_micros
    ), account AS (
        SELECT balance_micros,
               reserved_micros - COALESCE((SELECT amount_micros FROM released), 0) AS reserved_after
        FROM users WHERE id = $2 AND ($26 IS NOT NULL OR $18 > 0)
        FOR UPDATE
    ), charge AS (
        SELECT balance_micros - c.charged AS balance_after, reserved_after, c.charged
        FROM account, LATERAL (SELECT LEAST($18, $17, GREATEST(balance_micros - reserved_after, 0)) AS charged) c
    ), debit AS (
        UPDATE users SET balance_micros = charge.balance_after, reserved_micros = charge.reserved_after,
                         updated_at_ms = $1
        FROM charge WHERE users.id = $2
    ), ledger AS (
        INSERT INTO ledger_entries (user_id, kind, amount_micros, balance_after_micros, description, request_id, created_at_ms)
        SELECT $2, 'charge', -charged, balance_after, $8 || ' ' || $5, $3, $1 FROM charge WHERE charged > 0
    ), usage AS (
        INSERT INTO usage_records (",
    usage_columns!(),
    ") SELECT ",
    usage_values!("d.charged"),
    " FROM (SELECT COALESCE((SELECT charged FROM charge), 0) AS charged) d
    )
    SELECT COALESCE((SELECT charged FROM charge), 0)"
);

/// PostgreSQL only: drops the reservation (if any), debits the cost (never more than the user
/// has), appends the ledger row and the usage record, in one statement and one round trip.
/// Idempotent on `request_id`. (On SQLite the in-memory book decides the charge and
/// [`settle_decided`] writes it.)
pub async fn settle(
    db: &Db,
    reservation_id: Option<i64>,
    rec: &UsageRecord,
) -> Result<Settled, sqlx::Error> {
    let Db::Postgres(p) = db else {
        return Err(sqlx::Error::Configuration(
            "database settlement is for PostgreSQL".into(),
        ));
    };
    let result: Result<i64, sqlx::Error> =
        bind_usage!(sqlx::query_scalar(SETTLE_SQL), now_ms(), rec)
            .bind(reservation_id)
            .fetch_one(p)
            .await;
    match result {
        Ok(charged) => Ok(Settled {
            charged: Micros(charged),
            first_time: true,
        }),
        Err(e) if super::is_unique_violation(&e) => Ok(Settled {
            charged: Micros::ZERO,
            first_time: false,
        }),
        Err(e) => Err(e),
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
    pub paid_by: String,
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
    UPDATE users SET balance_micros = balance_micros - $26, updated_at_ms = $1 WHERE id = $2;
    INSERT INTO ledger_entries (user_id, kind, amount_micros, balance_after_micros, description, request_id, created_at_ms)
        SELECT id, 'charge', -$26, balance_micros, $8 || ' ' || $5, $3, $1 FROM users WHERE id = $2 AND $26 > 0;
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
        query = bind_usage!(query, now, record).bind(charged.0);
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
        assert_eq!(SETTLE_PARAMS, 26);
        assert!(sql.contains("WHERE id = $2;") && sql.contains("WHERE id = $28;"));
        assert!(sql.contains("$52") && !sql.contains("$53"));
        assert_eq!(sql.matches("INSERT INTO usage_records").count(), 2);
    }
}
