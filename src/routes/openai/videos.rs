//! Video tasks: OpenAI's `POST /v1/videos` (multipart form, as the SDK sends it, or JSON),
//! `GET /v1/videos` (the caller's, OpenAI's list shape), `GET /v1/videos/{id}`,
//! `GET /v1/videos/{id}/content` (the file, streamed), and the
//! aggregator's `POST /videos/generations` (JSON: `duration` default 10 s, `aspect_ratio`
//! default 16:9) with `GET /videos/generations/{id}`.

use crate::error::OpenAiError;
use crate::gateway::auth::Caller;
use crate::gateway::videos::{self, VideoRequest, parse_seconds};
use crate::routes::extract::{OpenAiCaller, RequestId};
use crate::state::AppState;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, OriginalUri, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The model used when an aggregator request names none (as that API documents).
const AGGREGATOR_DEFAULT_MODEL: &str = "gen-2";
/// OpenAI's default model, duration and size.
const OPENAI_DEFAULT_MODEL: &str = "sora-2";
const OPENAI_DEFAULT_SECONDS: i64 = 4;
const OPENAI_DEFAULT_SIZE: &str = "720x1280";

fn invalid(param: &'static str, message: impl Into<String>) -> OpenAiError {
    OpenAiError::InvalidRequest {
        message: message.into(),
        param: Some(param),
    }
}

/// The request's fields, from a multipart form or a JSON object.
async fn fields(state: &AppState, req: Request) -> Result<Map<String, Value>, OpenAiError> {
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("multipart/form-data"));
    if is_multipart {
        let mut form =
            Multipart::from_request(req, state)
                .await
                .map_err(|e| OpenAiError::InvalidRequest {
                    message: e.body_text(),
                    param: None,
                })?;
        let mut map = Map::new();
        while let Some(field) =
            form.next_field()
                .await
                .map_err(|e| OpenAiError::InvalidRequest {
                    message: e.body_text(),
                    param: None,
                })?
        {
            let Some(name) = field.name().map(str::to_owned) else {
                continue;
            };
            if field.file_name().is_some() {
                // A reference image: not forwarded by the task adapter; noted, not refused.
                map.insert(name, Value::Bool(true));
                continue;
            }
            let text = field
                .text()
                .await
                .map_err(|e| OpenAiError::InvalidRequest {
                    message: e.body_text(),
                    param: None,
                })?;
            map.insert(name, Value::String(text));
        }
        return Ok(map);
    }
    let body = Bytes::from_request(req, state)
        .await
        .map_err(|e| OpenAiError::InvalidRequest {
            message: e.body_text(),
            param: None,
        })?;
    serde_json::from_slice(&body).map_err(|e| OpenAiError::InvalidRequest {
        message: format!("request body is not a valid JSON object: {e}"),
        param: None,
    })
}

fn text(map: &Map<String, Value>, key: &'static str) -> Result<Option<String>, OpenAiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) if s.len() <= 20_000 => Ok(Some(s.clone())),
        Some(_) => Err(invalid(key, format!("'{key}' must be a string"))),
    }
}

fn prompt(map: &Map<String, Value>) -> Result<String, OpenAiError> {
    text(map, "prompt")?.ok_or_else(|| invalid("prompt", "'prompt' is a required property"))
}

async fn submit(
    state: &AppState,
    caller: &Caller,
    request_id: &str,
    req: VideoRequest,
    shape: impl Fn(&crate::db::videos::VideoTask) -> Value,
) -> Response {
    let (result, headers) = videos::submit(state, caller, request_id, req).await;
    super::with_rate_headers(result.map(|task| Json(shape(&task))), headers)
}

/// `POST /v1/videos`.
pub async fn create_video(
    State(state): State<AppState>,
    OpenAiCaller(caller): OpenAiCaller,
    RequestId(request_id): RequestId,
    req: Request,
) -> Result<Response, OpenAiError> {
    let map = fields(&state, req).await?;
    let size = text(&map, "size")?.unwrap_or_else(|| OPENAI_DEFAULT_SIZE.into());
    let valid_size = size
        .split_once('x')
        .is_some_and(|(w, h)| w.parse::<u32>().is_ok() && h.parse::<u32>().is_ok());
    if !valid_size {
        return Err(invalid(
            "size",
            format!("'size' must be WIDTHxHEIGHT such as 1280x720, got {size:?}"),
        ));
    }
    let req = VideoRequest {
        model: text(&map, "model")?.unwrap_or_else(|| OPENAI_DEFAULT_MODEL.into()),
        prompt: prompt(&map)?,
        seconds: parse_seconds("seconds", map.get("seconds"), OPENAI_DEFAULT_SECONDS)?,
        size: Some(size),
        aspect_ratio: None,
        flat_price: None,
        keep_as: None,
    };
    Ok(submit(&state, &caller, &request_id, req, videos::openai_json).await)
}

/// `POST /videos/generations` (aggregator shape).
pub async fn create_generation(
    State(state): State<AppState>,
    OpenAiCaller(caller): OpenAiCaller,
    RequestId(request_id): RequestId,
    OriginalUri(uri): OriginalUri,
    req: Request,
) -> Result<Response, OpenAiError> {
    let root = api_root(&state, req.headers(), &uri);
    let map = fields(&state, req).await?;
    let aspect_ratio = text(&map, "aspect_ratio")?.unwrap_or_else(|| "16:9".into());
    let valid_ratio = aspect_ratio.split_once(':').is_some_and(|(w, h)| {
        w.parse::<u32>().is_ok_and(|w| w > 0) && h.parse::<u32>().is_ok_and(|h| h > 0)
    });
    if !valid_ratio {
        return Err(invalid(
            "aspect_ratio",
            format!("'aspect_ratio' must be W:H such as 16:9, got {aspect_ratio:?}"),
        ));
    }
    let req = VideoRequest {
        model: text(&map, "model")?.unwrap_or_else(|| AGGREGATOR_DEFAULT_MODEL.into()),
        prompt: prompt(&map)?,
        seconds: parse_seconds("duration", map.get("duration"), 10)?,
        size: text(&map, "size")?,
        aspect_ratio: Some(aspect_ratio),
        flat_price: None,
        keep_as: None,
    };
    Ok(submit(&state, &caller, &request_id, req, |t| {
        videos::aggregator_json(t, &root)
    })
    .await)
}

/// `GET /v1/videos/{id}`.
pub async fn retrieve_video(
    State(state): State<AppState>,
    OpenAiCaller(caller): OpenAiCaller,
    Path(id): Path<String>,
) -> Result<Json<Value>, OpenAiError> {
    let task = videos::own_task(&state, &caller, &id).await?;
    Ok(Json(videos::openai_json(&task)))
}

/// `GET /videos/generations/{id}`.
pub async fn retrieve_generation(
    State(state): State<AppState>,
    OpenAiCaller(caller): OpenAiCaller,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
) -> Result<Json<Value>, OpenAiError> {
    let task = videos::own_task(&state, &caller, &id).await?;
    let root = api_root(&state, &headers, &uri);
    Ok(Json(videos::aggregator_json(&task, &root)))
}

/// The Tollgate root the client called, absolute when the request names its host
/// (`http://host:port/api/v1` or `…/v1`; the scheme from `X-Forwarded-Proto` behind a trusted
/// proxy), so that a URL in an answer leads back to this gateway.
fn api_root(state: &AppState, headers: &HeaderMap, uri: &axum::http::Uri) -> String {
    let prefix = if uri.path().starts_with("/api/v1/") {
        "/api/v1"
    } else {
        "/v1"
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or(v).trim().to_owned())
            .filter(|v| !v.is_empty() && !v.contains(['/', ' ', '\\']))
    };
    let trusted = state.config.limits.trust_forwarded_for;
    let host = trusted
        .then(|| header("x-forwarded-host"))
        .flatten()
        .or_else(|| header("host"));
    let scheme = trusted
        .then(|| header("x-forwarded-proto"))
        .flatten()
        .filter(|p| p == "https" || p == "http")
        .unwrap_or_else(|| "http".to_owned());
    match host {
        Some(host) => format!("{scheme}://{host}{prefix}"),
        None => prefix.to_owned(),
    }
}

/// Query of `GET /v1/videos` (OpenAI's: `after`, `limit` 1-100 (default 20), `order`).
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<i64>,
    order: Option<String>,
}

/// `GET /v1/videos`: the caller's videos, newest first, in OpenAI's list shape.
pub async fn list_videos(
    State(state): State<AppState>,
    OpenAiCaller(caller): OpenAiCaller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, OpenAiError> {
    let Query(q) = query.map_err(|e| OpenAiError::InvalidRequest {
        message: e.body_text(),
        param: None,
    })?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(invalid(
            "limit",
            format!("'limit' must be 1 to 100, got {limit}"),
        ));
    }
    let ascending = match q.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(other) => {
            return Err(invalid(
                "order",
                format!("'order' must be \"asc\" or \"desc\", got {other:?}"),
            ));
        }
    };
    let page = videos::list_own(&state, &caller, q.after.as_deref(), limit, ascending).await?;
    Ok(Json(page))
}

/// `GET /v1/videos/{id}/content`: the file, streamed as it arrives.
pub async fn video_content(
    State(state): State<AppState>,
    OpenAiCaller(caller): OpenAiCaller,
    Path(id): Path<String>,
) -> Result<Response, OpenAiError> {
    let task = videos::own_task(&state, &caller, &id).await?;
    let file = videos::content(&state, &task).await?;
    let content_type = file.content_type.unwrap_or_else(|| "video/mp4".to_owned());
    let body = Body::from_stream(file.body.map(|c| c.map_err(std::io::Error::other)));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .map_err(|e| OpenAiError::internal(&id, e))
}
