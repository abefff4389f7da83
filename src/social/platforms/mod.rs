//! One file per platform, each the same shape as `provider/*`: base URLs from config (tests
//! point them at local fakes), typed outcomes.

pub mod bluesky;
pub mod linkedin;
pub mod mastodon;
pub mod threads;
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
    match resp.bytes().await {
        Ok(b) => Answer::Got(status, serde_json::from_slice(&b).unwrap_or(Value::Null)),
        Err(e) => Answer::Lost(format!("{who}'s answer was cut off: {e}")),
    }
}
