//! The model registry in the platform's shape, under `/api/v1/models` (admin only):
//! `GET ?provider=&is_active=` lists it, `POST` registers a model with an implicit channel
//! (`{"name","provider","model_name","api_key","api_base","config":{"temperature","max_tokens"},
//! "credits_cost"}`; optional token prices), `PUT /{id}` changes any of those fields, `DELETE
//! /{id}` retires the model (disabled; its usage history keeps pointing at it). A caller that is
//! not an admin gets OpenAI's model list on `GET` instead (see `routes::openai::models`).
//!
//! `provider` is the vendor's label (`qwen`, `openai`, `anthropic`, …); the implicit channel
//! speaks Anthropic's API for `anthropic`/`claude`, is local for `demo`, a task API for `video`,
//! and OpenAI's API for every other vendor. `credits_cost` is a flat price per answered request;
//! `config.max_tokens` caps the output (and sizes the reservation).

use super::channels::check_base_url;
use super::models::{MediaBody, model_json};
use super::{ok, path_id, reload_catalog};
use crate::billing::money::NonNegativeMicros;
use crate::db::catalog::{ChannelFields, ModelRow, Prices};
use crate::db::{self};
use crate::error::ApiError;
use crate::provider::Provider;
use crate::routes::extract::{AdminCaller, ApiJson};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;

/// The wire format a vendor label implies.
fn provider_for(vendor: &str) -> Provider {
    match vendor.to_ascii_lowercase().as_str() {
        "anthropic" | "claude" => Provider::Anthropic,
        "demo" => Provider::Demo,
        "video" => Provider::Video,
        _ => Provider::OpenAi,
    }
}

/// One registry entry.
fn entry(m: &ModelRow, channel: Option<&db::catalog::ChannelRow>) -> Value {
    let mut v = model_json(m);
    let config: Value = m
        .config
        .as_deref()
        .and_then(|c| serde_json::from_str(c).ok())
        .unwrap_or(json!({}));
    let extra = json!({
        "name": m.display_name.clone().unwrap_or_else(|| m.model.clone()),
        "provider": m.vendor.clone().or_else(|| channel.map(|c| c.provider.clone())),
        "model_name": m.model,
        "is_active": m.status == "active",
        "credits_cost": crate::billing::Micros(m.request_micros),
        "config": config,
        "api_base": channel.map(|c| c.base_url.clone()),
        "channel_id": channel.map(|c| c.id),
    });
    if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        v.extend(extra.clone());
    }
    v
}

/// The implicit channel of a model: the first one serving exactly it.
fn implicit<'a>(
    channels: &'a [db::catalog::ChannelRow],
    model: &str,
) -> Option<&'a db::catalog::ChannelRow> {
    let only = serde_json::to_string(&[model]).unwrap_or_default();
    channels.iter().find(|c| c.models == only).or_else(|| {
        channels
            .iter()
            .find(|c| c.models.contains(&format!("\"{model}\"")))
    })
}

/// `GET /api/v1/models` for an admin.
pub async fn list(
    state: &AppState,
    query: &HashMap<String, String>,
) -> Result<Json<Value>, ApiError> {
    let active = match query.get("is_active").map(String::as_str) {
        None | Some("") => None,
        Some("true" | "1") => Some(true),
        Some("false" | "0") => Some(false),
        Some(other) => {
            return Err(ApiError::InvalidInput(format!(
                "is_active: must be true or false, got {other:?}"
            )));
        }
    };
    let provider = query.get("provider").filter(|p| !p.is_empty());
    let models = db::catalog::list_models(&state.db).await?;
    let channels = db::catalog::list_channels(&state.db, &state.secrets).await?;
    let items: Vec<Value> = models
        .iter()
        .map(|m| entry(m, implicit(&channels, &m.model)))
        .filter(|e| active.is_none_or(|a| e["is_active"] == a))
        .filter(|e| provider.is_none_or(|p| e["provider"].as_str() == Some(p.as_str())))
        .collect();
    Ok(super::ok(items))
}

#[derive(Deserialize)]
pub struct RegistryBody {
    name: Option<String>,
    provider: Option<String>,
    model_name: Option<String>,
    api_key: Option<String>,
    api_base: Option<String>,
    config: Option<Value>,
    credits_cost: Option<NonNegativeMicros>,
    input_price: Option<NonNegativeMicros>,
    output_price: Option<NonNegativeMicros>,
    is_active: Option<bool>,
}

impl RegistryBody {
    /// `prices` with what this body sets; on a new model the cached-input price follows the
    /// input price.
    fn apply_prices(&self, prices: &mut Prices, new: bool) -> Result<(), ApiError> {
        if let Some(p) = self.input_price {
            prices.input = p.0.0;
            if new {
                prices.cached_input = p.0.0;
            }
        }
        if let Some(p) = self.output_price {
            prices.output = p.0.0;
        }
        MediaBody {
            request_price: self.credits_cost,
            ..MediaBody::default()
        }
        .apply(prices)
    }
}

fn config_text(config: &Option<Value>) -> Result<Option<String>, ApiError> {
    match config {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => {
            if let Some(t) = map.get("max_tokens")
                && !t.is_null()
                && t.as_i64().is_none_or(|n| n <= 0)
            {
                return Err(ApiError::InvalidInput(
                    "config.max_tokens: must be a positive integer".into(),
                ));
            }
            if let Some(t) = map.get("temperature")
                && !t.is_null()
                && !t.as_f64().is_some_and(|x| (0.0..=2.0).contains(&x))
            {
                return Err(ApiError::InvalidInput(
                    "config.temperature: must be a number from 0 to 2".into(),
                ));
            }
            Ok(Some(Value::Object(map.clone()).to_string()))
        }
        Some(_) => Err(ApiError::InvalidInput("config: must be an object".into())),
    }
}

/// `POST /api/v1/models`.
pub async fn create(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiJson(body): ApiJson<RegistryBody>,
) -> Result<Json<Value>, ApiError> {
    let required = |v: &Option<String>, field: &str| -> Result<String, ApiError> {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= 200)
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::InvalidInput(format!("{field}: required, 1 to 200 characters"))
            })
    };
    let name = required(&body.name, "name")?;
    let vendor = required(&body.provider, "provider")?;
    let model_name = required(&body.model_name, "model_name")?;
    let config = config_text(&body.config)?;
    let provider = provider_for(&vendor);
    let base_url = body
        .api_base
        .clone()
        .unwrap_or_default()
        .trim()
        .trim_end_matches('/')
        .to_owned();
    check_base_url("api_base", provider, &base_url)?;
    if let Some(existing) = db::catalog::model_by_name(&state.db, &model_name).await? {
        return Err(ApiError::Conflict(format!(
            "model_name {model_name:?} is already registered (id {}); change it with PUT /api/v1/models/{}",
            existing.id, existing.id
        )));
    }
    let mut prices = Prices::default();
    body.apply_prices(&mut prices, true)?;
    let row = db::catalog::upsert_model(&state.db, &model_name, &prices, None).await?;
    let row = db::catalog::set_registry_fields(
        &state.db,
        row.id,
        Some(&name),
        Some(&vendor),
        config.as_deref(),
    )
    .await?
    .unwrap_or(row);
    let row = match body.is_active {
        Some(false) => db::catalog::set_model_status(&state.db, row.id, "disabled")
            .await?
            .unwrap_or(row),
        _ => row,
    };
    let models = serde_json::to_string(&[&model_name]).unwrap_or_default();
    let channel = db::catalog::insert_channel(
        &state.db,
        &state.secrets,
        &ChannelFields {
            name: &name,
            provider: provider.as_str(),
            base_url: &base_url,
            api_key: body.api_key.as_deref().unwrap_or_default(),
            models: &models,
            model_map: "{}",
            priority: 0,
            weight: 1,
            status: "active",
        },
    )
    .await?;
    reload_catalog(&state).await?;
    Ok(ok(entry(&row, Some(&channel))))
}

/// `PUT /api/v1/models/{id}`.
pub async fn update(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RegistryBody>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    let current = db::catalog::get_model(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("model {id} not found")))?;
    if body
        .model_name
        .as_deref()
        .is_some_and(|n| n != current.model)
    {
        return Err(ApiError::InvalidInput(
            "model_name: a registered model keeps its name (register a new one instead)".into(),
        ));
    }
    let config = config_text(&body.config)?;
    let mut prices = Prices::of(&current);
    body.apply_prices(&mut prices, false)?;
    let mut row = db::catalog::upsert_model(&state.db, &current.model, &prices, None).await?;
    row = db::catalog::set_registry_fields(
        &state.db,
        id,
        body.name.as_deref(),
        body.provider.as_deref(),
        config.as_deref(),
    )
    .await?
    .unwrap_or(row);
    if let Some(active) = body.is_active {
        let status = if active { "active" } else { "disabled" };
        row = db::catalog::set_model_status(&state.db, id, status)
            .await?
            .unwrap_or(row);
    }
    let channels = db::catalog::list_channels(&state.db, &state.secrets).await?;
    let mut channel = implicit(&channels, &current.model).cloned();
    if let Some(c) = channel.clone()
        && (body.api_key.is_some() || body.api_base.is_some() || body.provider.is_some())
    {
        let provider = match body.provider.as_deref() {
            Some(vendor) => provider_for(vendor),
            None => Provider::parse(&c.provider).unwrap_or(Provider::OpenAi),
        };
        let base_url = body.api_base.as_deref().map_or(c.base_url.clone(), |b| {
            b.trim().trim_end_matches('/').to_owned()
        });
        check_base_url("api_base", provider, &base_url)?;
        channel = db::catalog::update_channel(
            &state.db,
            &state.secrets,
            c.id,
            &ChannelFields {
                name: &c.name,
                provider: provider.as_str(),
                base_url: &base_url,
                api_key: body.api_key.as_deref().unwrap_or(c.api_key.expose()),
                models: &c.models,
                model_map: &c.model_map,
                priority: c.priority,
                weight: c.weight,
                status: &c.status,
            },
        )
        .await?;
        state.health.reset(c.id);
    }
    reload_catalog(&state).await?;
    Ok(ok(entry(&row, channel.as_ref())))
}

/// `DELETE /api/v1/models/{id}`: retires the model.
pub async fn delete(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    db::catalog::set_model_status(&state.db, id, "disabled")
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("model {id} not found")))?;
    reload_catalog(&state).await?;
    Ok(ok(json!({"id": id, "deleted": true, "is_active": false})))
}
