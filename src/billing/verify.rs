//! `tollgate ledger verify`: the money invariants, checked against the database.
//!
//! For every user the balance equals the sum of the ledger and is not negative, and each ledger
//! row's `balance_after` is the running sum; every usage record that cost something has exactly
//! one ledger debit of that amount (and one that cost nothing has none), and every debit has its
//! usage record; no reservation is past its expiry, and `users.reserved_micros` is the sum of the
//! user's reservations; and no serving run shut down with a request it admitted but never
//! settled (each run records, after its drain, how many reservations it still held).

use super::Micros;
use crate::db::{self, Db, audit};

/// What a verification found.
#[derive(Debug, Default)]
pub struct Report {
    pub totals: audit::Totals,
    /// One line per violated invariant instance; empty when the books are right.
    pub problems: Vec<String>,
    /// Serving runs with no recorded clean stop: running now, or killed (a killed run's requests
    /// in flight were not charged; that is not a fault of the books).
    pub runs_without_stop: i64,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Notes that a check listed only its first [`audit::LIMIT`] rows.
fn note_limit(problems: &mut Vec<String>, rows: usize, what: &str) {
    if rows as i64 >= audit::LIMIT {
        problems.push(format!(
            "… only the first {} {what} are listed",
            audit::LIMIT
        ));
    }
}

/// Runs every check.
pub async fn verify(db: &Db) -> Result<Report, sqlx::Error> {
    let mut p = Vec::new();
    let totals = audit::totals(db).await?;

    let rows = audit::balance_mismatches(db).await?;
    for (user, balance, sum) in &rows {
        if balance != sum {
            p.push(format!(
                "user {user}: balance {} but the ledger sums to {} (difference {})",
                Micros(*balance),
                Micros(*sum),
                Micros(balance - sum)
            ));
        }
        if *balance < 0 {
            p.push(format!(
                "user {user}: balance {} is below zero",
                Micros(*balance)
            ));
        }
    }
    note_limit(&mut p, rows.len(), "users with a wrong balance");

    let rows = audit::broken_chains(db).await?;
    for (entry, user, after, running) in &rows {
        p.push(format!(
            "ledger entry {entry} (user {user}): balance_after {} but the entries up to it sum to {}",
            Micros(*after),
            Micros(*running)
        ));
    }
    note_limit(
        &mut p,
        rows.len(),
        "ledger entries with a wrong balance_after",
    );

    let rows = audit::unmatched_charges(db).await?;
    for (request_id, user, cost, debits, debited) in &rows {
        p.push(format!(
            "request {request_id} (user {user}): usage record cost {} but {debits} ledger debit(s) of {} in total",
            Micros(*cost),
            Micros(*debited)
        ));
    }
    note_limit(&mut p, rows.len(), "usage records without their debit");

    let rows = audit::orphan_debits(db).await?;
    for (entry, user, request_id) in &rows {
        p.push(format!(
            "ledger entry {entry} (user {user}): a charge for request {} that has no usage record",
            request_id.as_deref().unwrap_or("(none)")
        ));
    }
    note_limit(&mut p, rows.len(), "charges without a usage record");

    let rows = audit::expired_reservations(db, crate::clock::now_ms()).await?;
    for (request_id, user, amount, expired_at) in &rows {
        p.push(format!(
            "reservation for request {request_id} (user {user}, {}) expired at {expired_at} ms and is still held",
            Micros(*amount)
        ));
    }
    note_limit(&mut p, rows.len(), "expired reservations");

    let rows = audit::reserved_mismatches(db).await?;
    for (user, reserved, held) in &rows {
        p.push(format!(
            "user {user}: reserved {} but reservations hold {}",
            Micros(*reserved),
            Micros(*held)
        ));
    }
    note_limit(&mut p, rows.len(), "users with a wrong reserved amount");

    let rows = db::runs::with_unsettled(db).await?;
    for (run, started_at, unsettled) in &rows {
        p.push(format!(
            "run {run} (started at {started_at} ms) shut down with {unsettled} admitted request(s) never settled"
        ));
    }
    note_limit(&mut p, rows.len(), "runs with unsettled requests");
    let runs_without_stop = db::runs::without_stop(db).await?;

    Ok(Report {
        totals,
        problems: p,
        runs_without_stop,
    })
}
