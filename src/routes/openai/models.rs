//! `GET /v1/models` and `GET /v1/models/{id}` in OpenAI's list shape, with Tollgate's prices
//! added to each item. A key with an allowed-model list sees only those models. Each call counts
//! as one request against the caller's request limits.

use crate::billing::Micros;
use crate::error::OpenAiError;
use crate::gateway::auth::Caller;
use crate::gateway::catalog::Model;
use crate::gateway::throttle;
use crate::routes::extract::{OpenAiCaller, RequestId};
use crate::state::AppState;
use axum::Json;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;

fn model_object(m: &Model) -> Value {
    json!({
        "id": m.name,
        "object": "model",
        "created": m.created_at_ms / 1000,
        "owned_by": "tollgate",
        "pricing": {
            "unit": "credits per 1M tokens",
            "input": Micros(m.price.input_micros_per_mtok),
            "output": Micros(m.price.output_micros_per_mtok),
            "cached_input": Micros(m.price.cached_input_micros_per_mtok),
            "version": m.price.version,
        },
    })
}

/// Counts the call as a request and answers with `body` and the rate-limit headers.
async fn limited(
    state: &AppState,
    caller: &Caller,
    request_id: &str,
    body: impl FnOnce() -> Result<Value, OpenAiError>,
) -> Response {
    let (result, headers) = match throttle::admit(state, caller, request_id, None, 0, false).await {
        Ok(a) => (body(), a.headers),
        Err(refused) => (Err(refused.error), refused.headers),
    };
    super::with_rate_headers(result.map(Json), headers)
}

pub async fn list_models(
    State(state): State<AppState>,
    OpenAiCaller(caller): OpenAiCaller,
    RequestId(request_id): RequestId,
    OriginalUri(uri): OriginalUri,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    // On the platform path an admin gets the registry (seed 001's shape).
    if caller.is_admin && uri.path().starts_with("/api/v1/") {
        return crate::routes::admin::registry::list(&state, &query)
            .await
            .into_response();
    }
    limited(&state, &caller, &request_id, || {
        let data: Vec<Value> = state
            .catalog
            .models()
            .iter()
            .filter(|m| caller.may_use(&m.name))
            .map(|m| model_object(m))
            .collect();
        Ok(json!({"object": "list", "data": data}))
    })
    .await
}

pub async fn retrieve_model(
    State(state): State<AppState>,
    OpenAiCaller(caller): OpenAiCaller,
    RequestId(request_id): RequestId,
    Path(id): Path<String>,
) -> Response {
    limited(&state, &caller, &request_id, || {
        let not_found = || OpenAiError::ModelNotFound { model: id.clone() };
        if !caller.may_use(&id) {
            return Err(not_found());
        }
        let model = state.catalog.model(&id).map_err(|_| not_found())?;
        Ok(model_object(&model))
    })
    .await
}
