//! A fake Bluesky PDS (AT Protocol XRPC): `createSession` for one handle and app password
//! (counting logins), `refreshSession` with rotating refresh tokens, `createRecord` for
//! `app.bsky.feed.post` (client-chosen record keys, a second write to one key refused, replies
//! that must name existing records, 300 graphemes) answering `400 ExpiredToken` for an expired
//! access token, `getRecord`, and the same faults as the fake X.

pub use super::x::Fault;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const HANDLE: &str = "alice.bsky.test";
pub const DID: &str = "did:plc:alice123";
pub const APP_PASSWORD: &str = "abcd-efgh-ijkl-mnop";

/// A record on the fake.
#[derive(Debug, Clone)]
pub struct Record {
    pub rkey: String,
    pub uri: String,
    pub cid: String,
    pub value: Value,
}

#[derive(Default)]
pub struct FakeBluesky {
    pub records: Mutex<Vec<Record>>,
    pub faults: Mutex<std::collections::VecDeque<Option<Fault>>>,
    pub logins: AtomicUsize,
    pub refreshes: AtomicUsize,
    pub creates: AtomicUsize,
    /// Sessions ended by `deleteSession`.
    pub sessions_ended: AtomicUsize,
    /// Service tokens handed out by `getServiceAuth` (for the video service).
    pub service_tokens: Mutex<Vec<String>>,
    /// Video jobs: id → (blob link, polls still answered processing).
    pub jobs: Mutex<HashMap<String, (String, usize)>>,
    /// Uploaded blobs: CID link → (mime type, size).
    pub blobs: Mutex<HashMap<String, (String, usize)>>,
    /// Access token → expiry (unix seconds).
    access: Mutex<HashMap<String, i64>>,
    /// Refresh token → spent.
    refresh: Mutex<HashMap<String, bool>>,
    counter: AtomicUsize,
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn xrpc_error(status: StatusCode, error: &str, message: &str) -> Response {
    (status, Json(json!({"error": error, "message": message}))).into_response()
}

impl FakeBluesky {
    fn jwt(&self, kind: &str, exp: i64) -> String {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let enc = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.sig{n}",
            enc(json!({"alg": "ES256K", "typ": kind})),
            enc(json!({"sub": DID, "exp": exp, "n": n}))
        )
    }

    fn session(&self) -> Value {
        let access = self.jwt("at+jwt", now_s() + 7200);
        let refresh = self.jwt("refresh+jwt", now_s() + 90 * 86400);
        self.access
            .lock()
            .expect("lock")
            .insert(access.clone(), now_s() + 7200);
        self.refresh
            .lock()
            .expect("lock")
            .insert(refresh.clone(), false);
        json!({"accessJwt": access, "refreshJwt": refresh, "handle": HANDLE, "did": DID, "active": true})
    }

    /// Expires every access token now.
    pub fn expire_access_tokens(&self) {
        for exp in self.access.lock().expect("lock").values_mut() {
            *exp = 0;
        }
    }

    fn bearer(headers: &HeaderMap) -> String {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned()
    }

    /// The error for a request whose access token is not live.
    fn check_access(&self, headers: &HeaderMap) -> Option<Response> {
        match self
            .access
            .lock()
            .expect("lock")
            .get(&Self::bearer(headers))
        {
            Some(exp) if *exp > now_s() => None,
            Some(_) => Some(xrpc_error(
                StatusCode::BAD_REQUEST,
                "ExpiredToken",
                "Token has expired",
            )),
            None => Some(xrpc_error(
                StatusCode::UNAUTHORIZED,
                "InvalidToken",
                "Token could not be verified",
            )),
        }
    }
}

async fn create_session(State(f): State<Arc<FakeBluesky>>, Json(body): Json<Value>) -> Response {
    f.logins.fetch_add(1, Ordering::SeqCst);
    if body["identifier"] != HANDLE || body["password"] != APP_PASSWORD {
        return xrpc_error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationRequired",
            "Invalid identifier or password",
        );
    }
    Json(f.session()).into_response()
}

/// `deleteSession` with the refresh token: it can no longer be refreshed.
async fn delete_session(State(f): State<Arc<FakeBluesky>>, headers: HeaderMap) -> Response {
    let token = FakeBluesky::bearer(&headers);
    if f.refresh.lock().expect("lock").remove(&token).is_none() {
        return xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidToken",
            "Token could not be verified",
        );
    }
    f.sessions_ended.fetch_add(1, Ordering::SeqCst);
    StatusCode::OK.into_response()
}

async fn refresh_session(State(f): State<Arc<FakeBluesky>>, headers: HeaderMap) -> Response {
    f.refreshes.fetch_add(1, Ordering::SeqCst);
    let token = FakeBluesky::bearer(&headers);
    let mut map = f.refresh.lock().expect("lock");
    match map.get(&token) {
        Some(false) => {
            map.insert(token, true);
            drop(map);
            Json(f.session()).into_response()
        }
        Some(true) => xrpc_error(
            StatusCode::BAD_REQUEST,
            "ExpiredToken",
            "Token has been revoked",
        ),
        None => xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidToken",
            "Token could not be verified",
        ),
    }
}

/// `getServiceAuth`: a short token for the video service to upload blobs as this account.
async fn service_auth(
    State(f): State<Arc<FakeBluesky>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(e) = f.check_access(&headers) {
        return e;
    }
    let aud_ok = q.get("aud").is_some_and(|a| a.starts_with("did:web:"));
    if !aud_ok || q.get("lxm").map(String::as_str) != Some("com.atproto.repo.uploadBlob") {
        return xrpc_error(StatusCode::BAD_REQUEST, "InvalidRequest", "aud and lxm");
    }
    let token = format!("svc-{}", f.counter.fetch_add(1, Ordering::SeqCst));
    f.service_tokens.lock().expect("lock").push(token.clone());
    Json(json!({"token": token})).into_response()
}

fn link_of(data: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(data);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("bafkrei{}", &hex[..40])
}

/// The video service's `uploadVideo`: a service token, the account's DID, the bytes; a job.
async fn upload_video(
    State(f): State<Arc<FakeBluesky>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let token = FakeBluesky::bearer(&headers);
    if !f.service_tokens.lock().expect("lock").contains(&token) {
        return xrpc_error(
            StatusCode::UNAUTHORIZED,
            "AuthRequired",
            "a service token is required",
        );
    }
    let mime = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if q.get("did").map(String::as_str) != Some(DID)
        || !mime.starts_with("video/")
        || body.is_empty()
    {
        return xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "did, a video and its type",
        );
    }
    let link = link_of(&body);
    f.blobs
        .lock()
        .expect("lock")
        .insert(link.clone(), (mime, body.len()));
    let job = format!("job-{}", f.counter.fetch_add(1, Ordering::SeqCst));
    f.jobs.lock().expect("lock").insert(job.clone(), (link, 1));
    Json(json!({"jobStatus": {"jobId": job, "did": DID, "state": "JOB_STATE_CREATED", "progress": 0}}))
        .into_response()
}

/// `getJobStatus`: processing once, then completed with the blob.
async fn job_status(
    State(f): State<Arc<FakeBluesky>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let id = q.get("jobId").cloned().unwrap_or_default();
    let mut jobs = f.jobs.lock().expect("lock");
    let Some((link, polls)) = jobs.get_mut(&id) else {
        return xrpc_error(StatusCode::BAD_REQUEST, "InvalidRequest", "unknown job");
    };
    if *polls > 0 {
        *polls -= 1;
        return Json(json!({"jobStatus": {"jobId": id, "did": DID, "state": "JOB_STATE_ENCODING", "progress": 50}}))
            .into_response();
    }
    let (mime, size) = f.blobs.lock().expect("lock")[link.as_str()].clone();
    Json(json!({"jobStatus": {"jobId": id, "did": DID, "state": "JOB_STATE_COMPLETED", "progress": 100,
        "blob": {"$type": "blob", "ref": {"$link": link}, "mimeType": mime, "size": size}}}))
    .into_response()
}

/// `uploadBlob`: the raw bytes, at most 2,000,000 for an image, typed by `Content-Type`.
async fn upload_blob(
    State(f): State<Arc<FakeBluesky>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(e) = f.check_access(&headers) {
        return e;
    }
    let mime = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if !mime.starts_with("image/") || body.is_empty() {
        return xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "an image is expected",
        );
    }
    if body.len() > 2_000_000 {
        return xrpc_error(
            StatusCode::BAD_REQUEST,
            "BlobTooLarge",
            "This file is too large",
        );
    }
    let link = link_of(&body);
    f.blobs
        .lock()
        .expect("lock")
        .insert(link.clone(), (mime.clone(), body.len()));
    Json(json!({"blob": {"$type": "blob", "ref": {"$link": link}, "mimeType": mime, "size": body.len()}}))
        .into_response()
}

async fn create_record(
    State(f): State<Arc<FakeBluesky>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    f.creates.fetch_add(1, Ordering::SeqCst);
    if let Some(e) = f.check_access(&headers) {
        return e;
    }
    if body["repo"] != DID || body["collection"] != "app.bsky.feed.post" {
        return xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "wrong repo or collection",
        );
    }
    let record = body["record"].clone();
    let text = record["text"].as_str().unwrap_or_default();
    if text.chars().count() > 300 || record["createdAt"].as_str().is_none() {
        return xrpc_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Invalid app.bsky.feed.post record",
        );
    }
    if !record["embed"].is_null() {
        let blobs = f.blobs.lock().expect("lock");
        // A blob this PDS holds, of the type and size the record says.
        let known = |blob: &Value, kind: &str| {
            let link = blob["ref"]["$link"].as_str().unwrap_or_default();
            blob["$type"] == "blob"
                && blobs.get(link).is_some_and(|(mime, size)| {
                    mime.starts_with(kind)
                        && blob["mimeType"] == mime.as_str()
                        && blob["size"] == *size
                })
        };
        let embed = &record["embed"];
        let images = embed["images"].as_array().cloned().unwrap_or_default();
        let valid = match embed["$type"].as_str() {
            Some("app.bsky.embed.images") => {
                (1..=4).contains(&images.len())
                    && images
                        .iter()
                        .all(|i| i["alt"].is_string() && known(&i["image"], "image/"))
            }
            Some("app.bsky.embed.video") => known(&embed["video"], "video/"),
            _ => false,
        };
        if !valid {
            return xrpc_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "Invalid embed: unknown blob, wrong type, or more than 4 images",
            );
        }
    }
    let fault = f.faults.lock().expect("lock").pop_front().flatten();
    match fault {
        Some(Fault::RateLimited) => {
            return xrpc_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RateLimitExceeded",
                "Rate Limit Exceeded",
            );
        }
        Some(Fault::ErrorBeforeCommit) => {
            return xrpc_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "Internal Server Error",
            );
        }
        Some(Fault::Hang) => tokio::time::sleep(Duration::from_secs(10)).await,
        _ => {}
    }
    let rkey = body["rkey"].as_str().unwrap_or_default().to_owned();
    let stored = {
        let mut records = f.records.lock().expect("lock");
        if rkey.is_empty() || records.iter().any(|r| r.rkey == rkey) {
            return xrpc_error(
                StatusCode::BAD_REQUEST,
                "InvalidSwap",
                "Record already exists",
            );
        }
        for part in ["root", "parent"] {
            let reply = &record["reply"][part];
            if !reply.is_null()
                && !records
                    .iter()
                    .any(|r| reply["uri"] == r.uri && reply["cid"] == r.cid)
            {
                return xrpc_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequest",
                    "reply refers to a missing record",
                );
            }
        }
        let r = Record {
            uri: format!("at://{DID}/app.bsky.feed.post/{rkey}"),
            cid: format!("bafyrei{:08}", records.len() + 1),
            rkey,
            value: record,
        };
        records.push(r.clone());
        r
    };
    match fault {
        Some(Fault::DropAfterCommit) => std::panic::resume_unwind(Box::new("connection dropped")),
        Some(Fault::ErrorAfterCommit) => xrpc_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "Internal Server Error",
        ),
        _ => Json(json!({"uri": stored.uri, "cid": stored.cid, "validationStatus": "valid"}))
            .into_response(),
    }
}

async fn get_record(
    State(f): State<Arc<FakeBluesky>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(e) = f.check_access(&headers) {
        return e;
    }
    let rkey = q.get("rkey").cloned().unwrap_or_default();
    match f
        .records
        .lock()
        .expect("lock")
        .iter()
        .find(|r| r.rkey == rkey)
    {
        Some(r) => Json(json!({"uri": r.uri, "cid": r.cid, "value": r.value})).into_response(),
        None => xrpc_error(
            StatusCode::BAD_REQUEST,
            "RecordNotFound",
            &format!("Could not locate record: {rkey}"),
        ),
    }
}

/// Starts the fake PDS; its root (`http://127.0.0.1:port`).
pub async fn start_fake_bluesky() -> (Arc<FakeBluesky>, String) {
    let fake = Arc::new(FakeBluesky::default());
    let app = Router::new()
        .route(
            "/xrpc/com.atproto.server.createSession",
            post(create_session),
        )
        .route(
            "/xrpc/com.atproto.server.refreshSession",
            post(refresh_session),
        )
        .route("/xrpc/com.atproto.repo.createRecord", post(create_record))
        .route("/xrpc/com.atproto.repo.uploadBlob", post(upload_blob))
        .route(
            "/xrpc/com.atproto.server.deleteSession",
            post(delete_session),
        )
        .route("/xrpc/com.atproto.server.getServiceAuth", get(service_auth))
        .route("/xrpc/app.bsky.video.uploadVideo", post(upload_video))
        .route("/xrpc/app.bsky.video.getJobStatus", get(job_status))
        .route("/xrpc/com.atproto.repo.getRecord", get(get_record))
        .layer(axum::extract::DefaultBodyLimit::max(1 << 30))
        .with_state(Arc::clone(&fake));
    let base = super::serve_fake(app).await;
    (fake, base.trim_end_matches("/v1").to_owned())
}
