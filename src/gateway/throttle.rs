//! Rate limits on the OpenAI surface: which rules a request is subject to (per key, per user,
//! per key and model), the check, and the `x-ratelimit-*` headers every response carries.
//!
//! Requests and tokens are counted over `limits.window_ms` (a minute by default). Tokens are
//! the reservation's estimate (prompt + the most the answer may take) at admission, corrected
//! to the actual usage at settlement.

use super::auth::Caller;
use super::catalog::Model;
use crate::config::LimitsConfig;
use crate::error::OpenAiError;
use crate::limits::{Decision, Kind, Permit, Rule, Status, reset_text};
use crate::state::AppState;
use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// The rate-limit headers of one response.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateHeaders {
    requests: Option<Status>,
    tokens: Option<Status>,
}

/// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, by kind.
const HEADER_NAMES: [[HeaderName; 3]; 2] = [
    [
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ],
    [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ],
];

impl RateHeaders {
    /// Adds `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (names, status) in HEADER_NAMES.iter().zip([self.requests, self.tokens]) {
            let Some(s) = status else { continue };
            let [limit, remaining, reset] = names;
            headers.reserve(3);
            headers.insert(limit.clone(), HeaderValue::from(s.limit));
            headers.insert(remaining.clone(), HeaderValue::from(s.remaining));
            if let Ok(v) = HeaderValue::try_from(reset_text(s.reset_ms)) {
                headers.insert(reset.clone(), v);
            }
        }
    }
}

/// An admitted request: its headers and, for a generation, the slots and tokens it holds.
pub struct Admitted {
    pub headers: RateHeaders,
    pub permit: Option<Permit>,
}

/// A refused request: the error to send, with the headers.
pub struct Refused {
    pub headers: RateHeaders,
    pub error: OpenAiError,
}

fn positive(v: Option<i64>, default: u64) -> u64 {
    v.map_or(default, |n| n.max(0) as u64)
}

/// Every limit `caller` is subject to for one request: `tokens` estimated, a concurrency slot
/// when `slot` (generations; listing models takes none).
pub fn rules(
    cfg: &LimitsConfig,
    caller: &Caller,
    model: Option<&Model>,
    tokens: u64,
    slot: bool,
) -> Vec<Rule> {
    let window_ms = cfg.window_ms;
    let mut rules = Vec::with_capacity(6);
    let mut push = |bucket: String, kind: Kind, limit: u64, cost: u64| {
        if limit > 0 {
            rules.push(Rule {
                bucket,
                kind,
                limit,
                window_ms,
                cost,
            });
        }
    };
    if let Some(k) = caller.key_id {
        let own = caller.limits.as_deref();
        let rpm = positive(own.and_then(|l| l.rpm), cfg.key_rpm);
        let tpm = positive(own.and_then(|l| l.tpm), cfg.key_tpm);
        let conc = positive(own.and_then(|l| l.max_concurrency), cfg.key_max_concurrency);
        push(format!("k:{k}:r"), Kind::Requests, rpm, 1);
        push(format!("k:{k}:t"), Kind::Tokens, tpm, tokens);
        if slot {
            push(format!("k:{k}:c"), Kind::Concurrency, conc, 1);
        }
    }
    if let Some(u) = caller.user_id {
        push(format!("u:{u}:r"), Kind::Requests, cfg.user_rpm, 1);
        push(format!("u:{u}:t"), Kind::Tokens, cfg.user_tpm, tokens);
        if slot {
            push(
                format!("u:{u}:c"),
                Kind::Concurrency,
                cfg.user_max_concurrency,
                1,
            );
        }
    }
    if let Some(m) = model {
        let subject = match (caller.key_id, caller.user_id) {
            (Some(k), _) => Some(format!("k{k}")),
            (None, Some(u)) => Some(format!("u{u}")),
            (None, None) => None,
        };
        if let Some(s) = subject {
            push(
                format!("m:{}:{s}:r", m.id),
                Kind::Requests,
                positive(m.rpm, 0),
                1,
            );
            push(
                format!("m:{}:{s}:t", m.id),
                Kind::Tokens,
                positive(m.tpm, 0),
                tokens,
            );
        }
    }
    rules
}

fn headers_of(decision: &Decision) -> RateHeaders {
    RateHeaders {
        requests: decision.tightest(Kind::Requests),
        tokens: decision.tightest(Kind::Tokens),
    }
}

/// Checks a request against its limits.
pub async fn admit(
    state: &AppState,
    caller: &Caller,
    request_id: &str,
    model: Option<&Model>,
    tokens: u64,
    slot: bool,
) -> Result<Admitted, Refused> {
    let rules = rules(&state.config.limits, caller, model, tokens, slot);
    let mut decision = match state.limits.check(request_id, rules).await {
        Ok(d) => d,
        Err(e) => {
            return Err(Refused {
                headers: RateHeaders::default(),
                error: OpenAiError::LimiterUnavailable {
                    message: e.to_string(),
                },
            });
        }
    };
    let headers = headers_of(&decision);
    if let Some((rule, retry_after_ms)) = decision.refusal() {
        let (kind, message) = match rule.kind {
            Kind::Tokens if retry_after_ms.is_none() => (
                "tokens",
                format!(
                    "request too large: it may use {} tokens (prompt plus max_tokens), above the limit of {} tokens per {} s; lower max_tokens or shorten the prompt",
                    rule.cost,
                    rule.limit,
                    rule.window_ms / 1000
                ),
            ),
            Kind::Tokens => (
                "tokens",
                format!(
                    "rate limit reached for tokens: limit {} per {} s, this request needs {}",
                    rule.limit,
                    rule.window_ms / 1000,
                    rule.cost
                ),
            ),
            Kind::Requests => (
                "requests",
                format!(
                    "rate limit reached for requests: limit {} per {} s",
                    rule.limit,
                    rule.window_ms / 1000
                ),
            ),
            Kind::Concurrency => (
                "requests",
                format!(
                    "too many concurrent requests: limit {} in flight",
                    rule.limit
                ),
            ),
        };
        return Err(Refused {
            headers,
            error: OpenAiError::RateLimited {
                message,
                kind,
                retry_after_ms,
            },
        });
    }
    Ok(Admitted {
        headers,
        permit: decision.permit.take(),
    })
}
