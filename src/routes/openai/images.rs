//! `POST /v1/images/generations` (also `/api/v1/images/generations`).

use super::chat::{body_bytes, into_response};
use crate::error::OpenAiError;
use crate::gateway;
use crate::routes::extract::{OpenAiCaller, RequestId};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;

pub async fn create_image(
    State(state): State<AppState>,
    OpenAiCaller(caller): OpenAiCaller,
    RequestId(request_id): RequestId,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let body = body_bytes(&state, body)?;
    let (result, headers) = gateway::images::generate(&state, &caller, request_id, body).await;
    Ok(super::with_rate_headers(result.map(into_response), headers))
}
