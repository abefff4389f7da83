//! One file per platform, each the same shape as `provider/*`: base URLs from config (tests
//! point them at local fakes), typed outcomes.

pub mod bluesky;
pub mod linkedin;
pub mod mastodon;
pub mod threads;
pub mod wechat;
pub mod x;

use serde_json::Value;

/// How a create call's request went, before what its answer says.
pub enum Answer {
    /// The platform answered: its status and JSON body (`null` when it is not JSON).
    Got(u16, Value),
    /// Refused before a byte went out: surely nothing was made.
    NotSent(String),
    /// It went out and no whole answer came back: the outcome is unknown.
    Lost(String),
}

/// Reads a sent create call's answer; `who` names the platform in the reasons.
pub async fn answer(sent: Result<reqwest::Response, reqwest::Error>, who: &str) -> Answer {
    let resp = match sent {
        Ok(r) => r,
        Err(e) if e.is_connect() => {
            return Answer::NotSent(format!("{who} could not be reached: {e}"));
        }
        Err(e) => return Answer::Lost(format!("no answer from {who} after sending: {e}")),
    };
    let status = resp.status().as_u16();
    let wait = (status == 429).then(|| wait_secs(resp.headers())).flatten();
    match resp.bytes().await {
        Ok(b) => {
            let mut v = serde_json::from_slice(&b).unwrap_or(Value::Null);
            if let Some(secs) = wait {
                if !v.is_object() {
                    v = serde_json::json!({"body": v});
                }
                v[RETRY_AFTER] = secs.into();
            }
            Answer::Got(status, v)
        }
        Err(e) => Answer::Lost(format!("{who}'s answer was cut off: {e}")),
    }
}

/// Where [`answer`] puts a 429's wait (seconds) in the body it returns.
const RETRY_AFTER: &str = "_tollgate_retry_after_s";

/// How long a 429 says to wait: `Retry-After` seconds, else the reset instant of X's
/// `x-rate-limit-reset` or the `RateLimit-Reset` of Bluesky (epoch seconds) from now.
fn wait_secs(h: &reqwest::header::HeaderMap) -> Option<u64> {
    let num = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Some(s) = num("retry-after") {
        return Some(s);
    }
    let now = (crate::clock::now_ms() / 1000).max(0) as u64;
    ["x-rate-limit-reset", "ratelimit-reset"]
        .iter()
        .find_map(|n| num(n))
        .map(|reset| {
            if reset > 1_000_000_000 {
                reset.saturating_sub(now)
            } else {
                reset
            }
        })
}

/// A rate-limit refusal's reason, with the wait the platform asked for when it named one
/// (read back by [`retry_after_ms`]).
pub fn limited(reason: String, v: &Value) -> String {
    match v[RETRY_AFTER].as_u64() {
        Some(s) => format!("{reason} (retry after {s} s)"),
        None => reason,
    }
}

/// The wait a [`limited`] reason carries, in milliseconds.
pub fn retry_after_ms(reason: &str) -> Option<i64> {
    let rest = &reason[reason.rfind("(retry after ")? + "(retry after ".len()..];
    let secs: i64 = rest.strip_suffix(" s)")?.parse().ok()?;
    Some(secs.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn a_429s_wait_is_read_and_carried_in_its_reason() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("120"));
        assert_eq!(wait_secs(&h), Some(120));
        let mut h = HeaderMap::new();
        let reset = (crate::clock::now_ms() / 1000 + 900).to_string();
        h.insert(
            "x-rate-limit-reset",
            HeaderValue::from_str(&reset).expect("header"),
        );
        let wait = wait_secs(&h).expect("a wait");
        assert!((899..=900).contains(&wait), "{wait}");
        assert_eq!(wait_secs(&HeaderMap::new()), None);
        let v = serde_json::json!({RETRY_AFTER: 120});
        let reason = limited("X's rate limit: Too Many Requests".into(), &v);
        assert_eq!(retry_after_ms(&reason), Some(120_000));
        assert_eq!(retry_after_ms("X's rate limit: nothing said"), None);
    }
}
