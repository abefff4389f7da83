//! Settlement of one request: write the usage record and the charge (or the full release) with
//! retries, and keep the metrics in step. Called from the request's tracked task, never from a
//! response body, so a client hanging up cannot skip it.

use super::book::{Book, Held};
use crate::db::{self, Db, billing::UsageRecord};
use crate::metrics as m;
use std::time::Duration;

/// How often a settlement write is tried before it is counted as failed (the reservation then
/// stays until the reconciler releases it, so the user is never charged twice).
const ATTEMPTS: u32 = 5;

/// Settles `record` against `held`; returns the micro-credits charged.
pub async fn settle(
    book: &Book,
    db: &Db,
    held: Option<Held>,
    record: &UsageRecord,
) -> Option<db::billing::Settled> {
    let mut delay = Duration::from_millis(20);
    let mut attempt = 1;
    let result = loop {
        match book.settle(db, held, record).await {
            Ok(s) => break Some(s),
            Err(e) if attempt < ATTEMPTS => {
                book.hold_again(held);
                tracing::warn!(request_id = %record.request_id, error = %e, attempt, "settlement failed, retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => {
                tracing::error!(request_id = %record.request_id, error = %e, "settlement failed");
                metrics::counter!(m::SETTLEMENT_FAILURES).increment(1);
                break None;
            }
        }
    };
    if held.is_some() {
        metrics::gauge!(m::RESERVATIONS_HELD).decrement(1.0);
    }
    if let Some(s) = &result
        && s.first_time
    {
        metrics::counter!(m::SETTLEMENTS, "outcome" => record.status.as_str(), "usage_source" => record.usage_source.as_str())
            .increment(1);
        let counters = m::model_counters(&record.model);
        if s.charged.0 > 0 {
            counters.charged.increment(s.charged.0 as u64);
        }
        let u = &record.usage;
        let used = [
            u.prompt_tokens,
            u.completion_tokens,
            u.cached_tokens,
            u.reasoning_tokens,
        ];
        for (counter, n) in counters.tokens.iter().zip(used) {
            if n > 0 {
                counter.increment(n as u64);
            }
        }
    }
    result
}
