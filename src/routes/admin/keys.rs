//! API keys: `POST/GET /users/{id}/keys` (the full key is in the create answer only),
//! `GET/PATCH/DELETE /keys/{id}` (DELETE disables the key; rows are never removed).

use super::{iso, ok, parse_status, parse_time, path_id};
use crate::db::{self, keys::ApiKeyRow, keys::KeyPatch, keys::NewKey};
use crate::error::ApiError;
use crate::gateway::auth::{generate_key, hash_key, key_prefix};
use crate::routes::extract::{AdminCaller, ApiJson};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Deserializer};
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
        "created_at": iso(k.created_at_ms),
        "updated_at": iso(k.updated_at_ms),
    })
}

/// `Some(None)` for an explicit `null`, `None` when the field is absent.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
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

#[derive(Deserialize)]
struct NewKeyBody {
    name: Option<String>,
    models: Option<Vec<String>>,
    expires_at: Option<String>,
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
}

async fn apply_patch(state: &AppState, id: i64, patch: KeyPatch) -> Result<Json<Value>, ApiError> {
    let key = db::keys::update(&state.db, id, patch)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("key {id} not found")))?;
    state.keys.invalidate_all();
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
    let patch = KeyPatch {
        name: body.name.map(|n| n.trim().to_owned()),
        status: status.map(str::to_owned),
        models,
        expires_at_ms,
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
