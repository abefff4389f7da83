//! Upstream channels: `POST/GET /channels`, `GET/PATCH/DELETE /channels/{id}` and
//! `POST /channels/{id}/test` (one small call through the channel, now). The upstream credential
//! is write-only: answers show a masked form. Every answer carries the channel's `health` on
//! this instance (circuit breaker state, calls, recent error) and, if the gateway disabled it,
//! `disabled_reason`.

use super::{iso, ok, parse_status, path_id, reload_catalog};
use crate::db::{self, catalog::ChannelFields, catalog::ChannelRow};
use crate::error::ApiError;
use crate::gateway::failover;
use crate::provider::{BodyLimits, Provider, read_whole};
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
        .route("/channels", post(create_channel).get(list_channels))
        .route(
            "/channels/{id}",
            get(get_channel)
                .patch(update_channel)
                .delete(delete_channel),
        )
        .route("/channels/{id}/test", post(test_channel))
}

/// A credential as answers show it: at most its last 4 characters (none of a short one).
fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() <= 8 {
        "****".into()
    } else {
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("****{tail}")
    }
}

fn channel_json(state: &AppState, c: &ChannelRow) -> Value {
    let models: Value = serde_json::from_str(&c.models).unwrap_or(Value::Null);
    let model_map: Value = serde_json::from_str(&c.model_map).unwrap_or(Value::Null);
    json!({
        "id": c.id,
        "name": c.name,
        "provider": c.provider,
        "base_url": c.base_url,
        "api_key": mask(c.api_key.expose()),
        "models": models,
        "model_map": model_map,
        "priority": c.priority,
        "weight": c.weight,
        "status": c.status,
        "disabled_reason": c.disabled_reason,
        "last_error": c.last_error,
        "last_error_at": c.last_error_at_ms.map_or(Value::Null, iso),
        "health": state.health.view(c.id),
        "created_at": iso(c.created_at_ms),
        "updated_at": iso(c.updated_at_ms),
    })
}

/// Checks an upstream's root URL (`field` names it in the error); the demo provider needs none.
pub fn check_base_url(field: &str, provider: Provider, base_url: &str) -> Result<(), ApiError> {
    if provider == Provider::Demo {
        return Ok(());
    }
    let parsed = reqwest::Url::parse(base_url).map_err(|_| {
        ApiError::InvalidInput(format!(
            "{field}: {base_url:?} is not a URL (expected e.g. https://api.openai.com/v1)"
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ApiError::InvalidInput(format!(
            "{field}: must be an http:// or https:// URL"
        )));
    }
    Ok(())
}

/// A channel body; every field optional so PATCH can reuse it (create checks what is required).
#[derive(Deserialize, Default)]
struct ChannelBody {
    name: Option<String>,
    provider: Option<String>,
    base_url: Option<String>,
    api_key: Option<String>,
    models: Option<Vec<String>>,
    model_map: Option<BTreeMap<String, String>>,
    priority: Option<i64>,
    weight: Option<i64>,
    status: Option<String>,
}

/// A complete, validated channel.
struct Valid {
    name: String,
    provider: Provider,
    base_url: String,
    api_key: String,
    models: String,
    model_map: String,
    priority: i64,
    weight: i64,
    status: &'static str,
}

fn validate(body: ChannelBody, base: Option<&ChannelRow>) -> Result<Valid, ApiError> {
    let bad = |m: String| ApiError::InvalidInput(m);
    let name = body
        .name
        .or_else(|| base.map(|b| b.name.clone()))
        .ok_or_else(|| bad("name: required".into()))?;
    if name.trim().is_empty() || name.len() > 200 {
        return Err(bad("name: must be 1 to 200 characters".into()));
    }
    let provider_name = body
        .provider
        .or_else(|| base.map(|b| b.provider.clone()))
        .ok_or_else(|| bad(format!("provider: required (one of {})", Provider::NAMES)))?;
    let provider = Provider::parse(&provider_name).ok_or_else(|| {
        bad(format!(
            "provider: unknown provider {provider_name:?} (one of {})",
            Provider::NAMES
        ))
    })?;
    let base_url = body
        .base_url
        .or_else(|| base.map(|b| b.base_url.clone()))
        .unwrap_or_default();
    let base_url = base_url.trim().trim_end_matches('/').to_owned();
    check_base_url("base_url", provider, &base_url)?;
    let api_key = body
        .api_key
        .or_else(|| base.map(|b| b.api_key.expose().to_owned()))
        .unwrap_or_default();
    let models = match body.models {
        Some(m) => m,
        None => base
            .and_then(|b| serde_json::from_str(&b.models).ok())
            .unwrap_or_default(),
    };
    if models.is_empty() || models.iter().any(|m| m.trim().is_empty()) {
        return Err(bad(
            "models: must list at least one non-empty model name".into()
        ));
    }
    let model_map = match body.model_map {
        Some(m) => m,
        None => base
            .and_then(|b| serde_json::from_str(&b.model_map).ok())
            .unwrap_or_default(),
    };
    if let Some((k, _)) = model_map.iter().find(|(_, v)| v.trim().is_empty()) {
        return Err(bad(format!(
            "model_map: the upstream name for {k:?} is empty"
        )));
    }
    let priority = body.priority.or(base.map(|b| b.priority)).unwrap_or(0);
    let weight = body.weight.or(base.map(|b| b.weight)).unwrap_or(1);
    if !(1..=1_000_000).contains(&weight) {
        return Err(bad("weight: must be an integer from 1 to 1000000".into()));
    }
    let status = match body.status {
        Some(s) => parse_status("status", &s)?,
        None => match base.map(|b| b.status.as_str()) {
            Some("disabled") => "disabled",
            _ => "active",
        },
    };
    Ok(Valid {
        name: name.trim().to_owned(),
        provider,
        base_url,
        api_key,
        models: to_json(&models),
        model_map: to_json(&model_map),
        priority,
        weight,
        status,
    })
}

/// JSON text of a plain collection (cannot fail for strings and maps of strings).
fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

impl Valid {
    fn fields(&self) -> ChannelFields<'_> {
        ChannelFields {
            name: &self.name,
            provider: self.provider.as_str(),
            base_url: &self.base_url,
            api_key: &self.api_key,
            models: &self.models,
            model_map: &self.model_map,
            priority: self.priority,
            weight: self.weight,
            status: self.status,
        }
    }
}

async fn create_channel(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiJson(body): ApiJson<ChannelBody>,
) -> Result<Json<Value>, ApiError> {
    let valid = validate(body, None)?;
    let row = db::catalog::insert_channel(&state.db, &state.secrets, &valid.fields()).await?;
    reload_catalog(&state).await?;
    Ok(ok(channel_json(&state, &row)))
}

async fn list_channels(
    State(state): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<Value>, ApiError> {
    let rows = db::catalog::list_channels(&state.db, &state.secrets).await?;
    Ok(ok(rows
        .iter()
        .map(|r| channel_json(&state, r))
        .collect::<Vec<_>>()))
}

async fn get_channel(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    let row = db::catalog::get_channel(&state.db, &state.secrets, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("channel {id} not found")))?;
    Ok(ok(channel_json(&state, &row)))
}

async fn update_channel(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ChannelBody>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    let existing = db::catalog::get_channel(&state.db, &state.secrets, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("channel {id} not found")))?;
    let valid = validate(body, Some(&existing))?;
    let row = db::catalog::update_channel(&state.db, &state.secrets, id, &valid.fields())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("channel {id} not found")))?;
    // An admin's edit (a new key, re-enabling) gives the channel a fresh breaker.
    state.health.reset(id);
    reload_catalog(&state).await?;
    Ok(ok(channel_json(&state, &row)))
}

async fn delete_channel(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    if !db::catalog::delete_channel(&state.db, id).await? {
        return Err(ApiError::NotFound(format!("channel {id} not found")));
    }
    state.health.reset(id);
    reload_catalog(&state).await?;
    Ok(ok(json!({"id": id, "deleted": true})))
}

#[derive(Deserialize, Default)]
struct TestBody {
    model: Option<String>,
}

/// `POST /channels/{id}/test`: a one-token chat completion through the channel. The outcome
/// counts for its circuit breaker, and a refused credential disables it, as in live traffic.
async fn test_channel(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    use crate::provider::Channel;
    use crate::provider::Endpoint;
    let id = path_id(&id)?;
    let row = db::catalog::get_channel(&state.db, &state.secrets, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("channel {id} not found")))?;
    let channel = Channel::from_row(&row)
        .ok_or_else(|| ApiError::InvalidInput(format!("channel {id} has an unknown provider")))?;
    if channel.provider == Provider::Video {
        return Err(ApiError::InvalidInput(
            "test calls are chat completions; video channels are checked by their tasks".into(),
        ));
    }
    let models: Vec<String> = serde_json::from_str(&row.models).unwrap_or_default();
    let body: TestBody = if body.iter().all(u8::is_ascii_whitespace) {
        TestBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::InvalidInput(format!("body: {e}")))?
    };
    let model = body
        .model
        .or_else(|| models.first().cloned())
        .ok_or_else(|| ApiError::InvalidInput("model: the channel serves no model".into()))?;
    let upstream_model = channel.upstream_model(&model).to_owned();
    let request = json!({"model": upstream_model, "max_tokens": 1,
        "messages": [{"role": "user", "content": "ping"}]});
    let started = std::time::Instant::now();
    // A test call gets the first-byte timeout for its whole answer, not a request's 15 minutes.
    let limits = BodyLimits {
        deadline: tokio::time::Instant::now()
            + std::time::Duration::from_millis(state.config.upstream.first_byte_timeout_ms),
        ..BodyLimits::for_request(&state.config.upstream, started)
    };
    let call = crate::provider::Call::Tokens {
        endpoint: Endpoint::Chat,
        body: request.to_string().into_bytes(),
        max_tokens: 1,
        limits,
    };
    let first_byte = std::time::Duration::from_millis(state.config.upstream.first_byte_timeout_ms);
    let result = crate::provider::call(&state.http, &channel, call, first_byte).await;
    let (status, error) = match result {
        Err(e) => {
            let msg = e.to_string();
            state.health.failure(&channel, e.outcome(), &msg);
            (None, Some(msg))
        }
        Ok(mut r) => match read_whole(&mut r.body, limits).await {
            Ok(text) => {
                let snippet = failover::snippet(&text);
                failover::record(&state, &channel, r.status, &snippet).await;
                let error = (!(200..300).contains(&r.status)).then_some(snippet);
                (Some(r.status), error)
            }
            Err(e) => {
                // The answer began but never arrived whole: the channel is not working.
                let msg = e.to_string();
                state.health.failure(&channel, "error", &msg);
                (Some(r.status), Some(msg))
            }
        },
    };
    if let Some(e) = &error {
        db::catalog::note_channel_error(&state.db, id, e).await?;
    }
    Ok(ok(json!({
        "channel_id": id,
        "model": model,
        "upstream_model": upstream_model,
        "ok": error.is_none(),
        "status": status,
        "latency_ms": started.elapsed().as_millis() as u64,
        "error": error,
        "health": state.health.view(id),
    })))
}
