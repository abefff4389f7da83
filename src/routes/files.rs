//! `GET /api/v1/files/{id}?expires=&sig=`: a stored file through its signed URL (no credential,
//! so it works in `<img src>` and `<video src>`). A changed id, expiry or signature is a 403;
//! an expired URL is a 403 that says so (ask for the creation again for a fresh one).

use crate::db;
use crate::error::ApiError;
use crate::files::{self, Refused};
use crate::state::AppState;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::collections::HashMap;

pub fn router() -> Router<AppState> {
    Router::new().route("/files/{id}", get(download))
}

async fn download(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let checked = files::check(
        &state.secrets,
        &id,
        query.get("expires").map(String::as_str),
        query.get("sig").map(String::as_str),
        crate::clock::now_ms(),
    );
    match checked {
        Ok(()) => {}
        Err(Refused::Malformed) => {
            return Err(ApiError::Forbidden(
                "a file URL needs its expires and sig parameters".into(),
            ));
        }
        Err(Refused::BadSignature) => {
            return Err(ApiError::Forbidden(
                "this file URL's signature does not match".into(),
            ));
        }
        Err(Refused::Expired) => {
            return Err(ApiError::Forbidden(
                "this file URL has expired; fetch the creation again for a fresh one".into(),
            ));
        }
    }
    let file = db::files::get(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("file {id} not found")))?;
    let mut response = Body::from(file.data).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&file.content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}
