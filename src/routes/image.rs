//! `POST /api/v1/image/generate` (seed 001): `{"prompt","size","model_id"}` →
//! `{"image_url","credits_used","creation_id","file_id"}` in the platform envelope. The image
//! runs through the gateway's image pipeline at the model's `credits_cost` (its image price for
//! the size when it has no `credits_cost`; nothing for a member), is stored by Tollgate and
//! saved as a creation; `image_url` is a signed, expiring Tollgate URL.

use super::extract::{PlatformUser, RequestId, parse_json};
use crate::billing::Micros;
use crate::error::ApiError;
use crate::state::AppState;
use crate::studio::image::{self, ImageJob};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use serde_json::{Map, Value, json};

/// The longest prompt accepted, in characters.
const MAX_PROMPT_CHARS: usize = 4_000;

pub fn router() -> Router<AppState> {
    Router::new().route("/image/generate", post(generate))
}

/// A `WIDTHxHEIGHT` size, or a 400 naming it.
fn size_of(body: &Map<String, Value>) -> Result<String, ApiError> {
    match body.get("size") {
        None | Some(Value::Null) => Ok(crate::gateway::images::DEFAULT_SIZE.to_owned()),
        Some(Value::String(s)) => {
            let ok = s.split_once('x').is_some_and(|(w, h)| {
                [w, h]
                    .iter()
                    .all(|n| n.parse::<u32>().is_ok_and(|n| (1..=8192).contains(&n)))
            });
            if ok {
                Ok(s.clone())
            } else {
                Err(ApiError::InvalidInput(format!(
                    "size: {s:?} is not WIDTHxHEIGHT (like 1024x1024)"
                )))
            }
        }
        Some(other) => Err(ApiError::InvalidInput(format!(
            "size: must be a string like 1024x1024, got {other}"
        ))),
    }
}

async fn generate(
    State(state): State<AppState>,
    PlatformUser(caller, _): PlatformUser,
    RequestId(request_id): RequestId,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: Map<String, Value> = parse_json(&body)?;
    let prompt = match body.get("prompt") {
        Some(Value::String(p)) if !p.trim().is_empty() => p.trim().to_owned(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(ApiError::InvalidInput("prompt: required".into()));
        }
        Some(other) => {
            return Err(ApiError::InvalidInput(format!(
                "prompt: must be a string, got {other}"
            )));
        }
    };
    let chars = prompt.chars().count();
    if chars > MAX_PROMPT_CHARS {
        return Err(ApiError::InvalidInput(format!(
            "prompt: {chars} characters, at most {MAX_PROMPT_CHARS} are accepted"
        )));
    }
    let size = size_of(&body)?;
    let default = crate::gateway::images::DEFAULT_MODEL;
    let default = state.catalog.model(default).is_ok().then_some(default);
    let model = crate::studio::resolve_model(&state, body.get("model_id"), default).await?;
    let routed = state
        .catalog
        .model(&model)
        .map_err(|_| ApiError::InvalidInput(format!("model_id: {model:?} is not available")))?;
    let price = match routed.price.request_micros {
        p if p > 0 => p,
        _ => routed.media.image(&size, "standard").ok_or_else(|| {
            ApiError::InvalidInput(format!(
                "model_id: the model {model:?} has no image price (set its credits_cost)"
            ))
        })?,
    };
    let (price, paid_by) = crate::studio::payment(&caller, Micros(price));
    let job = ImageJob {
        prompt,
        size,
        model,
        price,
        paid_by,
    };
    let done = image::start(&state, caller, request_id, job)
        .await
        .map_err(|_| {
            ApiError::Internal("the image generation stopped without an answer".into())
        })??;
    let url = crate::files::download_url(&state.secrets, &headers, &done.file_id);
    Ok(super::writing::generated(json!({
        "image_url": url,
        "credits_used": done.credits_used,
        "credits_used_micros": done.credits_used.0,
        "creation_id": done.creation_id,
        "file_id": done.file_id,
    })))
}
