//! Usage records: `GET /usage?user_id=&page=&page_size=` and `GET /users/{id}/usage`.

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
    #[serde(flatten)]
    page: Page,
}

async fn list_usage(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Query(q): Query<UsageQuery>,
) -> Result<Json<Value>, ApiError> {
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
