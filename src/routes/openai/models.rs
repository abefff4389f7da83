//! `GET /v1/models` and `GET /v1/models/{id}` in OpenAI's list shape, with Tollgate's prices
//! added to each item. A key with an allowed-model list sees only those models.

use crate::billing::Micros;
use crate::error::OpenAiError;
use crate::gateway::catalog::Model;
use crate::routes::extract::OpenAiCaller;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

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

pub async fn list_models(
    State(state): State<AppState>,
    OpenAiCaller(caller): OpenAiCaller,
) -> Json<Value> {
    let data: Vec<Value> = state
        .catalog
        .models()
        .iter()
        .filter(|m| caller.may_use(&m.name))
        .map(|m| model_object(m))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn retrieve_model(
    State(state): State<AppState>,
    OpenAiCaller(caller): OpenAiCaller,
    Path(id): Path<String>,
) -> Result<Json<Value>, OpenAiError> {
    let not_found = || OpenAiError::ModelNotFound { model: id.clone() };
    if !caller.may_use(&id) {
        return Err(not_found());
    }
    let model = state.catalog.model(&id).map_err(|_| not_found())?;
    Ok(Json(model_object(&model)))
}
