//! A fake WeChat Official Account API: every answer HTTP 200, failures as `{"errcode",
//! "errmsg"}`. `stable_token` returns the current token until it nears its end (or a
//! `force_refresh`, which issues a new one and lets the old one lapse); `invalidate_tokens`
//! makes every token issued so far answer 40001. A server IP off the whitelist gets 40164 on
//! every call, an unverified account 48001 on `freepublish/submit`. `media/uploadimg` and
//! `material/add_material` take multipart `media`; `draft/add` checks its cover and that every
//! image in the content is one uploaded here (WeChat strips others); `freepublish/get` answers
//! `publish_status` 1 for a while, then 0 with the article URL (or the configured failure).

use axum::extract::{Multipart, Query, State};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub const APP_ID: &str = "wx1234567890abcdef";
pub const APP_SECRET: &str = "0123456789abcdef0123456789abcdef";

#[derive(Debug, Clone)]
pub struct Draft {
    pub title: String,
    pub digest: String,
    pub content: String,
    pub thumb: String,
}

#[derive(Default)]
pub struct FakeWechat {
    /// Tokens by value: still valid.
    tokens: Mutex<HashMap<String, bool>>,
    current: Mutex<Option<String>>,
    counter: AtomicUsize,
    pub token_calls: AtomicUsize,
    pub forced_calls: AtomicUsize,
    /// Calls refused for a stale token (40001).
    pub stale_refusals: AtomicUsize,
    pub ip_whitelisted: AtomicBool,
    pub verified: AtomicBool,
    /// Image bodies uploaded, by the URL given back.
    pub images: Mutex<HashMap<String, usize>>,
    pub covers: Mutex<Vec<String>>,
    pub drafts: Mutex<HashMap<String, Draft>>,
    /// Submitted drafts, by publish id (a draft submitted twice appears twice).
    pub submits: Mutex<Vec<(String, String)>>,
    /// How many `freepublish/get` answer 1 (publishing) before the end.
    pub polls_before_end: AtomicI64,
    /// The end: 0 (out) or a failure status (2 to 6).
    pub final_status: AtomicI64,
    polls: Mutex<HashMap<String, i64>>,
    /// The next submit is made, then the connection drops before the answer.
    pub drop_next_submit: AtomicBool,
}

impl FakeWechat {
    /// Every token issued so far is refused from now on (another client fetched anew).
    pub fn invalidate_tokens(&self) {
        for v in self.tokens.lock().expect("lock").values_mut() {
            *v = false;
        }
        *self.current.lock().expect("lock") = None;
    }
}

fn err(code: i64, msg: &str) -> Json<Value> {
    Json(json!({"errcode": code, "errmsg": msg}))
}

type S = State<Arc<FakeWechat>>;

/// The token check every API call makes: `Err` is the errcode answer.
fn check(fake: &FakeWechat, q: &HashMap<String, String>) -> Result<(), Json<Value>> {
    if !fake.ip_whitelisted.load(Ordering::SeqCst) {
        return Err(err(
            40164,
            "invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in whitelist",
        ));
    }
    let token = q.get("access_token").cloned().unwrap_or_default();
    match fake.tokens.lock().expect("lock").get(&token) {
        Some(true) => Ok(()),
        Some(false) => {
            fake.stale_refusals.fetch_add(1, Ordering::SeqCst);
            Err(err(
                40001,
                "invalid credential, access_token is invalid or not latest",
            ))
        }
        None => Err(err(41001, "access_token missing")),
    }
}

async fn stable_token(State(fake): S, Json(body): Json<Value>) -> Json<Value> {
    fake.token_calls.fetch_add(1, Ordering::SeqCst);
    if !fake.ip_whitelisted.load(Ordering::SeqCst) {
        return err(40164, "invalid ip 203.0.113.7, not in whitelist");
    }
    if body["grant_type"] != "client_credential" {
        return err(40002, "invalid grant_type");
    }
    if body["appid"] != APP_ID {
        return err(40013, "invalid appid");
    }
    if body["secret"] != APP_SECRET {
        return err(40125, "invalid appsecret");
    }
    let force = body["force_refresh"] == true;
    if force {
        fake.forced_calls.fetch_add(1, Ordering::SeqCst);
    }
    let mut current = fake.current.lock().expect("lock");
    if !force && let Some(t) = current.clone() {
        return Json(json!({"access_token": t, "expires_in": 7000}));
    }
    let n = fake.counter.fetch_add(1, Ordering::SeqCst);
    let token = format!("ACCESS_TOKEN_{n}_{:x}", rand::random::<u32>());
    let mut tokens = fake.tokens.lock().expect("lock");
    // A forced refresh: the earlier token lapses.
    if let Some(old) = current.as_ref() {
        tokens.insert(old.clone(), false);
    }
    tokens.insert(token.clone(), true);
    *current = Some(token.clone());
    Json(json!({"access_token": token, "expires_in": 7200}))
}

/// The multipart `media` part's bytes.
async fn media(mut form: Multipart) -> Option<Vec<u8>> {
    while let Ok(Some(field)) = form.next_field().await {
        if field.name() == Some("media") {
            return field.bytes().await.ok().map(|b| b.to_vec());
        }
    }
    None
}

async fn upload_image(
    State(fake): S,
    Query(q): Query<HashMap<String, String>>,
    form: Multipart,
) -> Json<Value> {
    if let Err(e) = check(&fake, &q) {
        return e;
    }
    let Some(bytes) = media(form).await.filter(|b| !b.is_empty()) else {
        return err(41005, "media data missing");
    };
    let n = fake.counter.fetch_add(1, Ordering::SeqCst);
    let url = format!("http://mmbiz.qpic.cn/mmbiz_png/fake{n}/0");
    fake.images
        .lock()
        .expect("lock")
        .insert(url.clone(), bytes.len());
    Json(json!({"url": url}))
}

async fn add_material(
    State(fake): S,
    Query(q): Query<HashMap<String, String>>,
    form: Multipart,
) -> Json<Value> {
    if let Err(e) = check(&fake, &q) {
        return e;
    }
    if q.get("type").map(String::as_str) != Some("image") {
        return err(40004, "invalid media type");
    }
    let Some(bytes) = media(form).await.filter(|b| !b.is_empty()) else {
        return err(41005, "media data missing");
    };
    // A cover must be an image (PNG or JPEG here).
    if !(bytes.starts_with(b"\x89PNG") || bytes.starts_with(&[0xFF, 0xD8])) {
        return err(40005, "invalid file type");
    }
    let n = fake.counter.fetch_add(1, Ordering::SeqCst);
    let id = format!("THUMB_MEDIA_{n}");
    fake.covers.lock().expect("lock").push(id.clone());
    Json(json!({"media_id": id, "url": format!("http://mmbiz.qpic.cn/mmbiz_png/thumb{n}/0")}))
}

async fn add_draft(
    State(fake): S,
    Query(q): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Json<Value> {
    if let Err(e) = check(&fake, &q) {
        return e;
    }
    let a = &body["articles"][0];
    let thumb = a["thumb_media_id"].as_str().unwrap_or_default().to_owned();
    if !fake.covers.lock().expect("lock").contains(&thumb) {
        return err(40007, "invalid media_id");
    }
    let title = a["title"].as_str().unwrap_or_default().to_owned();
    if title.is_empty() || title.chars().count() > 64 {
        return err(45003, "title size out of limit");
    }
    let content = a["content"].as_str().unwrap_or_default().to_owned();
    if content.is_empty() || content.chars().count() >= 20_000 {
        return err(45002, "content size out of limit");
    }
    if content.contains("<script") || content.contains("javascript:") {
        return err(45166, "invalid content");
    }
    let n = fake.counter.fetch_add(1, Ordering::SeqCst);
    let id = format!("DRAFT_MEDIA_{n}");
    fake.drafts.lock().expect("lock").insert(
        id.clone(),
        Draft {
            title,
            digest: a["digest"].as_str().unwrap_or_default().to_owned(),
            content,
            thumb,
        },
    );
    Json(json!({"media_id": id}))
}

async fn submit(
    State(fake): S,
    Query(q): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Json<Value> {
    if let Err(e) = check(&fake, &q) {
        return e;
    }
    if !fake.verified.load(Ordering::SeqCst) {
        return err(48001, "api unauthorized");
    }
    let media_id = body["media_id"].as_str().unwrap_or_default().to_owned();
    if !fake.drafts.lock().expect("lock").contains_key(&media_id) {
        return err(40007, "invalid media_id");
    }
    let n = fake.counter.fetch_add(1, Ordering::SeqCst);
    let publish_id = format!("{}", 2_247_483_647 + n);
    fake.submits
        .lock()
        .expect("lock")
        .push((publish_id.clone(), media_id));
    if fake.drop_next_submit.swap(false, Ordering::SeqCst) {
        // Made, then the connection is cut before the answer.
        std::panic::resume_unwind(Box::new("connection dropped"));
    }
    Json(
        json!({"errcode": 0, "errmsg": "ok", "publish_id": publish_id.parse::<i64>().unwrap_or(0),
                "msg_data_id": 2_247_483_647i64 + n as i64}),
    )
}

async fn get_status(
    State(fake): S,
    Query(q): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Json<Value> {
    if let Err(e) = check(&fake, &q) {
        return e;
    }
    let id = match &body["publish_id"] {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => return err(40001, "invalid publish_id"),
    };
    if !fake
        .submits
        .lock()
        .expect("lock")
        .iter()
        .any(|(p, _)| *p == id)
    {
        return err(48002, "publish_id not found");
    }
    let polled = {
        let mut polls = fake.polls.lock().expect("lock");
        let n = polls.entry(id.clone()).or_insert(0);
        *n += 1;
        *n
    };
    if polled <= fake.polls_before_end.load(Ordering::SeqCst) {
        return Json(json!({"publish_id": id, "publish_status": 1}));
    }
    match fake.final_status.load(Ordering::SeqCst) {
        0 => Json(json!({
            "publish_id": id, "publish_status": 0, "article_id": format!("ARTICLE_{id}"),
            "article_detail": {"count": 1, "item": [{"idx": 1, "article_url": format!("https://mp.weixin.qq.com/s/{id}")}]},
            "fail_idx": [],
        })),
        n => Json(json!({"publish_id": id, "publish_status": n, "fail_idx": [1]})),
    }
}

pub async fn start_fake_wechat() -> (Arc<FakeWechat>, String) {
    let fake = Arc::new(FakeWechat::default());
    fake.ip_whitelisted.store(true, Ordering::SeqCst);
    fake.verified.store(true, Ordering::SeqCst);
    fake.polls_before_end.store(2, Ordering::SeqCst);
    let app = Router::new()
        .route("/cgi-bin/stable_token", post(stable_token))
        .route("/cgi-bin/media/uploadimg", post(upload_image))
        .route("/cgi-bin/material/add_material", post(add_material))
        .route("/cgi-bin/draft/add", post(add_draft))
        .route("/cgi-bin/freepublish/submit", post(submit))
        .route("/cgi-bin/freepublish/get", post(get_status))
        .with_state(Arc::clone(&fake));
    let base = super::serve_fake(app).await;
    (fake, base.trim_end_matches("/v1").to_owned())
}
