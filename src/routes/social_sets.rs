//! Social sets (seed 000): `GET /api/v1/social-sets` → `{"socialSets": [{"id","name",
//! "accounts": [{"accountId","platform","username"}]}]}`; `POST` `{"name"}` creates one,
//! `PUT /{id}` renames it, `DELETE /{id}` deletes it (its drafts keep their accounts);
//! `POST /{id}/accounts` `{"accountId"}` adds one of the user's accounts,
//! `DELETE /{id}/accounts/{accountId}` takes it out.

use super::extract::{PlatformUser, parse_json};
use crate::db::{self, social::SocialSet};
use crate::error::ApiError;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Map, Value, json};

/// The longest set name.
const MAX_NAME: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/social-sets", get(list).post(create))
        .route(
            "/social-sets/{id}",
            axum::routing::put(rename).delete(remove),
        )
        .route("/social-sets/{id}/accounts", post(add_account))
        .route(
            "/social-sets/{id}/accounts/{account_id}",
            delete(remove_account),
        )
}

fn name_of(body: &Map<String, Value>) -> Result<String, ApiError> {
    match body.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.trim().chars().count() <= MAX_NAME => {
            Ok(s.trim().to_owned())
        }
        Some(Value::String(s)) if !s.trim().is_empty() => Err(ApiError::InvalidInput(format!(
            "name: at most {MAX_NAME} characters"
        ))),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(ApiError::InvalidInput("name: required".into()))
        }
        Some(_) => Err(ApiError::InvalidInput("name: must be a string".into())),
    }
}

/// Every set of the user's with its accounts.
async fn sets_json(
    state: &AppState,
    user_id: i64,
    only: Option<&str>,
) -> Result<Vec<Value>, ApiError> {
    let sets = db::social::sets(&state.db, user_id).await?;
    let members = db::social::set_members(&state.db, user_id).await?;
    let accounts = db::social::accounts(&state.db, user_id).await?;
    Ok(sets
        .iter()
        .filter(|s| only.is_none_or(|id| s.id == id))
        .map(|s| set_json(s, &members, &accounts))
        .collect())
}

fn set_json(
    s: &SocialSet,
    members: &[(String, String)],
    accounts: &[db::social::Account],
) -> Value {
    let in_set: Vec<Value> = members
        .iter()
        .filter(|(set, _)| *set == s.id)
        .filter_map(|(_, id)| accounts.iter().find(|a| a.id == *id))
        .map(|a| {
            json!({"accountId": a.id, "platform": a.platform, "username": a.username,
                   "displayName": a.display_name, "status": a.status})
        })
        .collect();
    json!({
        "id": s.id,
        "name": s.name,
        "accounts": in_set,
        "createdAt": super::admin::iso(s.created_at_ms),
        "updatedAt": super::admin::iso(s.updated_at_ms),
    })
}

async fn list(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
) -> Result<Json<Value>, ApiError> {
    let sets = sets_json(&state, user_id, None).await?;
    Ok(Json(json!({"success": true, "socialSets": sets})))
}

async fn one(state: &AppState, user_id: i64, id: &str) -> Result<Json<Value>, ApiError> {
    let set = sets_json(state, user_id, Some(id))
        .await?
        .pop()
        .ok_or_else(|| ApiError::NotFound(format!("social set {id} not found")))?;
    Ok(Json(json!({"success": true, "socialSet": set})))
}

async fn create(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: Map<String, Value> = parse_json(&body)?;
    let name = name_of(&body)?;
    let id = crate::social::drafts::new_uuid();
    db::social::create_set(&state.db, user_id, &id, &name).await?;
    one(&state, user_id, &id).await
}

async fn rename(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: Map<String, Value> = parse_json(&body)?;
    let name = name_of(&body)?;
    db::social::rename_set(&state.db, user_id, &id, &name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("social set {id} not found")))?;
    one(&state, user_id, &id).await
}

async fn remove(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !db::social::delete_set(&state.db, user_id, &id).await? {
        return Err(ApiError::NotFound(format!("social set {id} not found")));
    }
    Ok(Json(
        json!({"success": true, "message": "Social Set 已删除", "id": id}),
    ))
}

async fn add_account(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: Map<String, Value> = parse_json(&body)?;
    let account_id = match body.get("accountId") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(ApiError::InvalidInput("accountId: required".into())),
    };
    db::social::set(&state.db, user_id, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("social set {id} not found")))?;
    db::social::account(&state.db, user_id, &account_id)
        .await?
        .ok_or_else(|| {
            ApiError::InvalidInput(format!(
                "accountId: no connected account of yours is {account_id:?}"
            ))
        })?;
    db::social::add_to_set(&state.db, &id, &account_id).await?;
    one(&state, user_id, &id).await
}

async fn remove_account(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    Path((id, account_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    db::social::set(&state.db, user_id, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("social set {id} not found")))?;
    if !db::social::remove_from_set(&state.db, &id, &account_id).await? {
        return Err(ApiError::NotFound(format!(
            "account {account_id} is not in social set {id}"
        )));
    }
    one(&state, user_id, &id).await
}
