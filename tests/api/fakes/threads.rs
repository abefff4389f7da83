//! A fake Threads Graph API: the authorize redirect, the code → short-lived → long-lived token
//! chain (`th_exchange_token`), `th_refresh_token` (counted), `/me`, text containers, their
//! publish (with the fake X's faults) and their status (`FINISHED` → `PUBLISHED`), and Graph's
//! error envelope (code 190) for a bad token.

pub use super::x::Fault;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub const CLIENT_ID: &str = "threads-app-1";
pub const CLIENT_SECRET: &str = "threads-secret";
pub const USER_ID: &str = "17841400000000001";

/// A container on the fake.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub text: String,
    pub reply_to: Option<String>,
    pub reply_control: Option<String>,
    pub status: String,
    pub media_id: Option<String>,
    /// `TEXT`, `IMAGE`, `VIDEO` or `CAROUSEL`.
    pub media_type: String,
    /// The bytes fetched from the media URL (IMAGE and VIDEO).
    pub fetched: usize,
    pub carousel_item: bool,
    pub children: Vec<String>,
    /// Status polls still answered `IN_PROGRESS` (a video being processed).
    pub polls_left: usize,
}

#[derive(Default)]
pub struct FakeThreads {
    pub containers: Mutex<Vec<Container>>,
    pub faults: Mutex<std::collections::VecDeque<Option<Fault>>>,
    pub refreshes: AtomicUsize,
    pub publishes: AtomicUsize,
    /// Lifetime of new long-lived tokens, in seconds.
    pub long_ttl_s: AtomicI64,
    short: Mutex<Vec<String>>,
    long: Mutex<Vec<String>>,
    counter: AtomicUsize,
}

fn form(body: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

fn bad_token() -> Response {
    (
        axum::http::StatusCode::BAD_REQUEST,
        Json(json!({"error": {"message": "Error validating access token", "type": "OAuthException", "code": 190}})),
    )
        .into_response()
}

impl FakeThreads {
    fn next(&self) -> usize {
        self.counter.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn live(&self, token: Option<&String>) -> bool {
        token.is_some_and(|t| self.long.lock().expect("lock").contains(t))
    }

    fn long_token(&self) -> Value {
        let t = format!("THLONG{}", self.next());
        self.long.lock().expect("lock").push(t.clone());
        json!({"access_token": t, "token_type": "bearer", "expires_in": self.long_ttl_s.load(Ordering::SeqCst)})
    }
}

async fn authorize(Query(q): Query<HashMap<String, String>>) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("client_id") != CLIENT_ID || get("response_type") != "code" {
        return (axum::http::StatusCode::BAD_REQUEST, "bad request").into_response();
    }
    Redirect::to(&format!(
        "{}?code=THCODE&state={}",
        get("redirect_uri"),
        get("state")
    ))
    .into_response()
}

async fn access_token(State(f): State<Arc<FakeThreads>>, body: String) -> Response {
    let q = form(&body);
    if q.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
        || q.get("code").map(String::as_str) != Some("THCODE")
    {
        return bad_token();
    }
    let t = format!("THSHORT{}", f.next());
    f.short.lock().expect("lock").push(t.clone());
    Json(json!({"access_token": t, "user_id": USER_ID})).into_response()
}

async fn exchange(
    State(f): State<Arc<FakeThreads>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let short_ok = q
        .get("access_token")
        .is_some_and(|t| f.short.lock().expect("lock").contains(t));
    if q.get("grant_type").map(String::as_str) != Some("th_exchange_token") || !short_ok {
        return bad_token();
    }
    Json(f.long_token()).into_response()
}

async fn refresh(
    State(f): State<Arc<FakeThreads>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    f.refreshes.fetch_add(1, Ordering::SeqCst);
    if q.get("grant_type").map(String::as_str) != Some("th_refresh_token")
        || !f.live(q.get("access_token"))
    {
        return bad_token();
    }
    Json(f.long_token()).into_response()
}

async fn me(
    State(f): State<Arc<FakeThreads>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !f.live(q.get("access_token")) {
        return bad_token();
    }
    Json(json!({"id": USER_ID, "username": "dave"})).into_response()
}

async fn create(
    State(f): State<Arc<FakeThreads>>,
    Path(user): Path<String>,
    body: String,
) -> Response {
    let q = form(&body);
    if !f.live(q.get("access_token")) {
        return bad_token();
    }
    let invalid = |why: &str| {
        (
            axum::http::StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": format!("Invalid parameter: {why}"), "code": 100}})),
        )
            .into_response()
    };
    let media_type = q.get("media_type").cloned().unwrap_or_default();
    if user != USER_ID {
        return invalid("user");
    }
    let carousel_item = q.get("is_carousel_item").map(String::as_str) == Some("true");
    // Meta fetches the media from its public URL; one it cannot fetch ends in ERROR.
    let (mut status, mut fetched, mut polls_left) = ("FINISHED", 0, 0);
    match media_type.as_str() {
        "TEXT" if !carousel_item => {}
        "IMAGE" | "VIDEO" => {
            let key = if media_type == "IMAGE" {
                "image_url"
            } else {
                "video_url"
            };
            let Some(url) = q.get(key) else {
                return invalid(key);
            };
            match reqwest::get(url).await {
                Ok(r) if r.status().is_success() => {
                    fetched = r.bytes().await.map(|b| b.len()).unwrap_or(0);
                }
                _ => status = "ERROR",
            }
            if fetched == 0 {
                status = "ERROR";
            }
            if media_type == "VIDEO" && status == "FINISHED" {
                polls_left = 1;
            }
        }
        "CAROUSEL" if !carousel_item => {}
        _ => return invalid("media_type"),
    }
    let mut children = Vec::new();
    if media_type == "CAROUSEL" {
        children = q
            .get("children")
            .map(|c| c.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        let list = f.containers.lock().expect("lock");
        let ok = (2..=20).contains(&children.len())
            && children.iter().all(|id| {
                list.iter().any(|c| {
                    c.id == *id && c.carousel_item && c.status == "FINISHED" && c.polls_left == 0
                })
            });
        if !ok {
            return invalid("children");
        }
    }
    if polls_left > 0 {
        status = "IN_PROGRESS";
    }
    let mut list = f.containers.lock().expect("lock");
    if let Some(parent) = q.get("reply_to_id")
        && !list.iter().any(|c| c.media_id.as_ref() == Some(parent))
    {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "reply target not found", "code": 100}})),
        )
            .into_response();
    }
    let c = Container {
        id: format!("C{}", 9000 + list.len()),
        text: q.get("text").cloned().unwrap_or_default(),
        reply_to: q.get("reply_to_id").cloned(),
        reply_control: q.get("reply_control").cloned(),
        status: status.into(),
        media_id: None,
        media_type,
        fetched,
        carousel_item,
        children,
        polls_left,
    };
    list.push(c.clone());
    Json(json!({"id": c.id})).into_response()
}

async fn publish(State(f): State<Arc<FakeThreads>>, body: String) -> Response {
    f.publishes.fetch_add(1, Ordering::SeqCst);
    let q = form(&body);
    if !f.live(q.get("access_token")) {
        return bad_token();
    }
    let fault = f.faults.lock().expect("lock").pop_front().flatten();
    if matches!(fault, Some(Fault::ErrorBeforeCommit)) {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "An unknown error occurred", "code": 1}})),
        )
            .into_response();
    }
    let media = {
        let mut list = f.containers.lock().expect("lock");
        let Some(c) = list
            .iter_mut()
            .find(|c| Some(&c.id) == q.get("creation_id"))
        else {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                Json(json!({"error": {"message": "no container", "code": 100}})),
            )
                .into_response();
        };
        if c.carousel_item || c.status == "IN_PROGRESS" || c.status == "ERROR" {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                Json(json!({"error": {"message": "The media is not ready to be published", "code": 24, "error_subcode": 4279009}})),
            )
                .into_response();
        }
        if c.status == "PUBLISHED" {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                Json(json!({"error": {"message": "already published", "code": 100}})),
            )
                .into_response();
        }
        c.status = "PUBLISHED".into();
        let media = format!("M{}", 18_000_000 + f.counter.fetch_add(1, Ordering::SeqCst));
        c.media_id = Some(media.clone());
        media
    };
    match fault {
        Some(Fault::DropAfterCommit) => std::panic::resume_unwind(Box::new("connection dropped")),
        Some(Fault::ErrorAfterCommit) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "An unknown error occurred", "code": 1}})),
        )
            .into_response(),
        _ => Json(json!({"id": media})).into_response(),
    }
}

async fn status(
    State(f): State<Arc<FakeThreads>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !f.live(q.get("access_token")) {
        return bad_token();
    }
    match f
        .containers
        .lock()
        .expect("lock")
        .iter_mut()
        .find(|c| c.id == id)
    {
        Some(c) => {
            if c.polls_left > 0 {
                c.polls_left -= 1;
                if c.polls_left == 0 {
                    c.status = "FINISHED".into();
                }
                return Json(json!({"id": c.id, "status": "IN_PROGRESS"})).into_response();
            }
            Json(json!({"id": c.id, "status": c.status, "media_id": c.media_id})).into_response()
        }
        None => bad_token(),
    }
}

/// Starts the fake; its root (`http://127.0.0.1:port`; the Graph API is under `/v1.0`).
pub async fn start_fake_threads() -> (Arc<FakeThreads>, String) {
    let fake = Arc::new(FakeThreads::default());
    fake.long_ttl_s.store(5_183_944, Ordering::SeqCst);
    let app = Router::new()
        .route("/oauth/authorize", get(authorize))
        .route("/oauth/access_token", post(access_token))
        .route("/access_token", get(exchange))
        .route("/refresh_access_token", get(refresh))
        .route("/v1.0/me", get(me))
        .route("/v1.0/{id}", get(status))
        .route("/v1.0/{user}/threads", post(create))
        .route("/v1.0/{user}/threads_publish", post(publish))
        .with_state(Arc::clone(&fake));
    let base = super::serve_fake(app)
        .await
        .trim_end_matches("/v1")
        .to_owned();
    (fake, base)
}
