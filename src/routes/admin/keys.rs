//! API keys: `POST/GET /users/{id}/keys` (the full key is in the create answer only),
//! `GET/PATCH/DELETE /keys/{id}` (DELETE disables the key; rows are never removed). A key may
//! carry its own `rpm`, `tpm`, `max_concurrency` (OpenAI surface) and a `plan` (platform API).

use super::{iso, ok, parse_status, parse_time, path_id, present};
use crate::cluster::Change;
use crate::db::{self, keys::ApiKeyRow, keys::KeyLimits, keys::KeyPatch, keys::NewKey};
use crate::error::ApiError;
use crate::gateway::auth::{generate_key, hash_key, key_prefix};
use crate::routes::extract::{AdminCaller, ApiJson};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users/{id}/keys", post(create_key).get(list_keys))
        .route(
            "/keys/{id}",
            get(get_key).patch(update_key).delete(disable_key),
        )
}

fn key_json(k: &ApiKeyRow) -> Value {
    let models: Option<Vec<String>> = k
        .models
        .as_deref()
        .and_then(|m| serde_json::from_str(m).ok());
    json!({
        "id": k.id,
        "user_id": k.user_id,
        "name": k.name,
        "prefix": k.key_prefix,
        "status": k.status,
        "models": models,
        "expires_at": k.expires_at_ms.map_or(Value::Null, iso),
        "rpm": k.limits.rpm,
        "tpm": k.limits.tpm,
        "max_concurrency": k.limits.max_concurrency,
        "plan": k.limits.plan,
        "plan_per_hour": k.limits.plan_per_hour,
        "created_at": iso(k.created_at_ms),
        "updated_at": iso(k.updated_at_ms),
    })
}

/// Validates an allowed-model list and stores it as JSON text; an empty list, like none at all,
/// means every model.
fn models_text(models: Option<Vec<String>>) -> Result<Option<String>, ApiError> {
    match models {
        None => Ok(None),
        Some(list) => {
            if list.is_empty() {
                return Ok(None);
            }
            if list.iter().any(|m| m.trim().is_empty()) {
                return Err(ApiError::InvalidInput(
                    "models: model names must not be empty".into(),
                ));
            }
            Ok(Some(
                serde_json::to_string(&list).map_err(|e| ApiError::Internal(e.to_string()))?,
            ))
        }
    }
}

/// A limit override: a whole number ≥ 1 (`null` or absent: the configured default).
fn limit_value(field: &str, v: Option<i64>) -> Result<Option<i64>, ApiError> {
    match v {
        Some(n) if n < 1 => Err(ApiError::InvalidInput(format!(
            "{field}: must be a whole number of at least 1, or null for the default"
        ))),
        other => Ok(other),
    }
}

/// A plan and its hourly limit: `free`, `pro`, `custom` (needs `plan_per_hour`) or `null`.
fn plan_value(
    plan: Option<&str>,
    per_hour: Option<i64>,
) -> Result<(Option<String>, Option<i64>), ApiError> {
    match plan {
        None => {
            if per_hour.is_some() {
                return Err(ApiError::InvalidInput(
                    "plan_per_hour: only a custom plan has its own hourly limit".into(),
                ));
            }
            Ok((None, None))
        }
        Some("free" | "pro") if per_hour.is_some() => Err(ApiError::InvalidInput(
            "plan_per_hour: only a custom plan has its own hourly limit".into(),
        )),
        Some(p @ ("free" | "pro")) => Ok((Some(p.to_owned()), None)),
        Some("custom") => match per_hour {
            Some(n) if n >= 1 => Ok((Some("custom".into()), Some(n))),
            _ => Err(ApiError::InvalidInput(
                "plan_per_hour: a custom plan needs a whole number of requests per hour (at least 1)"
                    .into(),
            )),
        },
        Some(other) => Err(ApiError::InvalidInput(format!(
            "plan: expected \"free\", \"pro\", \"custom\" or null, got {other:?}"
        ))),
    }
}

#[derive(Deserialize)]
struct NewKeyBody {
    name: Option<String>,
    models: Option<Vec<String>>,
    expires_at: Option<String>,
    rpm: Option<i64>,
    tpm: Option<i64>,
    max_concurrency: Option<i64>,
    plan: Option<String>,
    plan_per_hour: Option<i64>,
}

async fn create_key(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(user_id): Path<String>,
    ApiJson(body): ApiJson<NewKeyBody>,
) -> Result<Json<Value>, ApiError> {
    let user_id = path_id(&user_id)?;
    let name = body.name.as_deref().unwrap_or("default").trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::InvalidInput(
            "name: must be 1 to 200 characters".into(),
        ));
    }
    let models = models_text(body.models)?;
    let expires_at_ms = body
        .expires_at
        .as_deref()
        .map(|t| parse_time("expires_at", t))
        .transpose()?;
    let (plan, plan_per_hour) = plan_value(body.plan.as_deref(), body.plan_per_hour)?;
    let limits = KeyLimits {
        rpm: limit_value("rpm", body.rpm)?,
        tpm: limit_value("tpm", body.tpm)?,
        max_concurrency: limit_value("max_concurrency", body.max_concurrency)?,
        plan,
        plan_per_hour,
    };
    if db::users::get(&state.db, user_id).await?.is_none() {
        return Err(ApiError::NotFound(format!("user {user_id} not found")));
    }
    let key = generate_key();
    let hash = hash_key(&key);
    let prefix = key_prefix(&key);
    let row = db::keys::create(
        &state.db,
        NewKey {
            user_id,
            name,
            key_hash: &hash,
            key_prefix: &prefix,
            models,
            expires_at_ms,
            limits,
        },
    )
    .await?;
    let mut data = key_json(&row);
    data["key"] = Value::String(key);
    Ok(ok(data))
}

async fn list_keys(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(user_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user_id = path_id(&user_id)?;
    let keys = db::keys::list_for_user(&state.db, user_id).await?;
    Ok(ok(keys.iter().map(key_json).collect::<Vec<_>>()))
}

async fn get_key(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    let key = db::keys::get(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("key {id} not found")))?;
    Ok(ok(key_json(&key)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyPatchBody {
    name: Option<String>,
    status: Option<String>,
    #[serde(default, deserialize_with = "present")]
    models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    expires_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    rpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    tpm: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    max_concurrency: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    plan: Option<Option<String>>,
    plan_per_hour: Option<i64>,
}

async fn apply_patch(state: &AppState, id: i64, patch: KeyPatch) -> Result<Json<Value>, ApiError> {
    let key = db::keys::update(&state.db, id, patch)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("key {id} not found")))?;
    state.announce(Change::Keys).await?;
    Ok(ok(key_json(&key)))
}

async fn update_key(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<KeyPatchBody>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    let status = body
        .status
        .as_deref()
        .map(|s| parse_status("status", s))
        .transpose()?;
    if let Some(name) = &body.name
        && (name.trim().is_empty() || name.len() > 200)
    {
        return Err(ApiError::InvalidInput(
            "name: must be 1 to 200 characters".into(),
        ));
    }
    let models = body.models.map(models_text).transpose()?;
    let expires_at_ms = match body.expires_at {
        None => None,
        Some(None) => Some(None),
        Some(Some(t)) => Some(Some(parse_time("expires_at", &t)?)),
    };
    let limit = |field: &str, v: Option<Option<i64>>| v.map(|v| limit_value(field, v)).transpose();
    let plan = match (body.plan, body.plan_per_hour) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(ApiError::InvalidInput(
                "plan_per_hour: send it together with plan: \"custom\"".into(),
            ));
        }
        (Some(p), per_hour) => Some(plan_value(p.as_deref(), per_hour)?),
    };
    let patch = KeyPatch {
        name: body.name.map(|n| n.trim().to_owned()),
        status: status.map(str::to_owned),
        models,
        expires_at_ms,
        rpm: limit("rpm", body.rpm)?,
        tpm: limit("tpm", body.tpm)?,
        max_concurrency: limit("max_concurrency", body.max_concurrency)?,
        plan,
    };
    apply_patch(&state, id, patch).await
}

async fn disable_key(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    apply_patch(
        &state,
        id,
        KeyPatch {
            status: Some("disabled".into()),
            ..Default::default()
        },
    )
    .await
}
