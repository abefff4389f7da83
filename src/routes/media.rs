//! `POST /api/v1/twitter/media/upload` (seed 000): multipart `files` (1 to 4; an image at most
//! 5 MB, a GIF 15 MB, a video 512 MB, the type sniffed from the bytes, never the name or the
//! declared type) → `{"code":0,"data":{"uploads":[{"mediaId","url","type"}]}}`. Each file is
//! streamed into the file store a chunk at a time (never held whole); one that breaks a rule
//! stores nothing of the request. A `mediaId` goes into a draft item's `media` or a per-platform
//! route's media list; at publish each platform gets it its own way.

use super::extract::PlatformUser;
use crate::db::files::FileMeta;
use crate::error::ApiError;
use crate::files;
use crate::social::media::{Intake, Kind, MAX_FILES, Refusal};
use crate::state::AppState;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    // Four videos at their limit, and the multipart framing around them.
    let most = MAX_FILES * Kind::Video.upload_limit() as usize + (1 << 20);
    Router::new().route(
        "/twitter/media/upload",
        post(upload).layer(DefaultBodyLimit::max(most)),
    )
}

/// The answer to file `k` refused on arrival.
fn refused(k: usize, r: Refusal) -> ApiError {
    match r {
        Refusal::TooLarge(_) => ApiError::TooLarge(format!("files[{k}] {r}")),
        Refusal::Store(e) => e.into(),
        _ => ApiError::InvalidInput(format!("files[{k}] {r}")),
    }
}

async fn upload(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    let mut multipart = multipart.map_err(|e| {
        ApiError::InvalidInput(format!(
            "files: the body must be multipart/form-data with 1 to {MAX_FILES} files: {}",
            e.body_text()
        ))
    })?;
    let mut stored: Vec<(FileMeta, Kind)> = Vec::new();
    let result = receive(&state, user_id, &mut multipart, &mut stored).await;
    if let Err(e) = result {
        // Nothing of a refused request stays.
        for (f, _) in &stored {
            let _ = crate::db::files::delete(&state.db, &f.id).await;
        }
        return Err(e);
    }
    let uploads: Vec<Value> = stored
        .iter()
        .map(|(f, kind)| {
            json!({
                "mediaId": f.id,
                "url": files::download_url(&state.secrets, &headers, &f.id),
                "type": kind.as_str(),
                "contentType": f.content_type,
                "size": f.size_bytes,
            })
        })
        .collect();
    Ok(Json(
        json!({"success": true, "code": 0, "message": "success", "data": {"uploads": uploads}}),
    ))
}

fn bad_multipart(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::TooLarge(format!("files: {}", e.body_text()));
    }
    ApiError::InvalidInput(format!(
        "files: the body must be multipart/form-data with 1 to {MAX_FILES} files: {}",
        e.body_text()
    ))
}

/// Reads every `files` part into the store; `stored` gets each file once it is whole.
async fn receive(
    state: &AppState,
    user_id: i64,
    multipart: &mut Multipart,
    stored: &mut Vec<(FileMeta, Kind)>,
) -> Result<(), ApiError> {
    while let Some(mut field) = multipart.next_field().await.map_err(bad_multipart)? {
        if !matches!(field.name(), Some("files" | "files[]" | "file")) {
            continue;
        }
        let k = stored.len();
        if k == MAX_FILES {
            return Err(ApiError::InvalidInput(format!(
                "files: at most {MAX_FILES} files per upload"
            )));
        }
        let mut intake = Intake::new(user_id);
        let read = async {
            while let Some(chunk) = field.chunk().await.map_err(bad_multipart)? {
                intake
                    .push(&state.db, &chunk)
                    .await
                    .map_err(|r| refused(k, r))?;
            }
            Ok::<(), ApiError>(())
        }
        .await;
        if let Err(e) = read {
            intake.abort(&state.db).await;
            return Err(e);
        }
        let (meta, kind) = intake.finish(&state.db).await.map_err(|r| refused(k, r))?;
        stored.push((meta, kind));
    }
    if stored.is_empty() {
        return Err(ApiError::InvalidInput(format!(
            "files: required, 1 to {MAX_FILES} files as multipart/form-data field \"files\""
        )));
    }
    Ok(())
}
