//! Scheduled publishing (seed 000, "排程发布"): a draft to some accounts at an instant. For each
//! account a target is written with its price held and a job (`jobs`) due at the instant plus
//! its jitter, drawn once here (uniform in ±3 minutes, never sooner than a few seconds from
//! now) and stored; the target stays `scheduled` until its job starts it.
//!
//! At its time the job publishes the draft as it is then (an edit changes what goes out; a
//! deleted draft cancels it) through the same path as an immediate publish (`publish`): every
//! post recorded as attempted before it is sent, charged once when all is out. A failure that
//! surely posted nothing and may pass (the platform's 429, honouring its wait, or a platform
//! that could not be reached) is tried again with backoff up to `jobs.max_attempts`, the price
//! still held; any other failure refunds it. A job taken again after its instance died never
//! re-sends a post of unknown outcome: that target becomes `unconfirmed`.
//!
//! Cancelling is a compare-and-set on the target while it is `scheduled` (its hold given back,
//! then its job cancelled if still pending); the job's start is the same compare-and-set, so
//! exactly one wins. A cancel that loses waits for the publish and answers with where it went.

use super::publish::{self, Plan};
use super::text::Platform;
use crate::billing::Micros;
use crate::db::jobs::{Job, NewJob, Schedule};
use crate::db::publishing::Target;
use crate::db::social::Account;
use crate::db::{self, drafts::Draft};
use crate::error::ApiError;
use crate::jobs::Done;
use crate::state::AppState;
use rand::RngExt;
use std::time::Duration;

/// The jobs that publish a scheduled target (the subject is the target id).
pub const KIND: &str = "publish";
/// Jitter is drawn uniformly in ± this.
pub const JITTER_MS: i64 = 180_000;
/// A jittered time is never sooner than this from now.
pub const LEAD_MS: i64 = 5_000;
/// How far in the past `scheduledFor` may be (a clock a little behind); older is refused.
pub const PAST_GRACE_MS: i64 = 60_000;
/// How long a cancel that lost the race waits for the publish to end.
pub const CANCEL_WAIT: Duration = Duration::from_secs(45);

/// When a job scheduled for `at_ms` runs: `at_ms`, or with jitter drawn uniformly in ±3
/// minutes; never sooner than [`LEAD_MS`] from `now_ms` when jittered, never before now.
pub fn effective_at(at_ms: i64, now_ms: i64, jitter: bool) -> i64 {
    if !jitter {
        return at_ms.max(now_ms);
    }
    let drawn = at_ms + rand::rng().random_range(-JITTER_MS..=JITTER_MS);
    drawn.max(now_ms + LEAD_MS)
}

/// A draft to schedule, to whom, when.
pub struct Request {
    pub draft: Draft,
    pub accounts: Vec<Account>,
    pub scheduled_for_ms: i64,
    pub priority: i64,
    pub jitter: bool,
}

/// Schedules a draft to each account: checks every post as a publish would (400 before
/// anything is held), then holds each price with its target and job; a balance that does not
/// cover them all holds nothing. What was scheduled (the queue ids are the job ids), in the
/// order of the accounts.
pub async fn schedule(
    state: &AppState,
    user_id: i64,
    req: Request,
) -> Result<Vec<Schedule>, ApiError> {
    let now = crate::clock::now_ms();
    if req.scheduled_for_ms < now - PAST_GRACE_MS {
        return Err(ApiError::InvalidInput(format!(
            "scheduledFor: {} is in the past",
            iso(req.scheduled_for_ms)
        )));
    }
    let mut plans = Vec::with_capacity(req.accounts.len());
    for account in &req.accounts {
        let plan = Plan::thread(&req.draft, account);
        publish::check(state, account, &plan)
            .await
            .map_err(|(code, why)| match code {
                "INTERNAL_ERROR" => ApiError::Internal(why),
                "TOKEN_EXPIRED" => ApiError::TokenExpired(why),
                "UNCONFIRMED" => ApiError::Conflict(why),
                _ => ApiError::InvalidInput(format!("account {}: {why}", account.id)),
            })?;
        plans.push(plan);
    }
    let publish_id = format!("sch_{}", super::drafts::new_uuid().replace('-', ""));
    // Without an idempotency key this always writes a new publish.
    let _ = db::publishing::begin(&state.db, &publish_id, user_id, None, "").await?;
    let mut made: Vec<(Target, String, i64)> = Vec::new();
    let mut total = Micros::ZERO;
    for (account, plan) in req.accounts.iter().zip(plans) {
        let platform = Platform::parse(&account.platform).unwrap_or(Platform::X);
        let price = publish::price(state, platform);
        total = Micros(total.0 + price.0);
        let target = Target {
            id: format!("pub_{}", super::drafts::new_uuid().replace('-', "")),
            publish_id: publish_id.clone(),
            user_id,
            account_id: account.id.clone(),
            platform: platform.as_str().to_owned(),
            thread_key: plan.thread_key.clone(),
            status: "scheduled".into(),
            held_micros: price.0,
            total: plan.texts.len() as i64,
            published: 0,
            failed_at: None,
            error_code: None,
            error: None,
            settled: 0,
            charged_micros: 0,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let job_id = format!("job_{}", super::drafts::new_uuid().replace('-', ""));
        made.push((
            target,
            job_id,
            effective_at(req.scheduled_for_ms, now, req.jitter),
        ));
    }
    let jobs: Vec<NewJob> = made
        .iter()
        .map(|(target, job_id, effective)| NewJob {
            id: job_id,
            kind: KIND,
            subject: &target.id,
            user_id: Some(user_id),
            queue_key: Some(&target.account_id),
            priority: req.priority,
            scheduled_for_ms: req.scheduled_for_ms,
            effective_at_ms: *effective,
            max_attempts: state.config.jobs.max_attempts as i64,
            payload: "{}",
        })
        .collect();
    let rows: Vec<(&Target, Option<&NewJob>)> = made
        .iter()
        .map(|m| &m.0)
        .zip(jobs.iter().map(Some))
        .collect();
    // Every account's price held with its target and job in one transaction: all or none.
    state
        .book
        .take(user_id, total)
        .map_err(|e| publish::refused(e, total))?;
    let description = "scheduled publish (held until it is out)";
    if let Err(e) = db::publishing::create_targets(&state.db, &rows, description).await {
        state.book.give(user_id, total);
        return Err(publish::refused(e, total));
    }
    state.jobs.wake.notify_one();
    Ok(made
        .into_iter()
        .map(|(t, id, effective)| Schedule {
            id,
            state: "pending".into(),
            priority: req.priority,
            attempts: 0,
            scheduled_for_ms: req.scheduled_for_ms,
            effective_at_ms: effective,
            last_error: None,
            result: None,
            created_at_ms: now,
            target_id: t.id,
            account_id: t.account_id,
            platform: t.platform,
            thread_key: t.thread_key,
            target_status: t.status,
            draft_id: Some(req.draft.id.clone()),
            draft_title: Some(req.draft.title.clone()),
        })
        .collect())
}

/// Unix milliseconds as RFC 3339 text.
fn iso(ms: i64) -> String {
    crate::routes::admin::iso(ms)
        .as_str()
        .map(str::to_owned)
        .unwrap_or_default()
}

/// The draft a target publishes (its thread key is `draft:account`).
fn draft_id(target: &Target) -> &str {
    target
        .thread_key
        .rsplit_once(':')
        .map_or(target.thread_key.as_str(), |(d, _)| d)
}

/// Runs a scheduled publish at its time.
pub async fn run(state: &AppState, job: &Job) -> Done {
    let later = |e: sqlx::Error| Done::Retry {
        after_ms: Some(5_000),
        why: format!("database: {e}"),
    };
    let target = match db::publishing::target_by_id(&state.db, &job.subject).await {
        Ok(Some(t)) => t,
        Ok(None) => return Done::Failed(format!("publish target {} does not exist", job.subject)),
        Err(e) => return later(e),
    };
    if let Some(done) = ended(&target) {
        return done;
    }
    let fresh = match target.status.as_str() {
        "scheduled" => true,
        "posting" => false,
        // Cancelled by a request that stopped before giving the hold back: given back here.
        "cancelled" => {
            let why = target.error.clone().unwrap_or_else(|| "cancelled".into());
            publish::end_unsent(state, &target, "cancelled", "CANCELLED", &why).await;
            return Done::Cancelled(why);
        }
        _ => return Done::Unconfirmed(target.error.clone().unwrap_or_default()),
    };
    if !fresh {
        // Taken again after its instance stopped mid-publish: a post of unknown outcome is
        // never sent again (the target becomes unconfirmed, or is refunded if nothing more
        // was sent); else it goes on where it stopped.
        let posts = match db::publishing::posts(&state.db, &target.thread_key).await {
            Ok(p) => p,
            Err(e) => return later(e),
        };
        if posts
            .iter()
            .any(|p| p.status == "attempted" && p.target_id == target.id)
        {
            return match publish::recover_target(state, &target).await {
                Ok(outcome) => done_of(&outcome),
                Err(e) => later(e),
            };
        }
    }
    let draft = match db::drafts::get(&state.db, target.user_id, draft_id(&target)).await {
        Ok(d) => d,
        Err(e) => return later(e),
    };
    let account = match db::social::account_by_id(&state.db, &target.account_id).await {
        Ok(a) => a,
        Err(e) => return later(e),
    };
    let (Some(draft), Some(account)) = (draft, account) else {
        let why = "the draft or the account was deleted before its time";
        return cancel_unstarted(state, job, &target, fresh, why).await;
    };
    let plan = Plan::thread(&draft, &account);
    if fresh {
        let total = Some(plan.texts.len() as i64);
        match db::publishing::move_scheduled(&state.db, &target.id, "posting", total).await {
            Ok(true) => {}
            Ok(false) => {
                // A cancel won the race.
                return match db::publishing::target_by_id(&state.db, &target.id).await {
                    Ok(Some(t)) => ended(&t).unwrap_or(Done::Cancelled("cancelled".into())),
                    _ => Done::Cancelled("cancelled".into()),
                };
            }
            Err(e) => return later(e),
        }
    }
    let mut target = target;
    target.status = "posting".into();
    target.total = plan.texts.len() as i64;
    let held = match publish::resume(state, target.clone(), account, plan).await {
        Ok(h) => h,
        Err((code, why)) => {
            publish::end_unsent(state, &target, "failed", code, &why).await;
            return Done::Failed(why);
        }
    };
    let sent = publish::send_posts(state, held).await;
    if let Some((wait, why)) = sent.retryable()
        && job.attempts < job.max_attempts
    {
        let why = why.to_owned();
        if let Err(e) = publish::keep_held(state, &sent, "scheduled").await {
            tracing::warn!(target = %sent.target.id, error = %e, "keeping a scheduled publish for its retry failed");
        }
        return Done::Retry {
            after_ms: wait,
            why,
        };
    }
    let outcome = publish::settle_sent(state, sent).await;
    done_of(&outcome)
}

/// A target that sent nothing at its time: cancelled if it was still scheduled (its hold
/// given back), else failed with why.
async fn cancel_unstarted(
    state: &AppState,
    job: &Job,
    target: &Target,
    fresh: bool,
    why: &str,
) -> Done {
    if !fresh {
        publish::end_unsent(state, target, "failed", "CANCELLED", why).await;
        return Done::Failed(why.to_owned());
    }
    // Whether this or a cancel racing it moved the target, it is cancelled and given back.
    match cancel_scheduled(state, &job.id, &target.id, why).await {
        Ok(_) => Done::Cancelled(why.to_owned()),
        Err(e) => Done::Retry {
            after_ms: Some(5_000),
            why: format!("database: {e}"),
        },
    }
}

/// A settled target's job end.
fn ended(t: &Target) -> Option<Done> {
    if t.settled == 0 {
        return None;
    }
    Some(match t.status.as_str() {
        "published" => Done::Succeeded(None),
        "cancelled" => Done::Cancelled(t.error.clone().unwrap_or_else(|| "cancelled".into())),
        _ => Done::Failed(t.error.clone().unwrap_or_else(|| t.status.clone())),
    })
}

/// A publish outcome's job end.
fn done_of(o: &publish::Outcome) -> Done {
    let why = || {
        o.error
            .as_ref()
            .map(|(code, why)| format!("{code}: {why}"))
            .unwrap_or_default()
    };
    match o.status {
        publish::Status::Published => Done::Succeeded(o.posts.first().map(|p| p.url.clone())),
        publish::Status::Unconfirmed => Done::Unconfirmed(why()),
        publish::Status::Failed => Done::Failed(why()),
    }
}

/// How cancelling one schedule went.
pub enum Cancelled {
    /// It will never be published (its hold given back).
    Yes,
    /// It was out first: where.
    Published(Vec<String>),
    /// It ended another way (failed, unconfirmed) or is still sending after the wait.
    Other(String),
}

/// Cancels a schedule whose target has not started sending: the target first (the same
/// compare-and-set its job's start makes, so exactly one wins), its hold given back, then the
/// job if it is still pending (a job already claimed finds its target cancelled). A crash
/// between the steps leaves a cancelled target that its job settles. False when the target was
/// no longer `scheduled`.
async fn cancel_scheduled(
    state: &AppState,
    job_id: &str,
    target_id: &str,
    why: &str,
) -> Result<bool, sqlx::Error> {
    if !db::publishing::move_scheduled(&state.db, target_id, "cancelled", None).await? {
        return Ok(false);
    }
    if let Some(mut t) = db::publishing::target_by_id(&state.db, target_id).await? {
        t.status = "cancelled".into();
        publish::end_unsent(state, &t, "cancelled", "CANCELLED", why).await;
    }
    db::jobs::cancel_pending(&state.db, job_id, why).await?;
    Ok(true)
}

/// Cancels what is scheduled of a deleted draft and not yet sending (what is sending finishes).
pub async fn cancel_draft(state: &AppState, user_id: i64, draft_id: &str) -> Result<(), ApiError> {
    let open = db::jobs::schedules(&state.db, user_id, KIND, Some(draft_id), false, 500).await?;
    for s in &open {
        cancel(state, s, "the draft was deleted", Duration::ZERO).await?;
    }
    Ok(())
}

/// Cancels one scheduled publish ([`cancel_scheduled`]); one that is already sending is waited
/// for up to `wait`.
pub async fn cancel(
    state: &AppState,
    s: &Schedule,
    why: &str,
    wait: Duration,
) -> Result<Cancelled, ApiError> {
    if cancel_scheduled(state, &s.id, &s.target_id, why).await? {
        return Ok(Cancelled::Yes);
    }
    // It is being sent (or already ended): wait for its end and say where it went.
    let until = tokio::time::Instant::now() + wait;
    loop {
        let t = db::publishing::target_by_id(&state.db, &s.target_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("schedule {} not found", s.id)))?;
        if t.settled != 0 || t.status == "unconfirmed" {
            if t.status == "published" {
                let posts = db::publishing::posts(&state.db, &t.thread_key).await?;
                let urls = posts
                    .into_iter()
                    .filter(|p| p.target_id == t.id || p.status == "published")
                    .filter_map(|p| p.url)
                    .collect();
                return Ok(Cancelled::Published(urls));
            }
            if t.status == "cancelled" {
                return Ok(Cancelled::Yes);
            }
            return Ok(Cancelled::Other(t.status));
        }
        if tokio::time::Instant::now() >= until {
            return Ok(Cancelled::Other("still publishing".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
