//! Usage records: `GET /usage?user_id=&page=&page_size=` and `GET /users/{id}/usage`; with
//! `group_by=user|model|channel` (and `start`/`end`, ISO-8601, default the last 30 days),
//! `GET /usage` sums requests, failures, tokens, media units and cost per group instead.

use super::{Page, iso, paged, path_id};
use crate::billing::Micros;
use crate::db::{self, billing::UsageRow};
use crate::error::ApiError;
use crate::routes::extract::AdminCaller;
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/usage", get(list_usage))
        .route("/users/{id}/usage", get(list_user_usage))
}

pub fn usage_json(u: &UsageRow) -> Value {
    json!({
        "id": u.id,
        "request_id": u.request_id,
        "user_id": u.user_id,
        "key_id": u.key_id,
        "model": u.model,
        "upstream_model": u.upstream_model,
        "channel_id": u.channel_id,
        "endpoint": u.endpoint,
        "stream": u.stream != 0,
        "status": u.status,
        "http_status": u.http_status,
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "cached_tokens": u.cached_tokens,
        "reasoning_tokens": u.reasoning_tokens,
        "cache_write_tokens": u.cache_write_tokens,
        "units": u.units,
        "usage_source": u.usage_source,
        "reserved": Micros(u.reserved_micros),
        "reserved_micros": u.reserved_micros,
        "cost": Micros(u.cost_micros),
        "cost_micros": u.cost_micros,
        "unbilled_micros": u.unbilled_micros,
        "paid_by": u.paid_by,
        "price_version": u.price_version,
        "latency_ms": u.latency_ms,
        "ttft_ms": u.ttft_ms,
        "error": u.error,
        "created_at": iso(u.created_at_ms),
    })
}

#[derive(Deserialize)]
struct UsageQuery {
    user_id: Option<String>,
    group_by: Option<String>,
    start: Option<String>,
    end: Option<String>,
    #[serde(flatten)]
    page: Page,
}

async fn list_usage(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Query(q): Query<UsageQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(group) = &q.group_by {
        return totals(&state, group, q.start.as_deref(), q.end.as_deref()).await;
    }
    let user_id = q.user_id.as_deref().map(path_id).transpose()?;
    let (page, size, offset) = q.page.resolve()?;
    let (total, rows) = db::billing::list_usage(&state.db, user_id, size, offset).await?;
    Ok(paged(
        total,
        page,
        size,
        rows.iter().map(usage_json).collect(),
    ))
}

async fn list_user_usage(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    let (page, size, offset) = page.resolve()?;
    let (total, rows) = db::billing::list_usage(&state.db, Some(id), size, offset).await?;
    Ok(paged(
        total,
        page,
        size,
        rows.iter().map(usage_json).collect(),
    ))
}

/// `GET /usage?group_by=…`: usage summed per user, model or channel over a time range.
async fn totals(
    state: &AppState,
    group: &str,
    start: Option<&str>,
    end: Option<&str>,
) -> Result<Json<Value>, ApiError> {
    use crate::db::billing::UsageGroup;
    let group_by = match group {
        "user" => UsageGroup::User,
        "model" => UsageGroup::Model,
        "channel" => UsageGroup::Channel,
        other => {
            return Err(ApiError::InvalidInput(format!(
                "group_by: must be user, model or channel, got {other:?}"
            )));
        }
    };
    let end_ms = match end {
        Some(t) => super::parse_time("end", t)?,
        None => crate::clock::now_ms() + 1,
    };
    let start_ms = match start {
        Some(t) => super::parse_time("start", t)?,
        None => end_ms - 30 * 24 * 3600 * 1000,
    };
    if start_ms >= end_ms {
        return Err(ApiError::InvalidInput("start: must be before end".into()));
    }
    let rows = db::billing::usage_totals(&state.db, group_by, start_ms, end_ms).await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            let key: Value = match group_by {
                UsageGroup::Model => json!(r.group_key),
                _ => r.group_key.parse::<i64>().map_or(Value::Null, Value::from),
            };
            json!({
                group: key,
                "requests": r.requests,
                "failed": r.failed,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "cached_tokens": r.cached_tokens,
                "cache_write_tokens": r.cache_write_tokens,
                "units": r.units,
                "cost": Micros(r.cost_micros),
                "cost_micros": r.cost_micros,
            })
        })
        .collect();
    Ok(super::ok(json!({
        "group_by": group,
        "start": iso(start_ms),
        "end": iso(end_ms),
        "items": items,
    })))
}
