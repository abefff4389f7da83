//! Publishing (seed 000): `POST /api/v1/twitter/publish` `{"draftId","accountIds","jobId"}` (the
//! draft's items as a reply chain on each X account), `POST /api/v1/twitter/quote`
//! `{"content","quoteTweetId","accountId"}`, `POST /api/v1/publish/multi-platform`
//! `{"draftId","targetAccounts":[{"accountId","platform"}]}` → `{"results","summary"}`, and
//! `POST /api/v1/publish/targets/{id}/resolve` `{"posted","postId"}` for an `unconfirmed`
//! result; `GET /api/v1/publish/targets?draftId=` lists what was published where. Each account's price is held before anything is sent (a balance that does not cover
//! them all is `INSUFFICIENT_CREDITS` with nothing posted). An `Idempotency-Key` header makes a
//! retry answer what the first request answered, without publishing again.

use super::extract::{PlatformUser, parse_json};
use crate::db::{self, drafts::Draft, social::Account};
use crate::error::ApiError;
use crate::social::publish::{self, Held, Outcome, Plan, Status};
use crate::social::text::Platform;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::future::Future;
use tracing::Instrument;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/twitter/publish", post(publish_x))
        .route("/twitter/quote", post(quote))
        .route("/publish/multi-platform", post(multi_platform))
        .route("/bluesky/publish", post(publish_bluesky))
        .route("/mastodon/publish", post(publish_mastodon))
        .route("/threads/publish", post(publish_threads))
        .route("/linkedin/publish", post(publish_linkedin))
        .route("/publish/targets", axum::routing::get(list_targets))
        .route("/publish/targets/{id}/resolve", post(resolve))
}

/// The `Idempotency-Key` header, if any (printable, at most 200 bytes).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .ok_or_else(|| {
            ApiError::InvalidInput("Idempotency-Key: must be 1 to 200 printable characters".into())
        })?;
    Ok(Some(key.to_owned()))
}

/// Runs `work` once per idempotency key: a retry with the key gets the stored answer (a
/// different request under the same key is refused, one still running is a 409). The work
/// runs on the task tracker, so a client that hangs up does not cut a publish short.
async fn once<F, Fut>(
    state: &AppState,
    user_id: i64,
    headers: &HeaderMap,
    route: &str,
    body: &[u8],
    work: F,
) -> Result<Response, ApiError>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<(StatusCode, Value), ApiError>> + Send + 'static,
{
    let key = idempotency_key(headers)?;
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update(b"\n");
    hasher.update(body);
    let hash = crate::secrets::encode_hex(&hasher.finalize());
    let id = format!(
        "pubr_{}",
        crate::social::drafts::new_uuid().replace('-', "")
    );
    if let Err(earlier) =
        db::publishing::begin(&state.db, &id, user_id, key.as_deref(), &hash).await?
    {
        if earlier.request_hash != hash {
            return Err(ApiError::Conflict(
                "Idempotency-Key: this key was used for a different request".into(),
            ));
        }
        let Some(stored) = earlier.response else {
            // No answer long after it began: its process died mid-publish. Running it again is
            // safe (what it sent is recorded, so nothing goes out twice).
            let stalled = state.config.publishing.stalled_after_ms as i64;
            if crate::clock::now_ms() - earlier.created_at_ms > stalled {
                return run_once(state, earlier.id, work).await;
            }
            return Err(ApiError::Conflict(
                "Idempotency-Key: the request with this key is still being published".into(),
            ));
        };
        let stored: Value = serde_json::from_str(&stored).unwrap_or(Value::Null);
        if stored["transient"] == true {
            // The first try failed on our side: run it again under the same publish (what it
            // sent is recorded, so nothing goes out twice).
            return run_once(state, earlier.id, work).await;
        }
        let status = stored["status"]
            .as_u64()
            .and_then(|s| StatusCode::from_u16(s as u16).ok())
            .unwrap_or(StatusCode::OK);
        let mut response = (status, Json(stored["body"].clone())).into_response();
        response.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
        return Ok(response);
    }
    run_once(state, id, work).await
}

/// Runs `work` for publish `id` on the task tracker and stores its answer there too, so a
/// client that hangs up still leaves the answer its retry with the key gets.
async fn run_once<F, Fut>(state: &AppState, id: String, work: F) -> Result<Response, ApiError>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<(StatusCode, Value), ApiError>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let fut = work(id.clone());
    let db = state.db.clone();
    state.tasks.spawn(
        async move {
            let (status, body) = match fut.await {
                Ok(answer) => answer,
                Err(e) => (e.parts().0, e.body()),
            };
            // A server-side failure is marked transient: a retry with the key runs it again.
            let transient = status.is_server_error() && status != StatusCode::BAD_GATEWAY;
            let stored = json!({"status": status.as_u16(), "body": body, "transient": transient});
            if let Err(e) = db::publishing::finish(&db, &id, &stored.to_string()).await {
                tracing::error!(publish = %id, error = %e, "storing a publish's answer failed");
            }
            let _ = tx.send((status, body));
        }
        .in_current_span(),
    );
    let (status, body) = rx
        .await
        .map_err(|_| ApiError::Internal("the publish ended without an answer".into()))?;
    Ok((status, Json(body)).into_response())
}

pub(crate) fn required_string(body: &Map<String, Value>, key: &str) -> Result<String, ApiError> {
    match body.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(ApiError::InvalidInput(format!("{key}: required")))
        }
        Some(_) => Err(ApiError::InvalidInput(format!("{key}: must be a string"))),
    }
}

pub(crate) async fn own_draft(state: &AppState, user_id: i64, id: &str) -> Result<Draft, ApiError> {
    db::drafts::get(&state.db, user_id, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("draft {id} not found")))
}

/// The user's X accounts a draft goes to: `accountIds` if given, else its selected ones, else
/// its social set's.
pub(crate) async fn x_accounts(
    state: &AppState,
    user_id: i64,
    draft: &Draft,
    ids: Option<Vec<String>>,
) -> Result<Vec<Account>, ApiError> {
    let accounts = db::social::accounts(&state.db, user_id).await?;
    let chosen: Vec<Account> = match ids {
        Some(ids) => {
            let mut out = Vec::new();
            for id in &ids {
                let a = accounts.iter().find(|a| a.id == *id).ok_or_else(|| {
                    ApiError::InvalidInput(format!(
                        "accountIds: no connected account of yours is {id:?}"
                    ))
                })?;
                if a.platform != "twitter" {
                    return Err(ApiError::InvalidInput(format!(
                        "accountIds: {id} is a {} account; use /api/v1/publish/multi-platform",
                        a.platform
                    )));
                }
                out.push(a.clone());
            }
            out
        }
        None => {
            let selected = crate::social::drafts::selected(draft);
            let members = match &draft.social_set_id {
                Some(set) if selected.is_empty() => db::social::set_members(&state.db, user_id)
                    .await?
                    .into_iter()
                    .filter(|(s, _)| s == set)
                    .map(|(_, a)| a)
                    .collect(),
                _ => selected,
            };
            accounts
                .into_iter()
                .filter(|a| a.platform == "twitter" && members.contains(&a.id))
                .collect()
        }
    };
    if chosen.is_empty() {
        return Err(ApiError::InvalidInput(
            "accountIds: the draft names no X account to publish to; pass accountIds".into(),
        ));
    }
    Ok(chosen)
}

/// Holds every target's price, then sends them all; if the balance does not cover them all,
/// nothing is sent and every hold is given back.
async fn run_all(
    state: AppState,
    publish_id: String,
    targets: Vec<(Account, Plan)>,
) -> Result<Vec<Outcome>, ApiError> {
    let mut held: Vec<Held> = Vec::new();
    let mut outcomes: Vec<(usize, Outcome)> = Vec::new();
    let mut refusal = None;
    for (k, (account, plan)) in targets.into_iter().enumerate() {
        match publish::hold(&state, &publish_id, account, plan).await {
            Ok(Ok(h)) => held.push(h),
            Ok(Err(outcome)) => outcomes.push((k, outcome)),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    if let Some(e) = refusal {
        for h in held {
            publish::release(&state, h).await;
        }
        return Err(e);
    }
    let sent =
        futures_util::future::join_all(held.into_iter().map(|h| publish::send(&state, h))).await;
    let mut all: Vec<Outcome> = outcomes.into_iter().map(|(_, o)| o).collect();
    all.extend(sent);
    Ok(all)
}

fn answer(publish_id: &str, outcomes: &[Outcome], extra: Value) -> Value {
    let mut body = json!({
        "success": outcomes.iter().all(|o| o.status == Status::Published),
        "publishId": publish_id,
        "results": outcomes.iter().map(Outcome::json).collect::<Vec<_>>(),
        "summary": publish::summary(outcomes),
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

async fn publish_x(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    headers: HeaderMap,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let body: Map<String, Value> = parse_json(&raw)?;
    let draft_id = required_string(&body, "draftId")?;
    let ids = crate::social::drafts::read_ids("accountIds", body.get("accountIds"))?;
    let job_id = body.get("jobId").cloned().unwrap_or(Value::Null);
    let draft = own_draft(&state, user_id, &draft_id).await?;
    let accounts = x_accounts(&state, user_id, &draft, ids).await?;
    let targets: Vec<(Account, Plan)> = accounts
        .into_iter()
        .map(|a| {
            let plan = Plan::thread(&draft, &a);
            (a, plan)
        })
        .collect();
    let st = state.clone();
    once(
        &state,
        user_id,
        &headers,
        "twitter/publish",
        &raw,
        move |publish_id| async move {
            let outcomes = run_all(st, publish_id.clone(), targets).await?;
            let extra = json!({"draftId": draft_id, "jobId": job_id});
            Ok((StatusCode::OK, answer(&publish_id, &outcomes, extra)))
        },
    )
    .await
}

async fn multi_platform(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    headers: HeaderMap,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let body: Map<String, Value> = parse_json(&raw)?;
    let draft_id = required_string(&body, "draftId")?;
    let list = match body.get("targetAccounts") {
        Some(Value::Array(list)) if !list.is_empty() && list.len() <= 50 => list.clone(),
        _ => {
            return Err(ApiError::InvalidInput(
                "targetAccounts: required, 1 to 50 {\"accountId\",\"platform\"} objects".into(),
            ));
        }
    };
    let draft = own_draft(&state, user_id, &draft_id).await?;
    let accounts = db::social::accounts(&state.db, user_id).await?;
    let targets: Vec<(Account, Plan)> = pick_accounts(&list, &accounts)?
        .into_iter()
        .map(|a| {
            let plan = Plan::thread(&draft, &a);
            (a, plan)
        })
        .collect();
    let st = state.clone();
    once(
        &state,
        user_id,
        &headers,
        "publish/multi-platform",
        &raw,
        move |publish_id| async move {
            let outcomes = run_all(st, publish_id.clone(), targets).await?;
            Ok((
                StatusCode::OK,
                answer(&publish_id, &outcomes, json!({"draftId": draft_id})),
            ))
        },
    )
    .await
}

/// The accounts `targetAccounts` (`[{"accountId","platform"}]`) names, each the user's and of
/// the platform it says, none twice.
pub(crate) fn pick_accounts(
    list: &[Value],
    accounts: &[Account],
) -> Result<Vec<Account>, ApiError> {
    let mut picked: Vec<Account> = Vec::new();
    for (k, t) in list.iter().enumerate() {
        let id = t["accountId"].as_str().ok_or_else(|| {
            ApiError::InvalidInput(format!("targetAccounts[{k}].accountId: required"))
        })?;
        let platform = t["platform"]
            .as_str()
            .and_then(Platform::parse)
            .ok_or_else(|| {
                ApiError::InvalidInput(format!(
                    "targetAccounts[{k}].platform: one of twitter, bluesky, mastodon, threads, linkedin"
                ))
            })?;
        let a = accounts.iter().find(|a| a.id == id).ok_or_else(|| {
            ApiError::InvalidInput(format!(
                "targetAccounts[{k}].accountId: no connected account of yours is {id:?}"
            ))
        })?;
        if Platform::parse(&a.platform) != Some(platform) {
            return Err(ApiError::InvalidInput(format!(
                "targetAccounts[{k}].platform: account {id} is a {} account",
                a.platform
            )));
        }
        if picked.iter().any(|x| x.id == a.id) {
            return Err(ApiError::InvalidInput(format!(
                "targetAccounts[{k}]: account {id} is named twice"
            )));
        }
        picked.push(a.clone());
    }
    Ok(picked)
}

async fn quote(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    headers: HeaderMap,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let body: Map<String, Value> = parse_json(&raw)?;
    let content = crate::social::text::plain_text(&crate::social::text::sanitize_html(
        &required_string(&body, "content")?,
    ));
    let quoted = required_string(&body, "quoteTweetId")?;
    if quoted.len() > 19 || !quoted.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::InvalidInput(
            "quoteTweetId: must be a post id (digits)".into(),
        ));
    }
    let account_id = required_string(&body, "accountId")?;
    let account = own_account(&state, user_id, "accountId", &account_id, Platform::X).await?;
    let st = state.clone();
    once(&state, user_id, &headers, "twitter/quote", &raw, move |publish_id| async move {
        let plan = Plan::quote(&publish_id, content, quoted);
        let mut outcomes = run_all(st, publish_id.clone(), vec![(account, plan)]).await?;
        let o = outcomes.pop().ok_or_else(|| ApiError::Internal("no quote outcome".into()))?;
        match (o.status, &o.error) {
            (Status::Published, _) => {
                let first = o.posts.first().cloned().unwrap_or_default();
                let (id, url) = (first.id, first.url);
                Ok((StatusCode::OK, json!({"success": true, "message": "引用发布成功", "tweetId": id, "url": url,
                    "publishId": publish_id, "targetId": o.target_id, "creditsCharged": o.charged})))
            }
            (Status::Unconfirmed, _) => Ok((StatusCode::ACCEPTED, json!({"success": false, "status": "unconfirmed",
                "message": o.error.as_ref().map(|e| e.1.clone()), "publishId": publish_id, "targetId": o.target_id}))),
            (Status::Failed, Some(("FORBIDDEN", why))) => Err(ApiError::Forbidden(format!(
                "quote posts: {why} (X removed quote posts from self-serve API tiers in 2026; nothing was charged)"
            ))),
            (Status::Failed, Some(("TOKEN_EXPIRED", why))) => Err(ApiError::TokenExpired(why.clone())),
            (Status::Failed, Some(("INVALID_INPUT", why))) => Err(ApiError::InvalidInput(why.clone())),
            (Status::Failed, e) => Err(ApiError::PublishFailed(
                e.as_ref().map_or_else(|| "the quote was not posted".to_owned(), |e| e.1.clone()),
            )),
        }
    })
    .await
}

async fn resolve(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: Map<String, Value> = parse_json(&raw)?;
    let posted = body
        .get("posted")
        .and_then(Value::as_bool)
        .ok_or_else(|| ApiError::InvalidInput("posted: required, true or false".into()))?;
    let remote = match body.get("postId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 100 => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::InvalidInput(
                "postId: must be the post's id".into(),
            ));
        }
    };
    let outcome = publish::resolve(&state, user_id, &id, posted, remote.as_deref()).await?;
    Ok(Json(json!({"success": true, "result": outcome.json()})))
}

#[derive(Debug, serde::Deserialize)]
struct TargetsQuery {
    #[serde(rename = "draftId")]
    draft_id: Option<String>,
}

fn target_json(t: &db::publishing::Target, posts: &[db::publishing::Post]) -> Value {
    let mine: Vec<Value> = posts
        .iter()
        .map(|p| json!({"position": p.position, "status": p.status, "postId": p.remote_id, "url": p.url}))
        .collect();
    json!({
        "targetId": t.id,
        "publishId": t.publish_id,
        "accountId": t.account_id,
        "platform": t.platform,
        "draftId": t.thread_key.split_once(':').map(|(d, _)| d).filter(|d| *d != "quote" && Platform::parse(d).is_none()),
        "status": t.status,
        "published": t.published,
        "total": t.total,
        "failedAt": t.failed_at,
        "error": t.error_code.as_ref().map(|c| json!({"code": c, "message": t.error})),
        "creditsHeld": crate::billing::Micros(if t.settled == 0 { t.held_micros } else { 0 }),
        "creditsCharged": crate::billing::Micros(t.charged_micros),
        "posts": mine,
        "createdAt": super::admin::iso(t.created_at_ms),
        "updatedAt": super::admin::iso(t.updated_at_ms),
    })
}

async fn list_targets(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    axum::extract::Query(q): axum::extract::Query<TargetsQuery>,
) -> Result<Json<Value>, ApiError> {
    let targets = db::publishing::targets(&state.db, user_id, q.draft_id.as_deref(), 100).await?;
    let mut out = Vec::with_capacity(targets.len());
    for t in &targets {
        let posts = db::publishing::posts(&state.db, &t.thread_key).await?;
        out.push(target_json(t, &posts));
    }
    Ok(Json(json!({"success": true, "targets": out})))
}

/// `POST /api/v1/bluesky/publish` (seed 000): `{"accountUuid","type":"single"|"thread","text",
/// "texts","langs"}` → the result as in `multi-platform`.
async fn publish_bluesky(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    headers: HeaderMap,
    raw: Bytes,
) -> Result<Response, ApiError> {
    publish_to(state, user_id, headers, raw, Platform::Bluesky).await
}

/// `POST /api/v1/mastodon/publish` (seed 000: the same fields as Bluesky's).
async fn publish_mastodon(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    headers: HeaderMap,
    raw: Bytes,
) -> Result<Response, ApiError> {
    publish_to(state, user_id, headers, raw, Platform::Mastodon).await
}

/// One account of `platform`, a single post or a thread (seed 000's per-platform routes).
async fn publish_to(
    state: AppState,
    user_id: i64,
    headers: HeaderMap,
    raw: Bytes,
    platform: Platform,
) -> Result<Response, ApiError> {
    let body: Map<String, Value> = parse_json(&raw)?;
    let account_id = required_string(&body, "accountUuid")?;
    let texts: Vec<String> = match body.get("type").and_then(Value::as_str) {
        Some("single") => vec![required_string(&body, "text")?],
        Some("thread") => match body.get("texts") {
            Some(Value::Array(list)) if !list.is_empty() && list.len() <= 50 => list
                .iter()
                .enumerate()
                .map(|(k, v)| {
                    v.as_str()
                        .filter(|t| !t.trim().is_empty())
                        .map(|t| t.trim().to_owned())
                        .ok_or_else(|| {
                            ApiError::InvalidInput(format!(
                                "texts[{k}]: must be a non-empty string"
                            ))
                        })
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(ApiError::InvalidInput(
                    "texts: required for a thread, 1 to 50 strings".into(),
                ));
            }
        },
        _ => {
            return Err(ApiError::InvalidInput(
                "type: must be \"single\" or \"thread\"".into(),
            ));
        }
    };
    let media = media_refs(&state, user_id, &body, "imageUrls").await?;
    let langs = match crate::social::drafts::read_ids("langs", body.get("langs"))? {
        Some(l) if l.len() <= 3 => l,
        Some(_) => return Err(ApiError::InvalidInput("langs: at most 3 languages".into())),
        None => vec!["en".to_owned()],
    };
    let account = own_account(&state, user_id, "accountUuid", &account_id, platform).await?;
    let st = state.clone();
    let route = format!("{}/publish", platform.as_str());
    once(
        &state,
        user_id,
        &headers,
        &route,
        &raw,
        move |publish_id| async move {
            let mut plan = Plan::single(&publish_id, platform, texts);
            plan.langs = langs;
            plan.media[0] = media;
            let outcomes = run_all(st, publish_id.clone(), vec![(account, plan)]).await?;
            Ok((StatusCode::OK, answer(&publish_id, &outcomes, json!({}))))
        },
    )
    .await
}

/// The user's connected account `id` (from field `field`) on `platform`, or a 400 naming it.
async fn own_account(
    state: &AppState,
    user_id: i64,
    field: &str,
    id: &str,
    platform: Platform,
) -> Result<Account, ApiError> {
    db::social::account(&state.db, user_id, id)
        .await?
        .filter(|a| a.platform == platform.as_str())
        .ok_or_else(|| {
            ApiError::InvalidInput(format!(
                "{field}: no connected {} account of yours is {id:?}",
                platform.as_str()
            ))
        })
}

/// The media of `field` (`imageUrls`, `mediaUrls`: media ids, Tollgate file URLs or outside
/// URLs, fetched now) as stored file ids, for the first post.
async fn media_refs(
    state: &AppState,
    user_id: i64,
    body: &Map<String, Value>,
    field: &str,
) -> Result<Vec<String>, ApiError> {
    let refs = crate::social::drafts::read_ids(field, body.get(field))?.unwrap_or_default();
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    crate::social::media::from_refs(state, user_id, field, &refs).await
}

/// An optional field that must be one of `allowed`.
fn one_of(
    body: &Map<String, Value>,
    key: &str,
    allowed: &[&str],
) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::InvalidInput(format!(
            "{key}: one of {}",
            allowed.join(", ")
        ))),
    }
}

/// `POST /api/v1/threads/publish` (seed 000): `{"accountId","draftId"|"text","mediaUrls",
/// "replyControl"}` → the result as in `multi-platform` (a draft goes out as a reply chain).
async fn publish_threads(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    headers: HeaderMap,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let body: Map<String, Value> = parse_json(&raw)?;
    let allowed = ["everyone", "accounts_you_follow", "mentioned_only"];
    let reply_control = one_of(&body, "replyControl", &allowed)?;
    let tune = move |plan: &mut Plan| plan.reply_control = reply_control;
    draft_or_text(state, user_id, headers, raw, body, Platform::Threads, tune).await
}

/// `POST /api/v1/linkedin/publish` (seed 000): `{"accountId","draftId"|"text","mediaUrls",
/// "visibility"}` (`PUBLIC`, `CONNECTIONS` or `LOGGED_IN`) → the result as in `multi-platform`.
async fn publish_linkedin(
    State(state): State<AppState>,
    PlatformUser(_, user_id): PlatformUser,
    headers: HeaderMap,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let body: Map<String, Value> = parse_json(&raw)?;
    let visibility = one_of(&body, "visibility", &["PUBLIC", "CONNECTIONS", "LOGGED_IN"])?
        .unwrap_or_else(|| "PUBLIC".to_owned());
    let tune = move |plan: &mut Plan| plan.visibility = Some(visibility);
    draft_or_text(state, user_id, headers, raw, body, Platform::LinkedIn, tune).await
}

/// One `accountId` of `platform` gets a draft (`draftId`) or a `text` (seed 000's Threads and
/// LinkedIn routes); `tune` sets the platform's own options on the plan.
async fn draft_or_text(
    state: AppState,
    user_id: i64,
    headers: HeaderMap,
    raw: Bytes,
    body: Map<String, Value>,
    platform: Platform,
    tune: impl FnOnce(&mut Plan) + Send + 'static,
) -> Result<Response, ApiError> {
    let account_id = required_string(&body, "accountId")?;
    let account = own_account(&state, user_id, "accountId", &account_id, platform).await?;
    let media = media_refs(&state, user_id, &body, "mediaUrls").await?;
    let draft = match body.get("draftId").and_then(Value::as_str) {
        Some(id) => Some(own_draft(&state, user_id, id).await?),
        None => None,
    };
    if draft.is_some() && !media.is_empty() {
        return Err(ApiError::InvalidInput(
            "mediaUrls: a draft brings its own media; give draftId or text with mediaUrls".into(),
        ));
    }
    let text = match &draft {
        Some(_) => None,
        // Text may be left out beside media.
        None if !media.is_empty() => Some(
            body.get("text")
                .and_then(Value::as_str)
                .map(|t| t.trim().to_owned())
                .unwrap_or_default(),
        ),
        None => Some(required_string(&body, "text")?),
    };
    let st = state.clone();
    let route = format!("{}/publish", platform.as_str());
    once(
        &state,
        user_id,
        &headers,
        &route,
        &raw,
        move |publish_id| async move {
            let mut plan = match (&draft, text) {
                (Some(d), _) => Plan::thread(d, &account),
                (None, text) => {
                    let mut plan =
                        Plan::single(&publish_id, platform, vec![text.unwrap_or_default()]);
                    plan.media[0] = media;
                    plan
                }
            };
            tune(&mut plan);
            let outcomes = run_all(st, publish_id.clone(), vec![(account, plan)]).await?;
            Ok((StatusCode::OK, answer(&publish_id, &outcomes, json!({}))))
        },
    )
    .await
}
