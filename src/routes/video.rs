//! Video in the platform's shape (seed 001): `POST /api/v1/video/generate`
//! `{"script","duration","model_id"}` → `{"task_id","status":"processing"}` and
//! `GET /api/v1/video/{task_id}/status` → `{"task_id","status","video_url","credits_used"}`.
//! The task runs on the gateway's video machinery (`gateway::videos`: the price held at once,
//! followed by the poller on any instance, settled exactly once, refunded whole on failure),
//! priced at the model's `credits_cost` (its price per second × `duration` when it has none;
//! nothing for a member). When it finishes, Tollgate stores the file and saves a `video`
//! creation in the settlement that charges for it; `video_url` is a signed Tollgate URL that
//! plays in a `<video>`.

use super::extract::{PlatformUser, RequestId, parse_json};
use crate::billing::{Micros, PaidBy};
use crate::error::ApiError;
use crate::gateway::videos::{self, VideoRequest, parse_seconds};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value, json};

/// The longest script accepted, in characters.
const MAX_SCRIPT_CHARS: usize = 10_000;
/// The duration when a request names none, in seconds.
const DEFAULT_SECONDS: i64 = 10;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/video/generate", post(generate))
        .route("/video/{task_id}/status", get(status))
}

/// An optional string field of at most 100 characters.
fn short_text(body: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= 100 => Ok(Some(s.trim().to_owned())),
        Some(other) => Err(ApiError::InvalidInput(format!(
            "{key}: must be a short string, got {other}"
        ))),
    }
}

fn script_of(body: &Map<String, Value>) -> Result<String, ApiError> {
    let script = match body.get("script") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(ApiError::InvalidInput("script: required".into()));
        }
        Some(other) => {
            return Err(ApiError::InvalidInput(format!(
                "script: must be a string, got {other}"
            )));
        }
    };
    let chars = script.chars().count();
    if chars > MAX_SCRIPT_CHARS {
        return Err(ApiError::InvalidInput(format!(
            "script: {chars} characters, at most {MAX_SCRIPT_CHARS} are accepted"
        )));
    }
    Ok(script)
}

async fn generate(
    State(state): State<AppState>,
    PlatformUser(caller, _): PlatformUser,
    RequestId(request_id): RequestId,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: Map<String, Value> = parse_json(&body)?;
    let script = script_of(&body)?;
    let seconds = parse_seconds("duration", body.get("duration"), DEFAULT_SECONDS)?;
    let aspect_ratio = short_text(&body, "aspect_ratio")?;
    let size = short_text(&body, "size")?;
    // Without a model_id: the first model priced per video second.
    let default = state
        .catalog
        .models()
        .iter()
        .find(|m| m.media.video_second.is_some())
        .map(|m| m.name.clone());
    let model =
        crate::studio::resolve_model(&state, body.get("model_id"), default.as_deref()).await?;
    let routed = state
        .catalog
        .model(&model)
        .map_err(|_| ApiError::InvalidInput(format!("model_id: {model:?} is not available")))?;
    let credits_cost = routed.price.request_micros;
    if credits_cost == 0 && routed.media.video_second.is_none() {
        return Err(ApiError::InvalidInput(format!(
            "model_id: the model {model:?} has no video price (set its credits_cost or a price per video second)"
        )));
    }
    let (price, paid_by) = crate::studio::payment(&caller, Micros(credits_cost));
    let flat_price = match paid_by {
        PaidBy::Membership => Some(Micros::ZERO),
        PaidBy::Credits if credits_cost > 0 => Some(price),
        // Metered by the seconds the provider delivers.
        PaidBy::Credits => None,
    };
    let req = VideoRequest {
        model,
        prompt: script,
        seconds,
        size,
        aspect_ratio,
        flat_price,
        keep_as: Some(paid_by),
    };
    let (submitted, _) = videos::submit(&state, &caller, &request_id, req).await;
    let task = submitted.map_err(|e| {
        let e = ApiError::from(e);
        crate::studio::count_outcome("video".to_owned(), "video", Err(&e));
        e
    })?;
    Ok(Json(
        json!({"success": true, "code": 200, "message": "任务已创建",
        "data": videos::platform_json(&task, None)}),
    )
    .into_response())
}

async fn status(
    State(state): State<AppState>,
    PlatformUser(caller, _): PlatformUser,
    Path(task_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let task = videos::own_task(&state, &caller, &task_id).await?;
    let url = task
        .file_id
        .as_deref()
        .filter(|_| task.status == "completed")
        .map(|id| crate::files::download_url(&state.secrets, &headers, id));
    Ok(super::admin::ok(videos::platform_json(&task, url)).into_response())
}
