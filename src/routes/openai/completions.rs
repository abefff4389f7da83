//! `POST /v1/completions` (legacy text completions, JSON and SSE), metered by tokens like chat.

use super::chat::metered;
use crate::error::OpenAiError;
use crate::provider::Endpoint;
use crate::routes::extract::{OpenAiCaller, RequestId};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;

pub async fn create_completion(
    State(state): State<AppState>,
    OpenAiCaller(caller): OpenAiCaller,
    RequestId(request_id): RequestId,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    metered(&state, &caller, request_id, Endpoint::Completions, body).await
}
