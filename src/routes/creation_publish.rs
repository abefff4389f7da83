//! Publishing creations (seed 001), in its envelope (`code`, `message`, `data`):
//! `GET /api/v1/publish/platforms` (wechat, xiaohongshu, douyin, kuaishou, toutiao: bound or
//! not, `api` or `handoff`), `POST /api/v1/publish/platforms/bind` `{"platform","credentials"}`,
//! `POST /api/v1/publish` `{"creation_id","platforms","schedule_time"}` →
//! `{"publish_id","status":"pending"}`, `GET /api/v1/publish/history?page&page_size`,
//! `GET /api/v1/publish/{publish_id}`, and `POST /api/v1/publish/{publish_id}/done`
//! `{"platform","url"}` for a hand-off the user posted. 40008: a platform is not bound; a
//! failed platform carries 40009 and WeChat's reason.

use super::admin::ok;
use super::extract::{PlatformUser, parse_json};
use crate::db::creation_publishing as store;
use crate::error::ApiError;
use crate::social::creation_publish::{self as cp};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/publish", post(publish))
        .route("/publish/platforms", get(platforms))
        .route("/publish/platforms/bind", post(bind))
        .route("/publish/history", get(history))
        .route("/publish/{publish_id}", get(one))
        .route("/publish/{publish_id}/done", post(done))
}

async fn platforms(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
) -> Result<Json<Value>, ApiError> {
    let list = cp::platforms(&state, user_id).await?;
    Ok(ok(json!({"platforms": list.clone(), "items": list})))
}

async fn bind(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    raw: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: Map<String, Value> = parse_json(&raw)?;
    let platform = body
        .get("platform")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::InvalidInput("platform: required".into()))?;
    let empty = Map::new();
    let credentials = match body.get("credentials") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(c)) => c,
        Some(_) => {
            return Err(ApiError::InvalidInput(
                "credentials: must be an object".into(),
            ));
        }
    };
    let data = cp::bind(&state, user_id, platform, credentials).await?;
    Ok(Json(
        json!({"success": true, "code": 200, "message": "绑定成功", "data": data}),
    ))
}

/// A numeric id given as a number or a string.
fn id_of(field: &str, v: Option<&Value>) -> Result<i64, ApiError> {
    match v {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|n| *n > 0)
    .ok_or_else(|| ApiError::InvalidInput(format!("{field}: required, a creation id")))
}

async fn publish(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    raw: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: Map<String, Value> = parse_json(&raw)?;
    let creation_id = id_of("creation_id", body.get("creation_id"))?;
    let platforms: Vec<String> = match body.get("platforms") {
        Some(Value::Array(list)) if !list.is_empty() && list.len() <= 5 => list
            .iter()
            .map(|p| {
                p.as_str().map(str::to_owned).ok_or_else(|| {
                    ApiError::InvalidInput("platforms: each must be a platform name".into())
                })
            })
            .collect::<Result<_, _>>()?,
        Some(Value::String(p)) if !p.is_empty() => vec![p.clone()],
        _ => {
            return Err(ApiError::InvalidInput(
                "platforms: required, 1 to 5 of wechat, xiaohongshu, douyin, kuaishou, toutiao"
                    .into(),
            ));
        }
    };
    let at = cp::schedule_time(body.get("schedule_time"))?;
    if let Some(at) = at
        && at < crate::clock::now_ms() - crate::social::schedule::PAST_GRACE_MS
    {
        return Err(ApiError::InvalidInput(
            "schedule_time: is in the past".into(),
        ));
    }
    let creation = crate::db::creations::get(&state.db, user_id, creation_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("creation {creation_id} not found")))?;
    let id = cp::publish(&state, user_id, &creation, &platforms, at).await?;
    Ok(Json(json!({
        "success": true,
        "code": 200,
        "message": "发布任务已创建",
        "data": {"publish_id": id, "status": "pending",
                 "schedule_time": at.map(crate::routes::admin::iso)},
    })))
}

async fn history(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let num = |k: &str, default: i64, max: i64| -> Result<i64, ApiError> {
        match q.get(k).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| ApiError::InvalidInput(format!("{k}: an integer from 1 to {max}"))),
        }
    };
    let page = num("page", 1, 1_000_000)?;
    let size = num("page_size", 20, 100)?;
    let (total, rows) = store::history(&state.db, user_id, size, (page - 1) * size).await?;
    let items: Vec<Value> = rows.iter().map(|(p, i)| cp::history_json(p, i)).collect();
    Ok(ok(
        json!({"total": total, "page": page, "page_size": size, "items": items}),
    ))
}

async fn one(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::NotFound(format!("publish {id} not found")))?;
    let p = store::get(&state.db, user_id, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("publish {id} not found")))?;
    let items = store::items(&state.db, id).await?;
    Ok(ok(cp::history_json(&p, &items)))
}

async fn done(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::NotFound(format!("publish {id} not found")))?;
    let body: Map<String, Value> = parse_json(&raw)?;
    let platform = body
        .get("platform")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::InvalidInput("platform: required".into()))?;
    let url = body.get("url").and_then(Value::as_str);
    let item = cp::mark_done(&state, user_id, id, platform, url).await?;
    Ok(ok(
        json!({"platform": item.platform, "status": item.status, "url": item.url}),
    ))
}
