//! Users, their balances and ledgers: `POST/GET /users`, `GET/PATCH /users/{id}`,
//! `POST /users/{id}/balance`, `GET /users/{id}/ledger`.

use super::{Page, iso, ok, paged, parse_status, parse_time, path_id};
use crate::billing::Micros;
use crate::billing::money::NonNegativeMicros;
use crate::cluster::Change;
use crate::db::{self, users::CreateUserError, users::LedgerEntry, users::User};
use crate::error::ApiError;
use crate::routes::extract::{AdminCaller, ApiJson};
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users", post(create_user).get(list_users))
        .route("/users/{id}", get(get_user).patch(update_user))
        .route("/users/{id}/balance", post(adjust_balance))
        .route("/users/{id}/ledger", get(list_ledger))
}

/// A user as the admin API shows it; `reserved` is what requests in flight hold right now.
pub fn user_json(state: &AppState, u: &User) -> Value {
    let reserved = state.book.reserved(u.id).unwrap_or(u.reserved_micros);
    json!({
        "id": u.id,
        "email": u.email,
        "username": u.username,
        "role": u.role,
        "status": u.status,
        "balance": Micros(u.balance_micros),
        "balance_micros": u.balance_micros,
        "reserved": Micros(reserved),
        "reserved_micros": reserved,
        "available": Micros(u.balance_micros - reserved),
        "available_micros": u.balance_micros - reserved,
        "is_member": u.is_member(crate::clock::now_ms()),
        "membership_type": u.membership_type,
        "membership_end_date": u.membership_expires_at_ms.map_or(Value::Null, iso),
        "created_at": iso(u.created_at_ms),
        "updated_at": iso(u.updated_at_ms),
    })
}

pub fn ledger_json(e: &LedgerEntry) -> Value {
    json!({
        "id": e.id,
        "user_id": e.user_id,
        "type": e.kind,
        "amount": Micros(e.amount_micros),
        "amount_micros": e.amount_micros,
        "balance_after": Micros(e.balance_after_micros),
        "balance_after_micros": e.balance_after_micros,
        "description": e.description,
        "request_id": e.request_id,
        "created_at": iso(e.created_at_ms),
    })
}

#[derive(Deserialize)]
struct NewUser {
    email: String,
    #[serde(default)]
    balance: Option<NonNegativeMicros>,
    #[serde(default)]
    role: Option<String>,
}

pub fn check_email(email: &str) -> Result<String, ApiError> {
    let email = email.trim();
    let valid = email.len() <= 254
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
    if valid {
        Ok(email.to_owned())
    } else {
        Err(ApiError::InvalidInput(format!(
            "email: {email:?} is not an email address"
        )))
    }
}

async fn create_user(
    State(state): State<AppState>,
    _admin: AdminCaller,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<Json<Value>, ApiError> {
    let email = check_email(&body.email)?;
    let role = match body.role.as_deref() {
        None | Some("user") => "user",
        Some("admin") => "admin",
        Some(other) => {
            return Err(ApiError::InvalidInput(format!(
                "role: must be \"user\" or \"admin\", got {other:?}"
            )));
        }
    };
    let balance = body.balance.map_or(Micros::ZERO, |b| b.0);
    let user = db::users::create(&state.db, &email, role, balance)
        .await
        .map_err(|e| match e {
            CreateUserError::EmailTaken => {
                ApiError::Conflict(format!("a user with email {email} exists"))
            }
            CreateUserError::Db(e) => e.into(),
        })?;
    state.book.open_account(user.id, balance);
    Ok(ok(user_json(&state, &user)))
}

async fn list_users(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let (page, size, offset) = page.resolve()?;
    let (total, users) = db::users::list(&state.db, size, offset).await?;
    Ok(paged(
        total,
        page,
        size,
        users.iter().map(|u| user_json(&state, u)).collect(),
    ))
}

async fn get_user(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    let user = db::users::get(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("user {id} not found")))?;
    Ok(ok(user_json(&state, &user)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    status: Option<String>,
    email: Option<String>,
    /// `null` ends a membership; a type needs `membership_end_date`.
    #[serde(default, deserialize_with = "super::present")]
    membership_type: Option<Option<String>>,
    membership_end_date: Option<String>,
}

async fn update_user(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<UserPatch>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    let status = patch
        .status
        .as_deref()
        .map(|s| parse_status("status", s))
        .transpose()?;
    let email = patch.email.as_deref().map(check_email).transpose()?;
    let membership = match (patch.membership_type, patch.membership_end_date) {
        (None, None) => None,
        (None, Some(_)) | (Some(None), Some(_)) => {
            return Err(ApiError::InvalidInput(
                "membership_end_date: set it together with a membership_type".into(),
            ));
        }
        (Some(None), None) => Some((None, None)),
        (Some(Some(kind)), end) => {
            let kind = kind.trim().to_owned();
            if kind.is_empty() || kind.len() > 32 {
                return Err(ApiError::InvalidInput(
                    "membership_type: must be 1 to 32 characters (e.g. monthly)".into(),
                ));
            }
            let end = end.ok_or_else(|| {
                ApiError::InvalidInput(
                    "membership_end_date: required with a membership_type".into(),
                )
            })?;
            Some((Some(kind), Some(parse_time("membership_end_date", &end)?)))
        }
    };
    let changes = db::users::UserPatch {
        status,
        email: email.as_deref(),
        membership,
    };
    let user = db::users::update(&state.db, id, changes)
        .await
        .map_err(|e| match e {
            CreateUserError::EmailTaken => {
                ApiError::Conflict("a user with this email exists".into())
            }
            CreateUserError::Db(e) => e.into(),
        })?
        .ok_or_else(|| ApiError::NotFound(format!("user {id} not found")))?;
    state.announce(Change::Keys).await?;
    Ok(ok(user_json(&state, &user)))
}

#[derive(Deserialize)]
struct BalanceChange {
    delta: Micros,
    reason: Option<String>,
}

async fn adjust_balance(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BalanceChange>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    if body.delta.0 == 0 {
        return Err(ApiError::InvalidInput("delta: must not be zero".into()));
    }
    let reason = body.reason.unwrap_or_else(|| "admin adjustment".into());
    let entry = state.book.adjust(&state.db, id, body.delta, &reason).await.map_err(|e| match e {
        db::users::AdjustError::NotFound => ApiError::NotFound(format!("user {id} not found")),
        db::users::AdjustError::WouldGoNegative { available } => ApiError::Conflict(format!(
            "delta: the balance cannot go below zero or below what is reserved (available {available})"
        )),
        db::users::AdjustError::Db(e) => e.into(),
    })?;
    Ok(ok(ledger_json(&entry)))
}

async fn list_ledger(
    State(state): State<AppState>,
    _admin: AdminCaller,
    Path(id): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    let (page, size, offset) = page.resolve()?;
    let (total, rows) = db::users::ledger(&state.db, id, size, offset).await?;
    Ok(paged(
        total,
        page,
        size,
        rows.iter().map(ledger_json).collect(),
    ))
}
