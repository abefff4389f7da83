//! One deck: the model writes the slides as JSON (through the metering door at the deck's flat
//! price, charged only for an answer that parses as a deck), one repair attempt when it does
//! not, then Tollgate writes a real .pptx (`pptx`), stores it (`files`) and saves it as a `ppt`
//! creation. Run on the task tracker, so a hang-up after paying still gets the deck stored.

use super::generate::{PaidBy, save};
use super::pptx::{Deck, Slide};
use crate::billing::{Micros, Pricing, UsageStatus};
use crate::db::creations::NewCreation;
use crate::error::ApiError;
use crate::gateway::Reply;
use crate::gateway::auth::Caller;
use crate::gateway::chat::{FeatureCall, chat_as};
use crate::state::AppState;
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::oneshot;
use tracing::Instrument;

/// The usage records' endpoint of a deck's model calls.
pub const FEATURE: &str = "ppt/generate";
/// The content type of a .pptx.
pub const PPTX_TYPE: &str =
    "application/vnd.openxmlformats-officedocument.presentationml.presentation";
const MAX_SLIDES: usize = 60;
const MAX_BULLETS: usize = 12;

#[derive(Debug, Clone)]
pub struct PptJob {
    pub model: String,
    pub system: String,
    pub user: String,
    pub price: Micros,
    pub paid_by: PaidBy,
}

#[derive(Debug, Clone)]
pub struct PptDone {
    pub creation_id: i64,
    pub file_id: String,
    pub slides: usize,
    pub credits_used: Micros,
}

/// Starts `job` on the task tracker; the receiver may be dropped without stopping it.
pub fn start(
    state: &AppState,
    caller: Caller,
    request_id: Arc<str>,
    job: PptJob,
) -> oneshot::Receiver<Result<PptDone, ApiError>> {
    let (tx, rx) = oneshot::channel();
    let state_for_task = state.clone();
    let work = async move {
        let state = state_for_task;
        let outcome = run(&state, &caller, &request_id, &job).await;
        super::count_outcome(
            "ppt".to_owned(),
            "ppt",
            outcome.as_ref().map(|done| done.credits_used),
        );
        let _ = tx.send(outcome);
    };
    state.tasks.spawn(work.in_current_span());
    rx
}

/// The text of a chat completion's first choice.
fn answer_text(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_owned)
}

/// A deck read from the model's answer (a JSON object, perhaps inside a Markdown code fence).
pub fn deck_of(text: &str) -> Result<Deck, String> {
    let trimmed = text.trim();
    let json_text = match (trimmed.find('{'), trimmed.rfind('}')) {
        (Some(a), Some(b)) if a < b => &trimmed[a..=b],
        _ => return Err("the answer holds no JSON object".into()),
    };
    let v: Value = serde_json::from_str(json_text).map_err(|e| format!("not valid JSON: {e}"))?;
    let text_of = |v: &Value| v.as_str().map(|s| s.trim().to_owned()).unwrap_or_default();
    let title = text_of(&v["title"]);
    if title.is_empty() {
        return Err("the deck has no title".into());
    }
    let slides = v["slides"]
        .as_array()
        .ok_or("the deck has no slides list")?;
    if slides.is_empty() || slides.len() > MAX_SLIDES {
        return Err(format!(
            "a deck has 1 to {MAX_SLIDES} slides, this one {}",
            slides.len()
        ));
    }
    let mut out = Vec::with_capacity(slides.len());
    for (i, s) in slides.iter().enumerate() {
        let slide_title = text_of(&s["title"]);
        if slide_title.is_empty() {
            return Err(format!("slide {} has no title", i + 1));
        }
        let bullets: Vec<String> = match &s["bullets"] {
            Value::Array(items) => items
                .iter()
                .map(text_of)
                .filter(|b| !b.is_empty())
                .collect(),
            Value::Null => Vec::new(),
            _ => return Err(format!("slide {}: bullets must be a list", i + 1)),
        };
        if bullets.len() > MAX_BULLETS {
            return Err(format!(
                "slide {} has more than {MAX_BULLETS} bullets",
                i + 1
            ));
        }
        out.push(Slide {
            title: slide_title,
            bullets,
            notes: text_of(&s["notes"]),
        });
    }
    Ok(Deck {
        title,
        subtitle: text_of(&v["subtitle"]),
        slides: out,
    })
}

/// Whether a whole chat completion answer is a usable deck (the metering door's check: an
/// answer that is not is not charged).
fn usable(body: &[u8]) -> bool {
    answer_text(body).is_some_and(|t| deck_of(&t).is_ok())
}

/// One model call for the deck; the deck, or the answer's text and why it is not one.
async fn attempt(
    state: &AppState,
    caller: &Caller,
    request_id: &str,
    job: &PptJob,
    messages: Value,
) -> Result<Result<(Deck, Micros), (String, String)>, ApiError> {
    let body = json!({"model": job.model, "messages": messages});
    let call = FeatureCall {
        caller,
        request_id: Arc::from(request_id),
        feature: FEATURE,
        pricing: Pricing::Flat(job.price),
        body: Bytes::from(body.to_string()),
        accept: Some(usable),
        paid_by: job.paid_by,
    };
    let (answer, _) = chat_as(state, call).await;
    let answer = answer.map_err(ApiError::from)?;
    let Reply::Full { status, body, .. } = answer.reply else {
        return Err(ApiError::Internal(
            "a deck's model call answered a stream".into(),
        ));
    };
    let charged = answer
        .settled
        .await
        .map_err(|_| ApiError::AiServiceFailed("the generation ended without settling".into()))?;
    if charged.status != UsageStatus::Ok || !(200..300).contains(&status) {
        return Err(if charged.status == UsageStatus::UpstreamRejected {
            ApiError::GenerationFailed(format!(
                "the model refused this request (status {status}); nothing was charged"
            ))
        } else {
            ApiError::AiServiceFailed(format!(
                "the AI service failed ({}); nothing was charged",
                charged.status.as_str()
            ))
        });
    }
    let text = answer_text(&body).unwrap_or_default();
    Ok(match deck_of(&text) {
        Ok(deck) => Ok((deck, charged.charged)),
        Err(why) => Err((text, why)),
    })
}

async fn run(
    state: &AppState,
    caller: &Caller,
    request_id: &str,
    job: &PptJob,
) -> Result<PptDone, ApiError> {
    let first = json!([
        {"role": "system", "content": job.system},
        {"role": "user", "content": job.user},
    ]);
    let (deck, charged) = match attempt(state, caller, request_id, job, first).await? {
        Ok(done) => done,
        Err((text, why)) => {
            tracing::info!(request_id, why = %why, "a deck answer was not usable; asking once to repair it");
            let repair = json!([
                {"role": "system", "content": job.system},
                {"role": "user", "content": job.user},
                {"role": "assistant", "content": text},
                {"role": "user", "content": format!(
                    "上面的回答无法使用（{why}）。请只输出符合要求格式的JSON对象，不要任何其他文字。")},
            ]);
            let retry_id = format!("{request_id}-repair");
            match attempt(state, caller, &retry_id, job, repair).await? {
                Ok(done) => done,
                Err((_, why)) => {
                    return Err(ApiError::GenerationFailed(format!(
                        "the model did not write a usable deck ({why}); nothing was charged"
                    )));
                }
            }
        }
    };
    let lost = |what: String| {
        tracing::error!(request_id, error = %what, "a paid deck could not be kept");
        ApiError::Internal(format!("{what} (request id {request_id})"))
    };
    let bytes =
        super::pptx::write(&deck).map_err(|e| lost(format!("writing the deck failed: {e}")))?;
    let user_id = caller.user_id.unwrap_or_default();
    let file_id = crate::files::store(&state.db, user_id, "ppt", PPTX_TYPE, &bytes)
        .await
        .map_err(|e| lost(format!("storing the deck failed: {e}")))?;
    let outline: Vec<Value> = deck
        .slides
        .iter()
        .map(|s| json!({"title": s.title, "bullets": s.bullets, "notes": s.notes}))
        .collect();
    let content =
        json!({"title": deck.title, "subtitle": deck.subtitle, "slides": outline}).to_string();
    let creation = NewCreation {
        user_id,
        kind: "ppt",
        tool_type: Some("ppt_deck"),
        title: &deck.title,
        content: &content,
        model: Some(&job.model),
        request_id: Some(request_id),
        credits_micros: charged.0,
        upstream_cost_micros: 0,
        paid_by: job.paid_by.as_str(),
        file_id: Some(&file_id),
    };
    let saved = save(state, &creation)
        .await
        .map_err(|e| lost(format!("saving the creation failed: {e}")))?;
    Ok(PptDone {
        creation_id: saved.id,
        file_id,
        slides: deck.slides.len() + 1,
        credits_used: charged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deck_is_read_from_fenced_json_and_malformed_ones_are_named() {
        let text = "```json\n{\"title\":\"发布会\",\"subtitle\":\"2026\",\"slides\":[{\"title\":\"产品\",\"bullets\":[\"快\"],\"notes\":\"n\"}]}\n```";
        let deck = deck_of(text).expect("a deck");
        assert_eq!((deck.title.as_str(), deck.slides.len()), ("发布会", 1));
        assert!(deck_of("no json here").is_err());
        assert!(deck_of("{\"title\":\"t\",\"slides\":[]}").is_err_and(|e| e.contains("1 to 60")));
        assert!(
            deck_of("{\"title\":\"t\",\"slides\":[{\"bullets\":[]}]}")
                .is_err_and(|e| e.contains("slide 1 has no title"))
        );
        assert!(
            deck_of("{\"title\": \"t\", \"slides\": [")
                .is_err_and(|e| e.contains("not valid JSON") || e.contains("no JSON"))
        );
    }
}
