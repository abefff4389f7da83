//! Password accounts on the platform API: `POST /api/v1/auth/register`, `POST /api/v1/auth/login`
//! (a JWT access token and a refresh token), `POST /api/v1/auth/refresh` (the refresh token as
//! Bearer) and `GET /api/v1/auth/me`. The access token works wherever an API key does.

use super::account::own_account;
use super::admin::{ok, users::check_email};
use super::extract::{ApiJson, UserCaller};
use crate::billing::Micros;
use crate::db::{self, users::RegisterError, users::User};
use crate::error::ApiError;
use crate::gateway::auth::presented_key;
use crate::gateway::session::{self, TokenKind};
use crate::state::AppState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/me", get(me))
}

/// An account as its owner sees it.
fn profile(u: &User) -> Value {
    json!({
        "id": u.id,
        "username": u.username,
        "email": u.email,
        "credit_balance": Micros(u.balance_micros),
        "balance_micros": u.balance_micros,
        "is_member": false,
        "membership_type": null,
        "membership_end_date": null,
        "referral_code": null,
    })
}

#[derive(Deserialize)]
struct Registration {
    username: String,
    email: String,
    password: String,
}

fn check_username(name: &str) -> Result<(), ApiError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if (3..=32).contains(&name.len()) && ok_chars {
        Ok(())
    } else {
        Err(ApiError::InvalidInput(
            "username: 3 to 32 characters from letters, digits, '_', '-' and '.'".into(),
        ))
    }
}

fn check_password(password: &str) -> Result<(), ApiError> {
    if (8..=256).contains(&password.chars().count()) {
        Ok(())
    } else {
        Err(ApiError::InvalidInput(
            "password: must be 8 to 256 characters".into(),
        ))
    }
}

/// Runs argon2 off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("password hashing task failed: {e}")))
}

async fn register(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Registration>,
) -> Result<Json<Value>, ApiError> {
    let username = body.username.trim().to_owned();
    check_username(&username)?;
    let email = check_email(&body.email)?;
    check_password(&body.password)?;
    let password = body.password;
    let hash = blocking(move || session::hash_password(&password))
        .await?
        .map_err(ApiError::Internal)?;
    let user = db::users::register(&state.db, &username, &email, &hash)
        .await
        .map_err(|e| match e {
            RegisterError::UsernameTaken => {
                ApiError::Conflict(format!("username: {username:?} is taken"))
            }
            RegisterError::EmailTaken => {
                ApiError::Conflict(format!("email: an account with {email} exists"))
            }
            RegisterError::Db(e) => e.into(),
        })?;
    state.book.open_account(user.id, Micros::ZERO);
    Ok(ok(profile(&user)))
}

#[derive(Deserialize)]
struct Credentials {
    /// A username or an email address.
    username: String,
    password: String,
}

/// New access and refresh tokens for `user`.
fn tokens(state: &AppState, user: &User) -> Result<Value, ApiError> {
    let issue = |kind| {
        state
            .sessions
            .issue(user.id, kind)
            .map_err(|e| ApiError::Internal(format!("signing a token: {e}")))
    };
    Ok(json!({
        "access_token": issue(TokenKind::Access)?,
        "refresh_token": issue(TokenKind::Refresh)?,
        "token_type": "bearer",
        "expires_in": state.sessions.access_ttl().as_secs(),
        "user": profile(user),
    }))
}

async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Json<Value>, ApiError> {
    let refused = || ApiError::Unauthorized("incorrect username or password".into());
    let found = db::users::find_login(&state.db, body.username.trim()).await?;
    let (user, hash) = match found {
        Some((user, Some(hash))) => (user, hash),
        _ => return Err(refused()),
    };
    let password = body.password;
    if !blocking(move || session::verify_password(&password, &hash)).await? {
        return Err(refused());
    }
    if user.status != "active" {
        return Err(ApiError::Forbidden("this account has been disabled".into()));
    }
    Ok(ok(tokens(&state, &user)?))
}

async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let refused =
        || ApiError::Unauthorized("send a valid refresh token as Authorization: Bearer".into());
    let token = presented_key(&headers).ok_or_else(refused)?;
    let user_id = state
        .sessions
        .verify(token, TokenKind::Refresh)
        .ok_or_else(refused)?;
    let user = db::users::get(&state.db, user_id)
        .await?
        .ok_or_else(refused)?;
    if user.status != "active" {
        return Err(ApiError::Forbidden("this account has been disabled".into()));
    }
    Ok(ok(tokens(&state, &user)?))
}

async fn me(
    State(state): State<AppState>,
    UserCaller(user_id): UserCaller,
) -> Result<Json<Value>, ApiError> {
    Ok(ok(profile(&own_account(&state, user_id).await?)))
}
