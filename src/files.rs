//! Files Tollgate makes or fetches (generated images, decks, videos), so a client never gets an
//! upstream's expiring or credentialed URL: the bytes are stored in the database
//! (`db::files`; every instance on a shared PostgreSQL serves what any stored), and downloaded
//! through signed, expiring URLs, `/api/v1/files/{id}?expires=<unix ms>&sig=<HMAC-SHA256 of
//! "id.expires">`, that work in an `<img src>` or `<video src>` without a credential. The key
//! is derived from the master key, so every instance signs and checks alike.

use crate::db;
use crate::secrets::Secrets;
use axum::http::HeaderMap;
use std::time::Duration;

/// How long a download URL stays valid.
pub const URL_TTL_MS: i64 = 24 * 3_600_000;
/// The largest file stored (a fetched image or video; a generated deck is far smaller).
pub const MAX_FILE_BYTES: usize = 50 * 1024 * 1024;

/// A new file id: `f_` + 32 random hex digits.
pub fn new_id() -> String {
    format!("f_{:032x}", rand::random::<u128>())
}

/// Stores `data` for `user_id`, retrying a few times (what it holds was paid for); its id.
pub async fn store(
    db: &db::Db,
    user_id: i64,
    kind: &str,
    content_type: &str,
    data: &[u8],
) -> Result<String, sqlx::Error> {
    let id = new_id();
    let mut delay = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match db::files::insert(db, &id, user_id, kind, content_type, data).await {
            Ok(()) => return Ok(id),
            Err(e) if attempt < 5 && !db::is_unique_violation(&e) => {
                tracing::warn!(error = %e, attempt, "storing a file failed, retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            // A unique violation on retry means the earlier attempt landed.
            Err(e) if db::is_unique_violation(&e) && attempt > 1 => return Ok(id),
            Err(e) => return Err(e),
        }
    }
}

fn message(id: &str, expires_ms: i64) -> String {
    format!("{id}.{expires_ms}")
}

/// The path (and query) of `id`'s download URL, valid until `expires_ms`.
pub fn signed_path(secrets: &Secrets, id: &str, expires_ms: i64) -> String {
    let sig = secrets.url_signature(&message(id, expires_ms));
    format!("/api/v1/files/{id}?expires={expires_ms}&sig={sig}")
}

/// The absolute download URL of `id` for a client that reached us with `headers` (the `Host`
/// it used, `X-Forwarded-Proto` for the scheme behind a TLS proxy), valid for [`URL_TTL_MS`].
pub fn download_url(secrets: &Secrets, headers: &HeaderMap, id: &str) -> String {
    let path = signed_path(secrets, id, crate::clock::now_ms() + URL_TTL_MS);
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()));
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    match host {
        Some(host) => format!("{scheme}://{host}{path}"),
        None => path,
    }
}

/// Why a download URL is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Malformed,
    BadSignature,
    Expired,
}

/// Checks a download URL's `expires` and `sig` for `id` at `now_ms`.
pub fn check(
    secrets: &Secrets,
    id: &str,
    expires: Option<&str>,
    sig: Option<&str>,
    now_ms: i64,
) -> Result<(), Refused> {
    let (Some(expires), Some(sig)) = (expires, sig) else {
        return Err(Refused::Malformed);
    };
    let expires_ms: i64 = expires.parse().map_err(|_| Refused::Malformed)?;
    if !secrets.url_signature_matches(&message(id, expires_ms), sig) {
        return Err(Refused::BadSignature);
    }
    if expires_ms < now_ms {
        return Err(Refused::Expired);
    }
    Ok(())
}

/// The content type of image bytes, by their magic number (PNG, JPEG, GIF, WebP).
pub fn sniff_image(data: &[u8]) -> Option<&'static str> {
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if data.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if data.starts_with(b"GIF8") {
        Some("image/gif")
    } else if data.len() >= 12 && &data[..4] == b"RIFF" && &data[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_url_is_refused_when_tampered_or_expired() {
        let s = Secrets::new("a master key of enough length, for the test");
        let path = signed_path(&s, "f_1", 5_000);
        let sig = path.rsplit("sig=").next().unwrap_or_default();
        assert_eq!(check(&s, "f_1", Some("5000"), Some(sig), 4_000), Ok(()));
        assert_eq!(
            check(&s, "f_2", Some("5000"), Some(sig), 4_000),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            check(&s, "f_1", Some("9000"), Some(sig), 4_000),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            check(&s, "f_1", Some("5000"), Some(sig), 6_000),
            Err(Refused::Expired)
        );
        assert_eq!(
            check(&s, "f_1", None, Some(sig), 0),
            Err(Refused::Malformed)
        );
        let other = Secrets::new("another master key of enough length here");
        assert_eq!(
            check(&other, "f_1", Some("5000"), Some(sig), 4_000),
            Err(Refused::BadSignature)
        );
    }
}
