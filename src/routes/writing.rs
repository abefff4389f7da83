//! The writing tools of seed 001, in the platform envelope: `GET /api/v1/writing/tools` lists
//! them; `POST /api/v1/writing/{tool_type}/generate` runs one (`studio::generate`) and answers
//! `{"creation_id","content","credits_used"}`, or with `"stream": true` an SSE stream: one
//! `{"type":"delta","content"}` event per piece of content, then `{"type":"done","creation_id",
//! "credits_used"}` (or `{"type":"error","code","message"}`), then `[DONE]`. A refusal before
//! any content (bad input, too little balance, a limit) is an ordinary error reply.

use super::admin::iso;
use super::extract::{PlatformUser, RequestId, parse_json};
use crate::billing::Micros;
use crate::db::{self, writing_tools::ToolRow};
use crate::error::ApiError;
use crate::state::AppState;
use crate::studio::generate::{self, Job, Progress};
use crate::studio::tools::{self, Field};
use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/writing/tools", get(list_tools))
        .route("/writing/{tool_type}/generate", post(generate_with))
}

/// The input fields of a tool, as its listing shows them.
pub fn fields_json(fields: &[Field]) -> Value {
    fields
        .iter()
        .map(|f| json!({"name": f.name, "label": f.label, "required": f.required}))
        .collect()
}

/// A tool as users see it.
pub fn tool_json(t: &ToolRow) -> Value {
    json!({
        "type": t.tool_type,
        "name": t.name,
        "description": t.description,
        "credits_cost": Micros(t.credits_cost_micros),
        "credits_cost_micros": t.credits_cost_micros,
        "default_model": t.model,
        "fields": fields_json(tools::fields_of(&t.tool_type)),
        "updated_at": iso(t.updated_at_ms),
    })
}

async fn list_tools(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rows = tools::in_seed_order(db::writing_tools::list(&state.db).await?);
    let items: Vec<Value> = rows
        .iter()
        .filter(|t| t.enabled != 0 && tools::is_writing(&t.tool_type))
        .map(tool_json)
        .collect();
    Ok(super::admin::ok(items))
}

/// The tool `tool_type` if it is offered, or a 404 listing the ones that are.
async fn offered_tool(state: &AppState, tool_type: &str) -> Result<ToolRow, ApiError> {
    if let Some(t) = db::writing_tools::get(&state.db, tool_type).await?
        && t.enabled != 0
        && tools::is_writing(&t.tool_type)
    {
        return Ok(t);
    }
    let offered: Vec<String> = tools::in_seed_order(db::writing_tools::list(&state.db).await?)
        .into_iter()
        .filter(|t| t.enabled != 0 && tools::is_writing(&t.tool_type))
        .map(|t| t.tool_type)
        .collect();
    Err(ApiError::NotFound(format!(
        "unknown writing tool {tool_type:?}; the tools are: {}",
        offered.join(", ")
    )))
}

async fn generate_with(
    State(state): State<AppState>,
    PlatformUser(caller, _): PlatformUser,
    RequestId(request_id): RequestId,
    Path(tool_type): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let tool = offered_tool(&state, &tool_type).await?;
    let body: Map<String, Value> = parse_json(&body)?;
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ApiError::InvalidInput(format!(
                "stream: must be true or false, got {other}"
            )));
        }
    };
    let inputs = tools::read_inputs(tools::fields_of(&tool.tool_type), &body)
        .map_err(ApiError::InvalidInput)?;
    let model =
        crate::studio::resolve_model(&state, body.get("model_id"), tool.model.as_deref()).await?;
    let title = match inputs.get("title") {
        "" => tool.name.clone(),
        t => t.to_owned(),
    };
    let (price, paid_by) = crate::studio::payment(&caller, Micros(tool.credits_cost_micros));
    let job = Job {
        tool_type: tool.tool_type.clone(),
        title,
        model,
        system: inputs.render(&tool.system_prompt),
        user: inputs.render(&tool.user_template),
        price,
        paid_by,
    };
    let progress = generate::start(&state, caller, request_id, job);
    if stream {
        streamed(progress).await
    } else {
        whole(progress).await
    }
}

/// A generation's answer in the platform envelope, with seed 001's message.
pub fn generated(data: Value) -> Response {
    Json(json!({"success": true, "code": 200, "message": "生成成功", "data": data})).into_response()
}

/// Waits for the end and answers it whole.
async fn whole(mut progress: mpsc::UnboundedReceiver<Progress>) -> Result<Response, ApiError> {
    while let Some(p) = progress.recv().await {
        match p {
            Progress::Delta(_) => {}
            Progress::Done(done) => {
                return Ok(generated(json!({
                    "creation_id": done.creation_id,
                    "content": done.content,
                    "credits_used": done.credits_used,
                    "credits_used_micros": done.credits_used.0,
                })));
            }
            Progress::Failed(e) => return Err(e),
        }
    }
    Err(ApiError::Internal(
        "the generation stopped without an answer".into(),
    ))
}

fn sse_event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// The SSE event that tells the client `p` (a delta, or the end: the creation or the error).
fn end_event(p: Progress) -> Bytes {
    match p {
        Progress::Delta(text) => sse_event(&json!({"type": "delta", "content": text})),
        Progress::Done(done) => sse_event(&json!({
            "type": "done",
            "creation_id": done.creation_id,
            "credits_used": done.credits_used,
            "credits_used_micros": done.credits_used.0,
        })),
        Progress::Failed(e) => {
            let (_, code, _) = e.parts();
            sse_event(&json!({"type": "error", "code": code, "message": e.to_string()}))
        }
    }
}

/// Waits for the first piece of content (a refusal before it is an ordinary error reply),
/// then streams the rest as it comes.
async fn streamed(mut progress: mpsc::UnboundedReceiver<Progress>) -> Result<Response, ApiError> {
    let first = match progress.recv().await {
        Some(Progress::Failed(e)) => return Err(e),
        Some(p) => p,
        None => {
            return Err(ApiError::Internal(
                "the generation stopped without an answer".into(),
            ));
        }
    };
    let events =
        futures_util::stream::unfold((Some(first), Some(progress)), |(pending, rx)| async move {
            if let Some(p) = pending {
                let last = !matches!(p, Progress::Delta(_));
                let next_rx = if last { None } else { rx };
                return Some((
                    Ok::<_, std::convert::Infallible>(end_event(p)),
                    (None, next_rx),
                ));
            }
            let mut rx = rx?;
            match rx.recv().await {
                Some(p) => {
                    let last = !matches!(p, Progress::Delta(_));
                    let event = end_event(p);
                    Some((Ok(event), (None, (!last).then_some(rx))))
                }
                None => None,
            }
        });
    let done = futures_util::stream::once(async { Ok(Bytes::from_static(b"data: [DONE]\n\n")) });
    use futures_util::StreamExt;
    let body = Body::from_stream(events.chain(done));
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}
