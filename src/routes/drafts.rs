//! Drafts in seed 000's shape: `GET /api/v1/twitter/drafts?socialSetId=` → `{"drafts"}`,
//! `POST /api/v1/twitter/drafts` → `{"draft"}`, `GET`, `PUT`, `DELETE /api/v1/twitter/drafts/{id}`.
//! A body's fields are seed 000's (`title`, `tweets` of `{"content"}` HTML, `socialSetId`,
//! `status`, `scheduledFor`, `selectedAccountIds`, `templateId`); another user's draft is 404.

use super::extract::{PlatformUser, parse_json};
use crate::db::{self, drafts::Draft, social::Account};
use crate::error::ApiError;
use crate::social::drafts::{self as rules, Item};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Drafts one list answers at most.
const LIST_LIMIT: i64 = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/twitter/drafts", get(list).post(create))
        .route("/twitter/drafts/{id}", get(read).put(update).delete(remove))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(rename = "socialSetId")]
    social_set_id: Option<String>,
}

/// The accounts a draft goes to: those it selected, else its set's.
async fn targets(state: &AppState, user_id: i64, d: &Draft) -> Result<Vec<Account>, ApiError> {
    let accounts = db::social::accounts(&state.db, user_id).await?;
    let selected = rules::selected(d);
    if !selected.is_empty() {
        return Ok(accounts
            .into_iter()
            .filter(|a| selected.contains(&a.id))
            .collect());
    }
    let Some(set) = &d.social_set_id else {
        return Ok(Vec::new());
    };
    let members = db::social::set_members(&state.db, user_id).await?;
    Ok(accounts
        .into_iter()
        .filter(|a| members.iter().any(|(s, m)| s == set && *m == a.id))
        .collect())
}

async fn shaped(state: &AppState, user_id: i64, d: &Draft) -> Result<Value, ApiError> {
    let targets = targets(state, user_id, d).await?;
    Ok(rules::draft_json(
        d,
        &rules::target_limits(&targets),
        super::admin::iso,
    ))
}

async fn list(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let set = q.social_set_id.as_deref().filter(|s| !s.is_empty());
    let drafts = db::drafts::list(&state.db, user_id, set, LIST_LIMIT).await?;
    let mut out = Vec::with_capacity(drafts.len());
    for d in &drafts {
        out.push(shaped(&state, user_id, d).await?);
    }
    Ok(Json(json!({"success": true, "drafts": out})))
}

async fn own(state: &AppState, user_id: i64, id: &str) -> Result<Draft, ApiError> {
    db::drafts::get(&state.db, user_id, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("draft {id} not found")))
}

async fn read(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let d = own(&state, user_id, &id).await?;
    Ok(Json(
        json!({"success": true, "draft": shaped(&state, user_id, &d).await?}),
    ))
}

/// Applies `body`'s fields to `d` (every one optional but where `creating` needs it), checking
/// that the set, the accounts and the media it names are the user's.
async fn apply(
    state: &AppState,
    user_id: i64,
    d: &mut Draft,
    body: &Map<String, Value>,
    creating: bool,
) -> Result<(), ApiError> {
    if creating || body.contains_key("title") {
        d.title = rules::read_title(body.get("title"))?;
    }
    let previous = rules::items(d);
    match body.get("tweets") {
        Some(v) => {
            let items = rules::read_items(v, &previous)?;
            check_media(state, user_id, &items).await?;
            d.tweets = rules::items_json(&items);
        }
        None if creating => return Err(ApiError::InvalidInput("tweets: required".into())),
        None => {}
    }
    if let Some(v) = body.get("socialSetId") {
        d.social_set_id = match v {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => {
                db::social::set(&state.db, user_id, s)
                    .await?
                    .ok_or_else(|| {
                        ApiError::InvalidInput(format!(
                            "socialSetId: no social set of yours is {s:?}"
                        ))
                    })?;
                Some(s.clone())
            }
            _ => {
                return Err(ApiError::InvalidInput(
                    "socialSetId: must be a string".into(),
                ));
            }
        };
    }
    if let Some(status) = rules::read_status(body.get("status"))? {
        d.status = status;
    }
    if body.contains_key("scheduledFor") {
        d.scheduled_for_ms = rules::read_instant("scheduledFor", body.get("scheduledFor"))?;
    }
    if let Some(ids) = rules::read_ids("selectedAccountIds", body.get("selectedAccountIds"))? {
        let accounts = db::social::accounts(&state.db, user_id).await?;
        if let Some(unknown) = ids.iter().find(|id| !accounts.iter().any(|a| a.id == **id)) {
            return Err(ApiError::InvalidInput(format!(
                "selectedAccountIds: no connected account of yours is {unknown:?}"
            )));
        }
        d.selected_account_ids = Value::from(ids).to_string();
    }
    match body.get("templateId") {
        None => {}
        Some(Value::Null) => d.template_id = None,
        Some(Value::String(s)) if s.len() <= 100 => d.template_id = Some(s.clone()),
        Some(_) => {
            return Err(ApiError::InvalidInput(
                "templateId: must be a string of at most 100 characters".into(),
            ));
        }
    }
    Ok(())
}

/// Every media id must be a file the user uploaded.
async fn check_media(state: &AppState, user_id: i64, items: &[Item]) -> Result<(), ApiError> {
    for (k, item) in items.iter().enumerate() {
        for m in &item.media {
            let owned = db::files::meta(&state.db, m)
                .await?
                .is_some_and(|f| f.user_id == user_id && crate::social::media::kind(&f).is_some());
            if !owned {
                return Err(ApiError::InvalidInput(format!(
                    "tweets[{k}].media: no uploaded media of yours is {m:?}"
                )));
            }
        }
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: Map<String, Value> = parse_json(&body)?;
    let mut d = Draft {
        id: rules::new_uuid(),
        user_id,
        social_set_id: None,
        title: String::new(),
        status: "draft".into(),
        scheduled_for_ms: None,
        selected_account_ids: "[]".into(),
        template_id: None,
        tweets: "[]".into(),
        created_at_ms: 0,
        updated_at_ms: 0,
    };
    apply(&state, user_id, &mut d, &body, true).await?;
    let saved = db::drafts::insert(&state.db, &d).await?;
    Ok(Json(
        json!({"success": true, "draft": shaped(&state, user_id, &saved).await?}),
    ))
}

async fn update(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: Map<String, Value> = parse_json(&body)?;
    let mut d = own(&state, user_id, &id).await?;
    apply(&state, user_id, &mut d, &body, false).await?;
    let saved = db::drafts::update(&state.db, &d)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("draft {id} not found")))?;
    Ok(Json(
        json!({"success": true, "draft": shaped(&state, user_id, &saved).await?}),
    ))
}

async fn remove(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    // What is scheduled of it and not yet sending is cancelled (its holds given back); what is
    // already sending finishes.
    if db::drafts::get(&state.db, user_id, &id).await?.is_some() {
        crate::social::schedule::cancel_draft(&state, user_id, &id).await?;
    }
    if !db::drafts::delete(&state.db, user_id, &id).await? {
        return Err(ApiError::NotFound(format!("draft {id} not found")));
    }
    Ok(Json(
        json!({"success": true, "message": "草稿已删除", "id": id}),
    ))
}
