//! A fake of X's OAuth 2.0 and API v2 (docs.x.com): the authorize page (redirect URI matched
//! exactly, else error 415's body), PKCE S256 and plain, codes that live 30 s and are used once,
//! the token endpoint with HTTP Basic client auth, rotating single-use refresh tokens (reusing
//! one revokes the family), 2 h access tokens (shorter when told), `GET /2/users/me` with
//! `401` problem JSON for a bad token, and revocation. It counts what it was asked.

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
use std::time::{Duration, Instant};

pub const CLIENT_ID: &str = "x-client-id";
pub const CLIENT_SECRET: &str = "x-client-secret";

#[derive(Clone)]
struct Code {
    redirect_uri: String,
    challenge: String,
    method: String,
    scope: String,
    issued: Instant,
}

#[derive(Clone)]
struct Token {
    user: String,
    expires: Instant,
}

/// A fault the next create call meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The post is made, then the connection drops before the answer.
    DropAfterCommit,
    /// The post is made, then X answers 503.
    ErrorAfterCommit,
    /// X answers 503 without making it.
    ErrorBeforeCommit,
    /// X answers 429 (nothing made).
    RateLimited,
    /// X takes ten seconds, then makes it and answers.
    Hang,
    /// X takes a second, then makes it and answers.
    Slow,
}

/// A post on the fake.
#[derive(Debug, Clone)]
pub struct Tweet {
    pub id: String,
    pub user: String,
    pub text: String,
    pub reply_to: Option<String>,
    pub quote: Option<String>,
    /// The media attached (upload ids).
    pub media: Vec<String>,
}

/// An upload on the fake's chunked media endpoint.
#[derive(Debug, Clone, Default)]
pub struct Upload {
    pub user: String,
    pub media_type: String,
    pub total_bytes: usize,
    pub segments: Vec<usize>,
    pub bytes: Vec<u8>,
    pub finalized: bool,
    /// STATUS polls still answered `in_progress`.
    pub pending_polls: usize,
}

#[derive(Default)]
pub struct FakeX {
    pub tweets: Mutex<Vec<Tweet>>,
    /// Media uploads by id.
    pub uploads: Mutex<HashMap<String, Upload>>,
    pub status_polls: AtomicUsize,
    /// What the next create calls meet, in order (`None`: nothing).
    pub faults: Mutex<std::collections::VecDeque<Option<Fault>>>,
    pub create_calls: AtomicUsize,
    /// Whether this app's tier may quote posts (self-serve tiers may not, since 2026).
    pub quotes_allowed: std::sync::atomic::AtomicBool,
    /// Callback URLs registered for the app.
    pub registered: Mutex<Vec<String>>,
    codes: Mutex<HashMap<String, Code>>,
    access: Mutex<HashMap<String, Token>>,
    /// Refresh token → (user, spent, family).
    refresh: Mutex<HashMap<String, (String, bool, u64)>>,
    revoked_families: Mutex<Vec<u64>>,
    pub token_calls: AtomicUsize,
    pub refresh_calls: AtomicUsize,
    pub revocations: AtomicUsize,
    /// Lifetime of new access tokens, in seconds.
    pub access_ttl_s: AtomicI64,
    counter: AtomicUsize,
    /// The user id and username the next approval is for.
    pub user: Mutex<(String, String)>,
}

impl FakeX {
    fn next(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.counter.fetch_add(1, Ordering::SeqCst))
    }

    fn issue(&self, user: &str, family: u64, offline: bool) -> Value {
        let access = self.next("xat-");
        let ttl = self.access_ttl_s.load(Ordering::SeqCst);
        self.access.lock().expect("lock").insert(
            access.clone(),
            Token {
                user: user.to_owned(),
                expires: Instant::now() + Duration::from_secs(ttl.max(0) as u64),
            },
        );
        let mut body = json!({"token_type": "bearer", "expires_in": ttl, "access_token": access,
            "scope": "tweet.read tweet.write users.read media.write offline.access"});
        if offline {
            let refresh = self.next("xrt-");
            self.refresh
                .lock()
                .expect("lock")
                .insert(refresh.clone(), (user.to_owned(), false, family));
            body["refresh_token"] = json!(refresh);
        }
        body
    }

    /// Expires every access token now (as two hours passing would).
    pub fn expire_access_tokens(&self) {
        let past = Instant::now() - Duration::from_secs(1);
        for t in self.access.lock().expect("lock").values_mut() {
            t.expires = past;
        }
    }

    /// Revokes every token of every user (the user removed the app).
    pub fn revoke_all(&self) {
        self.access.lock().expect("lock").clear();
        let mut r = self.refresh.lock().expect("lock");
        let families: Vec<u64> = r.values().map(|(_, _, f)| *f).collect();
        r.clear();
        self.revoked_families.lock().expect("lock").extend(families);
    }

    /// The user a bearer token belongs to, if it is live.
    pub fn user_of(&self, headers: &HeaderMap) -> Option<String> {
        let auth = headers.get("authorization")?.to_str().ok()?;
        let token = auth.strip_prefix("Bearer ")?;
        let map = self.access.lock().expect("lock");
        let t = map.get(token)?;
        (t.expires > Instant::now()).then(|| t.user.clone())
    }
}

fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    (
        status,
        Json(json!({"title": title, "detail": detail, "type": "about:blank", "status": status.as_u16()})),
    )
        .into_response()
}

fn oauth_error(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

async fn authorize(
    State(f): State<Arc<FakeX>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    let redirect = get("redirect_uri");
    if get("client_id") != CLIENT_ID {
        return (StatusCode::BAD_REQUEST, "unknown client").into_response();
    }
    if !f.registered.lock().expect("lock").contains(&redirect) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"errors": [{"code": 415, "message": "Callback URL not approved for this client application."}]})),
        )
            .into_response();
    }
    let state = get("state");
    if get("response_type") != "code" || state.is_empty() || state.len() > 500 {
        return (StatusCode::BAD_REQUEST, "bad request").into_response();
    }
    let method = q
        .get("code_challenge_method")
        .cloned()
        .unwrap_or_else(|| "plain".into());
    let code = f.next("code-");
    f.codes.lock().expect("lock").insert(
        code.clone(),
        Code {
            redirect_uri: redirect.clone(),
            challenge: get("code_challenge"),
            method,
            scope: get("scope"),
            issued: Instant::now(),
        },
    );
    let sep = if redirect.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{redirect}{sep}state={state}&code={code}")).into_response()
}

fn basic_ok(headers: &HeaderMap) -> bool {
    let expected =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Basic {expected}"))
}

async fn token(State(f): State<Arc<FakeX>>, headers: HeaderMap, body: String) -> Response {
    f.token_calls.fetch_add(1, Ordering::SeqCst);
    if !basic_ok(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    match get("grant_type").as_str() {
        "authorization_code" => {
            let Some(code) = f.codes.lock().expect("lock").remove(&get("code")) else {
                return oauth_error(
                    "invalid_request",
                    "Value passed for the authorization code was invalid.",
                );
            };
            if code.issued.elapsed() > Duration::from_secs(30) {
                return oauth_error("invalid_request", "authorization code expired");
            }
            if code.redirect_uri != get("redirect_uri") {
                return oauth_error("invalid_request", "redirect_uri does not match");
            }
            let verifier = get("code_verifier");
            let derived = match code.method.as_str() {
                "S256" => base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(Sha256::digest(verifier.as_bytes())),
                _ => verifier,
            };
            if derived != code.challenge {
                return oauth_error(
                    "invalid_request",
                    "code_verifier does not match the challenge",
                );
            }
            let (user, _) = f.user.lock().expect("lock").clone();
            let family = f.counter.fetch_add(1, Ordering::SeqCst) as u64;
            let offline = code.scope.split(' ').any(|s| s == "offline.access");
            Json(f.issue(&user, family, offline)).into_response()
        }
        "refresh_token" => {
            f.refresh_calls.fetch_add(1, Ordering::SeqCst);
            let presented = get("refresh_token");
            let mut map = f.refresh.lock().expect("lock");
            let Some((user, spent, family)) = map.get(&presented).cloned() else {
                return oauth_error("invalid_request", "Value passed for the token was invalid.");
            };
            if f.revoked_families.lock().expect("lock").contains(&family) {
                return oauth_error("invalid_request", "Value passed for the token was invalid.");
            }
            if spent {
                // Reuse of a rotated token: the whole family is revoked.
                f.revoked_families.lock().expect("lock").push(family);
                return oauth_error("invalid_request", "Value passed for the token was invalid.");
            }
            map.insert(presented, (user.clone(), true, family));
            drop(map);
            Json(f.issue(&user, family, true)).into_response()
        }
        _ => oauth_error("unsupported_grant_type", "grant_type"),
    }
}

async fn revoke(State(f): State<Arc<FakeX>>, headers: HeaderMap, body: String) -> Response {
    if !basic_ok(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    f.revocations.fetch_add(1, Ordering::SeqCst);
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    if let Some(t) = form.get("token") {
        f.refresh.lock().expect("lock").remove(t);
        f.access.lock().expect("lock").remove(t);
    }
    Json(json!({"revoked": true})).into_response()
}

async fn me(State(f): State<Arc<FakeX>>, headers: HeaderMap) -> Response {
    let Some(user) = f.user_of(&headers) else {
        return problem(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    };
    let (id, username) = f.user.lock().expect("lock").clone();
    let username = if user == id {
        username
    } else {
        format!("user{user}")
    };
    Json(
        json!({"data": {"id": user, "name": format!("Name of {username}"), "username": username,
        "profile_image_url": format!("https://pbs.example/{user}.jpg")}}),
    )
    .into_response()
}

async fn create_tweet(State(f): State<Arc<FakeX>>, headers: HeaderMap, body: String) -> Response {
    f.create_calls.fetch_add(1, Ordering::SeqCst);
    let Some(user) = f.user_of(&headers) else {
        return problem(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    };
    let Ok(Value::Object(v)) = serde_json::from_str::<Value>(&body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid Request",
            "body is not a JSON object",
        );
    };
    let allowed = [
        "text",
        "reply",
        "quote_tweet_id",
        "media",
        "poll",
        "reply_settings",
    ];
    if let Some(k) = v.keys().find(|k| !allowed.contains(&k.as_str())) {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid Request",
            &format!("unknown field {k}"),
        );
    }
    let text = v
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let reply_to = v.get("reply").map(|r| {
        r["in_reply_to_tweet_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    let quote = v
        .get("quote_tweet_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if quote.is_some() && !f.quotes_allowed.load(Ordering::SeqCst) {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"title": "Forbidden", "status": 403, "type": "https://api.x.com/2/problems/client-forbidden",
                "detail": "Quote posts are not available on this access tier."})),
        )
            .into_response();
    }
    let fault = f.faults.lock().expect("lock").pop_front().flatten();
    match fault {
        Some(Fault::RateLimited) => {
            return problem(
                StatusCode::TOO_MANY_REQUESTS,
                "Too Many Requests",
                "Too Many Requests",
            );
        }
        Some(Fault::ErrorBeforeCommit) => {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                "over capacity",
            );
        }
        Some(Fault::Hang) => tokio::time::sleep(Duration::from_secs(10)).await,
        Some(Fault::Slow) => tokio::time::sleep(Duration::from_secs(1)).await,
        _ => {}
    }
    let media: Vec<String> = match v.get("media") {
        None => Vec::new(),
        Some(m) => {
            let ids: Vec<String> = m["media_ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if ids.is_empty() || ids.len() > 4 {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "Invalid Request",
                    "media.media_ids: 1 to 4 ids",
                );
            }
            let uploads = f.uploads.lock().expect("lock");
            for id in &ids {
                let ready = uploads
                    .get(id)
                    .is_some_and(|u| u.user == user && u.finalized && u.pending_polls == 0);
                if !ready {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        "Invalid Request",
                        &format!("Your media IDs are invalid: {id}"),
                    );
                }
            }
            ids
        }
    };
    if text.is_empty() && media.is_empty() {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid Request",
            "text or media is required",
        );
    }
    let tweet = {
        let mut tweets = f.tweets.lock().expect("lock");
        if let Some(id) = &reply_to
            && !tweets.iter().any(|t| t.id == *id)
        {
            return problem(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "You attempted to reply to a Tweet that is deleted or not visible to you.",
            );
        }
        if !text.is_empty()
            && tweets
                .iter()
                .any(|t| t.user == user && t.text == text && t.reply_to == reply_to)
        {
            return problem(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "You are not allowed to create a Tweet with duplicate content.",
            );
        }
        let id = format!("{}", 1_800_000_000_000_000_000u64 + tweets.len() as u64 + 1);
        let tweet = Tweet {
            id,
            user,
            text,
            reply_to,
            quote,
            media,
        };
        tweets.push(tweet.clone());
        tweet
    };
    match fault {
        Some(Fault::DropAfterCommit) => std::panic::resume_unwind(Box::new("connection dropped")),
        Some(Fault::ErrorAfterCommit) => {
            problem(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable", "over capacity")
        }
        _ => (
            StatusCode::CREATED,
            Json(json!({"data": {"id": tweet.id, "text": tweet.text, "edit_history_tweet_ids": [tweet.id]}})),
        )
            .into_response(),
    }
}

async fn media_initialize(
    State(f): State<Arc<FakeX>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let Some(user) = f.user_of(&headers) else {
        return problem(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    };
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let (Some(media_type), Some(total)) = (v["media_type"].as_str(), v["total_bytes"].as_u64())
    else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid Request",
            "media_type and total_bytes are required",
        );
    };
    let category = v["media_category"].as_str().unwrap_or_default();
    let limit = match category {
        "tweet_image" => 5 << 20,
        "tweet_gif" => 15 << 20,
        "tweet_video" | "amplify_video" => 512 << 20,
        _ => return problem(StatusCode::BAD_REQUEST, "Invalid Request", "media_category"),
    };
    if total > limit {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid Request",
            "File size exceeds limit",
        );
    }
    let id = format!(
        "{}",
        1_880_000_000_000_000_000u64 + f.counter.fetch_add(1, Ordering::SeqCst) as u64
    );
    f.uploads.lock().expect("lock").insert(
        id.clone(),
        Upload {
            user,
            media_type: media_type.to_owned(),
            total_bytes: total as usize,
            pending_polls: usize::from(category != "tweet_image"),
            ..Upload::default()
        },
    );
    Json(json!({"data": {"id": id, "media_key": format!("13_{id}"), "expires_after_secs": 86400}}))
        .into_response()
}

async fn media_append(
    State(f): State<Arc<FakeX>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
    mut form: axum::extract::Multipart,
) -> Response {
    let Some(user) = f.user_of(&headers) else {
        return problem(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    };
    let (mut index, mut data) = (None, None);
    while let Ok(Some(field)) = form.next_field().await {
        match field.name() {
            Some("segment_index") => {
                index = field
                    .text()
                    .await
                    .ok()
                    .and_then(|t| t.parse::<usize>().ok())
            }
            Some("media") => data = field.bytes().await.ok(),
            _ => {}
        }
    }
    let (Some(index), Some(data)) = (index, data) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid Request",
            "segment_index and media are required",
        );
    };
    let mut uploads = f.uploads.lock().expect("lock");
    let Some(u) = uploads
        .get_mut(&id)
        .filter(|u| u.user == user && !u.finalized)
    else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid Request",
            "unknown media id",
        );
    };
    if index != u.segments.len() || index > 999 || data.len() > 5 << 20 {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid Request",
            "segment_index out of order",
        );
    }
    u.segments.push(data.len());
    u.bytes.extend_from_slice(&data);
    StatusCode::NO_CONTENT.into_response()
}

async fn media_finalize(
    State(f): State<Arc<FakeX>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(user) = f.user_of(&headers) else {
        return problem(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    };
    let mut uploads = f.uploads.lock().expect("lock");
    let Some(u) = uploads.get_mut(&id).filter(|u| u.user == user) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid Request",
            "unknown media id",
        );
    };
    if u.bytes.len() != u.total_bytes {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid Request",
            "File size does not match total_bytes",
        );
    }
    u.finalized = true;
    let mut data = json!({"id": id, "media_key": format!("13_{id}"), "size": u.total_bytes, "expires_after_secs": 86400});
    if u.pending_polls > 0 {
        data["processing_info"] = json!({"state": "pending", "check_after_secs": 1});
    }
    Json(json!({"data": data})).into_response()
}

async fn media_status(
    State(f): State<Arc<FakeX>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if f.user_of(&headers).is_none() {
        return problem(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    f.status_polls.fetch_add(1, Ordering::SeqCst);
    let id = q.get("media_id").cloned().unwrap_or_default();
    if q.get("command").map(String::as_str) != Some("STATUS") {
        return problem(StatusCode::BAD_REQUEST, "Invalid Request", "command");
    }
    let mut uploads = f.uploads.lock().expect("lock");
    let Some(u) = uploads.get_mut(&id).filter(|u| u.finalized) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid Request",
            "unknown media id",
        );
    };
    let info = if u.pending_polls > 0 {
        u.pending_polls -= 1;
        json!({"state": "in_progress", "check_after_secs": 1, "progress_percent": 50})
    } else {
        json!({"state": "succeeded", "progress_percent": 100})
    };
    Json(json!({"data": {"id": id, "media_key": format!("13_{id}"), "processing_info": info}}))
        .into_response()
}

/// Starts the fake; its root (`http://127.0.0.1:port`, without `/v1`).
pub async fn start_fake_x() -> (Arc<FakeX>, String) {
    let fake = Arc::new(FakeX::default());
    fake.access_ttl_s.store(7200, Ordering::SeqCst);
    *fake.user.lock().expect("lock") = ("2244994945".into(), "tollgate_dev".into());
    let app = Router::new()
        .route("/i/oauth2/authorize", get(authorize))
        .route("/2/oauth2/token", post(token))
        .route("/2/oauth2/revoke", post(revoke))
        .route("/2/users/me", get(me))
        .route("/2/tweets", post(create_tweet))
        .route("/2/media/upload/initialize", post(media_initialize))
        .route("/2/media/upload/{id}/append", post(media_append))
        .route("/2/media/upload/{id}/finalize", post(media_finalize))
        .route("/2/media/upload", get(media_status))
        .layer(axum::extract::DefaultBodyLimit::max(1 << 30))
        .with_state(Arc::clone(&fake));
    let base = super::serve_fake(app).await;
    (fake, base.trim_end_matches("/v1").to_owned())
}
