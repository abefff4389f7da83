//! `GET /api/v1/files/{id}?expires=&sig=`: a stored file through its signed URL (no credential,
//! so it works in `<img src>` and `<video src>`). A changed id, expiry or signature is a 403;
//! an expired URL is a 403 that says so (ask for the creation again for a fresh one). A single
//! `Range: bytes=…` is answered 206 with that part (what a `<video>` asks for to seek).

use crate::db;
use crate::error::ApiError;
use crate::files::{self, Refused};
use crate::state::AppState;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::collections::HashMap;

pub fn router() -> Router<AppState> {
    Router::new().route("/files/{id}", get(download))
}

/// The part of a `len`-byte file a `Range` header asks for, as `start..=end`: `None` for the
/// whole file (no header, or one this does not serve: several ranges, another unit), `Err` for
/// a range outside the file (416).
fn byte_range(header: Option<&str>, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = header?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let range = match (first.parse::<u64>(), last.parse::<u64>()) {
        // `bytes=-N`: the last N bytes.
        (Err(_), Ok(n)) if first.is_empty() => {
            if n == 0 || len == 0 {
                return Some(Err(()));
            }
            (len.saturating_sub(n), len - 1)
        }
        (Ok(start), Err(_)) if last.is_empty() => (start, len.saturating_sub(1)),
        (Ok(start), Ok(end)) if end >= start => (start, end.min(len.saturating_sub(1))),
        _ => return None,
    };
    Some(if range.0 < len { Ok(range) } else { Err(()) })
}

async fn download(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    request: HeaderMap,
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
    let file = db::files::meta(&state.db, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("file {id} not found")))?;
    let len = file.size_bytes.max(0) as u64;
    let range = byte_range(
        request.get(header::RANGE).and_then(|v| v.to_str().ok()),
        len,
    );
    // The bytes are streamed a chunk at a time: a large upload is never read whole.
    let mut response = match range {
        None => {
            let mut r = Body::from_stream(files::read(state.db.clone(), &file)).into_response();
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            r
        }
        Some(Ok((start, end))) => {
            let part = files::read_range(state.db.clone(), &file, start, end);
            let mut r = (StatusCode::PARTIAL_CONTENT, Body::from_stream(part)).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(end - start + 1));
            r
        }
        Some(Err(())) => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
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

#[cfg(test)]
mod tests {
    use super::byte_range;

    #[test]
    fn ranges_are_read_as_a_video_element_sends_them() {
        assert_eq!(byte_range(None, 100), None);
        assert_eq!(byte_range(Some("bytes=0-"), 100), Some(Ok((0, 99))));
        assert_eq!(byte_range(Some("bytes=10-19"), 100), Some(Ok((10, 19))));
        assert_eq!(byte_range(Some("bytes=90-200"), 100), Some(Ok((90, 99))));
        assert_eq!(byte_range(Some("bytes=-10"), 100), Some(Ok((90, 99))));
        assert_eq!(byte_range(Some("bytes=-500"), 100), Some(Ok((0, 99))));
        assert_eq!(byte_range(Some("bytes=100-"), 100), Some(Err(())));
        assert_eq!(byte_range(Some("bytes=-0"), 100), Some(Err(())));
        // Not served as a part: the whole file.
        assert_eq!(byte_range(Some("bytes=0-1,5-6"), 100), None);
        assert_eq!(byte_range(Some("items=0-1"), 100), None);
        assert_eq!(byte_range(Some("bytes=9-2"), 100), None);
        assert_eq!(byte_range(Some("bytes=x-"), 100), None);
    }
}
