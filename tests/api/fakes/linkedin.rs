//! A fake LinkedIn: the authorize redirect, the token endpoint (client id and secret in the
//! form), `/v2/userinfo`, and `POST /rest/posts` that requires the `LinkedIn-Version` and Rest.li
//! headers, cuts the commentary at the first unescaped reserved character (as LinkedIn's little
//! text format does while answering 201), answers 201 with the URN in `x-restli-id`, and meets
//! the fake X's faults.

pub use super::x::Fault;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub const CLIENT_ID: &str = "li-client";
pub const CLIENT_SECRET: &str = "li-secret";
pub const SUB: &str = "782bbtaQ";
pub const VERSION: &str = "202601";

/// A post on the fake: its URN and the commentary as LinkedIn keeps it (cut at an unescaped
/// reserved character), unescaped.
#[derive(Debug, Clone)]
pub struct Post {
    pub urn: String,
    pub author: String,
    pub text: String,
    pub visibility: String,
    /// The image URNs of its content (`media` or `multiImage`).
    pub images: Vec<String>,
}

/// A video on the fake: its owner, its parts (each `(first, last)` and, once put, its ETag),
/// whether it was finalized, and status reads still answered `PROCESSING`.
#[derive(Debug, Clone, Default)]
pub struct Video {
    pub owner: String,
    pub parts: Vec<((u64, u64), Option<String>)>,
    pub finalized: bool,
    pub polls_left: usize,
}

/// The part size LinkedIn cuts a video upload into.
pub const VIDEO_PART: u64 = 4 * 1024 * 1024;

#[derive(Default)]
pub struct FakeLinkedIn {
    pub posts: Mutex<Vec<Post>>,
    /// The fake's root, for the upload URLs it hands out.
    pub base: Mutex<String>,
    /// Videos by URN.
    pub videos: Mutex<HashMap<String, Video>>,
    /// The pages the member administers: (id, name, vanity name).
    pub pages: Mutex<Vec<(u64, String, String)>>,
    /// Image URN → (owner, the bytes uploaded: `None` until the PUT).
    pub images: Mutex<HashMap<String, (String, Option<usize>)>>,
    pub faults: Mutex<std::collections::VecDeque<Option<Fault>>>,
    tokens: Mutex<Vec<String>>,
    counter: AtomicUsize,
}

/// The text LinkedIn keeps of a little-text commentary: unescaped, cut at the first unescaped
/// reserved character.
fn kept(commentary: &str) -> String {
    let mut out = String::new();
    let mut chars = commentary.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => out.push(n),
                None => break,
            },
            c if "|{}@[]()<>#*_~".contains(c) => break,
            c => out.push(c),
        }
    }
    out
}

async fn authorize(Query(q): Query<HashMap<String, String>>) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("client_id") != CLIENT_ID || get("response_type") != "code" {
        return (StatusCode::BAD_REQUEST, "bad request").into_response();
    }
    Redirect::to(&format!(
        "{}?code=LICODE&state={}",
        get("redirect_uri"),
        get("state")
    ))
    .into_response()
}

async fn token(State(f): State<Arc<FakeLinkedIn>>, body: String) -> Response {
    let q: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let ok = q.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && q.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
        && q.get("code").map(String::as_str) == Some("LICODE");
    if !ok {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request", "error_description": "bad code"})),
        )
            .into_response();
    }
    let t = format!("LIAT{}", f.counter.fetch_add(1, Ordering::SeqCst));
    f.tokens.lock().expect("lock").push(t.clone());
    Json(json!({"access_token": t, "expires_in": 5_184_000, "scope": "openid,profile,w_member_social"})).into_response()
}

fn authorized(f: &FakeLinkedIn, headers: &HeaderMap) -> bool {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    f.tokens.lock().expect("lock").iter().any(|t| t == token)
}

async fn userinfo(State(f): State<Arc<FakeLinkedIn>>, headers: HeaderMap) -> Response {
    if !authorized(&f, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"status": 401, "message": "Invalid access token"})),
        )
            .into_response();
    }
    Json(json!({"sub": SUB, "name": "Erin Li", "picture": "https://media.example/erin.jpg"}))
        .into_response()
}

/// Whether the member may post as `urn`: themself, or a page they administer.
fn may_act_as(f: &FakeLinkedIn, urn: &str) -> bool {
    urn == format!("urn:li:person:{SUB}")
        || f.pages
            .lock()
            .expect("lock")
            .iter()
            .any(|(id, _, _)| urn == format!("urn:li:organization:{id}"))
}

fn versioned(headers: &HeaderMap) -> bool {
    headers
        .get("linkedin-version")
        .and_then(|v| v.to_str().ok())
        == Some(VERSION)
        && headers
            .get("x-restli-protocol-version")
            .and_then(|v| v.to_str().ok())
            == Some("2.0.0")
}

/// `POST /rest/videos?action=initializeUpload|finalizeUpload`.
async fn videos(
    State(f): State<Arc<FakeLinkedIn>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !authorized(&f, &headers) || !versioned(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let bad = |why: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"status": 400, "code": "ILLEGAL_ARGUMENT", "message": why})),
        )
            .into_response()
    };
    match q.get("action").map(String::as_str) {
        Some("initializeUpload") => {
            let r = &body["initializeUploadRequest"];
            let owner = r["owner"].as_str().unwrap_or_default();
            let Some(size) = r["fileSizeBytes"].as_u64().filter(|s| *s > 0) else {
                return bad("fileSizeBytes");
            };
            if !may_act_as(&f, owner) {
                return bad("owner");
            }
            let n = f.counter.fetch_add(1, Ordering::SeqCst);
            let urn = format!("urn:li:video:D5{n}");
            let base = f.base.lock().expect("lock").clone();
            let parts: Vec<(u64, u64)> = (0..size.div_ceil(VIDEO_PART))
                .map(|k| (k * VIDEO_PART, ((k + 1) * VIDEO_PART).min(size) - 1))
                .collect();
            let instructions: Vec<Value> = parts
                .iter()
                .enumerate()
                .map(|(k, (first, last))| {
                    json!({"uploadUrl": format!("{base}/vupload/{n}/{k}"), "firstByte": first, "lastByte": last})
                })
                .collect();
            f.videos.lock().expect("lock").insert(
                urn.clone(),
                Video {
                    owner: owner.to_owned(),
                    parts: parts.into_iter().map(|p| (p, None)).collect(),
                    finalized: false,
                    polls_left: 1,
                },
            );
            Json(
                json!({"value": {"uploadUrlsExpireAt": 1_900_000_000_000i64, "video": urn,
                "uploadInstructions": instructions, "uploadToken": ""}}),
            )
            .into_response()
        }
        Some("finalizeUpload") => {
            let r = &body["finalizeUploadRequest"];
            let urn = r["video"].as_str().unwrap_or_default();
            let ids: Vec<&str> = r["uploadedPartIds"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut videos = f.videos.lock().expect("lock");
            let Some(v) = videos.get_mut(urn) else {
                return bad("video");
            };
            let etags: Vec<Option<&str>> = v.parts.iter().map(|(_, e)| e.as_deref()).collect();
            if etags != ids.iter().map(|i| Some(*i)).collect::<Vec<_>>() {
                return bad("uploadedPartIds must be every part's ETag, in order");
            }
            v.finalized = true;
            StatusCode::OK.into_response()
        }
        _ => bad("action"),
    }
}

/// The `PUT` of part `k` of video `n`: exactly its byte range; answers its ETag.
async fn put_video_part(
    State(f): State<Arc<FakeLinkedIn>>,
    axum::extract::Path((n, k)): axum::extract::Path<(String, usize)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&f, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut videos = f.videos.lock().expect("lock");
    let Some(part) = videos
        .get_mut(&format!("urn:li:video:D5{n}"))
        .and_then(|v| v.parts.get_mut(k))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let ((first, last), etag) = part;
    if body.len() as u64 != *last + 1 - *first {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let tag = format!("\"etag-{n}-{k}-{}\"", body.len());
    *etag = Some(tag.clone());
    (StatusCode::OK, [("etag", tag)]).into_response()
}

/// `GET /rest/videos/{urn}`: `PROCESSING` once after finalizing, then `AVAILABLE`.
async fn video_status(
    State(f): State<Arc<FakeLinkedIn>>,
    axum::extract::Path(urn): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&f, &headers) || !versioned(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut videos = f.videos.lock().expect("lock");
    let Some(v) = videos.get_mut(&urn) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let status = if !v.finalized {
        "WAITING_UPLOAD"
    } else if v.polls_left > 0 {
        v.polls_left -= 1;
        "PROCESSING"
    } else {
        "AVAILABLE"
    };
    Json(json!({"id": urn, "status": status})).into_response()
}

/// `GET /rest/organizationAcls?q=roleAssignee&role=ADMINISTRATOR&state=APPROVED`.
async fn organization_acls(
    State(f): State<Arc<FakeLinkedIn>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&f, &headers) || !versioned(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let get = |k: &str| q.get(k).map(String::as_str);
    if get("q") != Some("roleAssignee") || get("role") != Some("ADMINISTRATOR") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let elements: Vec<Value> = f
        .pages
        .lock()
        .expect("lock")
        .iter()
        .map(|(id, _, _)| {
            json!({"organization": format!("urn:li:organization:{id}"), "role": "ADMINISTRATOR",
                   "state": "APPROVED", "roleAssignee": format!("urn:li:person:{SUB}")})
        })
        .collect();
    Json(json!({"elements": elements, "paging": {"count": 10, "start": 0}})).into_response()
}

/// `GET /rest/organizations/{id}`.
async fn organization(
    State(f): State<Arc<FakeLinkedIn>>,
    axum::extract::Path(id): axum::extract::Path<u64>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&f, &headers) || !versioned(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match f.pages.lock().expect("lock").iter().find(|p| p.0 == id) {
        Some((id, name, vanity)) => {
            Json(json!({"id": id, "localizedName": name, "vanityName": vanity})).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `POST /rest/images?action=initializeUpload`: an image URN and the URL its bytes go to.
async fn initialize_upload(
    State(f): State<Arc<FakeLinkedIn>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !authorized(&f, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"status": 401, "message": "Invalid access token"})),
        )
            .into_response();
    }
    let owner = body["initializeUploadRequest"]["owner"]
        .as_str()
        .unwrap_or_default();
    if q.get("action").map(String::as_str) != Some("initializeUpload") || !may_act_as(&f, owner) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"status": 400, "code": "ILLEGAL_ARGUMENT", "message": "initializeUploadRequest.owner"})),
        )
            .into_response();
    }
    let n = f.counter.fetch_add(1, Ordering::SeqCst);
    let urn = format!("urn:li:image:C4E10AQ{n}");
    f.images
        .lock()
        .expect("lock")
        .insert(urn.clone(), (owner.to_owned(), None));
    let base = f.base.lock().expect("lock").clone();
    Json(json!({"value": {"uploadUrlExpiresAt": 1_900_000_000_000i64,
        "uploadUrl": format!("{base}/upload/{n}"), "image": urn}}))
    .into_response()
}

/// The `PUT` of an image's bytes to its upload URL.
async fn put_image(
    State(f): State<Arc<FakeLinkedIn>>,
    axum::extract::Path(n): axum::extract::Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&f, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let urn = format!("urn:li:image:C4E10AQ{n}");
    match f.images.lock().expect("lock").get_mut(&urn) {
        Some(entry) if !body.is_empty() => {
            entry.1 = Some(body.len());
            StatusCode::CREATED.into_response()
        }
        _ => StatusCode::BAD_REQUEST.into_response(),
    }
}

async fn posts(
    State(f): State<Arc<FakeLinkedIn>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !authorized(&f, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"status": 401, "message": "Invalid access token"})),
        )
            .into_response();
    }
    let version = headers
        .get("linkedin-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let restli = headers
        .get("x-restli-protocol-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if version != VERSION || restli != "2.0.0" {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"status": 400, "code": "VERSION_MISSING",
            "message": "A version must be present in the LinkedIn-Version header"})),
        )
            .into_response();
    }
    let author = body["author"].as_str().unwrap_or_default();
    if !may_act_as(&f, author) || body["lifecycleState"] != "PUBLISHED" {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"status": 403, "serviceErrorCode": 100,
            "message": "Not enough permissions to access: partnerApiPostsExternal.CREATE"})),
        )
            .into_response();
    }
    let images: Vec<String> = if !body["content"]["media"].is_null() {
        vec![
            body["content"]["media"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ]
    } else {
        body["content"]["multiImage"]["images"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| i["id"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    {
        let known = f.images.lock().expect("lock");
        let videos = f.videos.lock().expect("lock");
        let multi = !body["content"]["multiImage"].is_null();
        let usable = |urn: &String| {
            let image = known
                .get(urn)
                .is_some_and(|(owner, got)| *owner == body["author"] && got.is_some());
            // A video only alone, once processed.
            let video = videos.get(urn).is_some_and(|v| {
                v.owner == body["author"] && v.finalized && v.polls_left == 0 && !multi
            });
            image || video
        };
        let bad = !images.iter().all(usable) || (multi && !(2..=20).contains(&images.len()));
        if bad {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"status": 400, "code": "INVALID_CONTENT_OWNERSHIP",
                "message": "the content's image is unknown, not uploaded, or not owned by the author"})),
            )
                .into_response();
        }
    }
    let fault = f.faults.lock().expect("lock").pop_front().flatten();
    match fault {
        Some(Fault::RateLimited) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"status": 429, "message": "Too Many Requests"})),
            )
                .into_response();
        }
        Some(Fault::ErrorBeforeCommit) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"status": 500, "message": "Internal error"})),
            )
                .into_response();
        }
        _ => {}
    }
    let urn = {
        let mut list = f.posts.lock().expect("lock");
        let urn = format!(
            "urn:li:share:{}",
            7_100_000_000_000_000_000u64 + list.len() as u64
        );
        list.push(Post {
            urn: urn.clone(),
            author: body["author"].as_str().unwrap_or_default().to_owned(),
            text: kept(body["commentary"].as_str().unwrap_or_default()),
            visibility: body["visibility"].as_str().unwrap_or_default().to_owned(),
            images,
        });
        urn
    };
    match fault {
        Some(Fault::DropAfterCommit) => std::panic::resume_unwind(Box::new("connection dropped")),
        Some(Fault::ErrorAfterCommit) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({"status": 502, "message": "Bad gateway"})),
        )
            .into_response(),
        _ => (StatusCode::CREATED, [("x-restli-id", urn)]).into_response(),
    }
}

/// Starts the fake; its root (`http://127.0.0.1:port`).
pub async fn start_fake_linkedin() -> (Arc<FakeLinkedIn>, String) {
    let fake = Arc::new(FakeLinkedIn::default());
    let app = Router::new()
        .route("/oauth/v2/authorization", get(authorize))
        .route("/oauth/v2/accessToken", post(token))
        .route("/v2/userinfo", get(userinfo))
        .route("/rest/posts", post(posts))
        .route("/rest/images", post(initialize_upload))
        .route("/rest/organizationAcls", get(organization_acls))
        .route("/rest/videos", post(videos))
        .route("/rest/videos/{urn}", get(video_status))
        .route("/vupload/{n}/{k}", axum::routing::put(put_video_part))
        .route("/rest/organizations/{id}", get(organization))
        .route("/upload/{n}", axum::routing::put(put_image))
        .layer(axum::extract::DefaultBodyLimit::max(1 << 30))
        .with_state(Arc::clone(&fake));
    let base = super::serve_fake(app)
        .await
        .trim_end_matches("/v1")
        .to_owned();
    *fake.base.lock().expect("lock") = base.clone();
    (fake, base)
}
