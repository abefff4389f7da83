//! The OpenAI-compatible endpoints, mounted under both `/v1` and `/api/v1`. One file per
//! endpoint; paths mirror OpenAI's API.

mod chat;
mod completions;
mod embeddings;
mod images;
mod models;
mod videos;

use crate::error::OpenAiError;
use crate::gateway::throttle::RateHeaders;
use crate::state::AppState;
use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/chat/completions", post(chat::create_chat_completion))
        .route("/completions", post(completions::create_completion))
        .route("/embeddings", post(embeddings::create_embedding))
        .route("/images/generations", post(images::create_image))
        .route(
            "/videos",
            post(videos::create_video).get(videos::list_videos),
        )
        .route("/videos/{id}", get(videos::retrieve_video))
        .route("/videos/{id}/content", get(videos::video_content))
        .route("/videos/generations", post(videos::create_generation))
        .route("/videos/generations/{id}", get(videos::retrieve_generation))
        // Admins manage the registry here too (platform envelope): see `admin::registry`.
        .route(
            "/models",
            get(models::list_models).post(crate::routes::admin::registry::create),
        )
        .route(
            "/models/{*id}",
            get(models::retrieve_model)
                .put(crate::routes::admin::registry::update)
                .delete(crate::routes::admin::registry::delete),
        )
}

/// The answer to a limited call (or its error), with the call's rate-limit headers.
fn with_rate_headers<T: IntoResponse>(
    result: Result<T, OpenAiError>,
    headers: RateHeaders,
) -> Response {
    let mut response = match result {
        Ok(answer) => answer.into_response(),
        Err(e) => e.into_response(),
    };
    headers.apply(response.headers_mut());
    response
}
