//! Extractors shared by the routes: the request id, the authenticated caller (per surface, with
//! that surface's error shape), and a JSON body whose errors name the offending field.

use crate::db;
use crate::error::{ApiError, OpenAiError};
use crate::gateway::auth::{AuthError, Caller, presented_key};
use crate::gateway::session::{TokenKind, looks_like_jwt};
use crate::state::AppState;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// This request's id (also sent back as `x-request-id`).
#[derive(Clone, Debug)]
pub struct RequestId(pub Arc<str>);

impl RequestId {
    /// A fresh id: `req_` + 24 hex digits, the first 11 the time in milliseconds and the rest
    /// 52 random bits. Ids made later sort later, so the unique indexes on request ids (usage
    /// records, ledger rows) grow at their right edge: a batch of settlements dirties a few index
    /// pages instead of one per row.
    pub fn new() -> RequestId {
        let ms = crate::clock::now_ms().max(0) as u64 & ((1 << 44) - 1);
        let random = rand::random::<u64>() >> 12;
        RequestId(Arc::from(format!("req_{ms:011x}{random:013x}")))
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId::new()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_default())
    }
}

/// Whoever the request's credential (an API key, or a login token) belongs to (already known
/// when a middleware authenticated the request).
pub async fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, AuthError> {
    if let Some(caller) = parts.extensions.get::<Caller>() {
        return Ok(caller.clone());
    }
    let presented = presented_key(&parts.headers);
    match presented {
        Some(token) if looks_like_jwt(token) => {
            let user_id = state
                .sessions
                .verify(token, TokenKind::Access)
                .ok_or(AuthError::InvalidToken)?;
            let user = db::users::get(&state.db, user_id)
                .await?
                .ok_or(AuthError::InvalidToken)?;
            if user.status != "active" {
                return Err(AuthError::UserDisabled);
            }
            Ok(Caller {
                key_id: None,
                user_id: Some(user.id),
                is_admin: user.role == "admin",
                models: None,
                limits: None,
                is_member: user.is_member(crate::clock::now_ms()),
            })
        }
        _ => state.keys.authenticate(&state.db, presented).await,
    }
}

/// A caller on the OpenAI surface (401/403 in OpenAI's shape).
pub struct OpenAiCaller(pub Caller);

impl FromRequestParts<AppState> for OpenAiCaller {
    type Rejection = OpenAiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(OpenAiCaller(authenticate(parts, state).await?))
    }
}

/// An admin caller (the bootstrap key or a key of a user with the admin role).
pub struct AdminCaller(pub Caller);

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = authenticate(parts, state).await?;
        if !caller.is_admin {
            return Err(ApiError::Forbidden("admin role required".into()));
        }
        Ok(AdminCaller(caller))
    }
}

/// A user on the platform surface (any of their API keys); the id of their account.
pub struct UserCaller(pub i64);

impl FromRequestParts<AppState> for UserCaller {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let PlatformUser(caller, user_id) = PlatformUser::from_request_parts(parts, state).await?;
        drop(caller);
        Ok(UserCaller(user_id))
    }
}

/// A user on the platform surface, with what their credential allows (for the metered
/// features, which run under the key's models and limits), and their account's id.
pub struct PlatformUser(pub Caller, pub i64);

impl FromRequestParts<AppState> for PlatformUser {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = authenticate(parts, state).await?;
        let user_id = caller.user_id.ok_or_else(|| {
            ApiError::Forbidden("the admin credential has no account; use a user's API key".into())
        })?;
        Ok(PlatformUser(caller, user_id))
    }
}

/// A JSON body for the platform surface; errors say which field is wrong.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::InvalidInput(format!("could not read the request body: {e}")))?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON object body, naming the path of the field that failed (an array is refused,
/// not read positionally into the fields).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if !crate::gateway::request::is_object(bytes) {
        return Err(ApiError::InvalidInput(
            "the request body must be a JSON object".into(),
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            ApiError::InvalidInput(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::InvalidInput(format!("{path}: {inner}"))
        }
    })
}
