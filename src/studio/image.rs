//! One image generation in the platform's shape: the gateway's image pipeline in process
//! (`gateway::images::generate_as`, the same limits, failover, reservation and settlement), at
//! the model's flat price (nothing for a member), then the image stored by Tollgate
//! (`files`) and saved as a creation. It runs on the task tracker, so a client that hangs up
//! after paying still gets its image stored.

use super::generate::{PaidBy, save};
use crate::billing::Micros;
use crate::db::creations::NewCreation;
use crate::error::ApiError;
use crate::gateway::Reply;
use crate::gateway::auth::Caller;
use crate::state::AppState;
use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::Instrument;

/// An image generation, ready to run.
#[derive(Debug, Clone)]
pub struct ImageJob {
    pub prompt: String,
    pub size: String,
    pub model: String,
    pub price: Micros,
    pub paid_by: PaidBy,
}

/// A stored image.
#[derive(Debug, Clone)]
pub struct ImageDone {
    pub creation_id: i64,
    pub file_id: String,
    pub credits_used: Micros,
}

/// Starts `job` on the task tracker; the receiver may be dropped without stopping it.
pub fn start(
    state: &AppState,
    caller: Caller,
    request_id: Arc<str>,
    job: ImageJob,
) -> oneshot::Receiver<Result<ImageDone, ApiError>> {
    let (tx, rx) = oneshot::channel();
    let state_for_task = state.clone();
    let work = async move {
        let state = state_for_task;
        let outcome = run(&state, &caller, request_id, &job).await;
        super::count_outcome(
            "image".to_owned(),
            "image",
            outcome.as_ref().map(|done| done.credits_used),
        );
        let _ = tx.send(outcome);
    };
    state.tasks.spawn(work.in_current_span());
    rx
}

async fn run(
    state: &AppState,
    caller: &Caller,
    request_id: Arc<str>,
    job: &ImageJob,
) -> Result<ImageDone, ApiError> {
    let body = json!({"model": job.model, "prompt": job.prompt, "size": job.size, "n": 1,
                      "response_format": "b64_json"});
    let (answer, _) = crate::gateway::images::generate_as(
        state,
        caller,
        Arc::clone(&request_id),
        Bytes::from(body.to_string()),
        job.price,
        job.paid_by,
    )
    .await;
    let Reply::Full { status, body, .. } = answer.map_err(ApiError::from)? else {
        return Err(ApiError::Internal(
            "the image pipeline answered a stream".into(),
        ));
    };
    if !(200..300).contains(&status) {
        return Err(ApiError::GenerationFailed(format!(
            "the model refused this image (upstream status {status}); nothing was charged"
        )));
    }
    let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let first = &answer["data"][0];
    // The pipeline charged for the image it returned; from here on the image must be kept.
    let (data, fetched_type) = if let Some(b64) = first["b64_json"].as_str() {
        let data = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| lost(&request_id, format!("the image was not valid base64: {e}")))?;
        (data, None)
    } else if let Some(url) = first["url"].as_str() {
        fetch(state, url)
            .await
            .map_err(|e| lost(&request_id, format!("fetching the image failed: {e}")))?
    } else {
        return Err(ApiError::GenerationFailed(
            "the model returned no image; nothing was charged".into(),
        ));
    };
    let content_type = crate::files::sniff_image(&data)
        .map(str::to_owned)
        .or(fetched_type)
        .unwrap_or_else(|| "image/png".to_owned());
    let user_id = caller.user_id.unwrap_or_default();
    let file_id = crate::files::store(&state.db, user_id, "image", &content_type, &data)
        .await
        .map_err(|e| lost(&request_id, format!("storing the image failed: {e}")))?;
    let title: String = job.prompt.chars().take(100).collect();
    let creation = NewCreation {
        user_id,
        kind: "image",
        tool_type: None,
        title: &title,
        content: &job.prompt,
        model: Some(&job.model),
        request_id: Some(&request_id),
        credits_micros: job.price.0,
        upstream_cost_micros: 0,
        paid_by: job.paid_by.as_str(),
        file_id: Some(&file_id),
    };
    let saved = save(state, &creation)
        .await
        .map_err(|e| lost(&request_id, format!("saving the creation failed: {e}")))?;
    Ok(ImageDone {
        creation_id: saved.id,
        file_id,
        credits_used: job.price,
    })
}

/// A failure after the image was paid for: logged loudly, with the request id to settle it by.
fn lost(request_id: &str, what: String) -> ApiError {
    tracing::error!(request_id, error = %what, "a paid image could not be kept");
    ApiError::AiServiceFailed(format!("{what} (request id {request_id})"))
}

/// Downloads an upstream's image URL (bounded in time and size); its bytes and content type.
async fn fetch(state: &AppState, url: &str) -> Result<(Vec<u8>, Option<String>), String> {
    let mut response = state
        .http
        .get(url)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .filter(|t| t.starts_with("image/"))
        .map(str::to_owned);
    let mut data = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if data.len() + chunk.len() > crate::files::MAX_FILE_BYTES {
            return Err(format!(
                "the image is larger than {} bytes",
                crate::files::MAX_FILE_BYTES
            ));
        }
        data.extend_from_slice(&chunk);
    }
    Ok((data, content_type))
}
