//! A user's creations (seed 001's 作品管理), in the platform envelope:
//! `GET /api/v1/creations?page=&page_size=&type=` (writing, image, video, ppt; newest first),
//! `GET`, `PUT` (`title`, `content`) and `DELETE /api/v1/creations/{id}`. A user sees only
//! their own: another user's id is a 404, like one that does not exist.

use super::admin::{Page, iso, ok, paged};
use super::extract::{ApiJson, UserCaller};
use crate::billing::Micros;
use crate::db::{self, creations::Creation};
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

/// The kinds a creation may be.
pub const KINDS: [&str; 4] = ["writing", "image", "video", "ppt"];

/// The longest title and content a user may save, in characters.
const MAX_TITLE_CHARS: usize = 500;
const MAX_CONTENT_CHARS: usize = 200_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/creations", get(list))
        .route("/creations/{id}", get(one).put(change).delete(remove))
}

/// A creation as its owner sees it; an image, deck or video carries a fresh signed `file_url`.
pub fn creation_json(state: &AppState, headers: &HeaderMap, c: &Creation) -> Value {
    let file_url = c
        .file_id
        .as_deref()
        .map(|f| crate::files::download_url(&state.secrets, headers, f));
    json!({
        "file_url": file_url,
        "id": c.id,
        "type": c.kind,
        "tool_type": c.tool_type,
        "title": c.title,
        "content": c.content,
        "model": c.model,
        "credits_used": Micros(c.credits_micros),
        "credits_used_micros": c.credits_micros,
        "paid_by": c.paid_by,
        "created_at": iso(c.created_at_ms),
        "updated_at": iso(c.updated_at_ms),
    })
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(flatten)]
    page: Page,
    #[serde(rename = "type")]
    kind: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    UserCaller(user_id): UserCaller,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let (page, size, offset) = q.page.resolve()?;
    let kind = match q.kind.as_deref() {
        None | Some("") => None,
        Some(k) if KINDS.contains(&k) => Some(k),
        Some(k) => {
            return Err(ApiError::InvalidInput(format!(
                "type: {k:?} is not a kind of creation; use one of {}",
                KINDS.join(", ")
            )));
        }
    };
    let (total, rows) = db::creations::list(&state.db, user_id, kind, size, offset).await?;
    Ok(paged(
        total,
        page,
        size,
        rows.iter()
            .map(|c| creation_json(&state, &headers, c))
            .collect(),
    ))
}

/// A creation id from the path (a malformed one is a 400 naming it).
fn creation_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .map_err(|_| ApiError::InvalidInput(format!("id: {raw:?} is not a creation id")))
}

fn not_found(id: i64) -> ApiError {
    ApiError::NotFound(format!("creation {id} not found"))
}

async fn one(
    State(state): State<AppState>,
    UserCaller(user_id): UserCaller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = creation_id(&id)?;
    let c = db::creations::get(&state.db, user_id, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(ok(creation_json(&state, &headers, &c)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    title: Option<String>,
    content: Option<String>,
}

async fn change(
    State(state): State<AppState>,
    UserCaller(user_id): UserCaller,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Change>,
) -> Result<Json<Value>, ApiError> {
    let id = creation_id(&id)?;
    if body.title.is_none() && body.content.is_none() {
        return Err(ApiError::InvalidInput(
            "nothing to change: give title and/or content".into(),
        ));
    }
    if let Some(t) = &body.title {
        if t.trim().is_empty() {
            return Err(ApiError::InvalidInput("title: must not be empty".into()));
        }
        if t.chars().count() > MAX_TITLE_CHARS {
            return Err(ApiError::InvalidInput(format!(
                "title: at most {MAX_TITLE_CHARS} characters"
            )));
        }
    }
    if let Some(c) = &body.content
        && c.chars().count() > MAX_CONTENT_CHARS
    {
        return Err(ApiError::InvalidInput(format!(
            "content: at most {MAX_CONTENT_CHARS} characters"
        )));
    }
    let c = db::creations::update(
        &state.db,
        user_id,
        id,
        body.title.as_deref().map(str::trim),
        body.content.as_deref(),
    )
    .await?
    .ok_or_else(|| not_found(id))?;
    Ok(ok(creation_json(&state, &headers, &c)))
}

async fn remove(
    State(state): State<AppState>,
    UserCaller(user_id): UserCaller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = creation_id(&id)?;
    if !db::creations::delete(&state.db, user_id, id).await? {
        return Err(not_found(id));
    }
    Ok(ok(json!({"id": id, "deleted": true})))
}
