//! Publishing creations (seed 001: `/api/v1/publish`, its platforms, bindings and history) to
//! WeChat Official Accounts through WeChat's API, and to Xiaohongshu, Douyin, Kuaishou and
//! Toutiao, which have no server publishing API, by an honest hand-off: a package ready to
//! paste (title, text cut to the platform's limits, images, tags), `awaiting_user` until the
//! user marks it done; Tollgate never reports those as published.
//!
//! Each platform of a publish is an item worked by a job (`jobs`) at its time. A WeChat item's
//! price is held on a publish target from the request until the article is out (charged) or
//! surely is not (released). Its steps: the shared access token, the body's images uploaded
//! (`uploadimg`), the cover (`add_material`), the draft (`draft/add`), then the item is
//! recorded `submitting` before `freepublish/submit` (a lost answer leaves it `unconfirmed`,
//! never submitted twice), then `publishing` with WeChat's publish id, polled by the same job
//! until the article URL or the failure.
//!
//! The access token of each AppID is shared by every instance (`wechat_tokens`): the first
//! caller to find it missing or expiring takes a lock and fetches it; the others wait for it.
//! A token WeChat calls invalid is replaced once, by whoever still holds it as current.

use super::article;
use super::platforms::wechat::{self, Article, WxError};
use crate::db::creation_publishing::{self as store, Binding, Item};
use crate::db::jobs::{Job, NewJob};
use crate::db::publishing::Target;
use crate::db::{self, creations::Creation};
use crate::error::ApiError;
use crate::jobs::Done;
use crate::secrets::Purpose;
use crate::state::AppState;
use serde_json::{Value, json};
use std::time::Duration;

/// The jobs that work one platform of a creation publish (subject `cp:{publish id}:{platform}`).
pub const KIND: &str = "creation_publish";

/// How a platform publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Through its API, by Tollgate.
    Api,
    /// By the user, from a package Tollgate prepares.
    Handoff,
}

/// A platform seed 001 names.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub key: &'static str,
    pub name: &'static str,
    pub mode: Mode,
    /// Title and text limits in characters, images per post (hand-off packages are cut to
    /// them; the Chinese platforms publish no exact rules, these are their apps' limits).
    pub title_max: usize,
    pub text_max: usize,
    pub images_max: usize,
    /// What the user does with the package.
    pub how: &'static str,
}

pub const PLATFORMS: [Spec; 5] = [
    Spec {
        key: "wechat",
        name: "微信公众号",
        mode: Mode::Api,
        title_max: 64,
        text_max: 20_000,
        images_max: 100,
        how: "published through the Official Account API",
    },
    Spec {
        key: "xiaohongshu",
        name: "小红书",
        mode: Mode::Handoff,
        title_max: 20,
        text_max: 1000,
        images_max: 9,
        how: "open Xiaohongshu, start a note, add the images, paste the title and the text",
    },
    Spec {
        key: "douyin",
        name: "抖音",
        mode: Mode::Handoff,
        title_max: 30,
        text_max: 1000,
        images_max: 35,
        how: "open Douyin, post the images (or your video), paste the text as its description",
    },
    Spec {
        key: "kuaishou",
        name: "快手",
        mode: Mode::Handoff,
        title_max: 30,
        text_max: 500,
        images_max: 31,
        how: "open Kuaishou, post the images (or your video), paste the text as its description",
    },
    Spec {
        key: "toutiao",
        name: "今日头条",
        mode: Mode::Handoff,
        title_max: 30,
        text_max: 2000,
        images_max: 9,
        how: "open Toutiao (微头条 or an article), paste the title and the text, add the images",
    },
];

pub fn spec(platform: &str) -> Option<&'static Spec> {
    PLATFORMS.iter().find(|s| s.key == platform)
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Api => "api",
            Mode::Handoff => "handoff",
        }
    }
}

/// Binds a platform: WeChat's `app_id` + `app_secret`, checked by fetching a token (and
/// sealed); a hand-off platform's account name, if given (no password or cookie is taken:
/// Tollgate does not log in as the user).
pub async fn bind(
    state: &AppState,
    user_id: i64,
    platform: &str,
    credentials: &serde_json::Map<String, Value>,
) -> Result<Value, ApiError> {
    let spec = spec(platform).ok_or_else(|| {
        ApiError::InvalidInput(format!(
            "platform: one of wechat, xiaohongshu, douyin, kuaishou, toutiao, got {platform:?}"
        ))
    })?;
    let text = |k: &str| {
        credentials
            .get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    if spec.mode == Mode::Handoff {
        if let Some(k) = ["password", "cookie", "cookies", "token", "app_secret"]
            .iter()
            .find(|k| credentials.contains_key(**k))
        {
            return Err(ApiError::InvalidInput(format!(
                "credentials.{k}: {} has no publishing API; Tollgate prepares each post for you to paste and never stores a password or session for it",
                spec.name
            )));
        }
        let name = text("account").or_else(|| text("nickname"));
        store::bind(&state.db, user_id, platform, name, None, None).await?;
        return Ok(
            json!({"platform": platform, "bound": true, "mode": "handoff", "account": name}),
        );
    }
    let app_id = text("app_id")
        .ok_or_else(|| ApiError::InvalidInput("credentials.app_id: required".into()))?;
    let secret = text("app_secret")
        .ok_or_else(|| ApiError::InvalidInput("credentials.app_secret: required".into()))?;
    if !app_id.starts_with("wx") || app_id.len() > 32 {
        return Err(ApiError::InvalidInput(
            "credentials.app_id: a WeChat AppID starts with wx".into(),
        ));
    }
    let base = &state.config.social.wechat.api_base;
    // Checked now: a wrong secret or a server IP not whitelisted is said here, not at publish.
    let (token, expires_in) = wechat::stable_token(&state.http, base, app_id, secret, false)
        .await
        .map_err(|e| match e {
            WxError::Code(..) => ApiError::InvalidInput(format!("credentials: {}", e.reason())),
            other => ApiError::Unavailable(other.reason()),
        })?;
    let sealed = state.secrets.seal(Purpose::PlatformSecret, secret);
    store::bind(
        &state.db,
        user_id,
        platform,
        None,
        Some(app_id),
        Some(&sealed),
    )
    .await?;
    // The token just fetched is the current one: shared rather than fetched again.
    let owner = format!("bind-{:x}", rand::random::<u64>());
    if store::lock_wechat_token(&state.db, app_id, &owner, crate::clock::now_ms() + 10_000).await? {
        let until = crate::clock::now_ms() + expires_in * 1000;
        let sealed = state.secrets.seal(Purpose::PlatformSecret, &token);
        store::store_wechat_token(&state.db, app_id, &owner, &sealed, until).await?;
    }
    Ok(json!({"platform": platform, "bound": true, "mode": "api", "app_id": app_id}))
}

/// The platforms with whether the user bound each and how each publishes.
pub async fn platforms(state: &AppState, user_id: i64) -> Result<Vec<Value>, ApiError> {
    let bound = store::bindings(&state.db, user_id).await?;
    Ok(PLATFORMS
        .iter()
        .map(|s| {
            let b = bound.iter().find(|b| b.platform == s.key);
            json!({
                "platform": s.key,
                "name": s.name,
                "bound": b.is_some(),
                "mode": s.mode.as_str(),
                "account": b.and_then(|b| b.account_name.clone().or_else(|| b.app_id.clone())),
                "limits": {"title": s.title_max, "text": s.text_max, "images": s.images_max},
                "how": s.how,
            })
        })
        .collect())
}

/// When a seed 001 `schedule_time` is: with an offset, that instant; without one (the seed's
/// own example, `2026-01-23T10:00:00`), China Standard Time (UTC+8, no daylight saving).
pub fn schedule_time(v: Option<&Value>) -> Result<Option<i64>, ApiError> {
    use time::format_description::well_known::Rfc3339;
    let s = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => s.trim(),
        Some(other) => {
            return Err(ApiError::InvalidInput(format!(
                "schedule_time: must be an ISO 8601 string, got {other}"
            )));
        }
    };
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(Some((t.unix_timestamp_nanos() / 1_000_000) as i64));
    }
    let naive = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let spaced = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(s, &naive)
        .or_else(|_| time::PrimitiveDateTime::parse(s, &spaced))
        .map(|t| {
            let cst = time::UtcOffset::from_hms(8, 0, 0).unwrap_or(time::UtcOffset::UTC);
            (t.assume_offset(cst).unix_timestamp_nanos() / 1_000_000) as i64
        })
        .map(Some)
        .map_err(|_| {
            ApiError::InvalidInput(format!(
                "schedule_time: expected an ISO 8601 time like 2026-01-23T10:00:00+08:00 (without an offset it is China Standard Time), got {s:?}"
            ))
        })
}

/// Publishes a creation to some platforms (each bound, else 40008), now or at `at_ms`: the
/// publish id. WeChat's price is held now; the work is the jobs'.
pub async fn publish(
    state: &AppState,
    user_id: i64,
    creation: &Creation,
    platforms: &[String],
    at_ms: Option<i64>,
) -> Result<i64, ApiError> {
    let bound = store::bindings(&state.db, user_id).await?;
    let mut specs: Vec<&Spec> = Vec::new();
    for p in platforms {
        let s = spec(p).ok_or_else(|| {
            ApiError::InvalidInput(format!(
                "platforms: one of wechat, xiaohongshu, douyin, kuaishou, toutiao, got {p:?}"
            ))
        })?;
        if specs.iter().any(|x| x.key == s.key) {
            return Err(ApiError::InvalidInput(format!(
                "platforms: {p} is named twice"
            )));
        }
        specs.push(s);
    }
    let unbound: Vec<&str> = specs
        .iter()
        .filter(|s| !bound.iter().any(|b| b.platform == s.key))
        .map(|s| s.key)
        .collect();
    if !unbound.is_empty() {
        return Err(ApiError::AccountNotBound(format!(
            "not bound: {}; bind with POST /api/v1/publish/platforms/bind first",
            unbound.join(", ")
        )));
    }
    if specs.iter().any(|s| s.mode == Mode::Api)
        && !matches!(creation.kind.as_str(), "writing" | "image")
    {
        return Err(ApiError::InvalidInput(format!(
            "creation_id: a WeChat article is made of a writing or an image creation, not a {}",
            creation.kind
        )));
    }
    let now = crate::clock::now_ms();
    let at = at_ms.unwrap_or(now).max(now);
    let title = if creation.title.trim().is_empty() {
        article::clip(&article::plain_text(&creation.content), 30).0
    } else {
        creation.title.clone()
    };
    let id = store::create(&state.db, user_id, creation.id, &title, at_ms).await?;
    let publishes_id = format!("cp_{id}");
    let _ = db::publishing::begin(&state.db, &publishes_id, user_id, None, "").await?;
    // The paid platform first: a balance that does not cover it leaves nothing behind.
    specs.sort_by_key(|s| s.mode != Mode::Api);
    for (k, s) in specs.into_iter().enumerate() {
        let first = k == 0;
        let job_id = format!("job_{}", super::drafts::new_uuid().replace('-', ""));
        let subject = format!("cp:{id}:{}", s.key);
        let mut item = Item {
            publish_id: id,
            platform: s.key.to_owned(),
            mode: s.mode.as_str().to_owned(),
            status: "pending".into(),
            target_id: None,
            job_id: Some(job_id.clone()),
            remote_id: None,
            url: None,
            error: None,
            package: None,
            updated_at_ms: now,
        };
        let binding = bound.iter().find(|b| b.platform == s.key);
        let queue = binding
            .and_then(|b| b.app_id.clone())
            .map(|a| format!("wechat:{a}"));
        let job = NewJob {
            id: &job_id,
            kind: KIND,
            subject: &subject,
            user_id: Some(user_id),
            queue_key: queue.as_deref(),
            priority: 0,
            scheduled_for_ms: at,
            effective_at_ms: at,
            max_attempts: state.config.jobs.max_attempts as i64,
            payload: "{}",
        };
        if s.mode == Mode::Api {
            let price = state.config.publishing.price_wechat;
            let target = Target {
                id: format!("pub_{}", super::drafts::new_uuid().replace('-', "")),
                publish_id: publishes_id.clone(),
                user_id,
                account_id: queue.clone().unwrap_or_default(),
                platform: s.key.to_owned(),
                thread_key: subject.clone(),
                status: "scheduled".into(),
                held_micros: price.0,
                total: 1,
                published: 0,
                failed_at: None,
                error_code: None,
                error: None,
                settled: 0,
                charged_micros: 0,
                created_at_ms: now,
                updated_at_ms: now,
            };
            item.target_id = Some(target.id.clone());
            if let Err(e) = state.book.take(user_id, price) {
                if first {
                    store::delete(&state.db, id).await?;
                }
                return Err(super::publish::refused(e, price));
            }
            store::add_item(&state.db, &item).await?;
            let what = format!("publish to {} (held until it is out)", s.name);
            if let Err(e) =
                db::publishing::create_target(&state.db, &target, &what, Some(&job)).await
            {
                state.book.give(user_id, price);
                let why = "not published: the balance did not cover it";
                store::set_item(
                    &state.db,
                    id,
                    s.key,
                    &["pending"],
                    "failed",
                    None,
                    None,
                    Some(why),
                )
                .await?;
                return Err(super::publish::refused(e, price));
            }
        } else {
            item.package = Some(package(state, creation, s, &title).await.to_string());
            store::add_item(&state.db, &item).await?;
            db::jobs::insert(&state.db, &job).await?;
        }
    }
    state.jobs.wake.notify_one();
    Ok(id)
}

/// A hand-off package: the title and text cut to the platform's limits, the images, the tags.
async fn package(state: &AppState, creation: &Creation, s: &Spec, title: &str) -> Value {
    let text = article::plain_text(&creation.content);
    let tags = article::hashtags(&creation.content);
    let (title, title_cut) = article::clip(title, s.title_max);
    let (body, text_cut) = article::clip(&text, s.text_max);
    let mut images: Vec<String> = Vec::new();
    if let Some(f) = &creation.file_id {
        let exp = crate::clock::now_ms() + 7 * 86_400_000;
        let path = crate::files::signed_path(&state.secrets, f, exp);
        let public = state.config.publishing.public_url.trim_end_matches('/');
        images.push(format!("{public}{path}"));
    }
    images.extend(article::image_sources(&article::to_wechat_html(
        &creation.content,
    )));
    images.truncate(s.images_max);
    json!({
        "platform": s.key,
        "name": s.name,
        "title": title,
        "text": body,
        "images": images,
        "tags": tags.iter().map(|t| format!("#{t}")).collect::<Vec<_>>(),
        "truncated": title_cut || text_cut,
        "limits": {"title": s.title_max, "text": s.text_max, "images": s.images_max},
        "how": s.how,
    })
}

/// Marks a hand-off item done (the user posted it): it was `awaiting_user`.
pub async fn mark_done(
    state: &AppState,
    user_id: i64,
    publish_id: i64,
    platform: &str,
    url: Option<&str>,
) -> Result<Item, ApiError> {
    store::get(&state.db, user_id, publish_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("publish {publish_id} not found")))?;
    let item = store::item(&state.db, publish_id, platform)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("publish {publish_id} has no {platform}")))?;
    if item.mode != "handoff" {
        return Err(ApiError::Conflict(format!(
            "{platform} is published by Tollgate; its status is {}",
            item.status
        )));
    }
    if !store::set_item(
        &state.db,
        publish_id,
        platform,
        &["awaiting_user"],
        "done",
        None,
        url,
        None,
    )
    .await?
    {
        return Err(ApiError::Conflict(format!(
            "{platform} is {}, not awaiting you",
            item.status
        )));
    }
    Ok(store::item(&state.db, publish_id, platform)
        .await?
        .unwrap_or(item))
}

/// `cp:{publish id}:{platform}`.
fn parse_subject(s: &str) -> Option<(i64, &str)> {
    let rest = s.strip_prefix("cp:")?;
    let (id, platform) = rest.split_once(':')?;
    Some((id.parse().ok()?, platform))
}

/// Works one platform of a creation publish a step.
pub async fn run(state: &AppState, job: &Job) -> Done {
    let Some((publish_id, platform)) = parse_subject(&job.subject) else {
        return Done::Failed(format!("not a creation publish: {}", job.subject));
    };
    let later = |e: sqlx::Error| Done::Retry {
        after_ms: Some(5_000),
        why: format!("database: {e}"),
    };
    let item = match store::item(&state.db, publish_id, platform).await {
        Ok(Some(i)) => i,
        Ok(None) => return Done::Failed(format!("{} does not exist", job.subject)),
        Err(e) => return later(e),
    };
    if item.mode == "handoff" {
        return match store::set_item(
            &state.db,
            publish_id,
            platform,
            &["pending"],
            "awaiting_user",
            None,
            None,
            None,
        )
        .await
        {
            Ok(_) => Done::Succeeded(None),
            Err(e) => later(e),
        };
    }
    match wechat_step(state, job, &item).await {
        Ok(done) => done,
        Err(e) => later(e),
    }
}

/// The item's publish target.
async fn target_of(state: &AppState, item: &Item) -> Result<Option<Target>, sqlx::Error> {
    match &item.target_id {
        Some(id) => db::publishing::target_by_id(&state.db, id).await,
        None => Ok(None),
    }
}

/// Ends a WeChat item that is surely not out: failed (or cancelled), its hold given back.
async fn refund(
    state: &AppState,
    item: &Item,
    from: &[&str],
    why: &str,
) -> Result<Done, sqlx::Error> {
    store::set_item(
        &state.db,
        item.publish_id,
        &item.platform,
        from,
        "failed",
        None,
        None,
        Some(why),
    )
    .await?;
    if let Some(t) = target_of(state, item).await? {
        super::publish::end_unsent(state, &t, "failed", "PUBLISH_FAILED", why).await;
    }
    Ok(Done::Failed(why.to_owned()))
}

async fn wechat_step(state: &AppState, job: &Job, item: &Item) -> Result<Done, sqlx::Error> {
    let binding = store::bindings(&state.db, job.user_id.unwrap_or_default())
        .await?
        .into_iter()
        .find(|b| b.platform == "wechat");
    let Some(binding) = binding else {
        return refund(
            state,
            item,
            &["pending", "publishing"],
            "the WeChat binding was removed",
        )
        .await;
    };
    match item.status.as_str() {
        "pending" => start(state, job, item, &binding).await,
        "publishing" => follow(state, item, &binding).await,
        "submitting" => {
            // Taken again after its instance stopped mid-submit: it may be out.
            let why = "the submit to WeChat was interrupted and may have gone through: check the Official Account's 发表记录";
            match target_of(state, item).await? {
                Some(target) => {
                    leave_unconfirmed(state, item, &target, "submitting", why.to_owned()).await
                }
                None => Ok(Done::Failed("its hold is missing".into())),
            }
        }
        "published" => Ok(Done::Succeeded(item.url.clone())),
        other => Ok(Done::Failed(
            item.error.clone().unwrap_or_else(|| other.to_owned()),
        )),
    }
}

/// The current token of a binding (shared by every instance; fetched by one at a time).
/// `stale`: a token WeChat refused, replaced unless another caller replaced it already.
async fn token(state: &AppState, b: &Binding, stale: Option<&str>) -> Result<String, WxError> {
    let app_id = b.app_id.as_deref().unwrap_or_default();
    let open = |sealed: &str| state.secrets.open(Purpose::PlatformSecret, sealed).ok();
    let db_err = |e: sqlx::Error| WxError::NotSent(format!("database: {e}"));
    let owner = format!("tok-{:x}", rand::random::<u64>());
    for _ in 0..100 {
        let now = crate::clock::now_ms();
        let current = store::wechat_token(&state.db, app_id)
            .await
            .map_err(db_err)?;
        if let Some((sealed, until)) = &current
            && let Some(t) = open(sealed).filter(|t| !t.is_empty())
            && *until > now + 300_000
            && stale != Some(t.as_str())
        {
            return Ok(t);
        }
        if store::lock_wechat_token(&state.db, app_id, &owner, now + 15_000)
            .await
            .map_err(db_err)?
        {
            let secret = b.secret.as_deref().and_then(open).ok_or_else(|| {
                WxError::Code(40125, "the stored AppSecret cannot be opened".into())
            })?;
            let base = &state.config.social.wechat.api_base;
            let force = stale.is_some();
            return match wechat::stable_token(&state.http, base, app_id, &secret, force).await {
                Ok((t, expires_in)) => {
                    let sealed = state.secrets.seal(Purpose::PlatformSecret, &t);
                    let until = crate::clock::now_ms() + expires_in * 1000;
                    store::store_wechat_token(&state.db, app_id, &owner, &sealed, until)
                        .await
                        .map_err(db_err)?;
                    Ok(t)
                }
                Err(e) => {
                    let _ = store::unlock_wechat_token(&state.db, app_id, &owner).await;
                    Err(e)
                }
            };
        }
        // Another caller is fetching it.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(WxError::NotSent(
        "timed out waiting for another instance's token fetch".into(),
    ))
}

/// Runs `call` with the current token, once more with a new one if WeChat says it is stale.
async fn with_token<T, F, Fut>(state: &AppState, b: &Binding, call: F) -> Result<T, WxError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, WxError>>,
{
    let t = token(state, b, None).await?;
    match call(t.clone()).await {
        Err(e) if e.stale_token() => {
            let fresh = token(state, b, Some(&t)).await?;
            call(fresh).await
        }
        other => other,
    }
}

/// The bytes of an image the article names: a Tollgate file (its URL or id) or an outside URL
/// (fetched as the per-platform routes fetch media).
async fn image_bytes(
    state: &AppState,
    user_id: i64,
    src: &str,
) -> Result<(String, String, Vec<u8>), String> {
    let ids = super::media::from_refs(state, user_id, "content", &[src.to_owned()])
        .await
        .map_err(|e| format!("image {src}: {e}"))?;
    let metas = super::media::resolve(state, user_id, "content", &ids)
        .await
        .map_err(|e| format!("image {src}: {e}"))?;
    let meta = metas
        .into_iter()
        .next()
        .ok_or_else(|| format!("image {src}: not found"))?;
    if !meta.content_type.starts_with("image/") {
        return Err(format!(
            "image {src}: is {}, not an image",
            meta.content_type
        ));
    }
    let bytes = crate::files::read_all(&state.db, &meta)
        .await
        .map_err(|e| format!("image {src}: {e}"))?;
    let ext = meta.content_type.trim_start_matches("image/").to_owned();
    Ok((format!("{}.{ext}", meta.id), meta.content_type, bytes))
}

/// The default cover (an article needs one).
const COVER: &[u8] = include_bytes!("../../assets/wechat_cover.png");

/// Prepares and submits the article (or stops with why).
async fn start(state: &AppState, job: &Job, item: &Item, b: &Binding) -> Result<Done, sqlx::Error> {
    let user_id = job.user_id.unwrap_or_default();
    let Some(target) = target_of(state, item).await? else {
        return refund(state, item, &["pending"], "its hold is missing").await;
    };
    if target.settled != 0 {
        return Ok(Done::Failed(
            target.error.unwrap_or_else(|| target.status.clone()),
        ));
    }
    // `sending`, not `posting`: the immediate publishes' stall recovery must not take a WeChat
    // article that waits for review for one whose process died (its job follows it).
    if target.status == "scheduled" {
        db::publishing::move_scheduled(&state.db, &target.id, "sending", None).await?;
    }
    let Some(publish) = store::get(&state.db, user_id, item.publish_id).await? else {
        return refund(state, item, &["pending"], "the publish was deleted").await;
    };
    let creation = db::creations::get(&state.db, user_id, publish.creation_id).await?;
    let Some(creation) = creation else {
        return refund(
            state,
            item,
            &["pending"],
            "the creation was deleted before its time",
        )
        .await;
    };
    let base = state.config.social.wechat.api_base.clone();
    let http = state.http.clone();
    let mut html = article::to_wechat_html(&creation.content);
    let mut cover: Option<(String, String, Vec<u8>)> = None;
    if let Some(f) = &creation.file_id {
        html = format!("<p><img src=\"{f}\" style=\"max-width:100%;\"></p>{html}");
    }
    for src in article::image_sources(&html) {
        // The attribute as written (entities escaped) is what gets replaced; the URL is read.
        let link = src.replace("&amp;", "&");
        let file = match image_bytes(state, user_id, &link).await {
            Ok(f) => f,
            Err(why) => return refund(state, item, &["pending"], &why).await,
        };
        if cover.is_none() {
            cover = Some(file.clone());
        }
        let uploaded = with_token(state, b, |t| {
            let (http, base, file) = (http.clone(), base.clone(), file.clone());
            async move { wechat::upload_image(&http, &base, &t, (&file.0, &file.1, file.2)).await }
        })
        .await;
        match uploaded {
            Ok(url) => {
                html = html
                    .replace(&format!("src=\"{src}\""), &format!("src=\"{url}\""))
                    .replace(&format!("src='{src}'"), &format!("src=\"{url}\""))
            }
            Err(e) => {
                return fail_or_retry(state, job, item, &target, &["pending"], &e).await;
            }
        }
    }
    let cover = cover.unwrap_or_else(|| ("cover.png".into(), "image/png".into(), COVER.to_vec()));
    let thumb = with_token(state, b, |t| {
        let (http, base, cover) = (http.clone(), base.clone(), cover.clone());
        async move { wechat::add_cover(&http, &base, &t, (&cover.0, &cover.1, cover.2)).await }
    })
    .await;
    let thumb = match thumb {
        Ok(m) => m,
        Err(e) => {
            return fail_or_retry(state, job, item, &target, &["pending"], &e).await;
        }
    };
    let text = article::plain_text(&creation.content);
    let digest = article::clip(&text, 120).0;
    let title = article::clip(&publish.title, 64).0;
    let draft = with_token(state, b, |t| {
        let (http, base) = (http.clone(), base.clone());
        let a = (title.clone(), digest.clone(), html.clone(), thumb.clone());
        async move {
            let article = Article {
                title: &a.0,
                digest: &a.1,
                content: &a.2,
                thumb_media_id: &a.3,
            };
            wechat::add_draft(&http, &base, &t, &article).await
        }
    })
    .await;
    let media_id = match draft {
        Ok(m) => m,
        Err(e) => {
            return fail_or_retry(state, job, item, &target, &["pending"], &e).await;
        }
    };
    // Recorded before the submit: a submit whose answer is lost is never sent again.
    if !store::set_item(
        &state.db,
        item.publish_id,
        &item.platform,
        &["pending"],
        "submitting",
        Some(&media_id),
        None,
        None,
    )
    .await?
    {
        return Ok(Done::Failed("another run is submitting it".into()));
    }
    let submitted = with_token(state, b, |t| {
        let (http, base, media_id) = (http.clone(), base.clone(), media_id.clone());
        async move { wechat::submit(&http, &base, &t, &media_id).await }
    })
    .await;
    match submitted {
        Ok(publish_id) => {
            store::set_item(
                &state.db,
                item.publish_id,
                &item.platform,
                &["submitting"],
                "publishing",
                Some(&publish_id),
                None,
                None,
            )
            .await?;
            Ok(Done::Again {
                at_ms: crate::clock::now_ms() + state.config.social.wechat.poll_interval_ms as i64,
            })
        }
        Err(WxError::Lost(why)) => {
            let why = format!(
                "the submit's answer was lost ({why}); check the Official Account's 发表记录"
            );
            leave_unconfirmed(state, item, &target, "submitting", why).await
        }
        // Refused (or not reached): nothing was published; the saved draft stays.
        Err(e) => fail_or_retry(state, job, item, &target, &["submitting"], &e).await,
    }
}

/// A step that published nothing failed (the item was `from`): tried again when that may work
/// (WeChat busy or not reached, or an answer lost before the submit: every step before it is
/// harmless to repeat) and tries are left, the item back to pending and the hold kept; else
/// failed for good with WeChat's reason, refunded.
async fn fail_or_retry(
    state: &AppState,
    job: &Job,
    item: &Item,
    target: &Target,
    from: &[&str],
    e: &WxError,
) -> Result<Done, sqlx::Error> {
    let why = e.reason();
    let again = e.retryable() || matches!(e, WxError::Lost(_));
    if !again || job.attempts >= job.max_attempts {
        return refund(state, item, from, &why).await;
    }
    let progress = db::publishing::Progress {
        status: "scheduled",
        published: 0,
        failed_at: None,
        error_code: Some("RETRYING"),
        error: Some(&why),
    };
    db::publishing::hold_open(&state.db, &target.id, &progress).await?;
    store::set_item(
        &state.db,
        item.publish_id,
        &item.platform,
        from,
        "pending",
        None,
        None,
        Some(&why),
    )
    .await?;
    Ok(Done::Retry {
        after_ms: None,
        why,
    })
}

/// Leaves an item whose article may be out `unconfirmed` (it was `from`), its hold kept for
/// the user to settle.
async fn leave_unconfirmed(
    state: &AppState,
    item: &Item,
    target: &Target,
    from: &str,
    why: String,
) -> Result<Done, sqlx::Error> {
    store::set_item(
        &state.db,
        item.publish_id,
        &item.platform,
        &[from],
        "unconfirmed",
        None,
        None,
        Some(&why),
    )
    .await?;
    let progress = db::publishing::Progress {
        status: "unconfirmed",
        published: 0,
        failed_at: Some(0),
        error_code: Some("UNCONFIRMED"),
        error: Some(&why),
    };
    db::publishing::hold_open(&state.db, &target.id, &progress).await?;
    Ok(Done::Unconfirmed(why))
}

/// Follows a submitted article: out (charged), failed (refunded), or asked again later.
async fn follow(state: &AppState, item: &Item, b: &Binding) -> Result<Done, sqlx::Error> {
    let Some(target) = target_of(state, item).await? else {
        return Ok(Done::Failed("its hold is missing".into()));
    };
    let publish_id = item.remote_id.clone().unwrap_or_default();
    let base = state.config.social.wechat.api_base.clone();
    let http = state.http.clone();
    let polled = with_token(state, b, |t| {
        let (http, base, id) = (http.clone(), base.clone(), publish_id.clone());
        async move { wechat::publish_status(&http, &base, &t, &id).await }
    })
    .await;
    let again = Done::Again {
        at_ms: crate::clock::now_ms() + state.config.social.wechat.poll_interval_ms as i64,
    };
    match polled {
        // WeChat keeps a task a while; one still publishing after a day is left for the user.
        Ok(wechat::Status::Publishing)
            if crate::clock::now_ms() - item.updated_at_ms > 86_400_000 =>
        {
            let why = "WeChat still says publishing a day after the submit: check the Official Account's 发表记录";
            leave_unconfirmed(state, item, &target, "publishing", why.to_owned()).await
        }
        Ok(wechat::Status::Publishing) => Ok(again),
        Ok(wechat::Status::Published { url, .. }) => {
            store::set_item(
                &state.db,
                item.publish_id,
                &item.platform,
                &["publishing"],
                "published",
                None,
                Some(&url),
                None,
            )
            .await?;
            super::publish::end_out(state, &target).await;
            Ok(Done::Succeeded(Some(url)))
        }
        Ok(wechat::Status::Failed(why)) => refund(state, item, &["publishing"], &why).await,
        // A read: tried again later, whatever went wrong.
        Err(e) => {
            tracing::warn!(publish = item.publish_id, error = %e.reason(), "asking WeChat how a publish stands failed");
            Ok(again)
        }
    }
}

/// One publish in seed 001's history shape.
pub fn history_json(p: &store::CreationPublish, items: &[Item]) -> Value {
    let iso = crate::routes::admin::iso;
    json!({
        "publish_id": p.id,
        "id": p.id,
        "creation_id": p.creation_id,
        "title": p.title,
        "schedule_time": p.scheduled_for_ms.map(iso),
        "created_at": iso(p.created_at_ms),
        "status": overall(items),
        "platforms": items.iter().map(|i| json!({
            "platform": i.platform,
            "mode": i.mode,
            "status": i.status,
            "url": i.url,
            "error": i.error,
            "error_code": (i.status == "failed").then_some(40009),
            "package": i.package.as_deref().and_then(|p| serde_json::from_str::<Value>(p).ok()),
        })).collect::<Vec<_>>(),
    })
}

/// A publish's status across its platforms.
fn overall(items: &[Item]) -> &'static str {
    let any = |s: &str| items.iter().any(|i| i.status == s);
    if ["pending", "submitting", "publishing"]
        .iter()
        .any(|s| any(s))
    {
        "pending"
    } else if any("failed") {
        "failed"
    } else if any("unconfirmed") {
        "unconfirmed"
    } else if any("awaiting_user") {
        "awaiting_user"
    } else {
        "published"
    }
}
