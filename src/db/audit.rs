//! Read-only checks of the money invariants, for `tollgate ledger verify`. Each query is one
//! statement, so it sees one consistent snapshot even while the gateway keeps settling.

use super::{Db, read_pool};

/// Rows listed per check at most; a count of all of them is kept.
pub const LIMIT: i64 = 1000;

/// Totals of what was checked.
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct Totals {
    pub users: i64,
    pub ledger_entries: i64,
    pub usage_records: i64,
    pub reservations: i64,
}

pub async fn totals(db: &Db) -> Result<Totals, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM users) AS users,
                (SELECT COUNT(*) FROM ledger_entries) AS ledger_entries,
                (SELECT COUNT(*) FROM usage_records) AS usage_records,
                (SELECT COUNT(*) FROM reservations) AS reservations",
    )
    .fetch_one(p)
    .await)
}

/// Users whose balance is not the sum of their ledger entries, or is below zero:
/// `(user, balance, ledger sum)`.
pub async fn balance_mismatches(db: &Db) -> Result<Vec<(i64, i64, i64)>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as(
        "SELECT id, balance_micros, total FROM (
             SELECT u.id, u.balance_micros,
                    CAST(COALESCE((SELECT SUM(l.amount_micros) FROM ledger_entries l WHERE l.user_id = u.id), 0) AS BIGINT) AS total
             FROM users u) t
         WHERE balance_micros <> total OR balance_micros < 0
         ORDER BY id LIMIT $1",
    )
    .bind(LIMIT)
    .fetch_all(p)
    .await)
}

/// Ledger rows whose `balance_after` is not the running sum of the user's entries up to them:
/// `(entry, user, balance_after, running sum)`.
pub async fn broken_chains(db: &Db) -> Result<Vec<(i64, i64, i64, i64)>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as(
        "SELECT id, user_id, balance_after_micros, running FROM (
             SELECT id, user_id, balance_after_micros,
                    CAST(SUM(amount_micros) OVER (PARTITION BY user_id ORDER BY id) AS BIGINT) AS running
             FROM ledger_entries) t
         WHERE balance_after_micros <> running
         ORDER BY id LIMIT $1",
    )
    .bind(LIMIT)
    .fetch_all(p)
    .await)
}

/// Usage records whose cost is not matched by exactly one ledger debit of that amount (a
/// record that cost nothing must have none): `(request id, user, cost, debits, debited)`.
pub async fn unmatched_charges(db: &Db) -> Result<Vec<(String, i64, i64, i64, i64)>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as(
        "SELECT u.request_id, u.user_id, u.cost_micros,
                COUNT(l.id) AS debits,
                CAST(COALESCE(-SUM(l.amount_micros), 0) AS BIGINT) AS debited
         FROM usage_records u
         LEFT JOIN ledger_entries l
           ON l.request_id = u.request_id AND l.kind = 'charge' AND l.user_id = u.user_id
         GROUP BY u.id, u.request_id, u.user_id, u.cost_micros
         HAVING COUNT(l.id) <> (CASE WHEN u.cost_micros > 0 THEN 1 ELSE 0 END)
             OR COALESCE(-SUM(l.amount_micros), 0) <> u.cost_micros
         ORDER BY u.id LIMIT $1",
    )
    .bind(LIMIT)
    .fetch_all(p)
    .await)
}

/// Charges in the ledger that no usage record explains: `(entry, user, request id)`.
pub async fn orphan_debits(db: &Db) -> Result<Vec<(i64, i64, Option<String>)>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as(
        "SELECT l.id, l.user_id, l.request_id FROM ledger_entries l
         WHERE l.kind = 'charge'
           AND NOT EXISTS (SELECT 1 FROM usage_records u WHERE u.request_id = l.request_id AND u.user_id = l.user_id)
         ORDER BY l.id LIMIT $1",
    )
    .bind(LIMIT)
    .fetch_all(p)
    .await)
}

/// Reservations past their expiry: `(request id, user, amount, expired at)`.
pub async fn expired_reservations(
    db: &Db,
    now_ms: i64,
) -> Result<Vec<(String, i64, i64, i64)>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as(
        "SELECT request_id, user_id, amount_micros, expires_at_ms FROM reservations
         WHERE expires_at_ms < $1 ORDER BY expires_at_ms LIMIT $2",
    )
    .bind(now_ms)
    .bind(LIMIT)
    .fetch_all(p)
    .await)
}

/// Users whose `reserved_micros` is not the sum of their reservation rows, or is negative:
/// `(user, reserved, sum of rows)`.
pub async fn reserved_mismatches(db: &Db) -> Result<Vec<(i64, i64, i64)>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as(
        "SELECT id, reserved_micros, held FROM (
             SELECT u.id, u.reserved_micros,
                    CAST(COALESCE((SELECT SUM(r.amount_micros) FROM reservations r WHERE r.user_id = u.id), 0) AS BIGINT) AS held
             FROM users u) t
         WHERE reserved_micros <> held OR reserved_micros < 0
         ORDER BY id LIMIT $1",
    )
    .bind(LIMIT)
    .fetch_all(p)
    .await)
}
