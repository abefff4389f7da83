//! The HTTP surface. Where a request goes:
//!
//! - `/v1/*` and `/api/v1/*` OpenAI-compatible: [`openai`] (chat completions, models)
//! - `/api/v1/auth/*` password accounts and login tokens: [`auth`]
//! - `/api/v1/credit/*`, `/api/v1/usage` a user's own balance, ledger and usage: [`account`]
//! - the studio: `/api/v1/writing/*` writing tools: [`writing`]; `/api/v1/image/generate`:
//!   [`image`]; `/api/v1/video/generate` and `/api/v1/video/{task_id}/status`: [`video`];
//!   `/api/v1/ppt/generate`: [`ppt`]; `/api/v1/creations` what users made:
//!   [`creations`] (these, the account and the auth routes are the platform API, limited by
//!   [`platform_limits`])
//! - publishing (seed 000's bodies): `/api/v1/twitter/drafts`: [`drafts`];
//!   `/api/v1/social-sets`: [`social_sets`]; connecting accounts (`/api/v1/twitter/auth`,
//!   `/api/v1/twitter/callback`, `/api/v1/social/accounts`, seed 003's `/api/v2/channels/…`):
//!   [`social_accounts`]; publishing (`/api/v1/twitter/publish`, `/api/v1/twitter/quote`,
//!   `/api/v1/publish/*`): [`publish`]
//! - `/api/v1/files/{id}` stored files through signed URLs, no credential: [`files`]
//! - `/api/v1/admin/*` admin API in the platform envelope: [`admin`]
//! - `/metrics`, `/healthz`, `/readyz`: [`ops`]
//!
//! - `/api/v1/images/*`, `/api/v1/videos/*` the aggregator's media routes: [`openai`] too
//!
//! Every request runs in a span carrying its request id (`track`); every response carries
//! `x-request-id`; every request is counted by route template. Handlers only shape HTTP: the
//! metered work is `gateway`'s.

pub mod account;
pub mod admin;
pub mod auth;
pub mod creation_publish;
pub mod creations;
pub mod drafts;
pub mod extract;
pub mod files;
pub mod image;
pub mod media;
pub mod openai;
pub mod ops;
pub mod platform_limits;
pub mod ppt;
pub mod publish;
pub mod schedule;
pub mod social_accounts;
pub mod social_sets;
pub mod video;
pub mod writing;

use crate::metrics as m;
use crate::state::AppState;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use extract::RequestId;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// The route template a request matched, handed from the inner layer to the outer one.
#[derive(Clone)]
struct RouteLabel(Arc<str>);

/// Builds the whole application router.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.server.max_body_bytes;
    let openai = openai::router();
    Router::new()
        .nest("/v1", openai.clone())
        .nest(
            "/api/v1",
            openai.merge(
                account::router()
                    .merge(auth::router())
                    .merge(writing::router())
                    .merge(creations::router())
                    .merge(image::router())
                    .merge(video::router())
                    .merge(ppt::router())
                    .merge(drafts::router())
                    .merge(media::router())
                    .merge(social_sets::router())
                    .merge(social_accounts::router())
                    .merge(publish::router())
                    .merge(schedule::router())
                    .merge(creation_publish::router())
                    .route_layer(middleware::from_fn_with_state(
                        state.clone(),
                        platform_limits::limit,
                    )),
            ),
        )
        .nest(
            "/api/v2",
            social_accounts::v2_router().route_layer(middleware::from_fn_with_state(
                state.clone(),
                platform_limits::limit,
            )),
        )
        .nest("/api/v1", files::router())
        .nest("/api/v1/admin", admin::router())
        .merge(ops::router())
        .route_layer(middleware::from_fn(label_route))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// Inner layer (matched routes only): remember the route template for metrics.
async fn label_route(path: Option<MatchedPath>, req: Request, next: Next) -> Response {
    let label = path.map(|p| route_label(p.as_str()));
    let mut response = next.run(req).await;
    if let Some(label) = label {
        response.extensions_mut().insert(RouteLabel(label));
    }
    response
}

/// The shared label of a route template (templates are few: one per route).
fn route_label(template: &str) -> Arc<str> {
    static LABELS: crate::memo::Memo<Arc<str>> = crate::memo::Memo::new(1_000);
    LABELS.get(template, || Arc::from(template))
}

/// A method as a metric label: the standard ones by name, anything else as `other`.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Outer layer: request id in, `x-request-id` out, request count and latency by route; the
/// request runs in a span carrying its id (deferred work inherits it), so every log line it
/// causes names it.
async fn track(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = RequestId::new();
    let method = method_label(req.method());
    let span = tracing::info_span!("request", request_id = %id.0, method = %req.method());
    req.extensions_mut().insert(id.clone());
    let mut response = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id.0) {
        response.headers_mut().insert("x-request-id", v);
    }
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map_or_else(|| Arc::from("unmatched"), |r| Arc::clone(&r.0));
    let status = m::status_class(response.status().as_u16());
    metrics::counter!(m::HTTP_REQUESTS, "route" => Arc::clone(&route), "method" => method, "status" => status).increment(1);
    metrics::histogram!(m::HTTP_DURATION, "route" => route, "status" => status)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Unknown paths: OpenAI's error shape under `/v1`, the envelope elsewhere.
async fn not_found(uri: Uri) -> Response {
    let path = uri.path();
    let platform = [
        "/api/v1/admin",
        "/api/v1/auth",
        "/api/v1/credit",
        "/api/v1/usage",
        "/api/v1/writing",
        "/api/v1/creations",
        // Not `/api/v1/images/…` or `/api/v1/videos/…`: those are the aggregator's.
        "/api/v1/image/",
        "/api/v1/video/",
        "/api/v1/ppt",
        "/api/v1/twitter",
        "/api/v1/social-sets",
        "/api/v1/social/",
        "/api/v1/publish",
        "/api/v2/",
        "/api/v1/files",
    ];
    if path.starts_with("/v1/")
        || (path.starts_with("/api/v1/") && !platform.iter().any(|p| path.starts_with(p)))
    {
        let body = serde_json::json!({"error": {
            "message": format!("unknown path {path}"),
            "type": "invalid_request_error", "code": "unknown_url", "param": null}});
        (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
    } else {
        crate::error::ApiError::NotFound(format!("unknown path {path}")).into_response()
    }
}
