//! Operations endpoints: Prometheus text at `/metrics` (behind a bearer token when
//! `TOLLGATE_METRICS_TOKEN` is set), liveness at `/healthz`, readiness
//! (database reachable, catalog loaded, this instance's job worker able to claim jobs) at
//! `/readyz`.

use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// Prometheus text; when `TOLLGATE_METRICS_TOKEN` is set, only for `Authorization: Bearer` it.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.config.metrics_token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        // Compared as hashes, so the comparison's time says nothing about the token.
        let same =
            Sha256::digest(presented.as_bytes()) == Sha256::digest(token.expose().as_bytes());
        if !same {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required for /metrics\n",
            )
                .into_response();
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.cut_streams.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "shutting down"})),
        );
    }
    if let Some(why) = state.jobs.problem(state.config.jobs.poll_interval_ms) {
        tracing::warn!(problem = %why, "readiness check failed");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "jobs not claimable", "reason": why})),
        );
    }
    match state.db.ping().await {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ready"})),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({"status": "database unreachable"})),
            )
        }
    }
}
