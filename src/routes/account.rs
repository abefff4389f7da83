//! A user's own view of their money, in the platform envelope, for any of their API keys:
//! `GET /api/v1/credit/balance`, `GET /api/v1/credit/transactions?page=&page_size=` (the
//! ledger, newest first) and `GET /api/v1/usage?page=&page_size=` (their usage records).

use super::admin::{Page, ok, paged, usage::usage_json, users::ledger_json};
use super::extract::UserCaller;
use crate::billing::Micros;
use crate::db::{self, billing::UsageRow, users::User};
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/credit/balance", get(balance))
        .route("/credit/transactions", get(transactions))
        .route("/usage", get(usage))
}

/// The caller's own user row.
pub async fn own_account(state: &AppState, user_id: i64) -> Result<User, ApiError> {
    db::users::get(&state.db, user_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("your account no longer exists".into()))
}

async fn balance(
    State(state): State<AppState>,
    UserCaller(user_id): UserCaller,
) -> Result<Json<Value>, ApiError> {
    let user = own_account(&state, user_id).await?;
    let reserved = state.book.reserved(user.id).unwrap_or(user.reserved_micros);
    let available = user.balance_micros - reserved;
    Ok(ok(json!({
        "credit_balance": Micros(user.balance_micros),
        "balance_micros": user.balance_micros,
        "reserved": Micros(reserved),
        "reserved_micros": reserved,
        "available": Micros(available),
        "available_micros": available,
        "is_member": user.is_member(crate::clock::now_ms()),
        "membership_type": user.membership_type,
        "membership_end_date": user.membership_expires_at_ms.map(super::admin::iso),
    })))
}

async fn transactions(
    State(state): State<AppState>,
    UserCaller(user_id): UserCaller,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let (page, size, offset) = page.resolve()?;
    let (total, rows) = db::users::ledger(&state.db, user_id, size, offset).await?;
    Ok(paged(
        total,
        page,
        size,
        rows.iter().map(ledger_json).collect(),
    ))
}

/// A usage record as its owner sees it: the admin view without the routing internals.
fn own_usage_json(u: &UsageRow) -> Value {
    let mut record = usage_json(u);
    if let Some(fields) = record.as_object_mut() {
        for internal in [
            "user_id",
            "upstream_model",
            "channel_id",
            "reserved",
            "reserved_micros",
            "unbilled_micros",
        ] {
            fields.remove(internal);
        }
    }
    record
}

async fn usage(
    State(state): State<AppState>,
    UserCaller(user_id): UserCaller,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let (page, size, offset) = page.resolve()?;
    let (total, rows) = db::billing::list_usage(&state.db, Some(user_id), size, offset).await?;
    Ok(paged(
        total,
        page,
        size,
        rows.iter().map(own_usage_json).collect(),
    ))
}
