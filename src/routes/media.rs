//! `POST /api/v1/twitter/media/upload` (seed 000): multipart `files` (1 to 4; an image at most
//! 5 MB, a GIF 15 MB, a video 512 MB, the type sniffed from the bytes, never the name or the
//! declared type) → `{"code":0,"data":{"uploads":[{"mediaId","url","type"}]}}`. Each file is
//! streamed into the file store a chunk at a time (never held whole); one that breaks a rule
//! stores nothing of the request. A `mediaId` goes into a draft item's `media` or a per-platform
//! route's media list; at publish each platform gets it its own way.

use super::extract::PlatformUser;
use crate::db::files::FileMeta;
use crate::error::ApiError;
use crate::files::{self, Writer};
use crate::social::media::{Kind, MAX_FILES};
use crate::state::AppState;
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

const NOT_MEDIA: &str = "is not an image (JPEG, PNG, GIF, WebP) or a video (MP4, MOV, WebM)";

async fn upload(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Result<Json<Value>, ApiError> {
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
        let mut writer = Writer::new();
        let mut sniffed: Option<(&'static str, Kind)> = None;
        let read = async {
            while let Some(chunk) = field.chunk().await.map_err(bad_multipart)? {
                writer.push(&state.db, &chunk).await?;
                if sniffed.is_none() && writer.size() >= 16 {
                    let t = files::sniff_media(writer.head())
                        .ok_or_else(|| ApiError::InvalidInput(format!("files[{k}] {NOT_MEDIA}")))?;
                    sniffed = Kind::of(t).map(|kind| (t, kind));
                }
                if let Some((_, kind)) = sniffed
                    && writer.size() as i64 > kind.upload_limit()
                {
                    return Err(ApiError::TooLarge(format!(
                        "files[{k}]: a {} may be at most {} MB",
                        kind.as_str(),
                        kind.upload_limit() >> 20
                    )));
                }
            }
            Ok::<(), ApiError>(())
        }
        .await;
        if let Err(e) = read {
            writer.abort(&state.db).await;
            return Err(e);
        }
        let sniffed = sniffed.or_else(|| {
            let t = files::sniff_media(writer.head())?;
            Kind::of(t).map(|kind| (t, kind))
        });
        let Some((content_type, kind)) = sniffed else {
            let why = if writer.size() == 0 {
                "is empty"
            } else {
                NOT_MEDIA
            };
            writer.abort(&state.db).await;
            return Err(ApiError::InvalidInput(format!("files[{k}] {why}")));
        };
        let meta = writer
            .finish(&state.db, user_id, "media", content_type)
            .await?;
        stored.push((meta, kind));
    }
    if stored.is_empty() {
        return Err(ApiError::InvalidInput(format!(
            "files: required, 1 to {MAX_FILES} files as multipart/form-data field \"files\""
        )));
    }
    Ok(())
}
