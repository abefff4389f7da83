//! Rate limits: requests and tokens per sliding window, and concurrent requests, each counted in
//! a named bucket (`k:12:r` = key 12's requests). One check covers every rule a request is
//! subject to and is all-or-nothing: a request refused by one rule is counted by none.
//!
//! The counters live in this process ([`local`]) or, when Redis is configured, in Redis
//! ([`shared`], one atomic script), so several instances enforce one limit. When Redis cannot be
//! reached, `limits.on_redis_error` decides: `open` lets the local counters stand in, `closed`
//! refuses. Windows are exact sliding logs: at most `limit` units in any `window_ms`.

pub mod local;
pub mod shared;

use crate::config::FailMode;
use crate::metrics as m;
use std::sync::Arc;
use std::time::Duration;

/// What a rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Requests,
    Tokens,
    /// Requests in flight (no window: a slot is held until the request ends).
    Concurrency,
}

/// One limit a request is subject to.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The counter's name, unique per subject and kind.
    pub bucket: String,
    pub kind: Kind,
    /// Units allowed per window (or slots, for concurrency); always > 0.
    pub limit: u64,
    pub window_ms: u64,
    /// Units this request takes (0: only look).
    pub cost: u64,
}

/// A rule's state after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub limit: u64,
    pub remaining: u64,
    /// Until the window is back to its full limit.
    pub reset_ms: u64,
}

/// Why a check refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Index of the first rule that did not fit.
    pub rule: usize,
    /// When the request would fit; `None` if it never can (cost above the limit).
    pub retry_after_ms: Option<u64>,
}

/// The result of one check, from either backend.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub refused: Option<Refusal>,
    /// One per rule, in the rules' order.
    pub statuses: Vec<Status>,
}

/// Which counters admitted a request (so its slot is returned to the same place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Local,
    Shared,
}

/// The limiter could not decide (Redis unreachable and `on_redis_error = "closed"`).
#[derive(Debug, thiserror::Error)]
#[error("the rate limiter is unavailable: {0}")]
pub struct Unavailable(pub String);

/// The limiter: local counters, and Redis when configured.
pub struct Limiter {
    local: local::Local,
    shared: Option<shared::Shared>,
    on_error: FailMode,
    timeout: Duration,
}

impl Limiter {
    pub fn new(shared: Option<shared::Shared>, on_error: FailMode, timeout: Duration) -> Limiter {
        Limiter {
            local: local::Local::default(),
            shared,
            on_error,
            timeout,
        }
    }

    /// Whether counters are shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Checks `rules` for request `id`, taking their cost if every one fits. An admitted request
    /// holding concurrency or tokens gets a [`Permit`]; drop it when the request ends.
    pub async fn check(
        self: &Arc<Self>,
        id: &str,
        rules: Vec<Rule>,
    ) -> Result<Decision, Unavailable> {
        if rules.is_empty() {
            return Ok(Decision {
                outcome: Outcome {
                    refused: None,
                    statuses: Vec::new(),
                },
                permit: None,
                rules: Arc::from(rules),
            });
        }
        let (outcome, backend) = match &self.shared {
            None => (
                self.local.check(id, &rules, local::now_ms()),
                Backend::Local,
            ),
            Some(shared) => {
                let result = tokio::time::timeout(self.timeout, shared.check(id, &rules)).await;
                let error = match result {
                    Ok(Ok(outcome)) => {
                        shared.hold(id, &rules, &outcome);
                        return Ok(self.decided(id, rules, outcome, Backend::Shared));
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!(
                        "no answer from Redis within {} ms",
                        self.timeout.as_millis()
                    ),
                };
                metrics::counter!(m::LIMITER_ERRORS).increment(1);
                tracing::warn!(error = %error, mode = ?self.on_error, "rate limiter: Redis unreachable");
                match self.on_error {
                    FailMode::Closed => return Err(Unavailable(error)),
                    FailMode::Open => (
                        self.local.check(id, &rules, local::now_ms()),
                        Backend::Local,
                    ),
                }
            }
        };
        Ok(self.decided(id, rules, outcome, backend))
    }

    fn decided(
        self: &Arc<Self>,
        id: &str,
        rules: Vec<Rule>,
        outcome: Outcome,
        backend: Backend,
    ) -> Decision {
        let outcome_label = if outcome.refused.is_some() {
            "refused"
        } else {
            "admitted"
        };
        metrics::counter!(m::LIMIT_DECISIONS, "outcome" => outcome_label).increment(1);
        let rules: Arc<[Rule]> = Arc::from(rules);
        let holds = outcome.refused.is_none()
            && rules.iter().any(|r| r.cost > 0 && r.kind != Kind::Requests);
        let permit = holds.then(|| Permit {
            limiter: Arc::clone(self),
            id: Arc::from(id),
            rules: Arc::clone(&rules),
            backend,
        });
        Decision {
            outcome,
            permit,
            rules,
        }
    }

    /// Returns concurrency slots (called when a permit drops).
    fn release(&self, id: &str, rules: &[Rule], backend: Backend) {
        match (backend, &self.shared) {
            (Backend::Shared, Some(shared)) => shared.release(id),
            _ => self.local.release(id, rules),
        }
    }

    /// Replaces a request's token estimate by what it actually used.
    async fn correct(&self, id: &str, rules: &[Rule], actual: u64, backend: Backend) {
        match (backend, &self.shared) {
            (Backend::Shared, Some(shared)) => {
                let corrected =
                    tokio::time::timeout(self.timeout, shared.correct(id, rules, actual));
                if corrected.await.is_err() {
                    tracing::warn!(
                        "rate limiter: token correction timed out (the estimate stays counted)"
                    );
                }
            }
            _ => self.local.correct(id, rules, actual),
        }
    }

    /// Periodic housekeeping: drops empty local windows, renews this instance's shared
    /// concurrency slots.
    pub async fn maintain(&self) {
        self.local.sweep(local::now_ms());
        if let Some(shared) = &self.shared {
            shared.renew().await;
        }
    }
}

/// A check's result: the outcome, and a permit while the request holds something.
pub struct Decision {
    pub outcome: Outcome,
    pub permit: Option<Permit>,
    pub rules: Arc<[Rule]>,
}

impl Decision {
    /// The rule that refused, with when to retry.
    pub fn refusal(&self) -> Option<(&Rule, Option<u64>)> {
        self.outcome
            .refused
            .and_then(|r| self.rules.get(r.rule).map(|rule| (rule, r.retry_after_ms)))
    }

    /// The tightest status among rules of `kind` (the one with the fewest units left).
    pub fn tightest(&self, kind: Kind) -> Option<Status> {
        self.rules
            .iter()
            .zip(&self.outcome.statuses)
            .filter(|(r, _)| r.kind == kind)
            .map(|(_, s)| *s)
            .min_by_key(|s| (s.remaining, std::cmp::Reverse(s.reset_ms)))
    }
}

/// Concurrency slots and token estimates an admitted request holds. Dropping it returns the
/// slots; [`Permit::settle_tokens`] corrects the token estimate.
pub struct Permit {
    limiter: Arc<Limiter>,
    id: Arc<str>,
    rules: Arc<[Rule]>,
    backend: Backend,
}

impl Permit {
    /// Replaces the token estimate counted at admission by `actual` tokens.
    pub async fn settle_tokens(&self, actual: u64) {
        self.limiter
            .correct(&self.id, &self.rules, actual, self.backend)
            .await;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.release(&self.id, &self.rules, self.backend);
    }
}

/// A duration the way OpenAI's `x-ratelimit-reset-*` headers write it: `250ms`, `1.5s`, `6m0s`.
pub fn reset_text(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let minutes = ms / 60_000;
    let rest = ms % 60_000;
    let secs = rest / 1000;
    let frac = rest % 1000;
    let seconds = if frac == 0 {
        format!("{secs}s")
    } else {
        let f = format!("{frac:03}");
        format!("{secs}.{}s", f.trim_end_matches('0'))
    };
    if minutes > 0 {
        format!("{minutes}m{seconds}")
    } else {
        seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_text_matches_openai_style() {
        assert_eq!(reset_text(0), "0ms");
        assert_eq!(reset_text(250), "250ms");
        assert_eq!(reset_text(1000), "1s");
        assert_eq!(reset_text(1500), "1.5s");
        assert_eq!(reset_text(60_000), "1m0s");
        assert_eq!(reset_text(360_000), "6m0s");
        assert_eq!(reset_text(61_250), "1m1.25s");
    }
}
