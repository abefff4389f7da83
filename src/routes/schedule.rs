//! Scheduling (seed 000, "排程发布"): `POST /api/v1/twitter/schedule` `{"draftId","scheduledFor",
//! "targetAccounts"|"accountUuid"+"platform","priority","applyJitter"}` → `{"message","queueIds",
//! "scheduledFor","accountCount"}` (plus each queue item's `effectiveAt`); `GET` lists the
//! user's open schedules (`?draftId=`, `?status=all` for ended ones too); `DELETE ?draftId=`
//! cancels what is pending, or answers 409 with the URL of what was published first.
//! `scheduledFor` must carry its offset (`Z`, `+08:00`); a time without one is refused.

use super::extract::{PlatformUser, parse_json};
use super::publish::{own_draft, pick_accounts, required_string, x_accounts};
use crate::db::{self, jobs::Schedule};
use crate::error::ApiError;
use crate::routes::admin::iso;
use crate::social::schedule::{self, Cancelled, Request};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

pub fn router() -> Router<AppState> {
    Router::new().route("/twitter/schedule", get(list).post(create).delete(cancel))
}

fn schedule_json(s: &Schedule) -> Value {
    json!({
        "id": s.id,
        "queueId": s.id,
        "draftId": s.draft_id,
        "draftTitle": s.draft_title,
        "scheduledFor": iso(s.scheduled_for_ms),
        "effectiveAt": iso(s.effective_at_ms),
        "priority": s.priority,
        "attempts": s.attempts,
        "status": s.state,
        "targetStatus": s.target_status,
        "targetId": s.target_id,
        "lastError": s.last_error,
        "url": s.result,
        "createdAt": iso(s.created_at_ms),
        "platform": s.platform,
        "accountUuid": s.account_id,
    })
}

async fn create(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let body: Map<String, Value> = parse_json(&raw)?;
    let draft_id = required_string(&body, "draftId")?;
    let at = crate::social::drafts::read_instant("scheduledFor", body.get("scheduledFor"))?
        .ok_or_else(|| {
            ApiError::InvalidInput(
                "scheduledFor: required, an ISO 8601 time with its offset, like 2026-01-15T10:00:00Z".into(),
            )
        })?;
    let priority = match body.get("priority") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .filter(|p| (-1000..=1000).contains(p))
            .ok_or_else(|| {
                ApiError::InvalidInput("priority: an integer from -1000 to 1000".into())
            })?,
    };
    let jitter = match body.get("applyJitter") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::InvalidInput(
                "applyJitter: must be true or false".into(),
            ));
        }
    };
    let draft = own_draft(&state, user_id, &draft_id).await?;
    let all = db::social::accounts(&state.db, user_id).await?;
    let accounts = match (body.get("targetAccounts"), body.get("accountUuid")) {
        (Some(Value::Array(list)), _) if !list.is_empty() && list.len() <= 50 => {
            pick_accounts(list, &all)?
        }
        (Some(Value::Array(_)) | Some(Value::Object(_)) | Some(Value::String(_)), _) => {
            return Err(ApiError::InvalidInput(
                "targetAccounts: 1 to 50 {\"accountId\",\"platform\"} objects".into(),
            ));
        }
        (_, Some(Value::String(id))) if !id.is_empty() => {
            let platform = body
                .get("platform")
                .and_then(Value::as_str)
                .unwrap_or("twitter");
            pick_accounts(&[json!({"accountId": id, "platform": platform})], &all).map_err(|e| {
                ApiError::InvalidInput(
                    e.to_string()
                        .replace("targetAccounts[0].accountId", "accountUuid")
                        .replace("targetAccounts[0].platform", "platform"),
                )
            })?
        }
        _ => x_accounts(&state, user_id, &draft, None).await?,
    };
    let count = accounts.len();
    let made = schedule::schedule(
        &state,
        user_id,
        Request {
            draft,
            accounts,
            scheduled_for_ms: at,
            priority,
            jitter,
        },
    )
    .await?;
    let queue_ids: Vec<&str> = made.iter().map(|s| s.id.as_str()).collect();
    let made: Vec<Value> = made.iter().map(schedule_json).collect();
    Ok((
        StatusCode::OK,
        Json(json!({
            "success": true,
            "message": "草稿排程成功",
            "queueIds": queue_ids,
            "scheduledFor": iso(at),
            "accountCount": count,
            "schedules": made,
        })),
    )
        .into_response())
}

async fn list(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let draft = q
        .get("draftId")
        .map(String::as_str)
        .filter(|d| !d.is_empty());
    let all = match q.get("status").map(String::as_str) {
        None | Some("pending") | Some("") => false,
        Some("all") => true,
        Some(other) => {
            return Err(ApiError::InvalidInput(format!(
                "status: \"pending\" (the default) or \"all\", got {other:?}"
            )));
        }
    };
    let rows = db::jobs::schedules(&state.db, user_id, schedule::KIND, draft, all, 500).await?;
    Ok(Json(json!({
        "success": true,
        "schedules": rows.iter().map(schedule_json).collect::<Vec<_>>(),
    })))
}

async fn cancel(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let draft = q
        .get("draftId")
        .map(|d| d.trim())
        .filter(|d| !d.is_empty())
        .ok_or_else(|| ApiError::InvalidInput("draftId: required (a query parameter)".into()))?;
    let open =
        db::jobs::schedules(&state.db, user_id, schedule::KIND, Some(draft), false, 500).await?;
    if open.is_empty() {
        return Err(ApiError::NotFound(format!(
            "draft {draft} has no pending schedule"
        )));
    }
    let mut cancelled = Vec::new();
    let mut published = Vec::new();
    let mut other = Vec::new();
    for s in &open {
        match schedule::cancel(&state, s, "cancelled by the user", schedule::CANCEL_WAIT).await? {
            Cancelled::Yes => cancelled.push(s.id.clone()),
            Cancelled::Published(urls) => published.push(json!({
                "queueId": s.id, "platform": s.platform, "accountUuid": s.account_id,
                "url": urls.first(), "urls": urls,
            })),
            Cancelled::Other(status) => other.push(json!({"queueId": s.id, "status": status})),
        }
    }
    if !published.is_empty() {
        let e = ApiError::Conflict(format!(
            "too late to cancel: {} of {} scheduled publishes were already out",
            published.len(),
            open.len()
        ));
        let mut body = e.body();
        body["data"] = json!({"cancelled": cancelled, "published": published, "other": other});
        body["url"] = published[0]["url"].clone();
        return Ok((StatusCode::CONFLICT, Json(body)).into_response());
    }
    Ok(Json(json!({
        "success": true,
        "message": "排程已成功取消",
        "cancelled": cancelled,
        "other": other,
    }))
    .into_response())
}
