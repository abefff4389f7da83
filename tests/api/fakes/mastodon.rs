//! A fake Mastodon instance: app registration (`/api/v1/apps`, counted), OAuth with PKCE S256
//! (the redirect URI must be the app's), `verify_credentials`, `/api/v2/instance` with its own
//! character limit, and `POST /api/v1/statuses` that answers a repeated `Idempotency-Key` with
//! the status it already made, with the same faults as the fake X.

pub use super::x::Fault;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A status on the fake.
#[derive(Debug, Clone)]
pub struct Status {
    pub id: String,
    pub text: String,
    pub in_reply_to: Option<String>,
    pub key: String,
    pub media_ids: Vec<String>,
}

/// An attachment on the fake: its type, size, and how many polls still answer 206.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub content_type: String,
    pub size: usize,
    pub polls_left: usize,
}

#[derive(Default)]
pub struct FakeMastodon {
    pub base: Mutex<String>,
    pub statuses: Mutex<Vec<Status>>,
    pub faults: Mutex<std::collections::VecDeque<Option<Fault>>>,
    pub registrations: AtomicUsize,
    pub creates: AtomicUsize,
    pub max_characters: AtomicI64,
    /// Tokens revoked through `/oauth/revoke` by the app that holds them.
    pub revocations: AtomicUsize,
    /// Attachments by id.
    pub media: Mutex<HashMap<String, Attachment>>,
    /// client_id → (secret, redirect_uri).
    apps: Mutex<HashMap<String, (String, String)>>,
    /// code → (client_id, redirect_uri, challenge).
    codes: Mutex<HashMap<String, (String, String, String)>>,
    tokens: Mutex<Vec<String>>,
    counter: AtomicUsize,
}

impl FakeMastodon {
    fn next(&self) -> usize {
        self.counter.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Revokes every token (the user removed the app).
    pub fn revoke_all(&self) {
        self.tokens.lock().expect("lock").clear();
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        self.tokens.lock().expect("lock").iter().any(|t| t == token)
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

async fn apps(State(f): State<Arc<FakeMastodon>>, Json(body): Json<Value>) -> Response {
    f.registrations.fetch_add(1, Ordering::SeqCst);
    let n = f.next();
    let (id, secret) = (format!("client-{n}"), format!("secret-{n}"));
    let redirect = body["redirect_uris"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    f.apps
        .lock()
        .expect("lock")
        .insert(id.clone(), (secret.clone(), redirect.clone()));
    Json(
        json!({"id": n.to_string(), "name": body["client_name"], "redirect_uri": redirect,
        "client_id": id, "client_secret": secret, "client_secret_expires_at": 0}),
    )
    .into_response()
}

async fn authorize(
    State(f): State<Arc<FakeMastodon>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let client = get("client_id");
    let registered = f
        .apps
        .lock()
        .expect("lock")
        .get(&client)
        .map(|(_, r)| r.clone());
    if registered.as_deref() != Some(get("redirect_uri").as_str())
        || get("code_challenge_method") != "S256"
    {
        return error(
            StatusCode::BAD_REQUEST,
            "The redirect uri included is not valid.",
        );
    }
    let code = format!("mcode-{}", f.next());
    f.codes.lock().expect("lock").insert(
        code.clone(),
        (client, get("redirect_uri"), get("code_challenge")),
    );
    Redirect::to(&format!(
        "{}?code={code}&state={}",
        get("redirect_uri"),
        get("state")
    ))
    .into_response()
}

/// `POST /oauth/revoke`: the app's credentials and a token; the token stops working.
async fn revoke(State(f): State<Arc<FakeMastodon>>, body: String) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let app_ok = f
        .apps
        .lock()
        .expect("lock")
        .get(&get("client_id"))
        .is_some_and(|(s, _)| *s == get("client_secret"));
    if !app_ok {
        return error(StatusCode::FORBIDDEN, "invalid_client");
    }
    f.tokens
        .lock()
        .expect("lock")
        .retain(|t| *t != get("token"));
    f.revocations.fetch_add(1, Ordering::SeqCst);
    Json(json!({})).into_response()
}

async fn token(State(f): State<Arc<FakeMastodon>>, body: String) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let Some((client, redirect, challenge)) = f.codes.lock().expect("lock").remove(&get("code"))
    else {
        return error(StatusCode::BAD_REQUEST, "invalid_grant");
    };
    let secret_ok = f
        .apps
        .lock()
        .expect("lock")
        .get(&client)
        .is_some_and(|(s, _)| *s == get("client_secret"));
    let derived = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(get("code_verifier").as_bytes()));
    if client != get("client_id")
        || !secret_ok
        || redirect != get("redirect_uri")
        || derived != challenge
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant",
            "error_description": "The provided authorization grant is invalid"})),
        )
            .into_response();
    }
    let access = format!("mtok-{}", f.next());
    f.tokens.lock().expect("lock").push(access.clone());
    Json(json!({"access_token": access, "token_type": "Bearer", "scope": "read:accounts write:statuses write:media", "created_at": 1}))
        .into_response()
}

async fn me(State(f): State<Arc<FakeMastodon>>, headers: HeaderMap) -> Response {
    if !f.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "The access token is invalid");
    }
    Json(
        json!({"id": "109000001", "username": "carol", "acct": "carol", "display_name": "Carol",
        "avatar": "https://files.example/carol.png"}),
    )
    .into_response()
}

async fn instance(State(f): State<Arc<FakeMastodon>>) -> Json<Value> {
    Json(
        json!({"domain": "fake.social", "configuration": {"statuses": {
        "max_characters": f.max_characters.load(Ordering::SeqCst), "max_media_attachments": 4,
        "characters_reserved_per_url": 23}}}),
    )
}

/// `POST /api/v2/media`: an image is ready at once (200), a video is processed (202, then 206
/// on one poll, then 200).
async fn upload_media(
    State(f): State<Arc<FakeMastodon>>,
    headers: HeaderMap,
    mut form: axum::extract::Multipart,
) -> Response {
    if !f.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "The access token is invalid");
    }
    let mut file = None;
    while let Ok(Some(field)) = form.next_field().await {
        if field.name() == Some("file") {
            let ct = field.content_type().unwrap_or_default().to_owned();
            file = field.bytes().await.ok().map(|b| (ct, b.len()));
        }
    }
    let Some((content_type, size)) = file.filter(|(_, n)| *n > 0) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation failed: File can't be blank",
        );
    };
    let video = content_type.starts_with("video/");
    let id = format!("2200{:08}", f.next());
    f.media.lock().expect("lock").insert(
        id.clone(),
        Attachment {
            content_type: content_type.clone(),
            size,
            polls_left: usize::from(video),
        },
    );
    let kind = if video { "video" } else { "image" };
    let body = json!({"id": id, "type": kind, "url": if video { Value::Null } else { json!(format!("https://files.example/{id}")) }});
    let status = if video {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

async fn media_status(
    State(f): State<Arc<FakeMastodon>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    if !f.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "The access token is invalid");
    }
    let mut media = f.media.lock().expect("lock");
    let Some(a) = media.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, "Record not found");
    };
    if a.polls_left > 0 {
        a.polls_left -= 1;
        return (
            StatusCode::PARTIAL_CONTENT,
            Json(json!({"id": id, "url": null})),
        )
            .into_response();
    }
    Json(json!({"id": id, "url": format!("https://files.example/{id}")})).into_response()
}

async fn statuses(
    State(f): State<Arc<FakeMastodon>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    f.creates.fetch_add(1, Ordering::SeqCst);
    if !f.authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "The access token is invalid");
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let shape = |s: &Status| {
        let base = f.base.lock().expect("lock").clone();
        json!({"id": s.id, "url": format!("{base}/@carol/{}", s.id), "uri": format!("{base}/users/carol/statuses/{}", s.id),
               "content": format!("<p>{}</p>", s.text), "in_reply_to_id": s.in_reply_to})
    };
    // A repeated key within the hour: the status already made.
    if !key.is_empty()
        && let Some(s) = f
            .statuses
            .lock()
            .expect("lock")
            .iter()
            .find(|s| s.key == key)
            .cloned()
    {
        return Json(shape(&s)).into_response();
    }
    let text = body["status"].as_str().unwrap_or_default().to_owned();
    let media_ids: Vec<String> = body["media_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    {
        let media = f.media.lock().expect("lock");
        if media_ids.len() > 4 {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Validation failed: Too many attachments",
            );
        }
        for id in &media_ids {
            match media.get(id) {
                None => {
                    return error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Validation failed: unknown media",
                    );
                }
                Some(a) if a.polls_left > 0 => {
                    return error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Cannot attach files that have not finished processing. Try again in a moment!",
                    );
                }
                Some(_) => {}
            }
        }
    }
    if text.is_empty() && media_ids.is_empty() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation failed: Text can't be blank",
        );
    }
    if text.chars().count() as i64 > f.max_characters.load(Ordering::SeqCst) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Validation failed: Text character limit exceeded",
        );
    }
    let fault = f.faults.lock().expect("lock").pop_front().flatten();
    match fault {
        Some(Fault::RateLimited) => {
            return error(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
        }
        Some(Fault::ErrorBeforeCommit) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable");
        }
        Some(Fault::Hang) => tokio::time::sleep(Duration::from_secs(10)).await,
        _ => {}
    }
    let in_reply_to = body["in_reply_to_id"].as_str().map(str::to_owned);
    let status = {
        let mut list = f.statuses.lock().expect("lock");
        if let Some(id) = &in_reply_to
            && !list.iter().any(|s| s.id == *id)
        {
            return error(StatusCode::NOT_FOUND, "Record not found");
        }
        let s = Status {
            id: format!("1100{:08}", list.len() + 1),
            text,
            in_reply_to,
            key,
            media_ids,
        };
        list.push(s.clone());
        s
    };
    match fault {
        Some(Fault::DropAfterCommit) => std::panic::resume_unwind(Box::new("connection dropped")),
        Some(Fault::ErrorAfterCommit) => error(StatusCode::BAD_GATEWAY, "Bad gateway"),
        _ => Json(shape(&status)).into_response(),
    }
}

/// Starts the fake instance; its root (`http://127.0.0.1:port`).
pub async fn start_fake_mastodon() -> (Arc<FakeMastodon>, String) {
    let fake = Arc::new(FakeMastodon::default());
    fake.max_characters.store(1000, Ordering::SeqCst);
    let app = Router::new()
        .route("/api/v1/apps", post(apps))
        .route("/oauth/authorize", get(authorize))
        .route("/oauth/token", post(token))
        .route("/oauth/revoke", post(revoke))
        .route("/api/v1/accounts/verify_credentials", get(me))
        .route("/api/v2/instance", get(instance))
        .route("/api/v1/statuses", post(statuses))
        .route("/api/v2/media", post(upload_media))
        .route("/api/v1/media/{id}", get(media_status))
        .layer(axum::extract::DefaultBodyLimit::max(1 << 30))
        .with_state(Arc::clone(&fake));
    let base = super::serve_fake(app)
        .await
        .trim_end_matches("/v1")
        .to_owned();
    *fake.base.lock().expect("lock") = base.clone();
    (fake, base)
}
