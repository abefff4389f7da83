//! Files Tollgate makes or fetches (generated images, decks, videos), so a client never gets an
//! upstream's expiring or credentialed URL: the bytes are stored in the database
//! (`db::files`; every instance on a shared PostgreSQL serves what any stored), and downloaded
//! through signed, expiring URLs, `/api/v1/files/{id}?expires=<unix ms>&sig=<HMAC-SHA256 of
//! "id.expires">`, that work in an `<img src>` or `<video src>` without a credential. The key
//! is derived from the master key, so every instance signs and checks alike.

use crate::db;
use crate::db::files::FileMeta;
use crate::secrets::Secrets;
use axum::http::HeaderMap;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use std::time::Duration;

/// The size of one stored chunk of an uploaded file.
pub const CHUNK: usize = 1 << 20;

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

/// An uploaded file being written chunk by chunk: its row is written first as pending (not
/// readable; swept with its chunks if the process dies before [`Writer::finish`] completes it),
/// [`Writer::abort`] removes what was written.
pub struct Writer {
    id: String,
    user_id: i64,
    /// Whether the pending row is written.
    opened: bool,
    /// The first bytes, kept for sniffing.
    first: Vec<u8>,
    buf: Vec<u8>,
    seq: i64,
    size: u64,
}

impl Writer {
    /// A file for `user_id`.
    pub fn new(user_id: i64) -> Writer {
        Writer {
            id: new_id(),
            user_id,
            opened: false,
            first: Vec::new(),
            buf: Vec::with_capacity(CHUNK),
            seq: 0,
            size: 0,
        }
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The first bytes (for sniffing), once some have come.
    pub fn head(&self) -> &[u8] {
        &self.first
    }

    /// Adds `data`, writing every chunk that fills.
    pub async fn push(&mut self, db: &db::Db, mut data: &[u8]) -> Result<(), sqlx::Error> {
        self.size += data.len() as u64;
        if self.first.len() < 64 {
            let take = (64 - self.first.len()).min(data.len());
            self.first.extend_from_slice(&data[..take]);
        }
        while !data.is_empty() {
            let take = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK {
                self.flush(db).await?;
            }
        }
        Ok(())
    }

    async fn open(&mut self, db: &db::Db) -> Result<(), sqlx::Error> {
        if !self.opened {
            db::files::open_pending(db, &self.id, self.user_id).await?;
            self.opened = true;
        }
        Ok(())
    }

    async fn flush(&mut self, db: &db::Db) -> Result<(), sqlx::Error> {
        self.open(db).await?;
        db::files::put_chunk(db, &self.id, self.seq, &self.buf).await?;
        self.seq += 1;
        self.buf.clear();
        Ok(())
    }

    /// Writes the last chunk and completes the file's row: the stored file.
    pub async fn finish(
        mut self,
        db: &db::Db,
        kind: &str,
        content_type: &str,
    ) -> Result<FileMeta, sqlx::Error> {
        let written = async {
            if !self.buf.is_empty() {
                self.flush(db).await?;
            }
            self.open(db).await?;
            let meta = FileMeta {
                id: self.id.clone(),
                user_id: self.user_id,
                kind: kind.to_owned(),
                content_type: content_type.to_owned(),
                size_bytes: self.size as i64,
                chunks: self.seq,
            };
            db::files::complete_chunked(db, &meta).await?;
            Ok(meta)
        }
        .await;
        if written.is_err() {
            self.abort(db).await;
        }
        written
    }

    /// Removes what was written (best effort; the sweep removes what this cannot).
    pub async fn abort(self, db: &db::Db) {
        if self.opened
            && let Err(e) = db::files::delete(db, &self.id).await
        {
            tracing::warn!(file = %self.id, error = %e, "removing an aborted upload failed");
        }
    }
}

/// How old a pending upload is when the sweep takes it for one a crash cut.
pub const PENDING_TTL_MS: i64 = 24 * 3_600_000;

/// Removes uploads cut by a crash (pending rows older than [`PENDING_TTL_MS`]) with their
/// chunks; how many. Safe on every instance at once.
pub async fn sweep(db: &db::Db, now_ms: i64) -> Result<usize, sqlx::Error> {
    let stale = db::files::stale_pending(db, now_ms - PENDING_TTL_MS, 100).await?;
    for id in &stale {
        db::files::delete(db, id).await?;
    }
    if !stale.is_empty() {
        tracing::warn!(removed = stale.len(), "removed uploads cut by a crash");
    }
    Ok(stale.len())
}

/// Runs [`sweep`] every hour until `stop`.
pub async fn run_sweeper(db: db::Db, stop: tokio_util::sync::CancellationToken) {
    loop {
        if let Err(e) = sweep(&db, crate::clock::now_ms()).await {
            tracing::warn!(error = %e, "sweeping cut uploads failed");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

/// Bytes `start..=end` of a stored file, read a chunk at a time (a chunked file is never read
/// whole).
pub fn read_range(
    db: db::Db,
    meta: &FileMeta,
    start: u64,
    end: u64,
) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    let io = |e: sqlx::Error| std::io::Error::other(e.to_string());
    let id = meta.id.clone();
    if meta.chunks == 0 {
        return stream::once(async move {
            let file = db::files::get(&db, &id)
                .await
                .map_err(io)?
                .ok_or_else(|| std::io::Error::other("the file was deleted"))?;
            let len = file.data.len() as u64;
            if len == 0 || start >= len {
                return Ok(Bytes::new());
            }
            let data = Bytes::from(file.data);
            Ok(data.slice(start as usize..=end.min(len - 1) as usize))
        })
        .boxed();
    }
    let chunk = CHUNK as u64;
    let (first, last) = ((start / chunk) as i64, (end / chunk) as i64);
    stream::iter(first..=last)
        .then(move |seq| {
            let (db, id) = (db.clone(), id.clone());
            async move {
                let data = db::files::chunk(&db, &id, seq)
                    .await
                    .map_err(io)?
                    .ok_or_else(|| std::io::Error::other(format!("chunk {seq} is missing")))?;
                let at = seq as u64 * chunk;
                let from = start.saturating_sub(at) as usize;
                let to = ((end + 1).saturating_sub(at) as usize).min(data.len());
                Ok(Bytes::from(data).slice(from.min(to)..to))
            }
        })
        .boxed()
}

/// A whole stored file as a stream of chunks.
pub fn read(db: db::Db, meta: &FileMeta) -> BoxStream<'static, Result<Bytes, std::io::Error>> {
    let end = (meta.size_bytes.max(1) - 1) as u64;
    read_range(db, meta, 0, end)
}

/// A whole stored file in memory (for small files: images a platform takes in one body).
pub async fn read_all(db: &db::Db, meta: &FileMeta) -> Result<Vec<u8>, std::io::Error> {
    let mut out = Vec::with_capacity(meta.size_bytes.max(0) as usize);
    let mut parts = read(db.clone(), meta);
    while let Some(part) = parts.next().await {
        out.extend_from_slice(&part?);
    }
    Ok(out)
}

/// The content type of media bytes by their magic number: the images of [`sniff_image`], MP4
/// and QuickTime (`ftyp`), WebM.
pub fn sniff_media(data: &[u8]) -> Option<&'static str> {
    if let Some(t) = sniff_image(data) {
        return Some(t);
    }
    if data.len() >= 12 && &data[4..8] == b"ftyp" {
        return Some(if &data[8..10] == b"qt" {
            "video/quicktime"
        } else {
            "video/mp4"
        });
    }
    if data.starts_with(&[0x1a, 0x45, 0xdf, 0xa3]) {
        return Some("video/webm");
    }
    None
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
