//! The token-metered endpoints through the gateway (`POST chat/completions`, legacy
//! `completions`, `embeddings`): validate, route, reserve the most the request can cost, call
//! upstream channels in order, forward the answer (SSE events as they arrive), and settle from
//! the provider's usage or a local count.
//!
//! Everything after the reservation runs in one task on the [`TaskTracker`](tokio_util::task::TaskTracker):
//! the handler only waits for the first reply. A client that hangs up drops its receiver; the
//! task sees that, cancels the upstream call (by dropping it) and still settles. Settlement is
//! written before the last byte (or the full JSON body) goes out, so a client that has its
//! answer also sees its balance changed.

use super::Reply;
use super::auth::Caller;
use super::catalog::{Model, RouteError};
use super::health::Judgement;
use super::request::ChatRequest;
use super::sse::{ChoiceText, Meter, Verdict, rewrite_model};
use crate::provider::sse::{EventSplitter, clean_event};
use super::throttle::{self, RateHeaders};
use crate::tokens::Budget;
use crate::billing::book::Held;
use crate::billing::settle::settle;
use crate::billing::{Micros, TokenUsage, UsageSource, UsageStatus};
use crate::db::billing::{NewReservation, ReserveError, UsageRecord};
use crate::error::OpenAiError;
use crate::limits::Permit;
use crate::metrics as m;
use crate::provider::{
    BodyError, BodyLimits, Channel, Endpoint, Provider, UpstreamError, UpstreamResponse, anthropic, demo, openai,
    read_whole,
};
use crate::state::AppState;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// Channels tried for one request at most.
const MAX_ATTEMPTS: usize = 3;
/// Events buffered between the upstream reader and a slow client.
const STREAM_BUFFER: usize = 64;

/// What one request carries from the handler into its task.
struct Ctx {
    state: AppState,
    request_id: Arc<str>,
    user_id: i64,
    key_id: Option<i64>,
    model: Arc<Model>,
    req: ChatRequest,
    body: Bytes,
    held: Held,
    reserved: Micros,
    /// Output tokens reserved (every choice): a stream is cut when its output passes this.
    allowance: i64,
    started: Instant,
    /// Concurrency slots and the token estimate; dropped (slots returned) when the task ends.
    permit: Option<Permit>,
}

/// How a request ended, for its usage record.
struct Ending {
    status: UsageStatus,
    http_status: u16,
    channel: Option<Arc<Channel>>,
    /// Usage and its source; `None` means nothing was generated.
    usage: Option<(TokenUsage, UsageSource)>,
    ttft_ms: Option<i64>,
    error: Option<String>,
}

impl Ending {
    fn failed(
        status: UsageStatus,
        http_status: u16,
        channel: Option<Arc<Channel>>,
        error: String,
    ) -> Ending {
        Ending {
            status,
            http_status,
            channel,
            usage: None,
            ttft_ms: None,
            error: Some(error),
        }
    }
}

/// Maps a routing failure to the client error.
fn route_error(e: RouteError, model: &str) -> OpenAiError {
    let model = model.to_owned();
    match e {
        RouteError::Unknown => OpenAiError::ModelNotFound { model },
        RouteError::NotPriced => OpenAiError::ModelNotPriced { model },
        RouteError::NoChannel => OpenAiError::NoChannel { model },
    }
}

/// Who pays for a request to `model_name` and where it goes: the caller's account, checked
/// against the key's allowed models, and the routable model.
pub fn route(
    state: &AppState,
    caller: &Caller,
    model_name: &str,
) -> Result<(i64, Arc<Model>), OpenAiError> {
    let user_id = caller.user_id.ok_or(OpenAiError::NoAccount)?;
    if !caller.may_use(model_name) {
        return Err(OpenAiError::ModelNotAllowed {
            model: model_name.to_owned(),
        });
    }
    let model = state
        .catalog
        .model(model_name)
        .map_err(|e| route_error(e, model_name))?;
    Ok((user_id, model))
}

/// A request that parsed and routed: what it is, where it goes, the most it can cost.
struct Prepared {
    user_id: i64,
    req: ChatRequest,
    model: Arc<Model>,
    amount: Micros,
    /// Output tokens reserved, every choice together.
    allowance: i64,
    /// Tokens it may use (prompt bound + the most the answer may take), for token limits.
    tokens: u64,
}

/// Parses a body for `endpoint`; a very large body is parsed on the CPU pool, not on a worker.
async fn parse(
    state: &AppState,
    endpoint: Endpoint,
    body: &Bytes,
) -> Result<ChatRequest, OpenAiError> {
    let parsed = if body.len() >= super::cpu::LARGE_BODY_BYTES {
        let body = body.clone();
        state
            .cpu
            .run(move || ChatRequest::parse_for(endpoint, &body))
            .await
            .unwrap_or_else(|| {
                Err(super::request::InvalidRequest {
                    message: "request body could not be read".into(),
                    param: None,
                })
            })
    } else {
        ChatRequest::parse_for(endpoint, body)
    };
    parsed.map_err(|e| OpenAiError::InvalidRequest {
        message: e.message,
        param: e.param,
    })
}

fn prepare(state: &AppState, caller: &Caller, req: ChatRequest) -> Result<Prepared, OpenAiError> {
    let (user_id, model) = route(state, caller, &req.model)?;
    let per_choice = req.output_per_choice(
        &model.defaults,
        model.max_output_tokens,
        state.config.billing.default_max_output_tokens,
    );
    let output = per_choice.saturating_mul(req.n);
    let amount = model
        .price
        .max_cost(req.prompt_tokens_bound, output, model.cache_writes);
    let tokens = req.prompt_tokens_bound.saturating_add(output).max(0) as u64;
    Ok(Prepared {
        user_id,
        req,
        model,
        amount,
        allowance: output,
        tokens,
    })
}

/// Runs one request to a token-metered `endpoint` for `caller`: the answer, and the rate-limit
/// headers it carries (also on errors).
pub async fn complete(
    state: &AppState,
    caller: &Caller,
    request_id: Arc<str>,
    endpoint: Endpoint,
    body: Bytes,
) -> (Result<Reply, OpenAiError>, RateHeaders) {
    let started = Instant::now();
    let prepared = match parse(state, endpoint, &body).await {
        Ok(req) => prepare(state, caller, req),
        Err(e) => Err(e),
    };
    // A request that cannot run still counts as a request (not as tokens, and takes no slot).
    let (model, tokens, slot) = match &prepared {
        Ok(p) => (Some(&*p.model), p.tokens, true),
        Err(_) => (None, 0, false),
    };
    let admitted = match throttle::admit(state, caller, &request_id, model, tokens, slot).await {
        Ok(a) => a,
        Err(refused) => return (Err(refused.error), refused.headers),
    };
    let headers = admitted.headers;
    let result = match prepared {
        Ok(p) => run_prepared(state, caller, request_id, body, p, admitted.permit, started).await,
        Err(e) => Err(e),
    };
    (result, headers)
}

/// Reserves the most `p` can cost and starts its task; waits for the first reply.
async fn run_prepared(
    state: &AppState,
    caller: &Caller,
    request_id: Arc<str>,
    body: Bytes,
    p: Prepared,
    permit: Option<Permit>,
    started: Instant,
) -> Result<Reply, OpenAiError> {
    let Prepared {
        user_id,
        req,
        model,
        amount,
        allowance,
        ..
    } = p;
    let payer = Payer {
        caller,
        request_id: &request_id,
        user_id,
        model: &model,
        endpoint: req.endpoint.path(),
        stream: req.stream,
        started,
    };
    let held = match reserve(state, &payer, amount).await {
        Ok(held) => held,
        Err(e) => {
            // Nothing will be generated: give the token estimate back.
            if let Some(p) = &permit {
                p.settle_tokens(0).await;
            }
            return Err(e);
        }
    };
    let ctx = Ctx {
        state: state.clone(),
        request_id: Arc::clone(&request_id),
        user_id,
        key_id: caller.key_id,
        model,
        req,
        body,
        held,
        reserved: amount,
        allowance,
        started,
        permit,
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    // The task outlives the handler: it carries the request's span with it.
    state
        .tasks
        .spawn(run(ctx, reply_tx).instrument(tracing::Span::current()));
    reply_rx.await.unwrap_or_else(|_| {
        Err(OpenAiError::internal(
            &request_id,
            "request task ended without a reply",
        ))
    })
}

/// Reserves `amount` of the payer's balance for one request, with the configured expiry; a
/// refusal becomes the client's error (see [`refused`]).
pub async fn reserve(
    state: &AppState,
    payer: &Payer<'_>,
    amount: Micros,
) -> Result<Held, OpenAiError> {
    let expires_at_ms = crate::clock::now_ms() + state.config.reservation_ttl().as_millis() as i64;
    let reservation = NewReservation {
        request_id: payer.request_id,
        user_id: payer.user_id,
        key_id: payer.caller.key_id,
        model: &payer.model.name,
        amount,
        price_version: payer.model.price.version,
        expires_at_ms,
    };
    let held = state
        .book
        .reserve(&state.db, &reservation)
        .await
        .map_err(|e| refused(state, payer, e))?;
    metrics::gauge!(m::RESERVATIONS_HELD).increment(1.0);
    Ok(held)
}

/// Who pays for a request and what it is, as its reservation and usage record name it.
pub struct Payer<'a> {
    pub caller: &'a Caller,
    pub request_id: &'a str,
    pub user_id: i64,
    pub model: &'a Model,
    /// The usage record's `endpoint` (`chat/completions`, `images/generations`, …).
    pub endpoint: &'static str,
    pub stream: bool,
    pub started: Instant,
}

/// The client error for a reservation that was refused; a 402 is also recorded as usage
/// (nothing charged), on every endpoint.
pub fn refused(state: &AppState, payer: &Payer<'_>, e: ReserveError) -> OpenAiError {
    match e {
        ReserveError::Insufficient { needed, available } => {
            metrics::counter!(m::RESERVATIONS_REFUSED).increment(1);
            let record = UsageRecord {
                request_id: payer.request_id.to_owned(),
                user_id: payer.user_id,
                key_id: payer.caller.key_id,
                model: payer.model.name.clone(),
                upstream_model: None,
                channel_id: None,
                endpoint: payer.endpoint,
                stream: payer.stream,
                status: UsageStatus::InsufficientBalance,
                http_status: 402,
                usage: TokenUsage::default(),
                usage_source: UsageSource::None,
                reserved: Micros::ZERO,
                cost: Micros::ZERO,
                price_version: Some(payer.model.price.version),
                latency_ms: payer.started.elapsed().as_millis() as i64,
                ttft_ms: None,
                error: None,
                units: 0,
            };
            let state2 = state.clone();
            state.tasks.spawn(
                async move { settle(&state2.book, &state2.db, None, &record).await }
                    .instrument(tracing::Span::current()),
            );
            OpenAiError::InsufficientBalance { needed, available }
        }
        ReserveError::UserInactive => OpenAiError::Auth(super::auth::AuthError::UserDisabled),
        ReserveError::Db(e) => OpenAiError::internal(payer.request_id, e),
    }
}

type ReplyTx = oneshot::Sender<Result<Reply, OpenAiError>>;

/// Sends a request to one channel; `max_tokens` is the output cap for providers that need one,
/// `limits` bound what a provider reads whole (Anthropic's answer, to translate it).
pub async fn call_channel(
    state: &AppState,
    channel: &Channel,
    endpoint: Endpoint,
    body: Vec<u8>,
    max_tokens: i64,
    limits: BodyLimits,
) -> Result<UpstreamResponse, UpstreamError> {
    let first_byte = Duration::from_millis(state.config.upstream.first_byte_timeout_ms);
    match channel.provider {
        Provider::OpenAi => {
            openai::post(&state.http, channel, endpoint.path(), body, first_byte).await
        }
        Provider::Anthropic if endpoint == Endpoint::Chat => {
            anthropic::chat(&state.http, channel, body, max_tokens, first_byte, limits).await
        }
        Provider::Anthropic | Provider::Video => Ok(UpstreamResponse::unsupported(
            channel.provider,
            endpoint.path(),
        )),
        Provider::Demo => demo::answer(endpoint, &body, crate::clock::now_ms() / 1000),
    }
}

/// Reads a whole (non-streaming) upstream body within the request's [`BodyLimits`]; `None`
/// when the client hung up first.
async fn read_body(
    body: &mut BoxStream<'static, Result<Bytes, UpstreamError>>,
    limits: BodyLimits,
    reply_tx: &mut ReplyTx,
) -> Option<Result<Bytes, BodyError>> {
    tokio::select! {
        read = read_whole(body, limits) => Some(read),
        _ = reply_tx.closed() => None,
    }
}

/// The request's task: try channels, answer, settle.
async fn run(ctx: Ctx, mut reply_tx: ReplyTx) {
    let state = ctx.state.clone();
    // The answer to give if no channel succeeds, and how to record it.
    let mut last: Option<(Result<Reply, OpenAiError>, Ending)> = None;
    let channels = ctx.model.channel_order();
    let mut overhead_recorded = false;
    let max_tokens = ctx.req.output_per_choice(
        &ctx.model.defaults,
        ctx.model.max_output_tokens,
        state.config.billing.default_max_output_tokens,
    );
    let limits = BodyLimits::for_request(&state.config.upstream, ctx.started);
    let health = &state.health;
    for channel in channels
        .into_iter()
        .filter(|c| health.allow(c))
        .take(MAX_ATTEMPTS)
    {
        let upstream_model = channel.upstream_model(&ctx.model.name).to_owned();
        let body = ctx
            .req
            .upstream_body(&ctx.body, &upstream_model, &ctx.model.defaults);
        if !overhead_recorded {
            metrics::histogram!(m::GATEWAY_OVERHEAD).record(ctx.started.elapsed().as_secs_f64());
            overhead_recorded = true;
        }
        let sent = Instant::now();
        let result = tokio::select! {
            r = call_channel(&state, &channel, ctx.req.endpoint, body, max_tokens, limits) => r,
            _ = reply_tx.closed() => {
                health.release_probe(&channel);
                let ending = Ending::failed(UsageStatus::ClientDisconnected, 499, Some(channel), "client closed the connection before the upstream answered".into());
                finish(&ctx, &upstream_model, ending).await;
                return;
            }
        };
        let outcome = match &result {
            Ok(r) => m::status_class(r.status),
            Err(UpstreamError::Timeout(_)) => "timeout",
            Err(_) => "error",
        };
        metrics::histogram!(m::UPSTREAM_DURATION, "model" => ctx.model.name.clone(), "outcome" => outcome)
            .record(sent.elapsed().as_secs_f64());
        let mut response = match result {
            Err(UpstreamError::Timeout(ms)) => {
                let msg = format!("no response from upstream within {ms} ms");
                health.failure(&channel, "timeout", &msg);
                // Not retried: the upstream may still be generating (and charging) for it.
                let ending = Ending::failed(
                    UsageStatus::UpstreamTimeout,
                    504,
                    Some(channel),
                    msg.clone(),
                );
                last = Some((Err(OpenAiError::UpstreamTimeout { message: msg }), ending));
                break;
            }
            Err(e) => {
                // Nothing reached the client yet: try the next channel.
                let label = e.outcome();
                let msg = match e {
                    UpstreamError::Connect(msg) => msg,
                    other => other.to_string(),
                };
                tracing::warn!(channel = %channel.name, error = %msg, "upstream call failed");
                health.failure(&channel, label, &msg);
                let ending = Ending::failed(
                    UsageStatus::UpstreamError,
                    502,
                    Some(Arc::clone(&channel)),
                    msg.clone(),
                );
                last = Some((Err(OpenAiError::Upstream { message: msg }), ending));
                continue;
            }
            Ok(r) => r,
        };
        if !(200..300).contains(&response.status) {
            let status = response.status;
            let limits = BodyLimits::for_request(&state.config.upstream, ctx.started);
            let text = match read_body(&mut response.body, limits, &mut reply_tx).await {
                Some(Ok(text)) => text,
                _ => Bytes::new(),
            };
            let snippet = super::health::snippet(&text);
            tracing::warn!(channel = %channel.name, status, body = %snippet, "upstream returned an error");
            let verdict = super::health::judge(&state, &channel, status, &snippet).await;
            let error = format!("upstream status {status}: {snippet}");
            let channel = Some(Arc::clone(&channel));
            let (answer, ending) = match verdict {
                Judgement::CredentialRefused => {
                    // The channel's credential is refused: the client's request is not at fault.
                    let message = "upstream refused the channel's credential".to_owned();
                    let ending = Ending::failed(UsageStatus::UpstreamError, 502, channel, error);
                    (Err(OpenAiError::Upstream { message }), ending)
                }
                _ if status >= 500 => {
                    let message = format!("upstream returned status {status}");
                    let ending = Ending::failed(UsageStatus::UpstreamError, 502, channel, error);
                    (Err(OpenAiError::Upstream { message }), ending)
                }
                _ => {
                    // The upstream's own 4xx (bad request, rate limit, …) reaches the client as it is.
                    let reply = Reply::Full {
                        status,
                        content_type: response.content_type.take(),
                        body: text,
                    };
                    let ending =
                        Ending::failed(UsageStatus::UpstreamRejected, status, channel, error);
                    (Ok(reply), ending)
                }
            };
            last = Some((answer, ending));
            if verdict == Judgement::Reject {
                break;
            }
            continue;
        }
        super::health::judge(&state, &channel, response.status, "").await;
        if ctx.req.stream && response.is_event_stream() {
            stream(ctx, channel, upstream_model, response, reply_tx).await;
        } else {
            whole(ctx, channel, upstream_model, response, reply_tx).await;
        }
        return;
    }
    let (answer, ending) = last.unwrap_or_else(|| {
        let msg = format!(
            "every channel serving {} is failing (circuit breaker open); try again shortly",
            ctx.model.name
        );
        (
            Err(OpenAiError::Upstream {
                message: msg.clone(),
            }),
            Ending::failed(UsageStatus::UpstreamError, 502, None, msg),
        )
    });
    let upstream_model = ending
        .channel
        .as_ref()
        .map(|c| c.upstream_model(&ctx.model.name).to_owned())
        .unwrap_or_default();
    finish(&ctx, &upstream_model, ending).await;
    let _ = reply_tx.send(answer);
}

/// Usage for a response without a usage block: the prompt and the generated text, counted
/// locally on the CPU pool (at most `billing.max_count_bytes` read exactly).
async fn estimated(ctx: &Ctx, choices: Vec<ChoiceText>) -> (TokenUsage, UsageSource) {
    let state = &ctx.state;
    let cap = state.config.billing.max_count_bytes;
    let body = ctx.body.clone();
    let req = ctx.req.clone();
    let text_bytes: usize = choices.iter().map(ChoiceText::len).sum();
    let counted = state
        .cpu
        .run_sized(text_bytes + body.len(), move || {
            let mut budget = Budget::new(cap);
            let (completion, reasoning) = super::sse::count_generated(&choices, &mut budget);
            let prompt = req.count_prompt(&body, &mut budget);
            (prompt, completion, reasoning)
        })
        .await;
    // A count that failed falls back to what was reserved: the prompt's bound, nothing more.
    let (prompt_tokens, completion_tokens, reasoning_tokens) =
        counted.unwrap_or((ctx.req.prompt_tokens_bound, 0, 0));
    let usage = TokenUsage {
        prompt_tokens,
        completion_tokens,
        reasoning_tokens,
        ..TokenUsage::default()
    };
    (usage, UsageSource::Estimated)
}

/// A non-streaming answer: read it whole, settle, then reply.
async fn whole(
    ctx: Ctx,
    channel: Arc<Channel>,
    upstream_model: String,
    mut response: UpstreamResponse,
    mut reply_tx: ReplyTx,
) {
    let limits = BodyLimits::for_request(&ctx.state.config.upstream, ctx.started);
    let body = match read_body(&mut response.body, limits, &mut reply_tx).await {
        Some(Ok(b)) => b,
        read => {
            let (error, ending) = match read {
                None | Some(Ok(_)) => {
                    let end = Ending::failed(
                        UsageStatus::ClientDisconnected,
                        499,
                        Some(channel),
                        "client closed the connection".into(),
                    );
                    (None, end)
                }
                Some(Err(e @ (BodyError::Stalled(_) | BodyError::Deadline))) => {
                    let msg = e.to_string();
                    (
                        Some(OpenAiError::UpstreamTimeout {
                            message: msg.clone(),
                        }),
                        Ending::failed(UsageStatus::UpstreamTimeout, 504, Some(channel), msg),
                    )
                }
                Some(Err(e @ BodyError::TooLarge(_))) => {
                    let msg = e.to_string();
                    (
                        Some(OpenAiError::Upstream {
                            message: msg.clone(),
                        }),
                        Ending::failed(UsageStatus::UpstreamError, 502, Some(channel), msg),
                    )
                }
                Some(Err(BodyError::Broken(msg))) => (
                    Some(OpenAiError::Upstream {
                        message: msg.clone(),
                    }),
                    Ending::failed(UsageStatus::UpstreamError, 502, Some(channel), msg),
                ),
            };
            finish(&ctx, &upstream_model, ending).await;
            if let Some(error) = error {
                let _ = reply_tx.send(Err(error));
            }
            return;
        }
    };
    let mut meter = Meter::default();
    if !meter.observe_body(&body) {
        // Nothing a client could use was delivered: an upstream failure, charged nothing.
        let msg = "upstream returned a response that is not JSON".to_owned();
        let ending = Ending::failed(UsageStatus::UpstreamError, 502, Some(channel), msg.clone());
        finish(&ctx, &upstream_model, ending).await;
        let _ = reply_tx.send(Err(OpenAiError::Upstream { message: msg }));
        return;
    }
    let usage = match meter.usage {
        Some(u) => (u, UsageSource::Provider),
        None => estimated(&ctx, meter.take_choices()).await,
    };
    let renamed = (upstream_model != ctx.model.name)
        .then(|| rewrite_model(&body, &upstream_model, &ctx.model.name))
        .flatten();
    let body = renamed.map_or(body, Bytes::from);
    let ending = Ending {
        status: UsageStatus::Ok,
        http_status: response.status,
        channel: Some(channel),
        usage: Some(usage),
        ttft_ms: None,
        error: None,
    };
    finish(&ctx, &upstream_model, ending).await;
    let _ = reply_tx.send(Ok(Reply::Full {
        status: response.status,
        content_type: response.content_type,
        body,
    }));
}

/// How a forwarded stream stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    Done,
    UpstreamClosed,
    ClientGone,
    Stalled,
    Deadline,
    /// The upstream connection failed mid-answer.
    Broken,
    /// One event grew past `upstream.max_response_bytes`.
    TooLarge,
    /// The output passed what was reserved for it.
    OutputLimit,
    Shutdown,
}

/// An SSE error event for a stream cut short, so clients see an error rather than a quiet end.
fn error_event(message: &str, code: &str) -> Bytes {
    let body = serde_json::json!({"error": {"message": message, "type": "upstream_error", "code": code, "param": null}});
    Bytes::from(format!("data: {body}\n\n"))
}

/// The events that end a stream cut at its output allowance the way OpenAI ends one at a length
/// limit: a `finish_reason: "length"` chunk for every unfinished choice, then the usage chunk if
/// the client asked for usage (Tollgate's count, as billed).
fn length_events(ctx: &Ctx, unfinished: &[usize], usage: Option<&TokenUsage>) -> Vec<Bytes> {
    let id = format!("chatcmpl-{}", ctx.request_id);
    let created = crate::clock::now_ms() / 1000;
    let (object, empty) = match ctx.req.endpoint {
        Endpoint::Completions => ("text_completion", serde_json::json!({"text": ""})),
        _ => ("chat.completion.chunk", serde_json::json!({"delta": {}})),
    };
    let chunk = |choices: serde_json::Value, usage: Option<serde_json::Value>| {
        let mut c = serde_json::json!({"id": id, "object": object, "created": created,
                                       "model": ctx.model.name, "choices": choices});
        if let Some(u) = usage {
            c["usage"] = u;
        }
        Bytes::from(format!("data: {c}\n\n"))
    };
    let mut events: Vec<Bytes> = unfinished
        .iter()
        .map(|&index| {
            let mut choice = empty.clone();
            choice["index"] = index.into();
            choice["finish_reason"] = "length".into();
            chunk(serde_json::json!([choice]), None)
        })
        .collect();
    if let Some(u) = usage.filter(|_| ctx.req.client_wants_usage) {
        let usage = serde_json::json!({"prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens.saturating_add(u.completion_tokens)});
        events.push(chunk(serde_json::json!([]), Some(usage)));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

/// `event` with the upstream model name mapped back to the public one (when they differ).
fn public_model(event: Bytes, rename: bool, upstream: &str, public: &str) -> Bytes {
    match rename
        .then(|| rewrite_model(&event, upstream, public))
        .flatten()
    {
        Some(b) => Bytes::from(b),
        None => event,
    }
}

/// Counts a stream's output as it grows, but only when it could have passed its allowance: a
/// token is at least a byte, so while the bytes not yet counted fit in what is left of the
/// allowance nothing is counted (a normal stream is never counted here).
struct OutputCheck {
    allowance: i64,
    counted: i64,
}

impl OutputCheck {
    /// Whether the output has now passed the allowance (counting on the CPU pool if needed).
    async fn passed(&mut self, meter: &mut Meter, state: &AppState) -> bool {
        let uncounted = i64::try_from(meter.uncounted_bytes()).unwrap_or(i64::MAX);
        if self.counted.saturating_add(uncounted) <= self.allowance {
            return false;
        }
        let (pieces, bytes) = meter.take_uncounted();
        if !pieces.is_empty() {
            let cap = state.config.billing.max_count_bytes;
            let tokens = state
                .cpu
                .run_sized(bytes, move || {
                    let mut budget = Budget::new(cap);
                    pieces.iter().map(|p| budget.count(p)).sum::<i64>()
                })
                .await
                .unwrap_or(i64::try_from(bytes).unwrap_or(i64::MAX));
            self.counted = self.counted.saturating_add(tokens);
        }
        self.counted > self.allowance
    }
}

/// A streaming answer: forward events as they arrive, hold back `[DONE]` until settled.
async fn stream(
    ctx: Ctx,
    channel: Arc<Channel>,
    upstream_model: String,
    mut response: UpstreamResponse,
    reply_tx: ReplyTx,
) {
    let (tx, rx) = mpsc::channel::<Bytes>(STREAM_BUFFER);
    if reply_tx.send(Ok(Reply::Stream { events: rx })).is_err() {
        let ending = Ending::failed(
            UsageStatus::ClientDisconnected,
            499,
            Some(channel),
            "client closed the connection".into(),
        );
        finish(&ctx, &upstream_model, ending).await;
        return;
    }
    metrics::gauge!(m::ACTIVE_STREAMS).increment(1.0);
    let state = &ctx.state;
    let BodyLimits {
        chunk_timeout,
        deadline,
        ..
    } = BodyLimits::for_request(&state.config.upstream, ctx.started);
    let strip_usage = !ctx.req.client_wants_usage;
    let rename = upstream_model != ctx.model.name;
    let mut splitter = EventSplitter::default();
    let mut meter = Meter::default();
    let mut output = OutputCheck {
        allowance: ctx.allowance,
        counted: 0,
    };
    let mut ttft_ms = None;
    let mut done_event: Option<Bytes> = None;
    let mut detail = None;
    let mut unclean_bytes = 0_usize;
    let max_event = state.config.upstream.max_response_bytes;
    let end = 'read: loop {
        let next = tokio::select! {
            biased;
            _ = tx.closed() => break StreamEnd::ClientGone,
            _ = state.cut_streams.cancelled() => break StreamEnd::Shutdown,
            _ = tokio::time::sleep_until(deadline) => break StreamEnd::Deadline,
            next = tokio::time::timeout(chunk_timeout, response.body.next()) => next,
        };
        let chunk = match next {
            Err(_) => break StreamEnd::Stalled,
            Ok(None) => break StreamEnd::UpstreamClosed,
            Ok(Some(Err(e))) => {
                detail = Some(e.to_string());
                break StreamEnd::Broken;
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        let events = splitter.push(&chunk);
        if splitter.pending() > max_event {
            detail = Some(format!("an event is larger than {max_event} bytes"));
            break StreamEnd::TooLarge;
        }
        for event in events {
            let (event, dropped) = clean_event(event);
            if dropped > 0 {
                if unclean_bytes == 0 {
                    tracing::warn!(request_id = %ctx.request_id, channel = %channel.name, "dropping upstream lines that are not well-formed SSE");
                }
                unclean_bytes += dropped;
                metrics::counter!(m::SSE_LINES_DROPPED).increment(1);
            }
            let Some(event) = event else { continue };
            match meter.observe_event(&event, strip_usage) {
                Verdict::Forward => {}
                Verdict::Drop => continue,
                Verdict::Malformed => {
                    metrics::counter!(m::SSE_LINES_DROPPED).increment(1);
                    if meter.malformed == 1 {
                        tracing::warn!(request_id = %ctx.request_id, channel = %channel.name, "dropping upstream SSE data that is not JSON");
                    }
                    continue;
                }
            }
            if meter.saw_done {
                done_event = Some(event);
                break 'read StreamEnd::Done;
            }
            if output.passed(&mut meter, state).await {
                // This event would pass the allowance: it is neither forwarded nor billed.
                meter.undo_last();
                break 'read StreamEnd::OutputLimit;
            }
            let event = public_model(event, rename, &upstream_model, &ctx.model.name);
            if ttft_ms.is_none() {
                let elapsed = ctx.started.elapsed();
                metrics::histogram!(m::TTFT, "model" => ctx.model.name.clone())
                    .record(elapsed.as_secs_f64());
                ttft_ms = Some(elapsed.as_millis() as i64);
            }
            if tx.send(event).await.is_err() {
                break 'read StreamEnd::ClientGone;
            }
        }
    };
    // Stop reading: dropping the body closes the upstream connection (cancels the generation).
    drop(response.body);
    let mut end = end;
    if end == StreamEnd::UpstreamClosed
        && let Some(rest) = splitter.finish()
    {
        // An unterminated last event: terminate it, so the client sees what is billed.
        let mut event = rest.to_vec();
        event.extend_from_slice(b"\n\n");
        if let (Some(event), _) = clean_event(Bytes::from(event))
            && meter.observe_event(&event, strip_usage) == Verdict::Forward
        {
            if meter.saw_done {
                done_event = Some(event);
                end = StreamEnd::Done;
            } else {
                let event = public_model(event, rename, &upstream_model, &ctx.model.name);
                let _ = tx.send(event).await;
            }
        }
    }
    let unfinished = meter.unfinished();
    let usage = match meter.usage {
        Some(u) => (u, UsageSource::Provider),
        None => estimated(&ctx, meter.take_choices()).await,
    };
    let chunk_ms = chunk_timeout.as_millis();
    let (status, error, tail) = match end {
        StreamEnd::Done if meter.saw_error => (
            UsageStatus::UpstreamError,
            Some("upstream sent an error event".to_owned()),
            vec![],
        ),
        StreamEnd::Done => (UsageStatus::Ok, None, vec![]),
        StreamEnd::UpstreamClosed if meter.saw_error => (
            UsageStatus::UpstreamError,
            Some("upstream sent an error event".to_owned()),
            vec![],
        ),
        // Every choice finished: only the terminator is missing, so the client gets one.
        StreamEnd::UpstreamClosed if meter.all_finished() => (
            UsageStatus::Ok,
            None,
            vec![Bytes::from_static(b"data: [DONE]\n\n")],
        ),
        StreamEnd::UpstreamClosed | StreamEnd::Broken => {
            let msg = match detail {
                Some(d) => format!("upstream closed the stream before it finished: {d}"),
                None => "upstream closed the stream before it finished".to_owned(),
            };
            (
                UsageStatus::Incomplete,
                Some(msg.clone()),
                vec![error_event(&msg, "upstream_incomplete")],
            )
        }
        StreamEnd::ClientGone => (
            UsageStatus::ClientDisconnected,
            Some("client closed the connection mid-stream".to_owned()),
            vec![],
        ),
        StreamEnd::Stalled => {
            let msg = format!("upstream sent nothing for {chunk_ms} ms");
            (
                UsageStatus::UpstreamTimeout,
                Some(msg.clone()),
                vec![error_event(&msg, "upstream_timeout")],
            )
        }
        StreamEnd::Deadline => {
            let msg = "request exceeded the gateway's maximum duration".to_owned();
            (
                UsageStatus::UpstreamTimeout,
                Some(msg.clone()),
                vec![error_event(&msg, "upstream_timeout")],
            )
        }
        StreamEnd::TooLarge => {
            let msg = format!("upstream stream broke: {}", detail.unwrap_or_default());
            (
                UsageStatus::UpstreamError,
                Some(msg.clone()),
                vec![error_event(&msg, "upstream_error")],
            )
        }
        StreamEnd::OutputLimit => {
            metrics::counter!(m::OUTPUT_CUTS).increment(1);
            let msg = format!(
                "the output passed the {} tokens reserved for it; the upstream was cut",
                ctx.allowance
            );
            (
                UsageStatus::Truncated,
                Some(msg),
                length_events(&ctx, &unfinished, Some(&usage.0)),
            )
        }
        StreamEnd::Shutdown => {
            let msg = "the gateway is shutting down".to_owned();
            (
                UsageStatus::Shutdown,
                Some(msg.clone()),
                vec![error_event(&msg, "shutting_down")],
            )
        }
    };
    let ending = Ending {
        status,
        http_status: 200,
        channel: Some(channel),
        usage: Some(usage),
        ttft_ms,
        error,
    };
    finish(&ctx, &upstream_model, ending).await;
    for event in tail.into_iter().chain(done_event) {
        if tx.send(event).await.is_err() {
            break;
        }
    }
    metrics::gauge!(m::ACTIVE_STREAMS).decrement(1.0);
}

/// Writes the usage record and settles the reservation.
async fn finish(ctx: &Ctx, upstream_model: &str, ending: Ending) {
    let (usage, source) = ending
        .usage
        .unwrap_or((TokenUsage::default(), UsageSource::None));
    let cost = if ending.usage.is_some() {
        ctx.model.price.cost(&usage)
    } else {
        Micros::ZERO
    };
    if let Some(permit) = &ctx.permit {
        let used = usage.prompt_tokens.saturating_add(usage.completion_tokens);
        permit.settle_tokens(used.max(0) as u64).await;
    }
    let record = UsageRecord {
        request_id: ctx.request_id.to_string(),
        user_id: ctx.user_id,
        key_id: ctx.key_id,
        model: ctx.model.name.clone(),
        upstream_model: (!upstream_model.is_empty()).then(|| upstream_model.to_owned()),
        channel_id: ending.channel.as_ref().map(|c| c.id),
        endpoint: ctx.req.endpoint.path(),
        stream: ctx.req.stream,
        status: ending.status,
        http_status: ending.http_status,
        usage,
        usage_source: source,
        reserved: ctx.reserved,
        cost,
        price_version: Some(ctx.model.price.version),
        latency_ms: ctx.started.elapsed().as_millis() as i64,
        ttft_ms: ending.ttft_ms,
        error: ending.error,
        units: 0,
    };
    settle(&ctx.state.book, &ctx.state.db, Some(ctx.held), &record).await;
}
