//! Publishing a draft to accounts, never twice and never silently lost. For each account a
//! target is written with its price held (a durable ledger hold) before any post is sent; each
//! post is recorded as `attempted` before its create call; its end is stored as `published`
//! (the platform's id) or `failed` (surely not posted). A post whose outcome cannot be known (a
//! timeout, a dropped connection, a 5xx after sending) stays `attempted` and its target
//! `unconfirmed`, its price still held: X has no idempotency key, so nothing is sent blindly
//! again until the user says what happened (`resolve`). A thread goes out as a reply chain; one
//! that fails at an item reports `{published, total, failedAt}`, is refunded, and publishing the
//! same draft to the same account again continues at that item, replying to the one before it.
//! A target is charged once when every post is out.

use super::drafts::{self, new_uuid};
use super::media::{Kind, UploadError};
use super::platforms::x::{self, Created, NewPost};
use super::text::{self, Platform};
use crate::billing::{Micros, PaidBy, UsageSource, UsageStatus};
use crate::db::drafts::Draft;
use crate::db::files::FileMeta;
use crate::db::publishing::{Post, Progress, Remote, Target};
use crate::db::social::Account;
use crate::db::{self, billing::ReserveError};
use crate::error::ApiError;
use crate::gateway::meter::{Ended, Payer};
use crate::metrics as m;
use crate::state::AppState;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// How long one create call may take before its outcome counts as unknown.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// How a publish to one account stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Published,
    Failed,
    Unconfirmed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Published => "published",
            Status::Failed => "failed",
            Status::Unconfirmed => "unconfirmed",
        }
    }
}

/// A post that is out: its platform id (an X post id, a Bluesky record URI), its CID (Bluesky)
/// and its public URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Out {
    pub id: String,
    pub cid: Option<String>,
    pub url: String,
}

/// The result of publishing to one account.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub account_id: String,
    pub platform: Platform,
    pub target_id: Option<String>,
    pub status: Status,
    /// The thread's posts that are out, in order.
    pub posts: Vec<Out>,
    pub total: usize,
    pub failed_at: Option<usize>,
    pub error: Option<(&'static str, String)>,
    pub charged: Micros,
}

impl Outcome {
    fn refused(
        account: &Account,
        platform: Platform,
        total: usize,
        code: &'static str,
        why: String,
    ) -> Outcome {
        Outcome {
            account_id: account.id.clone(),
            platform,
            target_id: None,
            status: Status::Failed,
            posts: Vec::new(),
            total,
            failed_at: None,
            error: Some((code, why)),
            charged: Micros::ZERO,
        }
    }

    /// One result in seed 000's multi-platform shape (plus the thread's progress).
    pub fn json(&self) -> Value {
        let urls: Vec<&String> = self.posts.iter().map(|p| &p.url).collect();
        let ids: Vec<&String> = self.posts.iter().map(|p| &p.id).collect();
        let data = match (self.platform, self.posts.first()) {
            (Platform::X, Some(first)) => json!({
                "tweetId": first.id, "url": first.url, "tweetIds": ids, "urls": urls,
            }),
            (_, Some(first)) => json!({
                "uri": first.id, "cid": first.cid, "url": first.url, "uris": ids, "urls": urls,
            }),
            (_, None) => Value::Null,
        };
        json!({
            "accountId": self.account_id,
            "platform": self.platform.as_str(),
            "success": self.status == Status::Published,
            "status": self.status.as_str(),
            "targetId": self.target_id,
            "data": data,
            "published": self.posts.len(),
            "total": self.total,
            "failedAt": self.failed_at,
            "error": self.error.as_ref().map(|(code, message)| json!({"code": code, "message": message})),
            "creditsCharged": self.charged,
        })
    }
}

/// `{total, succeeded, failed, unconfirmed}` of some results.
pub fn summary(outcomes: &[Outcome]) -> Value {
    let n = |s: Status| outcomes.iter().filter(|o| o.status == s).count();
    json!({
        "total": outcomes.len(),
        "succeeded": n(Status::Published),
        "failed": n(Status::Failed),
        "unconfirmed": n(Status::Unconfirmed),
    })
}

/// The price of one publish to `platform`.
pub fn price(state: &AppState, platform: Platform) -> Micros {
    let p = &state.config.publishing;
    match platform {
        Platform::X => p.price_x,
        Platform::Bluesky => p.price_bluesky,
        Platform::Mastodon => p.price_mastodon,
        Platform::Threads => p.price_threads,
        Platform::LinkedIn => p.price_linkedin,
    }
}

/// What one target sends: the posts' texts and media, and the thread they belong to.
#[derive(Debug, Clone)]
pub struct Plan {
    pub thread_key: String,
    pub texts: Vec<String>,
    /// Each post's media (stored file ids), in the order of `texts`.
    pub media: Vec<Vec<String>>,
    pub quote: Option<String>,
    /// Bluesky's `langs`.
    pub langs: Vec<String>,
    /// Threads' `reply_control`.
    pub reply_control: Option<String>,
    /// LinkedIn's `visibility` (`PUBLIC` by default).
    pub visibility: Option<String>,
}

/// The languages of some text as far as Bluesky's `langs` needs: `zh` when it has Chinese
/// characters, else `en`.
pub fn guess_langs(texts: &[String]) -> Vec<String> {
    let cjk = texts.iter().any(|t| {
        t.chars()
            .any(|c| matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF))
    });
    vec![if cjk { "zh" } else { "en" }.to_owned()]
}

impl Plan {
    /// A draft's items as a thread on `account`.
    /// LinkedIn has no threads: there the items go out as one post, a blank line between them.
    pub fn thread(draft: &Draft, account: &Account) -> Plan {
        let items = drafts::items(draft);
        let mut texts: Vec<String> = items.iter().map(|i| i.plain_text()).collect();
        let mut media: Vec<Vec<String>> = items.iter().map(|i| i.media.clone()).collect();
        if account.platform == Platform::LinkedIn.as_str() {
            texts = vec![texts.join("\n\n")];
            media = vec![media.concat()];
        }
        Plan {
            thread_key: format!("{}:{}", draft.id, account.id),
            langs: guess_langs(&texts),
            texts,
            media,
            quote: None,
            reply_control: None,
            visibility: None,
        }
    }

    /// Posts not from a draft (a per-platform route's text or texts), a thread of their own
    /// under publish `publish_id`.
    pub fn single(publish_id: &str, platform: Platform, texts: Vec<String>) -> Plan {
        Plan {
            thread_key: format!("{}:{publish_id}", platform.as_str()),
            langs: guess_langs(&texts),
            media: vec![Vec::new(); texts.len()],
            texts,
            quote: None,
            reply_control: None,
            visibility: None,
        }
    }

    /// One post quoting `quoted` (not a thread: it is not continued by a later publish).
    pub fn quote(publish_id: &str, text: String, quoted: String) -> Plan {
        let texts = vec![text];
        Plan {
            thread_key: format!("quote:{publish_id}"),
            langs: guess_langs(&texts),
            media: vec![Vec::new()],
            texts,
            quote: Some(quoted),
            reply_control: None,
            visibility: None,
        }
    }
}

/// A target whose price is held, ready to send.
pub struct Held {
    target: Target,
    account: Account,
    platform: Platform,
    plan: Plan,
    /// Each post's media files.
    media: Vec<Vec<FileMeta>>,
    start: usize,
    done: Vec<Out>,
}

/// Where a target starts: the first post to send, the posts already out, every post's media.
type Start = (usize, Vec<Out>, Vec<Vec<FileMeta>>);

/// Checks a plan against `account`'s platform before anything is held or sent: every post fits
/// (its text, or no text beside media), its media are the user's and the platform takes them,
/// the platform is one Tollgate publishes to, the thread has no post of unknown outcome. `Ok`:
/// where to start and the posts already out (all of them: nothing to do).
async fn prepare(
    state: &AppState,
    account: &Account,
    plan: &Plan,
) -> Result<Start, (&'static str, String)> {
    let platform = Platform::parse(&account.platform).ok_or((
        "NOT_SUPPORTED",
        format!("unknown platform {}", account.platform),
    ))?;
    if account.status != "active" {
        return Err((
            "TOKEN_EXPIRED",
            format!("the account @{} must be connected again", account.username),
        ));
    }
    // A Mastodon instance says its own limit.
    let limit = account
        .char_limit
        .and_then(|l| usize::try_from(l).ok())
        .filter(|l| *l > 0 && platform == Platform::Mastodon)
        .unwrap_or(platform.default_limit());
    let mut files = Vec::with_capacity(plan.texts.len());
    for k in 0..plan.texts.len() {
        let ids = plan.media.get(k).map(Vec::as_slice).unwrap_or_default();
        let found = super::media::resolve(state, account.user_id, "media", ids)
            .await
            .map_err(|e| ("INVALID_INPUT", e.to_string()))?;
        let public = !state.config.publishing.public_url.is_empty();
        super::media::check(platform, &found, public).map_err(|why| {
            (
                "INVALID_INPUT",
                format!("post {k}: {why}; nothing was sent"),
            )
        })?;
        files.push(found);
    }
    for (k, t) in plan.texts.iter().enumerate() {
        let c = text::count(platform, t, limit);
        let media_only = t.trim().is_empty() && !files[k].is_empty();
        if !c.valid && !media_only {
            return Err((
                "INVALID_INPUT",
                format!(
                    "post {k} counts {} of {limit} on {} (or is empty); nothing was sent",
                    c.count,
                    platform.as_str()
                ),
            ));
        }
    }
    let posts = db::publishing::posts(&state.db, &plan.thread_key)
        .await
        .map_err(|e| ("INTERNAL_ERROR", e.to_string()))?;
    if let Some(open) = posts.iter().find(|p| p.status == "attempted") {
        return Err((
            "UNCONFIRMED",
            format!(
                "post {} of this thread was sent but its outcome is unknown (target {}); resolve it before publishing again",
                open.position, open.target_id
            ),
        ));
    }
    let done: Vec<Out> = posts_out(&posts);
    Ok((done.len().min(plan.texts.len()), done, files))
}

/// The leading run of published posts.
fn posts_out(posts: &[Post]) -> Vec<Out> {
    let mut out = Vec::new();
    for (k, p) in posts.iter().enumerate() {
        if p.position != k as i64 || p.status != "published" {
            break;
        }
        out.push(Out {
            id: p.remote_id.clone().unwrap_or_default(),
            cid: p.remote_cid.clone(),
            url: p.url.clone().unwrap_or_default(),
        });
    }
    out
}

/// Holds one target's price (the target row and the hold in one transaction). `Err` with an
/// outcome when there is nothing to hold for (refused, or already out), with an error when the
/// balance does not cover it.
pub async fn hold(
    state: &AppState,
    publish_id: &str,
    account: Account,
    plan: Plan,
) -> Result<Result<Held, Outcome>, ApiError> {
    let platform = Platform::parse(&account.platform).unwrap_or(Platform::X);
    let total = plan.texts.len();
    let (start, done, media) = match prepare(state, &account, &plan).await {
        Ok(p) => p,
        Err((code, why)) => return Ok(Err(Outcome::refused(&account, platform, total, code, why))),
    };
    if start == total {
        return Ok(Err(Outcome {
            account_id: account.id.clone(),
            platform,
            target_id: None,
            status: Status::Published,
            posts: done,
            total,
            failed_at: None,
            error: None,
            charged: Micros::ZERO,
        }));
    }
    let price = price(state, platform);
    let target = Target {
        id: format!("pub_{}", new_uuid().replace('-', "")),
        publish_id: publish_id.to_owned(),
        user_id: account.user_id,
        account_id: account.id.clone(),
        platform: platform.as_str().to_owned(),
        thread_key: plan.thread_key.clone(),
        status: "posting".into(),
        held_micros: price.0,
        total: total as i64,
        published: start as i64,
        failed_at: None,
        error_code: None,
        error: None,
        settled: 0,
        charged_micros: 0,
        // The usage record's latency counts from here.
        created_at_ms: crate::clock::now_ms(),
        updated_at_ms: 0,
    };
    state
        .book
        .take(account.user_id, price)
        .map_err(|e| refused(e, price))?;
    let description = format!("publish to {} (held until it is out)", platform.as_str());
    if let Err(e) = db::publishing::create_target(&state.db, &target, &description, None).await {
        state.book.give(account.user_id, price);
        return Err(refused(e, price));
    }
    Ok(Ok(Held {
        target,
        account,
        platform,
        plan,
        media,
        start,
        done,
    }))
}

pub fn refused(e: ReserveError, price: Micros) -> ApiError {
    match e {
        ReserveError::Insufficient { available, .. } => ApiError::InsufficientCredits {
            needed: price,
            available,
        },
        ReserveError::UserInactive => ApiError::Forbidden("the account is disabled".into()),
        ReserveError::Db(e) => e.into(),
    }
}

/// A post's media as its platform names them once uploaded.
enum Attached {
    /// Media ids (X, Mastodon) or image URNs (LinkedIn).
    Ids(Vec<String>),
    /// Blob references (Bluesky).
    Blobs(Vec<Value>),
    /// Public URLs the platform fetches (Threads).
    Urls(Vec<(Kind, String)>),
}

impl Attached {
    fn ids(&self) -> &[String] {
        match self {
            Attached::Ids(ids) => ids,
            _ => &[],
        }
    }
}

/// Uploads one post's media to the account's platform (before the post is recorded as
/// attempted: an upload posts nothing, so any failure here is definite).
async fn attach(
    state: &AppState,
    account: &Account,
    platform: Platform,
    files: &[FileMeta],
) -> Result<Attached, (&'static str, String)> {
    if files.is_empty() {
        return Ok(Attached::Ids(Vec::new()));
    }
    if platform == Platform::Threads {
        // Threads fetches them: signed URLs that outlive Meta's fetch.
        let base = state.config.publishing.public_url.trim_end_matches('/');
        let expires = crate::clock::now_ms() + crate::files::URL_TTL_MS;
        let urls = files
            .iter()
            .map(|f| {
                let path = crate::files::signed_path(&state.secrets, &f.id, expires);
                let kind = super::media::kind(f).unwrap_or(Kind::Image);
                (kind, format!("{base}{path}"))
            })
            .collect();
        return Ok(Attached::Urls(urls));
    }
    let mut stale: Option<String> = None;
    for _ in 0..2 {
        let token = super::tokens::access_token(state, &account.id, stale.as_deref())
            .await
            .map_err(|e| (e.parts().2, e.to_string()))?;
        match upload_all(state, account, platform, &token, files).await {
            Ok(a) => return Ok(a),
            Err(UploadError::Unauthorized) => stale = Some(token),
            Err(UploadError::Failed(code, why)) => return Err((code, why)),
        }
    }
    if platform == Platform::Mastodon {
        let _ = db::social::set_status(&state.db, &account.id, "needs_reauth").await;
    }
    Err((
        "TOKEN_EXPIRED",
        format!(
            "{} refused the token of {} while uploading media",
            platform.as_str(),
            account.username
        ),
    ))
}

async fn upload_all(
    state: &AppState,
    account: &Account,
    platform: Platform,
    token: &str,
    files: &[FileMeta],
) -> Result<Attached, UploadError> {
    use super::platforms::{bluesky, linkedin, mastodon};
    let http = &state.http;
    let mut ids = Vec::with_capacity(files.len());
    let mut blobs = Vec::new();
    for f in files {
        let data = crate::files::read(state.db.clone(), f);
        let video = super::media::kind(f) == Some(Kind::Video);
        match platform {
            Platform::X => {
                ids.push(x::upload_media(http, &state.config.social.x, token, f, data).await?)
            }
            Platform::Mastodon => {
                let instance = account.instance.as_deref().unwrap_or_default();
                ids.push(mastodon::upload_media(http, instance, token, f, data).await?);
            }
            Platform::LinkedIn => {
                let app = &state.config.social.linkedin;
                let person = &account.platform_uid;
                let urn = if video {
                    let read =
                        |first, last| crate::files::read_range(state.db.clone(), f, first, last);
                    linkedin::upload_video(http, app, token, person, f, read).await?
                } else {
                    linkedin::upload_image(http, app, token, person, f, data).await?
                };
                ids.push(urn);
            }
            Platform::Bluesky if video => {
                let (service, did) = (bluesky_service(state, account), &account.platform_uid);
                let videos = &state.config.social.bluesky.video_service;
                blobs.push(
                    bluesky::upload_video(http, &service, videos, token, did, f, data).await?,
                );
            }
            Platform::Bluesky => {
                let bytes = crate::files::read_all(&state.db, f)
                    .await
                    .map_err(|e| UploadError::Failed("INTERNAL_ERROR", e.to_string()))?;
                let service = bluesky_service(state, account);
                blobs.push(
                    bluesky::upload_blob(http, &service, token, &f.content_type, bytes).await?,
                );
            }
            Platform::Threads => {}
        }
    }
    Ok(if platform == Platform::Bluesky {
        Attached::Blobs(blobs)
    } else {
        Attached::Ids(ids)
    })
}

fn bluesky_service(state: &AppState, account: &Account) -> String {
    account
        .instance
        .clone()
        .unwrap_or_else(|| state.config.social.bluesky.default_service.clone())
}

/// The post a create call sends: its place in the plan, the posts out before it, its media.
#[derive(Clone, Copy)]
struct Next<'a> {
    plan: &'a Plan,
    position: usize,
    done: &'a [Out],
    attached: &'a Attached,
}

impl Next<'_> {
    fn text(&self) -> &str {
        &self.plan.texts[self.position]
    }
}

/// How one create call ended, whatever the platform.
enum Sent {
    Posted(Out),
    Failed(&'static str, String),
    Unknown(String),
}

/// Sends a held target's posts and settles it.
pub async fn send(state: &AppState, h: Held) -> Outcome {
    let sent = send_posts(state, h).await;
    finish(state, &sent.target, sent.platform, sent.done, sent.ended).await
}

/// How a target's sending stopped, before it is settled: the posts out, and where and why it
/// stopped (`None`: all are out).
pub struct Sending {
    pub target: Target,
    platform: Platform,
    done: Vec<Out>,
    ended: Option<(Status, usize, &'static str, String)>,
}

impl Sending {
    /// Why it stopped when that surely posted nothing and trying later may work (the
    /// platform's rate limit, or it could not be reached), with the wait the platform asked
    /// for, if it named one.
    pub fn retryable(&self) -> Option<(Option<i64>, &str)> {
        match &self.ended {
            Some((Status::Failed, _, code, why))
                if matches!(*code, "RATE_LIMITED" | "PLATFORM_UNAVAILABLE") =>
            {
                Some((super::platforms::retry_after_ms(why), why.as_str()))
            }
            _ => None,
        }
    }
}

/// Settles what [`send_posts`] sent.
pub async fn settle_sent(state: &AppState, sent: Sending) -> Outcome {
    finish(state, &sent.target, sent.platform, sent.done, sent.ended).await
}

/// Leaves a stopped target held and `status` (a scheduled publish waiting to be tried again),
/// with its progress and why it stopped.
pub async fn keep_held(state: &AppState, sent: &Sending, status: &str) -> Result<(), sqlx::Error> {
    let (failed_at, code, why) = match &sent.ended {
        Some((_, at, code, why)) => (Some(*at as i64), Some(*code), Some(why.as_str())),
        None => (None, None, None),
    };
    let progress = Progress {
        status,
        published: sent.done.len() as i64,
        failed_at,
        error_code: code,
        error: why,
    };
    db::publishing::hold_open(&state.db, &sent.target.id, &progress).await
}

/// Ends a target that sent nothing this time (cancelled, refused at its time): `status` with
/// why, its hold given back.
pub async fn end_unsent(
    state: &AppState,
    target: &Target,
    status: &'static str,
    code: &'static str,
    why: &str,
) {
    let progress = Progress {
        status,
        published: target.published,
        failed_at: None,
        error_code: Some(code),
        error: Some(why),
    };
    settle(state, target, &progress, 0).await;
    let platform = target.platform.clone();
    metrics::counter!(m::PUBLISHES, "platform" => platform, "outcome" => status).increment(1);
}

/// Ends a target whose one post is out (a WeChat article): charged its price.
pub async fn end_out(state: &AppState, target: &Target) -> Micros {
    let progress = Progress {
        status: "published",
        published: 1,
        failed_at: None,
        error_code: None,
        error: None,
    };
    let charged = settle(state, target, &progress, 1).await;
    let platform = target.platform.clone();
    metrics::counter!(m::PUBLISHES, "platform" => platform, "outcome" => "published").increment(1);
    charged
}

/// A held target made ready to send again (a scheduled publish at its time): where to start,
/// the posts out, every post's media, from the plan as it is now.
pub async fn resume(
    state: &AppState,
    target: Target,
    account: Account,
    plan: Plan,
) -> Result<Held, (&'static str, String)> {
    let platform = Platform::parse(&account.platform).unwrap_or(Platform::X);
    let (start, done, media) = prepare(state, &account, &plan).await?;
    Ok(Held {
        target,
        account,
        platform,
        plan,
        media,
        start,
        done,
    })
}

/// Checks a plan against its account now, as sending it would (text, media, an open post of
/// unknown outcome); the posts it would send.
pub async fn check(
    state: &AppState,
    account: &Account,
    plan: &Plan,
) -> Result<usize, (&'static str, String)> {
    let (start, _, _) = prepare(state, account, plan).await?;
    Ok(plan.texts.len() - start)
}

/// Sends a held target's posts without settling it.
pub async fn send_posts(state: &AppState, h: Held) -> Sending {
    let Held {
        target,
        account,
        platform,
        plan,
        media,
        start,
        mut done,
    } = h;
    let mut ended: Option<(Status, usize, &'static str, String)> = None;
    let key = plan.thread_key.clone();
    for position in start..plan.texts.len() {
        let pos = position as i64;
        let files = media.get(position).map(Vec::as_slice).unwrap_or_default();
        let attached = match attach(state, &account, platform, files).await {
            Ok(a) => a,
            Err((code, why)) => {
                ended = Some((Status::Failed, position, code, why));
                break;
            }
        };
        // Bluesky dedupes by a record key, Mastodon by an Idempotency-Key: chosen now and kept
        // with the attempt.
        let rkey = match platform {
            Platform::Bluesky => Some(super::platforms::bluesky::new_tid()),
            Platform::Mastodon => Some(new_uuid()),
            _ => None,
        };
        let attempted = db::publishing::attempt(
            &state.db,
            &key,
            pos,
            &target.id,
            &account.id,
            rkey.as_deref(),
        )
        .await;
        match attempted {
            Ok(true) => {}
            Ok(false) => {
                let why = "another publish of this draft to this account is sending it".to_owned();
                ended = Some((Status::Failed, position, "CONFLICT", why));
                break;
            }
            Err(e) => {
                ended = Some((Status::Failed, position, "INTERNAL_ERROR", e.to_string()));
                break;
            }
        }
        let post = Next {
            plan: &plan,
            position,
            done: &done,
            attached: &attached,
        };
        let sent = match platform {
            Platform::Bluesky => {
                let rkey = rkey.as_deref().unwrap_or_default();
                send_bluesky(state, &account, post, rkey).await
            }
            Platform::Mastodon => {
                let key = rkey.as_deref().unwrap_or_default();
                send_mastodon(state, &account, post, key).await
            }
            Platform::Threads => send_threads(state, &account, post, &key).await,
            Platform::LinkedIn => send_linkedin(state, &account, post).await,
            Platform::X => send_x(state, &account, post).await,
        };
        match sent {
            Sent::Posted(out) => {
                let remote = Remote {
                    id: Some(&out.id),
                    cid: out.cid.as_deref(),
                    url: Some(&out.url),
                };
                if let Err(e) =
                    db::publishing::end_post(&state.db, &key, pos, "published", remote, None).await
                {
                    // Posted, but not recorded: it must not be sent again; it stays attempted.
                    tracing::error!(target = %target.id, error = %e, "a published post could not be recorded");
                    let why = format!("posted as {} but not recorded: {e}", out.id);
                    ended = Some((Status::Unconfirmed, position, "UNCONFIRMED", why));
                    break;
                }
                done.push(out);
            }
            Sent::Failed(code, reason) => {
                let none = Remote::default();
                let _ =
                    db::publishing::end_post(&state.db, &key, pos, "failed", none, Some(&reason))
                        .await;
                ended = Some((Status::Failed, position, code, reason));
                break;
            }
            Sent::Unknown(why) => {
                ended = Some((Status::Unconfirmed, position, "UNCONFIRMED", why));
                break;
            }
        }
    }
    Sending {
        target,
        platform,
        done,
        ended,
    }
}

/// One X post (a reply to the post before it; the plan's quote on the first).
async fn send_x(state: &AppState, account: &Account, next: Next<'_>) -> Sent {
    let post = NewPost {
        text: next.text(),
        reply_to: next.done.last().map(|o| o.id.as_str()),
        quote: if next.position == 0 {
            next.plan.quote.as_deref()
        } else {
            None
        },
        media_ids: next.attached.ids(),
    };
    let app = &state.config.social.x;
    let mut stale: Option<String> = None;
    for _ in 0..2 {
        let token = match super::tokens::access_token(state, &account.id, stale.as_deref()).await {
            Ok(t) => t,
            Err(e) => return Sent::Failed(e.parts().2, e.to_string()),
        };
        match x::create_post(&state.http, app, &token, &post, CREATE_TIMEOUT).await {
            Created::Posted { id } => {
                let url = x::post_url(&account.username, &id);
                return Sent::Posted(Out { id, cid: None, url });
            }
            Created::Failed { code, reason } => return Sent::Failed(code, reason),
            Created::Unknown(why) => return Sent::Unknown(why),
            // Refused, so not posted: refresh the token and try once more.
            Created::Unauthorized => stale = Some(token),
        }
    }
    let _ = db::social::set_status(&state.db, &account.id, "needs_reauth").await;
    Sent::Failed(
        "TOKEN_EXPIRED",
        format!("X refused the token of @{} twice", account.username),
    )
}

/// One Threads post: a container (harmless until published; its id stored with the attempt),
/// then its publish. A lost publish answer is settled by the container's status.
async fn send_threads(
    state: &AppState,
    account: &Account,
    next: Next<'_>,
    thread_key: &str,
) -> Sent {
    use super::platforms::threads::{self, Step};
    let (plan, position) = (next.plan, next.position);
    let app = &state.config.social.threads;
    let user = account.platform_uid.as_str();
    let reply_to = next.done.last().map(|o| o.id.as_str());
    let posted = |id: String| {
        let url = threads::post_url(&account.username, &id);
        Sent::Posted(Out { id, cid: None, url })
    };
    let rc = plan.reply_control.as_deref();
    let mut stale: Option<String> = None;
    for _ in 0..2 {
        let token = match super::tokens::access_token(state, &account.id, stale.as_deref()).await {
            Ok(t) => t,
            Err(e) => return Sent::Failed(e.parts().2, e.to_string()),
        };
        let made = threads_container(state, &token, user, next, reply_to, rc).await;
        let container = match made {
            Step::Done(id) => id,
            Step::Unauthorized => {
                stale = Some(token);
                continue;
            }
            Step::Failed { code, reason } => return Sent::Failed(code, reason),
            // A container is not a post: one lost in transit is simply not used.
            Step::Unknown(why) => {
                let why = format!("{why} (making the container; nothing was posted)");
                return Sent::Failed("PLATFORM_UNAVAILABLE", why);
            }
        };
        let pos = position as i64;
        if let Err(e) = db::publishing::set_client_key(&state.db, thread_key, pos, &container).await
        {
            return Sent::Failed("INTERNAL_ERROR", e.to_string());
        }
        for _ in 0..2 {
            match threads::publish_container(
                &state.http,
                app,
                &token,
                user,
                &container,
                CREATE_TIMEOUT,
            )
            .await
            {
                Step::Done(id) => return posted(id),
                Step::Failed { code, reason } => return Sent::Failed(code, reason),
                Step::Unauthorized => {
                    return Sent::Failed(
                        "TOKEN_EXPIRED",
                        "Threads refused the token while publishing".into(),
                    );
                }
                Step::Unknown(why) => {
                    match threads::container_status(&state.http, app, &token, &container).await {
                        Ok((s, media)) if s == "PUBLISHED" => {
                            return posted(media.unwrap_or(container.clone()));
                        }
                        // Not published: safe to publish the same container again.
                        Ok((s, _)) if s == "FINISHED" || s == "IN_PROGRESS" => continue,
                        Ok((s, _)) => {
                            return Sent::Failed(
                                "PLATFORM_UNAVAILABLE",
                                format!("{why}; the container is {s}"),
                            );
                        }
                        Err(e) => {
                            return Sent::Unknown(format!(
                                "{why}; its container's status is unknown: {e}"
                            ));
                        }
                    }
                }
            }
        }
        return Sent::Unknown(format!(
            "Threads did not confirm the publish of container {container}"
        ));
    }
    let _ = db::social::set_status(&state.db, &account.id, "needs_reauth").await;
    Sent::Failed(
        "TOKEN_EXPIRED",
        format!("Threads refused the token of @{} twice", account.username),
    )
}

/// The container of one Threads post: text alone, one image or video, or a carousel of item
/// containers; media containers are waited for until Threads has fetched them.
async fn threads_container(
    state: &AppState,
    token: &str,
    user: &str,
    next: Next<'_>,
    reply_to: Option<&str>,
    reply_control: Option<&str>,
) -> super::platforms::threads::Step {
    use super::platforms::threads::{self, Container, Step};
    let (http, app) = (&state.http, &state.config.social.threads);
    let urls: &[(Kind, String)] = match next.attached {
        Attached::Urls(u) => u,
        _ => &[],
    };
    let text = Some(next.text()).filter(|t| !t.trim().is_empty());
    fn media(kind: Kind, url: &str, item: bool) -> Container<'_> {
        let video = kind == Kind::Video;
        Container {
            media_type: if video { "VIDEO" } else { "IMAGE" },
            image_url: (!video).then_some(url),
            video_url: video.then_some(url),
            carousel_item: item,
            ..Container::default()
        }
    }
    let ready = |step: Step| async move {
        let Step::Done(id) = step else { return step };
        match threads::wait_ready(http, app, token, &id).await {
            Ok(()) => Step::Done(id),
            Err((code, reason)) => Step::Failed { code, reason },
        }
    };
    let c = match urls {
        [] => Container {
            media_type: "TEXT",
            text: Some(next.text()),
            ..Container::default()
        },
        [(kind, url)] => Container {
            text,
            ..media(*kind, url, false)
        },
        many => {
            let mut children = Vec::with_capacity(many.len());
            for (kind, url) in many {
                let item = media(*kind, url, true);
                match ready(threads::create_container(http, app, token, user, &item).await).await {
                    Step::Done(id) => children.push(id),
                    // An item container is not a post: one lost in transit is not used.
                    Step::Unknown(why) => {
                        return Step::Failed {
                            code: "PLATFORM_UNAVAILABLE",
                            reason: format!("{why} (making a carousel item; nothing was posted)"),
                        };
                    }
                    other => return other,
                }
            }
            let children = children.join(",");
            let c = Container {
                media_type: "CAROUSEL",
                text,
                children: Some(&children),
                reply_to,
                reply_control,
                ..Container::default()
            };
            return ready(threads::create_container(http, app, token, user, &c).await).await;
        }
    };
    let c = Container {
        reply_to,
        reply_control,
        ..c
    };
    let made = threads::create_container(http, app, token, user, &c).await;
    if urls.is_empty() {
        made
    } else {
        ready(made).await
    }
}

/// One LinkedIn post (its commentary escaped). LinkedIn has no idempotency key: a lost answer
/// is unconfirmed.
async fn send_linkedin(state: &AppState, account: &Account, next: Next<'_>) -> Sent {
    use super::platforms::linkedin::{self, Created as L};
    let app = &state.config.social.linkedin;
    let visibility = next.plan.visibility.as_deref().unwrap_or("PUBLIC");
    let mut stale: Option<String> = None;
    for _ in 0..2 {
        let token = match super::tokens::access_token(state, &account.id, stale.as_deref()).await {
            Ok(t) => t,
            Err(e) => return Sent::Failed(e.parts().2, e.to_string()),
        };
        let created = linkedin::create_post(
            &state.http,
            app,
            &token,
            &account.platform_uid,
            next.text(),
            visibility,
            next.attached.ids(),
            CREATE_TIMEOUT,
        )
        .await;
        match created {
            L::Posted { urn } => {
                let url = linkedin::post_url(&urn);
                return Sent::Posted(Out {
                    id: urn,
                    cid: None,
                    url,
                });
            }
            L::Failed { code, reason } => return Sent::Failed(code, reason),
            L::Unknown(why) => return Sent::Unknown(why),
            L::Unauthorized => stale = Some(token),
        }
    }
    let _ = db::social::set_status(&state.db, &account.id, "needs_reauth").await;
    Sent::Failed(
        "TOKEN_EXPIRED",
        format!("LinkedIn refused the token of {}", account.username),
    )
}

/// One Mastodon status under `Idempotency-Key: key` (a reply to the one before). A lost answer
/// is settled by sending the same request again: the instance answers a repeated key with the
/// status it already made.
async fn send_mastodon(state: &AppState, account: &Account, next: Next<'_>, key: &str) -> Sent {
    use super::platforms::mastodon::{self, Created as M};
    let instance = account.instance.clone().unwrap_or_default();
    let token = match super::tokens::access_token(state, &account.id, None).await {
        Ok(t) => t,
        Err(e) => return Sent::Failed(e.parts().2, e.to_string()),
    };
    let reply_to = next.done.last().map(|o| o.id.as_str());
    let language = next.plan.langs.first().map(String::as_str);
    let mut last = String::new();
    for _ in 0..3 {
        match mastodon::create_status(
            &state.http,
            &instance,
            &token,
            key,
            mastodon::NewStatus {
                text: next.text(),
                in_reply_to: reply_to,
                language,
                media_ids: next.attached.ids(),
            },
            CREATE_TIMEOUT,
        )
        .await
        {
            M::Posted { id, url } => return Sent::Posted(Out { id, cid: None, url }),
            M::Failed { code, reason } => return Sent::Failed(code, reason),
            M::Unauthorized => {
                let _ = db::social::set_status(&state.db, &account.id, "needs_reauth").await;
                return Sent::Failed(
                    "TOKEN_EXPIRED",
                    format!("{instance} refused the token of @{}", account.username),
                );
            }
            M::Unknown(why) => last = why,
        }
    }
    Sent::Unknown(format!(
        "{last} (the same Idempotency-Key was sent three times)"
    ))
}

/// One Bluesky post under record key `rkey` (a reply to the thread's root and to the post
/// before). An answer lost in transit is settled by reading the key back.
async fn send_bluesky(state: &AppState, account: &Account, next: Next<'_>, rkey: &str) -> Sent {
    use super::platforms::bluesky::{self, Ref};
    let service = bluesky_service(state, account);
    let done = next.done;
    let as_ref = |o: &Out| Ref {
        uri: o.id.clone(),
        cid: o.cid.clone().unwrap_or_default(),
    };
    let (root, parent) = (done.first().map(as_ref), done.last().map(as_ref));
    let created_at = crate::routes::admin::iso(crate::clock::now_ms());
    let created_at = created_at.as_str().unwrap_or("1970-01-01T00:00:00Z");
    let reply = root.as_ref().zip(parent.as_ref());
    let images = match next.attached {
        Attached::Blobs(b) => b.as_slice(),
        _ => &[],
    };
    let record = bluesky::post_record(next.text(), &next.plan.langs, reply, images, created_at);
    let did = account.platform_uid.as_str();
    let posted = |r: Ref| {
        let url = bluesky::post_url(&account.username, &r.uri);
        Sent::Posted(Out {
            id: r.uri,
            cid: Some(r.cid),
            url,
        })
    };
    let mut stale: Option<String> = None;
    for _ in 0..2 {
        let token = match super::tokens::access_token(state, &account.id, stale.as_deref()).await {
            Ok(t) => t,
            Err(e) => return Sent::Failed(e.parts().2, e.to_string()),
        };
        match bluesky::create_post(
            &state.http,
            &service,
            &token,
            did,
            rkey,
            &record,
            CREATE_TIMEOUT,
        )
        .await
        {
            bluesky::Created::Posted(r) => return posted(r),
            bluesky::Created::Failed { code, reason } => return Sent::Failed(code, reason),
            bluesky::Created::Unauthorized => stale = Some(token),
            bluesky::Created::Unknown(why) => {
                return match bluesky::get_post(&state.http, &service, &token, did, rkey).await {
                    Ok(Some(r)) => posted(r),
                    Ok(None) => Sent::Failed(
                        "PLATFORM_UNAVAILABLE",
                        format!("{why}; the record was not written"),
                    ),
                    Err(e) => Sent::Unknown(format!("{why}; reading it back failed: {e}")),
                };
            }
        }
    }
    let _ = db::social::set_status(&state.db, &account.id, "needs_reauth").await;
    Sent::Failed(
        "TOKEN_EXPIRED",
        format!("Bluesky refused the session of @{} twice", account.username),
    )
}

/// Records how a target ended: settled (charged when all is out, refunded otherwise) or left
/// unconfirmed with its hold.
async fn finish(
    state: &AppState,
    target: &Target,
    platform: Platform,
    posts: Vec<Out>,
    ended: Option<(Status, usize, &'static str, String)>,
) -> Outcome {
    let (status, failed_at, error) = match ended {
        None => (Status::Published, None, None),
        Some((s, at, code, why)) => (s, Some(at), Some((code, why))),
    };
    let progress = Progress {
        status: status.as_str(),
        published: posts.len() as i64,
        failed_at: failed_at.map(|a| a as i64),
        error_code: error.as_ref().map(|e| e.0),
        error: error.as_ref().map(|e| e.1.as_str()),
    };
    let mut charged = Micros::ZERO;
    if status == Status::Unconfirmed {
        if let Err(e) = db::publishing::hold_open(&state.db, &target.id, &progress).await {
            tracing::error!(target = %target.id, error = %e, "recording an unconfirmed publish failed");
        }
    } else {
        charged = settle(state, target, &progress, posts.len()).await;
    }
    metrics::counter!(m::PUBLISHES, "platform" => platform.as_str(), "outcome" => status.as_str())
        .increment(1);
    Outcome {
        account_id: target.account_id.clone(),
        platform,
        target_id: Some(target.id.clone()),
        status,
        posts,
        total: target.total as usize,
        failed_at,
        error,
        charged,
    }
}

/// Settles a target: its price if it is out whole, nothing otherwise; retried a few times
/// (what is left unsettled keeps its hold, and is settled when it is resolved).
async fn settle(
    state: &AppState,
    target: &Target,
    progress: &Progress<'_>,
    units: usize,
) -> Micros {
    let published = progress.status == "published";
    let cost = if published {
        Micros(target.held_micros)
    } else {
        Micros::ZERO
    };
    let payer = Payer {
        request_id: Arc::from(target.id.as_str()),
        user_id: target.user_id,
        key_id: None,
        model: target.platform.clone(),
        price_version: 0,
        endpoint: "publish",
        stream: false,
        paid_by: PaidBy::Credits,
    };
    let ended = Ended {
        source: UsageSource::Provider,
        cost,
        units: units as i64,
        ..Ended::nothing(
            if published {
                UsageStatus::Ok
            } else {
                UsageStatus::Failed
            },
            if published { 200 } else { 502 },
            progress.error.map(str::to_owned),
        )
    };
    let latency = crate::clock::now_ms() - target.created_at_ms.max(0);
    let record = payer.record(Micros(target.held_micros), latency.max(0), ended);
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=5 {
        match db::publishing::settle_target(&state.db, target, progress, &record).await {
            Ok(Some(charged)) => {
                state
                    .book
                    .give(target.user_id, Micros(target.held_micros - charged));
                if charged > 0 {
                    metrics::counter!(m::ADDON_CHARGED, "addon" => "publish")
                        .increment(charged as u64);
                }
                return Micros(charged);
            }
            Ok(None) => return Micros::ZERO,
            Err(e) => {
                tracing::warn!(target = %target.id, error = %e, attempt, "settling a publish failed, retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    metrics::counter!(m::SETTLEMENT_FAILURES).increment(1);
    Micros::ZERO
}

/// Resolves an unconfirmed target with what the user found at the platform: the post is out
/// (`remote_id` if they know it) or it is not. The target is then settled: charged when the
/// whole thread is out, refunded otherwise (publish again to continue).
pub async fn resolve(
    state: &AppState,
    user_id: i64,
    target_id: &str,
    posted: bool,
    remote_id: Option<&str>,
) -> Result<Outcome, ApiError> {
    let target = db::publishing::target(&state.db, user_id, target_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("publish target {target_id} not found")))?;
    if target.status != "unconfirmed" || target.settled != 0 {
        return Err(ApiError::Conflict(format!(
            "publish target {target_id} is {}; only an unconfirmed one is resolved",
            target.status
        )));
    }
    let account = db::social::account_by_id(&state.db, &target.account_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("account {} not found", target.account_id)))?;
    let posts = db::publishing::posts(&state.db, &target.thread_key).await?;
    let open = posts
        .iter()
        .find(|p| p.status == "attempted" && p.target_id == target.id)
        .ok_or_else(|| ApiError::Conflict("no post of this target awaits an outcome".into()))?;
    let (status, url) = if posted {
        let url = remote_id.map(|id| match target.platform.as_str() {
            "bluesky" => super::platforms::bluesky::post_url(&account.username, id),
            "threads" => super::platforms::threads::post_url(&account.username, id),
            "linkedin" => super::platforms::linkedin::post_url(id),
            "mastodon" => format!(
                "{}/@{}/{id}",
                account.instance.as_deref().unwrap_or_default(),
                account.username
            ),
            _ => x::post_url(&account.username, id),
        });
        ("published", url)
    } else {
        ("failed", None)
    };
    let why = (!posted).then_some("the user found it was not posted");
    let remote = Remote {
        id: remote_id,
        cid: None,
        url: url.as_deref(),
    };
    let position = open.position;
    db::publishing::end_post(&state.db, &target.thread_key, position, status, remote, why).await?;
    let posts = db::publishing::posts(&state.db, &target.thread_key).await?;
    let out = posts_out(&posts);
    let platform = Platform::parse(&target.platform).unwrap_or(Platform::X);
    let ended = if out.len() as i64 >= target.total {
        None
    } else {
        Some((
            Status::Failed,
            out.len(),
            "INCOMPLETE",
            "the thread is not all out; publish the draft again to continue".to_owned(),
        ))
    };
    Ok(finish(state, &target, platform, out, ended).await)
}

/// Gives a held target's price back without sending anything (another target of the same
/// publish could not be held).
pub async fn release(state: &AppState, h: Held) {
    let why = "not sent: the balance did not cover every account".to_owned();
    let ended = Some((Status::Failed, h.start, "INSUFFICIENT_CREDITS", why));
    finish(state, &h.target, h.platform, h.done, ended).await;
}

/// Ends what a dead process left mid-publish, every minute until `stop`: a target whose sent
/// post has no recorded outcome becomes `unconfirmed` (its hold kept, to resolve); one that had
/// sent nothing more is refunded. Safe on every instance at once (settlement is once only).
pub async fn run_recovery(state: AppState, stop: tokio_util::sync::CancellationToken) {
    let cfg = &state.config.publishing;
    let (stalled, every) = (
        cfg.stalled_after_ms as i64,
        Duration::from_millis(cfg.recovery_interval_ms.max(100)),
    );
    loop {
        if let Err(e) = recover(&state, crate::clock::now_ms() - stalled).await {
            tracing::warn!(error = %e, "recovering stalled publishes failed");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One recovery pass over targets last touched before `before_ms`; how many it ended.
pub async fn recover(state: &AppState, before_ms: i64) -> Result<usize, sqlx::Error> {
    let stalled = db::publishing::stalled(&state.db, before_ms, 100).await?;
    for target in &stalled {
        recover_target(state, target).await?;
    }
    Ok(stalled.len())
}

/// Ends a target whose process stopped mid-publish: `unconfirmed` when a post it sent has no
/// recorded outcome (its hold kept, to resolve), else refunded (or charged, when all is out).
pub async fn recover_target(state: &AppState, target: &Target) -> Result<Outcome, sqlx::Error> {
    let posts = db::publishing::posts(&state.db, &target.thread_key).await?;
    let out = posts_out(&posts);
    let platform = Platform::parse(&target.platform).unwrap_or(Platform::X);
    let ended = match posts.iter().find(|p| p.status == "attempted" && p.target_id == target.id) {
        Some(open) => (
            Status::Unconfirmed,
            open.position as usize,
            "UNCONFIRMED",
            "the publish was interrupted after sending this post; check the platform and resolve it".to_owned(),
        ),
        None => (
            Status::Failed,
            out.len(),
            "INTERRUPTED",
            "the publish was interrupted; nothing more was sent".to_owned(),
        ),
    };
    let (status, failed_at, code, why) = ended;
    let ended = if status == Status::Failed && out.len() as i64 >= target.total {
        None
    } else {
        Some((status, failed_at, code, why))
    };
    Ok(finish(state, target, platform, out, ended).await)
}
