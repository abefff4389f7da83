//! Media for posts: what an upload may be (seed 000: at most 4 files; an image 5 MB, a GIF
//! 15 MB, a video 512 MB, the type sniffed from the bytes), which of them each platform takes
//! (checked before anything is held or sent), and media given by URL at the per-platform
//! routes (a media id, a Tollgate file URL, or an outside URL fetched into the store first).
//! Each platform's own upload is in its file under `platforms/`; they share [`UploadError`]
//! and the streamed [`multipart`] body.

use super::text::Platform;
use crate::db::{self, files::FileMeta};
use crate::error::ApiError;
use crate::state::AppState;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use std::time::Duration;

/// The most files one upload request carries, and one post.
pub const MAX_FILES: usize = 4;
const MB: i64 = 1024 * 1024;

/// What kind of media a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Image,
    Gif,
    Video,
}

impl Kind {
    /// By content type: `image/gif` is a GIF, other `image/*` an image, `video/*` a video.
    pub fn of(content_type: &str) -> Option<Kind> {
        match content_type {
            "image/gif" => Some(Kind::Gif),
            t if t.starts_with("image/") => Some(Kind::Image),
            t if t.starts_with("video/") => Some(Kind::Video),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Image => "image",
            Kind::Gif => "gif",
            Kind::Video => "video",
        }
    }

    /// The largest upload of this kind (seed 000's, which are X's).
    pub fn upload_limit(self) -> i64 {
        match self {
            Kind::Image => 5 * MB,
            Kind::Gif => 15 * MB,
            Kind::Video => 512 * MB,
        }
    }
}

/// A media file's kind (a file that is not media has none).
pub fn kind(file: &FileMeta) -> Option<Kind> {
    Kind::of(&file.content_type)
}

fn mb(bytes: i64) -> String {
    if bytes % MB == 0 {
        format!("{} MB", bytes / MB)
    } else {
        format!("{bytes} bytes")
    }
}

/// Whether `platform` takes `files` on one post; why not, naming the file and the rule.
/// `public_url` says whether Tollgate has an address a platform can fetch from (Threads).
pub fn check(platform: Platform, files: &[FileMeta], public_url: bool) -> Result<(), String> {
    if files.is_empty() {
        return Ok(());
    }
    let kinds: Vec<Kind> = files
        .iter()
        .map(|f| kind(f).ok_or_else(|| format!("{} is not an image or a video", f.id)))
        .collect::<Result<_, _>>()?;
    let name = platform.as_str();
    let max_count = match platform {
        Platform::Threads => 10,
        Platform::LinkedIn => 20,
        _ => MAX_FILES,
    };
    if files.len() > max_count {
        return Err(format!(
            "{name} takes at most {max_count} media per post, got {}",
            files.len()
        ));
    }
    // What must go alone on a post: a video anywhere but in a Threads carousel, and on X and
    // Mastodon a GIF too (Bluesky and LinkedIn take a GIF as an image).
    let alone = |k: Kind| match platform {
        Platform::Threads => false,
        Platform::X | Platform::Mastodon => k != Kind::Image,
        Platform::Bluesky | Platform::LinkedIn => k == Kind::Video,
    };
    if files.len() > 1
        && let Some((f, k)) = files.iter().zip(&kinds).find(|(_, k)| alone(**k))
    {
        return Err(format!(
            "{}: {name} takes a {} alone on a post, or up to {max_count} images",
            f.id,
            k.as_str()
        ));
    }
    for (f, k) in files.iter().zip(&kinds) {
        let limit = match (platform, k) {
            (Platform::X, k) => k.upload_limit(),
            // The video lexicon's limit.
            (Platform::Bluesky, Kind::Video) => 100_000_000,
            // An embedded image's blob limit.
            (Platform::Bluesky, _) => 2_000_000,
            (Platform::Mastodon, Kind::Video) => 103_809_024,
            (Platform::Mastodon, _) => 16 * MB,
            (Platform::Threads, Kind::Video) => 512 * MB,
            (Platform::Threads, _) => 8 * MB,
            (Platform::LinkedIn, Kind::Video) => 500 * MB,
            (Platform::LinkedIn, _) => 5 * MB,
        };
        if f.size_bytes > limit {
            return Err(format!(
                "{} is {} bytes; {name} takes a {} of at most {}",
                f.id,
                f.size_bytes,
                k.as_str(),
                mb(limit)
            ));
        }
    }
    if platform == Platform::Threads && !public_url {
        return Err(
            "Threads fetches media from a public URL: set publishing.public_url to Tollgate's public address".into(),
        );
    }
    Ok(())
}

/// The user's media files `ids` (each one they stored, and media); a 400 naming `field`
/// otherwise.
pub async fn resolve(
    state: &AppState,
    user_id: i64,
    field: &str,
    ids: &[String],
) -> Result<Vec<FileMeta>, ApiError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let file = db::files::meta(&state.db, id)
            .await?
            .filter(|f| f.user_id == user_id)
            .ok_or_else(|| {
                ApiError::InvalidInput(format!("{field}: no uploaded media of yours is {id:?}"))
            })?;
        if kind(&file).is_none() {
            return Err(ApiError::InvalidInput(format!(
                "{field}: {id} is a {}, not an image or a video",
                file.content_type
            )));
        }
        out.push(file);
    }
    Ok(out)
}

/// The media ids of a per-platform route's `field` (`imageUrls`, `mediaUrls`): each entry a
/// media id, a Tollgate file URL (its signature checked), or an outside `http(s)` URL, fetched
/// into the store now (bounded in size and time) so that nothing is sent if it cannot be had.
pub async fn from_refs(
    state: &AppState,
    user_id: i64,
    field: &str,
    refs: &[String],
) -> Result<Vec<String>, ApiError> {
    if refs.len() > 20 {
        return Err(ApiError::InvalidInput(format!(
            "{field}: at most 20 media, got {}",
            refs.len()
        )));
    }
    let mut ids = Vec::with_capacity(refs.len());
    for (k, r) in refs.iter().enumerate() {
        let r = r.trim();
        if r.starts_with("f_") && r.len() <= 40 {
            ids.push(r.to_owned());
            continue;
        }
        let url = url::Url::parse(r)
            .ok()
            .filter(|u| u.scheme() == "http" || u.scheme() == "https")
            .ok_or_else(|| {
                ApiError::InvalidInput(format!(
                    "{field}[{k}]: must be a media id from /api/v1/twitter/media/upload or an http(s) URL"
                ))
            })?;
        if let Some(id) = own_file(state, &url) {
            ids.push(id?);
            continue;
        }
        let file = fetch(state, user_id, &url)
            .await
            .map_err(|why| ApiError::InvalidInput(format!("{field}[{k}]: {why}")))?;
        ids.push(file.id);
    }
    Ok(ids)
}

/// A Tollgate file URL's id, when `url` is one (`/api/v1/files/{id}?expires&sig`): `Err` when
/// its signature does not hold.
fn own_file(state: &AppState, url: &url::Url) -> Option<Result<String, ApiError>> {
    let id = url.path().strip_prefix("/api/v1/files/")?;
    let query: std::collections::HashMap<_, _> = url.query_pairs().collect();
    let (expires, sig) = (query.get("expires"), query.get("sig"));
    if expires.is_none() && sig.is_none() {
        return None;
    }
    let checked = crate::files::check(
        &state.secrets,
        id,
        expires.map(|e| e.as_ref()),
        sig.map(|s| s.as_ref()),
        crate::clock::now_ms(),
    );
    Some(match checked {
        Ok(()) => Ok(id.to_owned()),
        Err(_) => Err(ApiError::InvalidInput(format!(
            "{url}: this Tollgate file URL is expired or altered"
        ))),
    })
}

/// Whether an address is one an outside fetch must not reach (loopback, private, link-local).
fn private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64
        }
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| private(v4.into()))
        }
    }
}

/// A resolver that gives only public addresses, so neither a name, a rebinding nor a redirect
/// takes an outside fetch to a private one.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !private(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether a URL's host is a private address written out (no resolver sees those).
fn private_literal(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(a)) => private(a.into()),
        Some(url::Host::Ipv6(a)) => private(a.into()),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => true,
    }
}

/// The client outside media are fetched with: public addresses only, at most 5 redirects, each
/// to a public host.
fn public_client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: std::sync::OnceLock<Option<reqwest::Client>> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let redirects = reqwest::redirect::Policy::custom(|attempt| {
                if attempt.previous().len() >= 5 || private_literal(attempt.url()) {
                    attempt.stop()
                } else {
                    attempt.follow()
                }
            });
            reqwest::Client::builder()
                .dns_resolver(std::sync::Arc::new(PublicOnly))
                .redirect(redirects)
                .build()
                .ok()
        })
        .as_ref()
        .ok_or_else(|| "the media client could not be built".to_owned())
}

/// Fetches an outside media URL into the store (type sniffed, held to the upload limits).
async fn fetch(state: &AppState, user_id: i64, url: &url::Url) -> Result<FileMeta, String> {
    let client = if state.config.publishing.fetch_private_media_urls {
        &state.http
    } else {
        if private_literal(url) {
            return Err(format!(
                "{} is a private address; media are fetched only from public ones",
                url.host_str().unwrap_or_default()
            ));
        }
        public_client()?
    };
    let mut response = client
        .get(url.as_str())
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| format!("fetching it failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("fetching it answered {}", response.status()));
    }
    let mut intake = Intake::new(user_id);
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                intake.abort(&state.db).await;
                return Err(format!("fetching it was cut off: {e}"));
            }
        };
        if let Err(refused) = intake.push(&state.db, &chunk).await {
            intake.abort(&state.db).await;
            return Err(format!("it {refused}"));
        }
    }
    let (file, _) = intake
        .finish(&state.db)
        .await
        .map_err(|refused| format!("it {refused}"))?;
    Ok(file)
}

/// Why an arriving media file was refused.
#[derive(Debug)]
pub enum Refusal {
    Empty,
    NotMedia,
    TooLarge(Kind),
    Store(sqlx::Error),
}

impl std::fmt::Display for Refusal {
    /// Reads after the file's name: "files[0] is empty", "it is larger than 5 MB".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Empty => write!(f, "is empty"),
            Refusal::NotMedia => write!(
                f,
                "is not an image (JPEG, PNG, GIF, WebP) or a video (MP4, MOV, WebM)"
            ),
            Refusal::TooLarge(k) => write!(
                f,
                "is larger than a {} may be ({})",
                k.as_str(),
                mb(k.upload_limit())
            ),
            Refusal::Store(e) => write!(f, "could not be stored: {e}"),
        }
    }
}

/// A media file arriving in pieces (an upload, an outside fetch): stored as it comes, typed by
/// its first bytes, held to its kind's limit. A refused one is [`Intake::abort`]ed by its caller
/// (`finish` aborts on its own).
pub struct Intake {
    writer: crate::files::Writer,
    sniffed: Option<(&'static str, Kind)>,
}

impl Intake {
    /// A file for `user_id`.
    pub fn new(user_id: i64) -> Intake {
        Intake {
            writer: crate::files::Writer::new(user_id),
            sniffed: None,
        }
    }

    fn sniff(&self) -> Option<(&'static str, Kind)> {
        let t = crate::files::sniff_media(self.writer.head())?;
        Kind::of(t).map(|k| (t, k))
    }

    pub async fn push(&mut self, db: &db::Db, data: &[u8]) -> Result<(), Refusal> {
        self.writer.push(db, data).await.map_err(Refusal::Store)?;
        if self.sniffed.is_none() && self.writer.size() >= 16 {
            self.sniffed = Some(self.sniff().ok_or(Refusal::NotMedia)?);
        }
        let kind = self.sniffed.map_or(Kind::Video, |(_, k)| k);
        if self.writer.size() as i64 > kind.upload_limit() {
            return Err(Refusal::TooLarge(kind));
        }
        Ok(())
    }

    /// The stored file and its kind.
    pub async fn finish(self, db: &db::Db) -> Result<(FileMeta, Kind), Refusal> {
        let Some((content_type, kind)) = self.sniffed.or_else(|| self.sniff()) else {
            let why = if self.writer.size() == 0 {
                Refusal::Empty
            } else {
                Refusal::NotMedia
            };
            self.abort(db).await;
            return Err(why);
        };
        let file = self
            .writer
            .finish(db, "media", content_type)
            .await
            .map_err(Refusal::Store)?;
        Ok((file, kind))
    }

    pub async fn abort(self, db: &db::Db) {
        self.writer.abort(db).await;
    }
}

/// Why a platform upload did not give a handle. Nothing is posted by an upload, so every
/// failure is definite.
#[derive(Debug, Clone)]
pub enum UploadError {
    /// The token was refused: refresh and try again.
    Unauthorized,
    Failed(&'static str, String),
}

/// A streamed `multipart/form-data` body: the text `fields`, then `file` as part `name` (its
/// bytes from `data`, a chunk at a time). Its content type (with the boundary) and the body.
pub fn multipart(
    fields: &[(&str, &str)],
    name: &str,
    filename: &str,
    content_type: &str,
    data: BoxStream<'static, Result<Bytes, std::io::Error>>,
) -> (String, reqwest::Body) {
    let boundary = format!("tollgate{:032x}", rand::random::<u128>());
    let mut head = String::new();
    for (k, v) in fields {
        head.push_str(&format!(
            "--{boundary}\r\ncontent-disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    head.push_str(&format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\ncontent-type: {content_type}\r\n\r\n"
    ));
    let tail = format!("\r\n--{boundary}--\r\n");
    let body = stream::once(async move { Ok(Bytes::from(head)) })
        .chain(data)
        .chain(stream::once(async move { Ok(Bytes::from(tail)) }));
    (
        format!("multipart/form-data; boundary={boundary}"),
        reqwest::Body::wrap_stream(body),
    )
}

/// The platform error code of an upload answered `status`.
pub fn refused(status: u16, who: &str, detail: &str) -> UploadError {
    match status {
        401 => UploadError::Unauthorized,
        429 => UploadError::Failed("RATE_LIMITED", format!("{who}'s rate limit: {detail}")),
        400..=499 => UploadError::Failed(
            "INVALID_INPUT",
            format!("{who} refused the media ({status}): {detail}"),
        ),
        _ => UploadError::Failed(
            "PLATFORM_UNAVAILABLE",
            format!("{who} could not take the media ({status}): {detail}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: &str, content_type: &str, size: i64) -> FileMeta {
        FileMeta {
            id: id.into(),
            user_id: 1,
            kind: "media".into(),
            content_type: content_type.into(),
            size_bytes: size,
            chunks: 1,
        }
    }

    #[test]
    fn each_platform_takes_its_own_media() {
        let img = |n| file("f_i", "image/png", n);
        let gif = file("f_g", "image/gif", 10 * MB);
        let video = file("f_v", "video/mp4", 100 * MB);
        assert!(check(Platform::X, &[img(MB), img(MB), img(MB), img(MB)], false).is_ok());
        assert!(
            check(
                Platform::X,
                &[img(MB), img(MB), img(MB), img(MB), img(MB)],
                false
            )
            .is_err()
        );
        assert!(check(Platform::X, std::slice::from_ref(&gif), false).is_ok());
        assert!(check(Platform::X, &[gif.clone(), img(MB)], false).is_err());
        assert!(check(Platform::X, &[img(6 * MB)], false).is_err());
        assert!(check(Platform::X, std::slice::from_ref(&video), false).is_ok());
        assert!(check(Platform::Bluesky, &[img(2_000_000)], false).is_ok());
        assert!(check(Platform::Bluesky, &[img(2_000_001)], false).is_err());
        assert!(check(Platform::Bluesky, std::slice::from_ref(&video), false).is_err());
        assert!(check(Platform::Mastodon, std::slice::from_ref(&video), false).is_err());
        assert!(
            check(
                Platform::Mastodon,
                &[file("f_v", "video/mp4", 90 * MB)],
                false
            )
            .is_ok()
        );
        assert!(check(Platform::Threads, &[img(MB)], false).is_err());
        assert!(check(Platform::Threads, &[img(MB), video.clone()], true).is_ok());
        assert!(check(Platform::LinkedIn, std::slice::from_ref(&video), false).is_ok());
        assert!(check(Platform::LinkedIn, &[img(MB), video.clone()], false).is_err());
        assert!(check(Platform::Bluesky, &[img(MB), video], false).is_err());
        assert!(
            check(
                Platform::Bluesky,
                &[file("f_v", "video/mp4", 50 * MB)],
                false
            )
            .is_ok()
        );
        assert!(
            check(
                Platform::Bluesky,
                &[img(MB), file("f_g", "image/gif", MB)],
                false
            )
            .is_ok()
        );
        assert!(check(Platform::LinkedIn, &[img(MB), img(MB)], false).is_ok());
        assert!(check(Platform::X, &[file("f_d", "application/pdf", 1)], false).is_err());
    }

    #[test]
    fn private_addresses_are_told_apart() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "100.64.0.1",
        ] {
            assert!(private(a.parse().expect("ip")), "{a}");
        }
        for a in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(!private(a.parse().expect("ip")), "{a}");
        }
        let literal = |u: &str| private_literal(&url::Url::parse(u).expect("url"));
        assert!(literal("http://127.0.0.1:8000/a.png"));
        assert!(literal("http://[::1]/a.png"));
        assert!(literal("http://LOCALHOST/a.png"));
        assert!(literal("http://10.0.0.7/a.png"));
        assert!(!literal("https://example.com/a.png"));
        assert!(!literal("https://93.184.216.34/a.png"));
    }
}
