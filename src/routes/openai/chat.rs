//! `POST /v1/chat/completions` (JSON and SSE), and the shared handler of every token-metered
//! endpoint.

use crate::error::OpenAiError;
use crate::gateway::auth::Caller;
use crate::gateway::{self, Reply};
use crate::provider::Endpoint;
use crate::routes::extract::{OpenAiCaller, RequestId};
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub async fn create_chat_completion(
    State(state): State<AppState>,
    OpenAiCaller(caller): OpenAiCaller,
    RequestId(request_id): RequestId,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    metered(&state, &caller, request_id, Endpoint::Chat, body).await
}

/// Runs a request to a token-metered endpoint and shapes the reply, rate-limit headers included.
pub async fn metered(
    state: &AppState,
    caller: &Caller,
    request_id: Arc<str>,
    endpoint: Endpoint,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let body = body_bytes(state, body)?;
    let (result, headers) =
        gateway::chat::complete(state, caller, request_id, endpoint, body).await;
    Ok(super::with_rate_headers(result.map(into_response), headers))
}

/// The request body, or the client error for one that is too large or unreadable.
pub fn body_bytes(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, OpenAiError> {
    body.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            OpenAiError::BodyTooLarge {
                limit: state.config.server.max_body_bytes,
            }
        }
        other => OpenAiError::InvalidRequest {
            message: other.body_text(),
            param: None,
        },
    })
}

/// Turns a pipeline reply into HTTP: a full body, or an unbuffered event stream.
pub fn into_response(reply: Reply) -> Response {
    match reply {
        Reply::Full {
            status,
            content_type,
            body,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            let content_type = content_type
                .and_then(|c| HeaderValue::from_str(&c).ok())
                .unwrap_or(HeaderValue::from_static("application/json"));
            (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        Reply::Stream { mut events } => {
            let stream = futures_util::stream::poll_fn(move |cx| {
                events
                    .poll_recv(cx)
                    .map(|o| o.map(Ok::<Bytes, std::convert::Infallible>))
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
                .header(header::CACHE_CONTROL, "no-cache")
                .header("x-accel-buffering", "no")
                .body(Body::from_stream(stream))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
    }
}
