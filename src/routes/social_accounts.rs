//! Connecting and managing social accounts. Bluesky: `POST /api/v1/bluesky/auth`
//! `{"handle","appPassword","service"}` → `{"sessionId","accountUuid","socialSetId"}`, connected at
//! once. Mastodon (`{"instance"}`), Threads and LinkedIn: `POST /api/v1/{platform}/auth` and
//! `GET /api/v1/{platform}/callback`, as X's. X (seed 000, seed 004): `POST /api/v1/twitter/auth`
//! `{"socialSetId","mode","followOnX"}` → `{"authUrl","sessionId"}`, and the browser redirect
//! `GET /api/v1/twitter/callback?code&state` (no API key: the single-use `state` ties it to the
//! user and the session) → `{"success","accountUuid","socialSetId"}`. Any platform's session is
//! polled at `GET /api/v2/channels/accounts/auth/{platform}/status/{sessionId}` in seed 003's
//! shape. The user's accounts: `GET /api/v1/social/accounts`, `PATCH /api/v1/social/accounts/{id}`
//! `{"name"}`, `DELETE /api/v1/social/accounts/{id}` (revoked at the platform where it can be).

use super::extract::{PlatformUser, parse_json};
use crate::db;
use crate::error::ApiError;
use crate::social::connect::{self, Callback, Mode, Start};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde_json::{Map, Value, json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/twitter/auth", post(start_x))
        .route("/twitter/callback", get(x_callback))
        .route("/bluesky/auth", post(start_bluesky))
        .route("/mastodon/auth", post(start_mastodon))
        .route("/mastodon/callback", get(mastodon_callback))
        .route("/threads/auth", post(start_threads))
        .route("/threads/callback", get(threads_callback))
        .route("/linkedin/auth", post(start_linkedin))
        .route("/linkedin/callback", get(linkedin_callback))
        .route("/social/accounts", get(list))
        .route("/social/accounts/{id}", patch(rename).delete(disconnect))
}

/// Routes under `/api/v2` (seed 003).
pub fn v2_router() -> Router<AppState> {
    Router::new()
        .route(
            "/channels/accounts/auth/{platform}/status/{session_id}",
            get(session_status),
        )
        .route(
            "/channels/accounts/auth/{platform}/select/{session_id}",
            post(select),
        )
}

/// A start body's common fields (`socialSetId`, `mode`, `followOnX`); an empty body is `{}`.
fn start_of(raw: &Bytes) -> Result<(Map<String, Value>, Start), ApiError> {
    let body: Map<String, Value> = if raw.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        parse_json(raw)?
    };
    let social_set_id = match body.get("socialSetId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::InvalidInput(
                "socialSetId: must be a string".into(),
            ));
        }
    };
    let follow_on_x = match body.get("followOnX") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::InvalidInput(
                "followOnX: must be true or false".into(),
            ));
        }
    };
    let start = Start {
        social_set_id,
        mode: Mode::parse(body.get("mode"))?,
        follow_on_x,
    };
    Ok((body, start))
}

/// A started connection: where to send the user, and the session to poll.
fn started_json(started: connect::Started) -> Json<Value> {
    Json(json!({
        "success": true,
        "authUrl": started.auth_url,
        "sessionId": started.session_id,
        "expiresAt": super::admin::iso(started.expires_at_ms),
    }))
}

/// A finished connection (seed 000's callback answer).
fn connected_json((account, set_id): (db::social::Account, String)) -> Json<Value> {
    Json(json!({
        "success": true,
        "accountUuid": account.id,
        "socialSetId": set_id,
        "username": account.username,
    }))
}

async fn start_x(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    raw: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (_, start) = start_of(&raw)?;
    Ok(started_json(
        connect::start_x(&state, user_id, start).await?,
    ))
}

async fn x_callback(
    State(state): State<AppState>,
    Query(cb): Query<Callback>,
) -> Result<Json<Value>, ApiError> {
    Ok(connected_json(connect::finish_x(&state, &cb).await?))
}

/// `POST /api/v1/bluesky/auth` `{"handle","appPassword","service","socialSetId","mode"}`:
/// connected at once (the session is already completed).
async fn start_bluesky(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    raw: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (body, start) = start_of(&raw)?;
    let text = |k: &str| match body.get(k) {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 300 => {
            Ok(Some(s.trim().to_owned()))
        }
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(None),
        Some(_) => Err(ApiError::InvalidInput(format!("{k}: must be a string"))),
    };
    let handle =
        text("handle")?.ok_or_else(|| ApiError::InvalidInput("handle: required".into()))?;
    let app_password = text("appPassword")?.ok_or_else(|| {
        ApiError::InvalidInput("appPassword: required (an app password, not the account's)".into())
    })?;
    let service =
        text("service")?.unwrap_or_else(|| state.config.social.bluesky.default_service.clone());
    let login = connect::BlueskyLogin {
        handle,
        app_password,
        service,
    };
    let (account, set_id, session_id) =
        connect::connect_bluesky(&state, user_id, start, login).await?;
    Ok(Json(json!({
        "success": true,
        "sessionId": session_id,
        "status": "completed",
        "accountUuid": account.id,
        "socialSetId": set_id,
        "username": account.username,
    })))
}

/// `POST /api/v1/mastodon/auth` `{"instance","socialSetId","mode"}` → `{"authUrl","sessionId"}`.
async fn start_mastodon(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    raw: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (body, start) = start_of(&raw)?;
    let instance = match body.get("instance") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 300 => s.clone(),
        _ => {
            return Err(ApiError::InvalidInput(
                "instance: required (like mastodon.social)".into(),
            ));
        }
    };
    Ok(started_json(
        connect::start_mastodon(&state, user_id, start, &instance).await?,
    ))
}

async fn mastodon_callback(
    State(state): State<AppState>,
    Query(cb): Query<Callback>,
) -> Result<Json<Value>, ApiError> {
    Ok(connected_json(connect::finish_mastodon(&state, &cb).await?))
}

/// `POST /api/v1/threads/auth` `{"socialSetId","mode"}` → `{"authUrl","sessionId"}`.
async fn start_threads(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    raw: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (_, start) = start_of(&raw)?;
    Ok(started_json(
        connect::start_threads(&state, user_id, start).await?,
    ))
}

async fn threads_callback(
    State(state): State<AppState>,
    Query(cb): Query<Callback>,
) -> Result<Json<Value>, ApiError> {
    Ok(connected_json(connect::finish_threads(&state, &cb).await?))
}

/// `POST /api/v1/linkedin/auth` `{"socialSetId","mode"}` → `{"authUrl","sessionId"}`.
async fn start_linkedin(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    raw: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (_, start) = start_of(&raw)?;
    Ok(started_json(
        connect::start_linkedin(&state, user_id, start).await?,
    ))
}

async fn linkedin_callback(
    State(state): State<AppState>,
    Query(cb): Query<Callback>,
) -> Result<Json<Value>, ApiError> {
    Ok(match connect::finish_linkedin(&state, &cb).await? {
        connect::Linked::Connected(done) => connected_json(*done),
        connect::Linked::Choose {
            session_id,
            selectable,
        } => Json(json!({
            "success": true,
            "requiresSelection": true,
            "sessionId": session_id,
            "selectableAccounts": selectable,
        })),
    })
}

/// `POST /api/v2/channels/accounts/auth/{platform}/select/{sessionId}` `{"platformUids":[…]}`:
/// completes a session that `requiresSelection` with the chosen accounts; the session in seed
/// 003's shape, as its status route answers it.
async fn select(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    Path((platform, session_id)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: Map<String, Value> = parse_json(&raw)?;
    let uids = crate::social::drafts::read_ids("platformUids", body.get("platformUids"))?
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            ApiError::InvalidInput(
                "platformUids: required, the platformUid of each selectableAccounts entry to connect"
                    .into(),
            )
        })?;
    let named = crate::social::text::Platform::parse(&platform)
        .map(|p| p.as_str())
        .ok_or_else(|| {
            ApiError::NotFound(format!("no {platform} connection session {session_id}"))
        })?;
    let session = connect::select(&state, user_id, named, &session_id, &uids).await?;
    let accounts = db::social::accounts(&state.db, user_id).await?;
    Ok(Json(json!({
        "code": 0,
        "message": "请求成功",
        "data": connect::session_json(&session, &accounts, super::admin::iso),
    })))
}

async fn session_status(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    Path((platform, session_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no {platform} connection session {session_id}"));
    let session = db::social_auth::get(&state.db, user_id, &session_id)
        .await?
        .ok_or_else(not_found)?;
    let named = crate::social::text::Platform::parse(&platform).map(|p| p.as_str());
    if named != Some(session.platform.as_str()) {
        return Err(not_found());
    }
    let accounts = db::social::accounts(&state.db, user_id).await?;
    Ok(Json(json!({
        "code": 0,
        "message": "请求成功",
        "data": connect::session_json(&session, &accounts, super::admin::iso),
    })))
}

fn account_json(a: &db::social::Account) -> Value {
    json!({
        "accountId": a.id,
        "accountUuid": a.id,
        "platform": a.platform,
        "platformUid": a.platform_uid,
        "username": a.username,
        "displayName": a.display_name,
        "avatarUrl": a.avatar_url,
        "instance": a.instance,
        "status": a.status,
        "tokenExpiresAt": a.token_expires_at_ms.map(super::admin::iso),
        "createdAt": super::admin::iso(a.created_at_ms),
    })
}

async fn list(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
) -> Result<Json<Value>, ApiError> {
    let accounts = db::social::accounts(&state.db, user_id).await?;
    Ok(Json(
        json!({"success": true, "accounts": accounts.iter().map(account_json).collect::<Vec<_>>()}),
    ))
}

async fn rename(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: Map<String, Value> = parse_json(&body)?;
    let name = match body.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.trim().chars().count() <= 100 => {
            s.trim()
        }
        _ => {
            return Err(ApiError::InvalidInput(
                "name: required, at most 100 characters".into(),
            ));
        }
    };
    let account = db::social::rename_account(&state.db, user_id, &id, name)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("account {id} not found")))?;
    Ok(Json(
        json!({"success": true, "account": account_json(&account)}),
    ))
}

async fn disconnect(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let account = db::social::account(&state.db, user_id, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("account {id} not found")))?;
    if !db::social::disconnect(&state.db, user_id, &id).await? {
        return Err(ApiError::NotFound(format!("account {id} not found")));
    }
    // Revoked at the platform after the tokens are gone here (best effort).
    connect::revoke(&state, &account).await;
    Ok(Json(
        json!({"success": true, "message": "账号已断开", "accountId": id}),
    ))
}
