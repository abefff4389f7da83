//! The OpenAI-compatible endpoints, mounted under both `/v1` and `/api/v1`. One file per
//! endpoint; paths mirror OpenAI's API.

mod chat;
mod completions;
mod embeddings;
mod images;
mod models;
mod videos;

use crate::state::AppState;
use axum::Router;
use axum::routing::{get, post};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/chat/completions", post(chat::create_chat_completion))
        .route("/completions", post(completions::create_completion))
        .route("/embeddings", post(embeddings::create_embedding))
        .route("/images/generations", post(images::create_image))
        .route("/videos", post(videos::create_video))
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
