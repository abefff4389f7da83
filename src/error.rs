//! Client-facing errors, one enum per surface, each variant knowing its HTTP status and code:
//! [`OpenAiError`] renders OpenAI's `{"error": {...}}` shape, [`ApiError`] the platform
//! envelope `{"success": false, "code", "message", "error", "data": null}`. Internal causes are
//! logged once here, at the edge; clients get a clean message and the request id.

use crate::billing::Micros;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why a presented key was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send Authorization: Bearer <key> or X-API-Key: <key>")]
    Missing,
    #[error("incorrect API key provided")]
    Invalid,
    #[error("this API key has been disabled")]
    KeyDisabled,
    #[error("this API key has expired")]
    Expired,
    #[error("this account has been disabled")]
    UserDisabled,
    #[error("the login token is invalid or has expired; log in again")]
    InvalidToken,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Characters of an error message a client is shown at most: what it sent (a model name, a
/// field's value) is echoed only this far.
const MAX_MESSAGE_CHARS: usize = 400;

/// `message`, cut to `MAX_MESSAGE_CHARS` with a note of how much was left out.
pub fn clip(message: String) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        None => message,
        Some((at, _)) => format!("{}… ({} more bytes)", &message[..at], message.len() - at),
    }
}

/// An error on the OpenAI-compatible surface.
#[derive(Debug, thiserror::Error)]
pub enum OpenAiError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("this API key may not use model '{model}'")]
    ModelNotAllowed { model: String },
    #[error(
        "the admin credential has no balance; create a user and call models with that user's key"
    )]
    NoAccount,
    #[error("the model '{model}' does not exist or you do not have access to it")]
    ModelNotFound { model: String },
    #[error(
        "the model '{model}' has no price configured, so it cannot be called; an admin must set one"
    )]
    ModelNotPriced { model: String },
    #[error("the model '{model}' is priced but no active channel serves it")]
    NoChannel { model: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error(
        "insufficient balance: this request needs up to {needed} credits to be reserved, {available} available"
    )]
    InsufficientBalance { needed: Micros, available: Micros },
    #[error("upstream error: {message}")]
    Upstream { message: String },
    #[error("upstream timed out: {message}")]
    UpstreamTimeout { message: String },
    #[error("{message}")]
    RateLimited {
        message: String,
        /// OpenAI's error type: `requests` or `tokens`.
        kind: &'static str,
        /// When to retry; `None` when retrying cannot help (the request is too large).
        retry_after_ms: Option<u64>,
    },
    #[error("{message}")]
    LimiterUnavailable { message: String },
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("internal error (request id {request_id})")]
    Internal { request_id: String, cause: String },
}

impl OpenAiError {
    /// An internal failure: logged here with its cause, shown to the client by request id only.
    pub fn internal(request_id: &str, cause: impl std::fmt::Display) -> OpenAiError {
        let cause = cause.to_string();
        tracing::error!(request_id, %cause, "internal error");
        OpenAiError::Internal {
            request_id: request_id.to_owned(),
            cause,
        }
    }

    /// HTTP status, OpenAI error type and code.
    pub fn parts(&self) -> (StatusCode, &'static str, Option<&'static str>) {
        use OpenAiError::*;
        match self {
            InvalidRequest { .. } => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
            BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                Some("request_too_large"),
            ),
            Auth(AuthError::UserDisabled) => (
                StatusCode::FORBIDDEN,
                "permission_error",
                Some("account_disabled"),
            ),
            Auth(AuthError::Missing) => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("missing_api_key"),
            ),
            Auth(AuthError::Db(_)) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                Some("internal_error"),
            ),
            Auth(AuthError::Expired) => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("expired_api_key"),
            ),
            Auth(_) => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
            ModelNotAllowed { .. } => (
                StatusCode::FORBIDDEN,
                "permission_error",
                Some("model_not_allowed"),
            ),
            NoAccount => (
                StatusCode::FORBIDDEN,
                "permission_error",
                Some("no_account"),
            ),
            ModelNotFound { .. } => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
            ),
            ModelNotPriced { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("model_not_priced"),
            ),
            NoChannel { .. } => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_available"),
            ),
            NotFound { .. } => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("not_found"),
            ),
            InsufficientBalance { .. } => (
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_quota",
                Some("insufficient_balance"),
            ),
            Upstream { .. } => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                Some("upstream_error"),
            ),
            UpstreamTimeout { .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_error",
                Some("upstream_timeout"),
            ),
            RateLimited { kind, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                kind,
                Some("rate_limit_exceeded"),
            ),
            LimiterUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                Some("rate_limiter_unavailable"),
            ),
            ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                Some("shutting_down"),
            ),
            Internal { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                Some("internal_error"),
            ),
        }
    }

    /// The `param` field: which request field was wrong.
    fn param(&self) -> Option<&'static str> {
        match self {
            OpenAiError::InvalidRequest { param, .. } => *param,
            OpenAiError::ModelNotAllowed { .. }
            | OpenAiError::ModelNotFound { .. }
            | OpenAiError::ModelNotPriced { .. }
            | OpenAiError::NoChannel { .. } => Some("model"),
            _ => None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let (_, kind, code) = self.parts();
        let message = match self {
            OpenAiError::Auth(AuthError::Db(e)) => {
                tracing::error!(error = %e, "key lookup failed");
                "internal error while checking the API key".to_owned()
            }
            other => other.to_string(),
        };
        json!({"error": {"message": clip(message), "type": kind, "code": code, "param": self.param()}})
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.parts();
        let mut response = (status, axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        match &self {
            OpenAiError::RateLimited {
                retry_after_ms: Some(ms),
                ..
            } => retry_after(headers, *ms),
            // Waiting cannot make it fit: tell SDKs not to retry.
            OpenAiError::RateLimited { .. } => {
                headers.insert("x-should-retry", HeaderValue::from_static("false"));
            }
            _ if status == StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// `Retry-After` in whole seconds (rounded up) and `retry-after-ms`, which OpenAI's SDKs read
/// first.
pub fn retry_after(headers: &mut axum::http::HeaderMap, ms: u64) {
    let secs = ms.div_ceil(1000).max(1);
    if let Ok(v) = HeaderValue::try_from(secs.to_string()) {
        headers.insert(header::RETRY_AFTER, v);
    }
    if let Ok(v) = HeaderValue::try_from(ms.max(1).to_string()) {
        headers.insert("retry-after-ms", v);
    }
}

/// An error on the platform and admin surfaces (the `success`/`code` envelope). The envelope's
/// `code` is the platform catalogue's number where it has one (seed 001: 40001 insufficient
/// credits … 40010 activity ended), the HTTP status otherwise; `error` is the string code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidInput(String),
    /// 40001: the balance does not cover what the action may cost.
    #[error(
        "insufficient credits: this needs up to {needed} credits, {available} available; recharge or buy a membership"
    )]
    InsufficientCredits { needed: Micros, available: Micros },
    /// 40002.
    #[error("{0}")]
    MembershipExpired(String),
    /// 40003.
    #[error("{0}")]
    InvalidCoupon(String),
    /// 40004.
    #[error("{0}")]
    OrderNotFound(String),
    /// 40005.
    #[error("{0}")]
    PaymentFailed(String),
    /// 40006: the model's upstream failed or did not answer in time.
    #[error("{0}")]
    AiServiceFailed(String),
    /// 40007: an answer came but no usable content (empty, refused, cut).
    #[error("{0}")]
    GenerationFailed(String),
    /// 40008.
    #[error("{0}")]
    AccountNotBound(String),
    /// 40009.
    #[error("{0}")]
    PublishFailed(String),
    /// 40010.
    #[error("{0}")]
    ActivityEnded(String),
    #[error("{0}")]
    Unauthorized(String),
    /// A social account's token was refused and could not be refreshed: connect it again.
    #[error("{0}")]
    TokenExpired(String),
    /// A platform's OAuth app is not configured (`[social.*]`).
    #[error("{0}")]
    OAuthNotConfigured(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A body or a file over its limit (413).
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    RateLimited(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// HTTP status, the envelope's numeric `code` and its string `error`.
    pub fn parts(&self) -> (StatusCode, u16, &'static str) {
        let catalogued = |status: StatusCode, code: u16, name: &'static str| (status, code, name);
        let (status, name) = match self {
            ApiError::InsufficientCredits { .. } => {
                return catalogued(StatusCode::PAYMENT_REQUIRED, 40001, "INSUFFICIENT_CREDITS");
            }
            ApiError::MembershipExpired(_) => {
                return catalogued(StatusCode::PAYMENT_REQUIRED, 40002, "MEMBERSHIP_EXPIRED");
            }
            ApiError::InvalidCoupon(_) => {
                return catalogued(StatusCode::BAD_REQUEST, 40003, "INVALID_COUPON");
            }
            ApiError::OrderNotFound(_) => {
                return catalogued(StatusCode::NOT_FOUND, 40004, "ORDER_NOT_FOUND");
            }
            ApiError::PaymentFailed(_) => {
                return catalogued(StatusCode::BAD_REQUEST, 40005, "PAYMENT_FAILED");
            }
            ApiError::AiServiceFailed(_) => {
                return catalogued(StatusCode::BAD_GATEWAY, 40006, "AI_SERVICE_FAILED");
            }
            ApiError::GenerationFailed(_) => {
                return catalogued(StatusCode::UNPROCESSABLE_ENTITY, 40007, "GENERATION_FAILED");
            }
            ApiError::AccountNotBound(_) => {
                return catalogued(StatusCode::BAD_REQUEST, 40008, "ACCOUNT_NOT_BOUND");
            }
            ApiError::PublishFailed(_) => {
                return catalogued(StatusCode::BAD_GATEWAY, 40009, "PUBLISH_FAILED");
            }
            ApiError::ActivityEnded(_) => {
                return catalogued(StatusCode::BAD_REQUEST, 40010, "ACTIVITY_ENDED");
            }
            ApiError::InvalidInput(_) => (StatusCode::BAD_REQUEST, "INVALID_INPUT"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            ApiError::TokenExpired(_) => (StatusCode::UNAUTHORIZED, "TOKEN_EXPIRED"),
            ApiError::OAuthNotConfigured(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "OAUTH_NOT_CONFIGURED")
            }
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
        };
        (status, status.as_u16(), name)
    }
}

/// A metered call a platform feature made through the gateway, failed: the platform's answer.
impl From<OpenAiError> for ApiError {
    fn from(e: OpenAiError) -> ApiError {
        match e {
            OpenAiError::InsufficientBalance { needed, available } => {
                ApiError::InsufficientCredits { needed, available }
            }
            OpenAiError::Upstream { message } | OpenAiError::UpstreamTimeout { message } => {
                ApiError::AiServiceFailed(format!("the AI service failed: {message}"))
            }
            OpenAiError::RateLimited { message, .. } => ApiError::RateLimited(message),
            OpenAiError::LimiterUnavailable { message } => ApiError::Unavailable(message),
            OpenAiError::ShuttingDown => ApiError::Unavailable(e.to_string()),
            OpenAiError::Auth(a) => a.into(),
            OpenAiError::ModelNotAllowed { .. } | OpenAiError::NoAccount => {
                ApiError::Forbidden(e.to_string())
            }
            OpenAiError::ModelNotFound { .. }
            | OpenAiError::NoChannel { .. }
            | OpenAiError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            OpenAiError::InvalidRequest { .. }
            | OpenAiError::BodyTooLarge { .. }
            | OpenAiError::ModelNotPriced { .. } => ApiError::InvalidInput(e.to_string()),
            // Already logged with its cause where it happened.
            OpenAiError::Internal { request_id, cause } => {
                ApiError::Internal(format!("{cause} (request id {request_id})"))
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        tracing::error!(error = %e, "database error");
        ApiError::Internal(e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        match e {
            AuthError::Db(e) => e.into(),
            AuthError::UserDisabled => ApiError::Forbidden(e.to_string()),
            other => ApiError::Unauthorized(other.to_string()),
        }
    }
}

impl ApiError {
    /// The envelope this error answers with.
    pub fn body(&self) -> serde_json::Value {
        let (_, code, name) = self.parts();
        let message = match self {
            ApiError::Internal(_) => {
                "internal error; the server log has it under this response's x-request-id"
                    .to_owned()
            }
            other => other.to_string(),
        };
        json!({
            "success": false,
            "code": code,
            "message": clip(message),
            "error": name,
            "data": null,
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.parts();
        (status, axum::Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn envelope(e: ApiError) -> (StatusCode, serde_json::Value) {
        let response = e.into_response();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, serde_json::from_slice(&body).expect("json"))
    }

    #[tokio::test]
    async fn the_envelope_code_is_the_platform_number_where_the_catalogue_has_one() {
        let refused = OpenAiError::InsufficientBalance {
            needed: Micros(10_000_000),
            available: Micros(1),
        };
        let (status, body) = envelope(refused.into()).await;
        assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(body["code"], 40001);
        assert_eq!(body["error"], "INSUFFICIENT_CREDITS");
        assert_eq!(body["success"], false);
        assert!(
            body["message"]
                .as_str()
                .expect("text")
                .contains("needs up to 10 credits")
        );

        let failed = OpenAiError::UpstreamTimeout {
            message: "no response from upstream within 5000 ms".into(),
        };
        let (status, body) = envelope(failed.into()).await;
        assert_eq!(
            (status, body["code"].clone()),
            (StatusCode::BAD_GATEWAY, json!(40006))
        );
        let (_, body) = envelope(ApiError::GenerationFailed("empty answer".into())).await;
        assert_eq!(
            (body["code"].clone(), body["error"].clone()),
            (json!(40007), json!("GENERATION_FAILED"))
        );

        // Without a catalogue number the code is the HTTP status.
        let (status, body) = envelope(ApiError::NotFound("draft 7 not found".into())).await;
        assert_eq!(
            (status, body["code"].clone()),
            (StatusCode::NOT_FOUND, json!(404))
        );
        // An internal cause never reaches the client.
        let (_, body) = envelope(ApiError::Internal("disk full at /var/lib".into())).await;
        assert!(!body["message"].as_str().expect("text").contains("disk"));
    }
}
