//! Models and prices: `POST/GET /models`, `GET/PATCH/DELETE /models/{id}`. Prices are credits
//! per one million tokens, decimals up to 6 places, parsed exactly. POSTing an existing model
//! name sets new prices; any price change creates a new price version.

use super::{iso, ok, parse_status, path_id, present, reload_catalog};
use crate::billing::Micros;
use crate::billing::money::NonNegativeMicros;
use crate::db::{self, catalog::ModelRow, catalog::Prices};
use crate::error::ApiError;
use crate::routes::extract::{AdminCaller, ApiJson};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/models", post(upsert_model).get(list_models))
        .route(
            "/models/{id}",
            get(get_model).patch(update_model).delete(disable_model),
        )
}

fn model_json(m: &ModelRow) -> Value {
    json!({
        "id": m.id,
        "model": m.model,
        "input_price": Micros(m.input_micros_per_mtok),
        "output_price": Micros(m.output_micros_per_mtok),
        "cached_input_price": Micros(m.cached_input_micros_per_mtok),
        "input_price_micros": m.input_micros_per_mtok,
        "output_price_micros": m.output_micros_per_mtok,
        "cached_input_price_micros": m.cached_input_micros_per_mtok,
        "price_unit": "credits per 1M tokens",
        "max_output_tokens": m.max_output_tokens,
        "price_version": m.price_version,
        "status": m.status,
        "rpm": m.rpm,
        "tpm": m.tpm,
        "created_at": iso(m.created_at_ms),
        "updated_at": iso(m.updated_at_ms),
    })
}

#[derive(Deserialize)]
struct ModelBody {
    model: String,
    input_price: NonNegativeMicros,
    output_price: NonNegativeMicros,
    cached_input_price: Option<NonNegativeMicros>,
    max_output_tokens: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    rpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    tpm: Option<Option<i64>>,
}

/// A per-model limit: a whole number ≥ 1, or `null` for none.
fn check_limit(field: &str, v: Option<Option<i64>>) -> Result<(), ApiError> {
    match v {
        Some(Some(n)) if n < 1 => Err(ApiError::InvalidInput(format!(
            "{field}: must be a whole number of at least 1, or null for no model limit"
        ))),
        _ => Ok(()),
    }
}

fn check_output_cap(cap: Option<i64>) -> Result<(), ApiError> {
    match cap {
        Some(n) if n < 1 => Err(ApiError::InvalidInput(
            "max_output_tokens: must be a positive integer".into(),
        )),
        _ => Ok(()),
    }
}

async fn upsert_model(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiJson(body): ApiJson<ModelBody>,
) -> Result<Json<Value>, ApiError> {
    let name = body.model.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::InvalidInput(
            "model: must be 1 to 200 characters".into(),
        ));
    }
    check_output_cap(body.max_output_tokens)?;
    check_limit("rpm", body.rpm)?;
    check_limit("tpm", body.tpm)?;
    let prices = Prices {
        input: body.input_price.0.0,
        output: body.output_price.0.0,
        cached_input: body.cached_input_price.unwrap_or(body.input_price).0.0,
    };
    let mut row =
        db::catalog::upsert_model(&state.db, name, prices, body.max_output_tokens).await?;
    if body.rpm.is_some() || body.tpm.is_some() {
        row = db::catalog::set_model_limits(&state.db, row.id, body.rpm, body.tpm)
            .await?
            .unwrap_or(row);
    }
    reload_catalog(&state).await?;
    Ok(ok(model_json(&row)))
}

async fn list_models(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<Value>, ApiError> {
    let rows = db::catalog::list_models(&state.db).await?;
    Ok(ok(rows.iter().map(model_json).collect::<Vec<_>>()))
}

async fn get_model(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    let row = db::catalog::get_model(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("model {id} not found")))?;
    Ok(ok(model_json(&row)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelPatch {
    input_price: Option<NonNegativeMicros>,
    output_price: Option<NonNegativeMicros>,
    cached_input_price: Option<NonNegativeMicros>,
    max_output_tokens: Option<i64>,
    status: Option<String>,
    #[serde(default, deserialize_with = "present")]
    rpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    tpm: Option<Option<i64>>,
}

async fn update_model(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<ModelPatch>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    check_output_cap(patch.max_output_tokens)?;
    check_limit("rpm", patch.rpm)?;
    check_limit("tpm", patch.tpm)?;
    let status = patch
        .status
        .as_deref()
        .map(|s| parse_status("status", s))
        .transpose()?;
    let current = db::catalog::get_model(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("model {id} not found")))?;
    let prices = Prices {
        input: patch
            .input_price
            .map_or(current.input_micros_per_mtok, |p| p.0.0),
        output: patch
            .output_price
            .map_or(current.output_micros_per_mtok, |p| p.0.0),
        cached_input: patch
            .cached_input_price
            .map_or(current.cached_input_micros_per_mtok, |p| p.0.0),
    };
    let mut row =
        db::catalog::upsert_model(&state.db, &current.model, prices, patch.max_output_tokens)
            .await?;
    if let Some(status) = status {
        row = db::catalog::set_model_status(&state.db, id, status)
            .await?
            .unwrap_or(row);
    }
    if patch.rpm.is_some() || patch.tpm.is_some() {
        row = db::catalog::set_model_limits(&state.db, id, patch.rpm, patch.tpm)
            .await?
            .unwrap_or(row);
    }
    reload_catalog(&state).await?;
    Ok(ok(model_json(&row)))
}

async fn disable_model(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    let row = db::catalog::set_model_status(&state.db, id, "disabled")
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("model {id} not found")))?;
    reload_catalog(&state).await?;
    Ok(ok(model_json(&row)))
}
