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
    use sha2::Digest;
    let digest = sha2::Sha256::digest(&body);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let link = format!("bafkrei{}", &hex[..40]);
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
        let images = record["embed"]["images"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let blobs = f.blobs.lock().expect("lock");
        let known = |img: &Value| {
            let link = img["image"]["ref"]["$link"].as_str().unwrap_or_default();
            img["alt"].is_string()
                && img["image"]["$type"] == "blob"
                && blobs.get(link).is_some_and(|(mime, size)| {
                    img["image"]["mimeType"] == mime.as_str() && img["image"]["size"] == *size
                })
        };
        if record["embed"]["$type"] != "app.bsky.embed.images"
            || images.is_empty()
            || images.len() > 4
            || !images.iter().all(known)
        {
            return xrpc_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                "Invalid app.bsky.embed.images: unknown blob or more than 4 images",
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
        .route("/xrpc/com.atproto.repo.getRecord", get(get_record))
        .layer(axum::extract::DefaultBodyLimit::max(1 << 30))
        .with_state(Arc::clone(&fake));
    let base = super::serve_fake(app).await;
    (fake, base.trim_end_matches("/v1").to_owned())
}
