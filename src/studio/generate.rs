//! One writing generation, start to end, on the task tracker: the chat completion through the
//! metering door at the tool's flat price (nothing for a member), its content gathered as it
//! streams (and handed to whoever still listens), then the creation saved. It runs to its end
//! whether or not the client is still there, so a hang-up mid-stream loses neither the work nor
//! the charge, and the charge is made once, by the settlement of that one call.

use crate::billing::{Micros, Pricing, UsageStatus};
use crate::db::{self, creations::NewCreation};
use crate::error::ApiError;
use crate::gateway::Reply;
use crate::gateway::auth::Caller;
use crate::gateway::chat::{FeatureCall, chat_as};
use crate::state::AppState;
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::Instrument;

/// The usage record's endpoint and the ledger row's description of a writing generation.
pub const FEATURE: &str = "writing/generate";

pub use crate::billing::PaidBy;

/// A generation, ready to run.
#[derive(Debug, Clone)]
pub struct Job {
    pub tool_type: String,
    /// The creation's title.
    pub title: String,
    /// The public model name it runs on.
    pub model: String,
    pub system: String,
    pub user: String,
    /// What it costs if it delivers (zero for a member).
    pub price: Micros,
    pub paid_by: PaidBy,
}

/// What a running generation reports, in order: deltas of content, then one end.
#[derive(Debug)]
pub enum Progress {
    Delta(String),
    Done(Done),
    Failed(ApiError),
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Done {
    pub creation_id: i64,
    pub content: String,
    pub credits_used: Micros,
}

/// Starts `job` for `caller` on the task tracker; its progress arrives on the receiver (which
/// may be dropped at any time without stopping it).
pub fn start(
    state: &AppState,
    caller: Caller,
    request_id: Arc<str>,
    job: Job,
) -> mpsc::UnboundedReceiver<Progress> {
    let (tx, rx) = mpsc::unbounded_channel();
    let state_for_task = state.clone();
    let work = async move {
        let state = state_for_task;
        let outcome = run(&state, &caller, request_id, &job, &tx).await;
        super::count_outcome(
            job.tool_type.clone(),
            "writing",
            outcome.as_ref().map(|done| done.credits_used),
        );
        let _ = tx.send(match outcome {
            Ok(done) => Progress::Done(done),
            Err(e) => Progress::Failed(e),
        });
    };
    state.tasks.spawn(work.in_current_span());
    rx
}

async fn run(
    state: &AppState,
    caller: &Caller,
    request_id: Arc<str>,
    job: &Job,
    tx: &mpsc::UnboundedSender<Progress>,
) -> Result<Done, ApiError> {
    let body = json!({
        "model": job.model,
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [
            {"role": "system", "content": job.system},
            {"role": "user", "content": job.user},
        ],
    });
    let call = FeatureCall {
        caller,
        request_id: Arc::clone(&request_id),
        feature: FEATURE,
        pricing: Pricing::Flat(job.price),
        body: Bytes::from(body.to_string()),
        accept: None,
        paid_by: job.paid_by,
    };
    let (answer, _) = chat_as(state, call).await;
    let answer = answer.map_err(ApiError::from)?;
    let mut content = String::new();
    let mut upstream_error: Option<String> = None;
    match answer.reply {
        Reply::Full { body, .. } => match whole_answer(&body) {
            Ok(text) => {
                content.push_str(&text);
                let _ = tx.send(Progress::Delta(text));
            }
            Err(e) => upstream_error = Some(e),
        },
        Reply::Stream { mut events } => {
            while let Some(event) = events.recv().await {
                for piece in deltas(&event) {
                    match piece {
                        Ok(text) => {
                            content.push_str(&text);
                            let _ = tx.send(Progress::Delta(text));
                        }
                        Err(e) => upstream_error = Some(e),
                    }
                }
            }
        }
    }
    let charged = answer
        .settled
        .await
        .map_err(|_| ApiError::AiServiceFailed("the generation ended without settling".into()))?;
    let why = upstream_error.unwrap_or_else(|| charged.status.as_str().to_owned());
    match charged.status {
        UsageStatus::Ok => {}
        UsageStatus::UpstreamTimeout => {
            return Err(ApiError::AiServiceFailed(format!(
                "the AI service did not answer in time; nothing was charged ({why})"
            )));
        }
        UsageStatus::UpstreamRejected => {
            return Err(ApiError::GenerationFailed(format!(
                "the model refused this request; nothing was charged ({why})"
            )));
        }
        _ => {
            return Err(ApiError::AiServiceFailed(format!(
                "the AI service failed; nothing was charged ({why})"
            )));
        }
    }
    if content.trim().is_empty() {
        if charged.charged.0 > 0 {
            tracing::error!(request_id = %request_id, charged = %charged.charged, "an empty generation was charged");
        }
        return Err(ApiError::GenerationFailed(
            "the model returned no content; nothing was charged".into(),
        ));
    }
    let upstream_cost = state
        .catalog
        .model(&job.model)
        .map(|m| m.price.cost(&charged.usage))
        .unwrap_or(Micros::ZERO);
    let creation = NewCreation {
        user_id: caller.user_id.unwrap_or_default(),
        kind: "writing",
        tool_type: Some(&job.tool_type),
        title: &job.title,
        content: &content,
        model: Some(&job.model),
        request_id: Some(&request_id),
        credits_micros: charged.charged.0,
        upstream_cost_micros: upstream_cost.0,
        paid_by: job.paid_by.as_str(),
        file_id: None,
    };
    let saved = save(state, &creation).await.map_err(|e| {
        tracing::error!(request_id = %request_id, error = %e, "a paid generation could not be saved");
        ApiError::Internal(format!("saving the creation failed: {e}"))
    })?;
    Ok(Done {
        creation_id: saved.id,
        content,
        credits_used: charged.charged,
    })
}

/// Writes the creation, retrying a few times (the generation is paid for; losing it is worse
/// than waiting). A retry of a write that did land returns that row (`request_id` is unique).
pub(crate) async fn save(
    state: &AppState,
    c: &NewCreation<'_>,
) -> Result<db::creations::Creation, sqlx::Error> {
    let mut delay = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match db::creations::insert(&state.db, c).await {
            Ok(row) => return Ok(row),
            Err(e) if attempt < 5 => {
                tracing::warn!(error = %e, attempt, "saving a creation failed, retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The content deltas of one SSE event of a chat completion stream (first choice), or the
/// message of an error event.
fn deltas(event: &[u8]) -> Vec<Result<String, String>> {
    let text = String::from_utf8_lossy(event);
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data = data.trim();
        if data.is_empty() || data == "[DONE]" {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        if let Some(e) = v.get("error") {
            out.push(Err(error_message(e)));
            continue;
        }
        let Some(choices) = v["choices"].as_array() else {
            continue;
        };
        for c in choices {
            if c["index"].as_i64().unwrap_or(0) != 0 {
                continue;
            }
            if let Some(piece) = c["delta"]["content"].as_str()
                && !piece.is_empty()
            {
                out.push(Ok(piece.to_owned()));
            }
        }
    }
    out
}

/// The first choice's content of a whole (non-streamed) chat completion.
fn whole_answer(body: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("unreadable answer: {e}"))?;
    if let Some(e) = v.get("error") {
        return Err(error_message(e));
    }
    Ok(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

fn error_message(e: &Value) -> String {
    e["message"]
        .as_str()
        .map_or_else(|| e.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_are_read_from_the_first_choice_and_errors_are_named() {
        let event = br#"data: {"choices":[{"index":0,"delta":{"content":"Hi"}},{"index":1,"delta":{"content":"x"}}]}"#;
        assert_eq!(deltas(event), vec![Ok("Hi".to_owned())]);
        assert!(deltas(b"data: [DONE]").is_empty());
        assert_eq!(
            deltas(br#"data: {"error":{"message":"overloaded"}}"#),
            vec![Err("overloaded".to_owned())]
        );
        assert_eq!(
            whole_answer(br#"{"choices":[{"message":{"content":"whole"}}]}"#),
            Ok("whole".to_owned())
        );
    }
}
