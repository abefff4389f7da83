//! Models and prices: `POST/GET /models`, `GET/PATCH/DELETE /models/{id}`. Token prices are
//! credits per one million tokens; `cache_write_price` too (default 1.25 × input);
//! `request_price` is credits per answered request, `image_price` per image (`image_prices`
//! by `"<size>"` or `"<size>/<quality>"`), `video_second_price` per second of video. Decimals up
//! to 6 places, parsed exactly. POSTing an existing model name sets new prices; any price change
//! creates a new price version.

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
use std::collections::BTreeMap;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/models", post(upsert_model).get(list_models))
        .route(
            "/models/{id}",
            get(get_model).patch(update_model).delete(disable_model),
        )
}

/// Per-image prices as stored (micro-credits) shown as credits.
fn image_prices_json(text: Option<&str>) -> Value {
    let map: BTreeMap<String, i64> = text
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default();
    let shown: BTreeMap<String, Micros> = map.into_iter().map(|(k, v)| (k, Micros(v))).collect();
    json!(shown)
}

pub fn model_json(m: &ModelRow) -> Value {
    let cache_write = m
        .cache_write_micros_per_mtok
        .unwrap_or_else(|| crate::gateway::catalog::default_cache_write(m.input_micros_per_mtok));
    json!({
        "id": m.id,
        "model": m.model,
        "input_price": Micros(m.input_micros_per_mtok),
        "output_price": Micros(m.output_micros_per_mtok),
        "cached_input_price": Micros(m.cached_input_micros_per_mtok),
        "input_price_micros": m.input_micros_per_mtok,
        "output_price_micros": m.output_micros_per_mtok,
        "cached_input_price_micros": m.cached_input_micros_per_mtok,
        "cache_write_price": Micros(cache_write),
        "cache_write_price_micros": cache_write,
        "price_unit": "credits per 1M tokens",
        "request_price": Micros(m.request_micros),
        "image_price": m.image_micros.map(Micros),
        "image_prices": image_prices_json(m.image_prices.as_deref()),
        "video_second_price": m.video_second_micros.map(Micros),
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
    input_price: Option<NonNegativeMicros>,
    output_price: Option<NonNegativeMicros>,
    cached_input_price: Option<NonNegativeMicros>,
    cache_write_price: Option<NonNegativeMicros>,
    #[serde(alias = "credits_cost")]
    request_price: Option<NonNegativeMicros>,
    image_price: Option<NonNegativeMicros>,
    image_prices: Option<BTreeMap<String, NonNegativeMicros>>,
    video_second_price: Option<NonNegativeMicros>,
    max_output_tokens: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    rpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    tpm: Option<Option<i64>>,
}

/// Prices besides tokens, on create and patch.
#[derive(Default)]
pub struct MediaBody {
    pub cache_write_price: Option<NonNegativeMicros>,
    pub request_price: Option<NonNegativeMicros>,
    pub image_price: Option<NonNegativeMicros>,
    pub image_prices: Option<BTreeMap<String, NonNegativeMicros>>,
    pub video_second_price: Option<NonNegativeMicros>,
}

impl MediaBody {
    fn any(&self) -> bool {
        self.request_price.is_some()
            || self.image_price.is_some()
            || self.image_prices.is_some()
            || self.video_second_price.is_some()
    }

    /// `prices` with what this body sets.
    pub fn apply(&self, prices: &mut Prices) -> Result<(), ApiError> {
        if let Some(p) = self.cache_write_price {
            prices.cache_write = Some(p.0.0);
        }
        if let Some(p) = self.request_price {
            prices.request = p.0.0;
        }
        if let Some(p) = self.image_price {
            prices.image = Some(p.0.0);
        }
        if let Some(map) = &self.image_prices {
            if map.keys().any(|k| k.trim().is_empty() || k.len() > 64) {
                return Err(ApiError::InvalidInput(
                    "image_prices: keys are sizes like \"1024x1024\" or \"1024x1024/hd\"".into(),
                ));
            }
            let micros: BTreeMap<&str, i64> =
                map.iter().map(|(k, v)| (k.as_str(), v.0.0)).collect();
            prices.image_prices =
                (!micros.is_empty()).then(|| serde_json::to_string(&micros).unwrap_or_default());
        }
        if let Some(p) = self.video_second_price {
            prices.video_second = Some(p.0.0);
        }
        Ok(())
    }
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
    let media = MediaBody {
        cache_write_price: body.cache_write_price,
        request_price: body.request_price,
        image_price: body.image_price,
        image_prices: body.image_prices,
        video_second_price: body.video_second_price,
    };
    let (input, output) = match (body.input_price, body.output_price) {
        (Some(i), Some(o)) => (i.0.0, o.0.0),
        (None, None) if media.any() => (0, 0),
        (None, _) => {
            return Err(ApiError::InvalidInput(
                "input_price: required (credits per 1M tokens), unless the model is priced per request, image or video second".into(),
            ));
        }
        (_, None) => {
            return Err(ApiError::InvalidInput(
                "output_price: required (credits per 1M tokens)".into(),
            ));
        }
    };
    let mut prices = Prices {
        input,
        output,
        cached_input: body.cached_input_price.map_or(input, |p| p.0.0),
        ..Prices::default()
    };
    media.apply(&mut prices)?;
    let mut row =
        db::catalog::upsert_model(&state.db, name, &prices, body.max_output_tokens).await?;
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
    cache_write_price: Option<NonNegativeMicros>,
    request_price: Option<NonNegativeMicros>,
    image_price: Option<NonNegativeMicros>,
    image_prices: Option<BTreeMap<String, NonNegativeMicros>>,
    video_second_price: Option<NonNegativeMicros>,
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
    let mut prices = Prices::of(&current);
    for (value, slot) in [
        (patch.input_price, &mut prices.input),
        (patch.output_price, &mut prices.output),
        (patch.cached_input_price, &mut prices.cached_input),
    ] {
        if let Some(p) = value {
            *slot = p.0.0;
        }
    }
    let media = MediaBody {
        cache_write_price: patch.cache_write_price,
        request_price: patch.request_price,
        image_price: patch.image_price,
        image_prices: patch.image_prices,
        video_second_price: patch.video_second_price,
    };
    media.apply(&mut prices)?;
    let mut row =
        db::catalog::upsert_model(&state.db, &current.model, &prices, patch.max_output_tokens)
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
