//! Video generation as asynchronous tasks. Submitting holds seconds × the model's per-second
//! price (plus its request price) as a durable ledger debit and creates the task at a provider;
//! a poll job (`jobs`, one per task, worked by every instance) follows it to the end and settles it
//! exactly once: charged for the seconds the provider reports (never more than requested), or
//! refunded whole on failure, on expiry, or when the submission never reached a provider.
//! Spec of the client side: <https://platform.openai.com/docs/api-reference/videos>.

use super::auth::Caller;
use super::catalog::Model;
use super::failover::{self, Attempt, Detached};
use super::meter::{self, Ended, Payer};
use super::throttle::{self, RateHeaders};
use crate::billing::{Micros, PaidBy, UsageSource, UsageStatus, per_unit};
use crate::db::creations::NewCreation;
use crate::db::videos::{self, Kept, Outcome, VideoTask};
use crate::error::OpenAiError;
use crate::metrics as m;
use crate::provider::video::{self as provider, NewTask, TaskState};
use crate::provider::{self as upstream, BodyLimits, Call, Channel, UpstreamResponse, read_whole};
use crate::state::AppState;
use futures_util::StreamExt;
use rand::RngExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest video a request may ask for, in seconds.
pub const MAX_SECONDS: i64 = 120;
/// The usage records' `endpoint`.
const ENDPOINT: &str = "videos";
/// The jobs that follow a task (one per task, its subject the task id).
pub const POLL_KIND: &str = "video_poll";

/// The poll job of task `id`.
pub fn poll_job_id(id: &str) -> String {
    format!("job_video_{id}")
}

/// A video generation request, checked.
#[derive(Debug, Clone)]
pub struct VideoRequest {
    pub model: String,
    pub prompt: String,
    pub seconds: i64,
    pub size: Option<String>,
    pub aspect_ratio: Option<String>,
    /// The whole price if it delivers, instead of the model's price per second (a platform
    /// feature's `credits_cost`; zero for a member).
    pub flat_price: Option<Micros>,
    /// `Some`: a platform task, paid so; its file is stored by Tollgate and saved as a `video`
    /// creation before it is charged.
    pub keep_as: Option<PaidBy>,
}

/// Reads a duration given as a number or a numeric string.
pub fn parse_seconds(
    param: &'static str,
    v: Option<&Value>,
    default: i64,
) -> Result<i64, OpenAiError> {
    let n = match v {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(_) => None,
    };
    n.filter(|n| (1..=MAX_SECONDS).contains(n))
        .ok_or_else(|| OpenAiError::InvalidRequest {
            message: format!("'{param}' must be a whole number of seconds from 1 to {MAX_SECONDS}"),
            param: Some(param),
        })
}

/// Submits a task for `caller`: the stored task (or the error) and the rate-limit headers.
pub async fn submit(
    state: &AppState,
    caller: &Caller,
    request_id: &str,
    req: VideoRequest,
) -> (Result<VideoTask, OpenAiError>, RateHeaders) {
    let routed = route(state, caller, &req);
    let model = routed.as_ref().ok().map(|(m, _, _)| &**m);
    let admitted = match throttle::admit(state, caller, request_id, model, 0, false).await {
        Ok(a) => a,
        Err(refused) => return (Err(refused.error), refused.headers),
    };
    let result = match routed {
        Err(e) => Err(e),
        Ok((model, user_id, per_second)) => {
            start(state, caller, user_id, &model, per_second, req).await
        }
    };
    (result, admitted.headers)
}

fn route(
    state: &AppState,
    caller: &Caller,
    req: &VideoRequest,
) -> Result<(Arc<Model>, i64, i64), OpenAiError> {
    let (user_id, model) = meter::route(state, caller, &req.model)?;
    let per_second = match (req.flat_price, model.media.video_second) {
        (Some(_), _) => 0,
        (None, Some(per_second)) => per_second,
        (None, None) => {
            return Err(OpenAiError::InvalidRequest {
                message: format!(
                    "model {} has no price per video second, so it cannot make videos",
                    req.model
                ),
                param: Some("model"),
            });
        }
    };
    Ok((model, user_id, per_second))
}

/// Holds the price, stores the task and creates it at a provider.
async fn start(
    state: &AppState,
    caller: &Caller,
    user_id: i64,
    model: &Arc<Model>,
    per_second: i64,
    req: VideoRequest,
) -> Result<VideoTask, OpenAiError> {
    let started = Instant::now();
    let request_micros = match req.flat_price {
        Some(flat) => flat.0,
        None => model.price.request_micros,
    };
    let held = per_unit(per_second, req.seconds, request_micros).0;
    let now = crate::clock::now_ms();
    let id = format!("video_{:032x}", rand::rng().random::<u128>());
    let task = VideoTask {
        id,
        user_id,
        key_id: caller.key_id,
        model: model.name.clone(),
        channel_id: None,
        upstream_model: None,
        upstream_task_id: None,
        prompt: req.prompt.clone(),
        seconds: req.seconds,
        size: req.size.clone(),
        aspect_ratio: req.aspect_ratio.clone(),
        status: "queued".into(),
        progress: 0,
        held_micros: held,
        second_micros: per_second,
        request_micros,
        price_version: model.price.version,
        billed_seconds: None,
        cost_micros: None,
        result_url: None,
        error: None,
        settled: 0,
        // Pollers keep off until the provider has the task (or the lease says we died).
        lease_owner: Some("submit".into()),
        lease_until_ms: now + state.config.video.lease_ms as i64,
        next_poll_at_ms: now,
        expires_at_ms: now + state.config.video.task_timeout_ms as i64,
        created_at_ms: now,
        updated_at_ms: now,
        completed_at_ms: None,
        keep_as: req.keep_as.map(|p| p.as_str().to_owned()),
        file_id: None,
        creation_id: None,
    };
    let payer = payer_of(&task);
    state
        .book
        .take(user_id, Micros(held))
        .map_err(|e| meter::refused(state, &payer, started, e))?;
    if let Err(e) = videos::create_with_hold(&state.db, &task).await {
        state.book.give(user_id, Micros(held));
        return Err(meter::refused(state, &payer, started, e));
    }
    metrics::gauge!(m::VIDEO_TASKS_OPEN).increment(1.0);
    // Creating it upstream runs in a tracked task: a client hanging up cannot strand the hold.
    let (state2, model2, id) = (state.clone(), Arc::clone(model), task.id.clone());
    let work = async move { create_upstream(&state2, &model2, task, started).await };
    meter::in_tracked_task(state, &id, "video submission", work).await
}

/// Who pays for a task, as its hold and its usage record name it.
fn payer_of(task: &VideoTask) -> Payer {
    Payer {
        request_id: Arc::from(task.id.as_str()),
        user_id: task.user_id,
        key_id: task.key_id,
        model: task.model.clone(),
        price_version: task.price_version,
        endpoint: ENDPOINT,
        stream: false,
        paid_by: task
            .keep_as
            .as_deref()
            .map_or(PaidBy::Credits, PaidBy::parse),
    }
}

/// Creates the task at the first provider that takes it; refunds at once if none does.
async fn create_upstream(
    state: &AppState,
    model: &Model,
    mut task: VideoTask,
    started: Instant,
) -> Result<VideoTask, OpenAiError> {
    let timeout = Duration::from_millis(state.config.upstream.first_byte_timeout_ms);
    let attempt = failover::first_answer(state, model, started, &mut Detached, |channel| {
        let upstream_model = channel.upstream_model(&model.name).to_owned();
        let body = provider::create_body(
            channel.provider,
            &NewTask {
                model: &upstream_model,
                prompt: &task.prompt,
                seconds: task.seconds,
                size: task.size.as_deref(),
                aspect_ratio: task.aspect_ratio.as_deref(),
            },
        );
        let (http, id) = (&state.http, task.id.as_str());
        async move {
            let call = Call::CreateVideo { body, task: id };
            upstream::call(http, &channel, call, timeout).await
        }
    })
    .await;
    let limits = BodyLimits::for_request(&state.config.upstream, started);
    let (channel, error) = match attempt {
        Attempt::Answer {
            channel,
            mut response,
        } => {
            let answer: Value = match read_whole(&mut response.body, limits).await {
                Ok(body) => serde_json::from_slice(&body).unwrap_or(Value::Null),
                Err(e) => {
                    state.health.failure(&channel, "error", &e.to_string());
                    Value::Null
                }
            };
            match provider::task_id(&answer) {
                Some(upstream_id) => {
                    let upstream_model = channel.upstream_model(&model.name).to_owned();
                    let next = crate::clock::now_ms();
                    let stored = async {
                        videos::set_upstream(
                            &state.db,
                            &task.id,
                            channel.id,
                            &upstream_model,
                            &upstream_id,
                        )
                        .await?;
                        videos::record_progress(&state.db, &task.id, "queued", 0, next).await?;
                        crate::db::jobs::reschedule(&state.db, &poll_job_id(&task.id), next).await
                    };
                    if let Err(e) = stored.await {
                        // The lease runs out and the poller refunds it (no provider id stored).
                        return Err(OpenAiError::internal(&task.id, e));
                    }
                    state.jobs.wake.notify_one();
                    task.channel_id = Some(channel.id);
                    task.upstream_model = Some(upstream_model);
                    task.upstream_task_id = Some(upstream_id);
                    return Ok(task);
                }
                None => (
                    Some(channel),
                    OpenAiError::Upstream {
                        message: "the video provider's answer has no task id".into(),
                    },
                ),
            }
        }
        Attempt::Rejected {
            channel,
            status,
            body,
            ..
        } => {
            let detail = String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>();
            (
                Some(channel),
                OpenAiError::Upstream {
                    message: format!("the video provider refused the task ({status}): {detail}"),
                },
            )
        }
        Attempt::Failed { channel, error, .. } => (channel, error),
        // Detached: the loop never reports the client gone.
        Attempt::ClientGone { channel } => (
            Some(channel),
            OpenAiError::Upstream {
                message: "the submission was interrupted".into(),
            },
        ),
    };
    let message = error.to_string();
    settle_task(state, &task, channel.as_deref(), TaskEnd::Failed(&message)).await;
    Err(error)
}

/// How a task ended.
enum TaskEnd<'a> {
    Completed {
        seconds: i64,
        url: Option<&'a str>,
        /// A kept task's stored file.
        file: Option<&'a str>,
    },
    Failed(&'a str),
}

/// Settles `task` (exactly once, whoever calls); gives the memory book its balance back.
async fn settle_task(
    state: &AppState,
    task: &VideoTask,
    channel: Option<&Channel>,
    ended: TaskEnd<'_>,
) {
    let (status, billed, url, file, error) = match ended {
        TaskEnd::Completed { seconds, url, file } => {
            ("completed", seconds.clamp(0, task.seconds), url, file, None)
        }
        TaskEnd::Failed(e) => ("failed", 0, None, None, Some(e)),
    };
    let record_ended = if status == "completed" {
        Ended {
            source: UsageSource::Provider,
            cost: per_unit(task.second_micros, billed, task.request_micros),
            units: billed,
            ..Ended::nothing(UsageStatus::Ok, 200, None)
        }
    } else {
        Ended::nothing(UsageStatus::Failed, 502, error.map(str::to_owned))
    };
    let channel_id = channel.map(|c| c.id).or(task.channel_id);
    let record_ended = Ended {
        channel: channel_id.map(|id| (id, task.upstream_model.clone().unwrap_or_default())),
        ..record_ended
    };
    let latency = crate::clock::now_ms() - task.created_at_ms;
    let mut record = payer_of(task).record(Micros(task.held_micros), latency, record_ended);
    // A task that never reached a provider names no upstream model.
    record.upstream_model = task.upstream_model.clone();
    let title: String = task.prompt.chars().take(100).collect();
    let kept = match (file, task.keep_as.as_deref()) {
        (Some(file_id), Some(paid_by)) => Some(Kept {
            file_id,
            creation: NewCreation {
                user_id: task.user_id,
                kind: "video",
                tool_type: None,
                title: &title,
                content: &task.prompt,
                model: Some(&task.model),
                request_id: Some(&task.id),
                credits_micros: 0,
                upstream_cost_micros: 0,
                paid_by,
                file_id: None,
            },
        }),
        _ => None,
    };
    let outcome = Outcome {
        status,
        billed_seconds: billed,
        result_url: url,
        error,
        kept,
    };
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=5 {
        match videos::settle(&state.db, task, &outcome, &record).await {
            Ok(Some(cost)) => {
                state
                    .book
                    .give(task.user_id, Micros(task.held_micros - cost));
                metrics::gauge!(m::VIDEO_TASKS_OPEN).decrement(1.0);
                metrics::counter!(m::VIDEO_TASKS_SETTLED, "outcome" => status).increment(1);
                if cost > 0 {
                    metrics::counter!(m::CREDITS_CHARGED, "model" => task.model.clone())
                        .increment(cost as u64);
                }
                if task.keep_as.is_some() {
                    let outcome = if status == "completed" {
                        "ok"
                    } else {
                        "failed"
                    };
                    metrics::counter!(m::ADDON_GENERATIONS, "tool" => "video", "outcome" => outcome)
                        .increment(1);
                    if cost > 0 {
                        metrics::counter!(m::ADDON_CHARGED, "addon" => "video")
                            .increment(cost as u64);
                    }
                }
                return;
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(task = %task.id, error = %e, attempt, "video settlement failed, retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    // Left unsettled: its lease runs out and a poller settles it.
    metrics::counter!(m::SETTLEMENT_FAILURES).increment(1);
}

/// Follows one claimed task a step: settles it if it ended, else records its progress.
async fn poll_one(state: &AppState, task: VideoTask) {
    let now = crate::clock::now_ms();
    let cfg = &state.config.video;
    if now >= task.expires_at_ms {
        let msg = format!(
            "the task did not finish within {} s",
            cfg.task_timeout_ms / 1000
        );
        return settle_task(state, &task, None, TaskEnd::Failed(&msg)).await;
    }
    let (Some(upstream_id), Some(channel_id)) = (task.upstream_task_id.clone(), task.channel_id)
    else {
        let msg = "the submission was interrupted before a provider took the task";
        return settle_task(state, &task, None, TaskEnd::Failed(msg)).await;
    };
    let channel = match crate::db::catalog::get_channel(&state.db, &state.secrets, channel_id).await
    {
        Ok(Some(row)) => Channel::from_row(&row),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(task = %task.id, error = %e, "video poll: channel lookup failed");
            let _ = videos::record_progress(
                &state.db,
                &task.id,
                &task.status,
                task.progress,
                now + cfg.poll_interval_ms as i64,
            )
            .await;
            return;
        }
    };
    let Some(channel) = channel else {
        let msg = "the channel that took the task no longer exists";
        return settle_task(state, &task, None, TaskEnd::Failed(msg)).await;
    };
    let timeout = Duration::from_millis(state.config.upstream.first_byte_timeout_ms.min(30_000));
    let polled = poll_state(state, &channel, &upstream_id, timeout).await;
    let next = now + cfg.poll_interval_ms as i64;
    let (status, progress) = match polled {
        Ok(TaskState::Succeeded { url, seconds }) => {
            let seconds = seconds.unwrap_or(task.seconds);
            let file = match &task.keep_as {
                None => None,
                Some(_) => match keep_file(state, &task, &channel, url.as_deref()).await {
                    Ok(file) => Some(file),
                    Err(e) => {
                        // Not charged until it is kept: tried again at the next poll, refunded
                        // if that never works before the task expires.
                        tracing::warn!(task = %task.id, error = %e, "storing a finished video failed; will retry");
                        let _ =
                            videos::record_progress(&state.db, &task.id, "in_progress", 99, next)
                                .await;
                        return;
                    }
                },
            };
            let ended = TaskEnd::Completed {
                seconds,
                url: url.as_deref(),
                file: file.as_deref(),
            };
            return settle_task(state, &task, Some(&channel), ended).await;
        }
        Ok(TaskState::Failed { error }) => {
            return settle_task(state, &task, Some(&channel), TaskEnd::Failed(&error)).await;
        }
        Ok(TaskState::Queued) => ("queued", 0),
        Ok(TaskState::Running { progress }) => ("in_progress", progress),
        Err(e) => {
            tracing::warn!(task = %task.id, channel = %channel.name, error = %e, "video poll failed; will retry");
            (task.status.as_str(), task.progress)
        }
    };
    if let Err(e) = videos::record_progress(&state.db, &task.id, status, progress, next).await {
        tracing::warn!(task = %task.id, error = %e, "video progress write failed");
    }
}

/// Asks the provider how a task is doing. `Err` is a failure to learn (retried later), not a
/// failed task.
async fn poll_state(
    state: &AppState,
    channel: &Channel,
    upstream_id: &str,
    timeout: Duration,
) -> Result<TaskState, String> {
    let call = Call::PollVideo { task: upstream_id };
    let mut response = upstream::call(&state.http, channel, call, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let limits = BodyLimits {
        chunk_timeout: timeout,
        max_bytes: state.config.upstream.max_response_bytes,
        deadline: tokio::time::Instant::now() + timeout,
    };
    let body = read_whole(&mut response.body, limits)
        .await
        .map_err(|e| e.to_string())?;
    provider::read_state(channel, upstream_id, response.status, &body)
}

/// One step of a task's poll job: follows the task a step; the job ends when the task is
/// settled, else its next step is due when the task's next poll is.
pub async fn poll_job(state: &AppState, job: &crate::db::jobs::Job) -> crate::jobs::Done {
    use crate::jobs::Done;
    let later = crate::clock::now_ms() + state.config.video.poll_interval_ms as i64;
    let task = match videos::get(&state.db, &job.subject).await {
        Ok(Some(t)) => t,
        Ok(None) => return Done::Failed(format!("video task {} does not exist", job.subject)),
        Err(e) => {
            tracing::warn!(task = %job.subject, error = %e, "video poll: reading the task failed");
            return Done::Again { at_ms: later };
        }
    };
    if task.settled == 0 {
        poll_one(state, task).await;
    }
    match videos::get(&state.db, &job.subject).await {
        Ok(Some(t)) if t.settled != 0 => Done::Succeeded(t.result_url),
        Ok(Some(t)) => Done::Again {
            at_ms: t.next_poll_at_ms,
        },
        _ => Done::Again { at_ms: later },
    }
}

/// A caller's own task (others' are "not found").
pub async fn own_task(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<VideoTask, OpenAiError> {
    let not_found = || OpenAiError::NotFound {
        what: format!("video {id}"),
    };
    let task = videos::get(&state.db, id)
        .await
        .map_err(|e| OpenAiError::internal(id, e))?
        .ok_or_else(not_found)?;
    if caller.user_id != Some(task.user_id) {
        return Err(not_found());
    }
    Ok(task)
}

/// Fetches a finished kept task's file from its provider and stores it; the file's id.
async fn keep_file(
    state: &AppState,
    task: &VideoTask,
    channel: &Channel,
    url: Option<&str>,
) -> Result<String, String> {
    let mut response = open(state, Some(channel), url)
        .await
        .map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(60);
    let limits = BodyLimits {
        chunk_timeout: timeout,
        max_bytes: crate::files::MAX_FILE_BYTES,
        deadline: tokio::time::Instant::now() + 5 * timeout,
    };
    let data = read_whole(&mut response.body, limits)
        .await
        .map_err(|e| e.to_string())?;
    if data.is_empty() {
        return Err("the provider's video file is empty".into());
    }
    let content_type = response
        .content_type
        .filter(|t| t.starts_with("video/"))
        .unwrap_or_else(|| "video/mp4".to_owned());
    crate::files::store(&state.db, task.user_id, "video", &content_type, &data)
        .await
        .map_err(|e| e.to_string())
}

/// Opens a completed task's file: the response to stream to the client (the stored file of a
/// kept task, else the provider's).
pub async fn content(state: &AppState, task: &VideoTask) -> Result<UpstreamResponse, OpenAiError> {
    if task.status != "completed" {
        return Err(OpenAiError::InvalidRequest {
            message: format!(
                "video {} is {}; its content is available once it is completed",
                task.id, task.status
            ),
            param: None,
        });
    }
    if let Some(file_id) = &task.file_id {
        let file = crate::db::files::get(&state.db, file_id)
            .await
            .map_err(|e| OpenAiError::internal(&task.id, e))?
            .ok_or_else(|| OpenAiError::NotFound {
                what: format!(
                    "the file of video {} (it was deleted with its creation)",
                    task.id
                ),
            })?;
        return Ok(UpstreamResponse {
            status: 200,
            content_type: Some(file.content_type),
            body: futures_util::stream::iter([Ok(bytes::Bytes::from(file.data))]).boxed(),
        });
    }
    let channel = match task.channel_id {
        Some(id) => crate::db::catalog::get_channel(&state.db, &state.secrets, id)
            .await
            .ok()
            .flatten()
            .and_then(|r| Channel::from_row(&r)),
        None => None,
    };
    open(state, channel.as_ref(), task.result_url.as_deref()).await
}

/// Starts downloading a finished task's file at `url` (as its provider reported it) through
/// `channel` (the one that made it, when it still exists).
async fn open(
    state: &AppState,
    channel: Option<&Channel>,
    url: Option<&str>,
) -> Result<UpstreamResponse, OpenAiError> {
    let timeout = Duration::from_millis(state.config.upstream.first_byte_timeout_ms);
    let opened = match (channel, url) {
        (Some(channel), url) => {
            upstream::call(&state.http, channel, Call::VideoFile { url }, timeout).await
        }
        // The channel is gone: a file elsewhere (a CDN link) is fetched without it.
        (None, Some(url)) => provider::fetch(&state.http, None, url, timeout).await,
        (None, None) => Ok(provider::no_file()),
    };
    let response = opened.map_err(|e| OpenAiError::Upstream {
        message: e.to_string(),
    })?;
    match response.status {
        200..=299 => Ok(response),
        404 if url.is_none() => Err(OpenAiError::Upstream {
            message: "the provider reported no file for this video".into(),
        }),
        status => Err(OpenAiError::Upstream {
            message: format!("the video file answered {status}"),
        }),
    }
}

/// The progress to report: 100 once the task has ended (completed, or failed: its error says
/// why), the provider's last report before.
fn reported_progress(t: &VideoTask) -> i64 {
    if t.settled != 0 || matches!(t.status.as_str(), "completed" | "failed") {
        100
    } else {
        t.progress
    }
}

/// The seconds to report: what was delivered (and billed) once completed, what was asked for
/// before.
fn reported_seconds(t: &VideoTask) -> i64 {
    match (t.status.as_str(), t.billed_seconds) {
        ("completed", Some(billed)) => billed,
        _ => t.seconds,
    }
}

/// OpenAI's video object.
pub fn openai_json(t: &VideoTask) -> Value {
    let error = t
        .error
        .as_ref()
        .map(|e| json!({"code": "video_generation_failed", "message": e}));
    json!({
        "id": t.id,
        "object": "video",
        "created_at": t.created_at_ms / 1000,
        "completed_at": t.completed_at_ms.map(|ms| ms / 1000),
        "expires_at": null,
        "status": t.status,
        "model": t.model,
        "progress": reported_progress(t),
        "prompt": t.prompt,
        "seconds": reported_seconds(t).to_string(),
        "size": t.size.clone().unwrap_or_else(|| "720x1280".into()),
        "error": error,
        "remixed_from_video_id": null,
    })
}

/// The aggregator's task shape (`/api/v1/videos/generations`). `api_root` is the Tollgate root the
/// client called (`https://host/api/v1`): the file is fetched from its content route with the
/// client's own key, never from the provider's address.
pub fn aggregator_json(t: &VideoTask, api_root: &str) -> Value {
    let content_url = format!("{api_root}/videos/{}/content", t.id);
    let done = t.status == "completed";
    json!({
        "id": t.id,
        "task_id": t.id,
        "object": "video.generation",
        "status": t.status,
        "progress": reported_progress(t),
        "model": t.model,
        "prompt": t.prompt,
        "duration": reported_seconds(t),
        "aspect_ratio": t.aspect_ratio,
        "video_url": if done { json!(content_url) } else { Value::Null },
        "content_url": if done { json!(content_url) } else { Value::Null },
        "reserved": Micros(t.held_micros),
        "cost": t.cost_micros.map(Micros),
        "billed_seconds": t.billed_seconds,
        "error": t.error,
        "created_at": t.created_at_ms / 1000,
        "completed_at": t.completed_at_ms.map(|ms| ms / 1000),
    })
}

/// The platform's task shape (seed 001, `GET /api/v1/video/{task_id}/status`): `processing`
/// until it is settled (a kept task: until its file is stored), then `completed` with
/// `video_url` (a signed Tollgate URL of the stored file, made by the route) or `failed`.
pub fn platform_json(t: &VideoTask, video_url: Option<String>) -> Value {
    let status = match (t.settled != 0, t.status.as_str()) {
        (true, "completed") => "completed",
        (true, _) => "failed",
        (false, _) => "processing",
    };
    let charged = t.cost_micros.unwrap_or(0);
    let reserved = if t.settled != 0 { 0 } else { t.held_micros };
    json!({
        "task_id": t.id,
        "status": status,
        "video_url": video_url,
        "credits_used": Micros(charged),
        "credits_used_micros": charged,
        "credits_reserved": Micros(reserved),
        "progress": reported_progress(t),
        "duration": reported_seconds(t),
        "model": t.model,
        "creation_id": t.creation_id,
        "error": t.error,
        "created_at": t.created_at_ms / 1000,
        "completed_at": t.completed_at_ms.map(|ms| ms / 1000),
    })
}

/// One page of a caller's videos, newest first (`order` "asc": oldest first), after the video
/// `after` (a cursor from an earlier page): OpenAI's list shape.
pub async fn list_own(
    state: &AppState,
    caller: &Caller,
    after: Option<&str>,
    limit: i64,
    ascending: bool,
) -> Result<Value, OpenAiError> {
    let Some(user_id) = caller.user_id else {
        return Err(OpenAiError::NoAccount);
    };
    let internal = |e: sqlx::Error| OpenAiError::internal("list videos", e);
    let cursor = match after {
        Some(id) => match videos::get(&state.db, id).await.map_err(internal)? {
            Some(t) if t.user_id == user_id => Some((t.created_at_ms, t.id)),
            _ => {
                return Err(OpenAiError::InvalidRequest {
                    message: format!("'after' names no video of yours: {id}"),
                    param: Some("after"),
                });
            }
        },
        None => None,
    };
    let mut page = videos::list_for_user(&state.db, user_id, cursor, limit + 1, ascending)
        .await
        .map_err(internal)?;
    let has_more = page.len() as i64 > limit;
    page.truncate(limit.max(0) as usize);
    let data: Vec<Value> = page.iter().map(openai_json).collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "first_id": page.first().map(|t| t.id.clone()),
        "last_id": page.last().map(|t| t.id.clone()),
        "has_more": has_more,
    }))
}
