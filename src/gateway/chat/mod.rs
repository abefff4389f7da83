//! The token-metered endpoints through the gateway (`POST chat/completions`, legacy
//! `completions`, `embeddings`), and the same chat completion run in process for a platform
//! feature ([`chat_as`]): validate, route, reserve the most the request can cost, call upstream
//! channels through the failover loop, forward the answer (SSE events as they arrive:
//! `stream`), and settle from the provider's usage or a local count (what each ending costs
//! is [`ending`]'s pure decision).
//!
//! Everything after the reservation runs in one task on the [`TaskTracker`](tokio_util::task::TaskTracker):
//! the handler only waits for the first reply. A client that hangs up drops its receiver; the
//! task sees that, cancels the upstream call (by dropping it) and still settles. Settlement is
//! written before the last byte (or the full JSON body) goes out, so a client that has its
//! answer also sees its balance changed.

pub mod ending;
mod stream;

use super::Reply;
use super::auth::Caller;
use super::catalog::Model;
use super::failover::{self, Attempt};
use super::meter::{self, Ended, Payer};
use super::request::ChatRequest;
use super::sse::{ChoiceText, Meter, rewrite_model};
use super::throttle::{self, RateHeaders};
use crate::billing::book::Held;
use crate::billing::settle::settle;
use crate::billing::{Micros, PaidBy, Pricing, TokenUsage, UsageSource, UsageStatus};
use crate::error::OpenAiError;
use crate::limits::Permit;
use crate::provider::{
    self, BodyError, BodyLimits, Call, Channel, Endpoint, UpstreamResponse, read_whole,
};
use crate::state::AppState;
use crate::tokens::Budget;
use bytes::Bytes;
use ending::Ending;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::Instrument;

/// What one request carries from the handler into its task.
struct Ctx {
    state: AppState,
    payer: Payer,
    model: Arc<Model>,
    req: ChatRequest,
    body: Bytes,
    pricing: Pricing,
    /// A feature's check of a whole answer (see [`FeatureCall::accept`]).
    accept: Option<fn(&[u8]) -> bool>,
    held: Held,
    reserved: Micros,
    /// Output tokens reserved (every choice): a stream is cut when its output passes this.
    allowance: i64,
    started: Instant,
    /// Concurrency slots and the token estimate; dropped (slots returned) when the task ends.
    permit: Option<Permit>,
    /// Told what was charged, once the request is settled (in-process callers).
    settled: Option<oneshot::Sender<Charged>>,
}

type ReplyTx = oneshot::Sender<Result<Reply, OpenAiError>>;

/// What a settled request was charged, for an in-process caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charged {
    pub status: UsageStatus,
    pub usage: TokenUsage,
    /// What left the balance (zero when the settlement could not be written: then nothing was).
    pub charged: Micros,
}

/// A chat completion a platform feature runs for a user, in process: the same limits, routing,
/// failover, reservation and settlement as `POST /v1/chat/completions`, priced its own way.
pub struct FeatureCall<'a> {
    /// Who pays: the user the feature runs for (their key's allowed models and limits apply).
    pub caller: &'a Caller,
    pub request_id: Arc<str>,
    /// The usage record's `endpoint` and the ledger row's description (`writing/generate`, …).
    pub feature: &'static str,
    pub pricing: Pricing,
    /// An OpenAI chat completion request (`stream` chooses the kind of reply).
    pub body: Bytes,
    /// For a whole (non-streamed) answer at a flat price: whether the feature can use it. An
    /// answer it cannot use is not charged (its usage record still says what it used).
    pub accept: Option<fn(&[u8]) -> bool>,
    /// How the usage record says it was paid (a member's call is priced zero and says so).
    pub paid_by: PaidBy,
}

/// The reply to a [`FeatureCall`], and what it was charged once settled (for a stream: before
/// its `[DONE]`).
pub struct FeatureReply {
    pub reply: Reply,
    pub settled: oneshot::Receiver<Charged>,
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

fn prepare(
    state: &AppState,
    caller: &Caller,
    req: ChatRequest,
    pricing: Pricing,
) -> Result<Prepared, OpenAiError> {
    let (user_id, model) = meter::route(state, caller, &req.model)?;
    let per_choice = req.output_per_choice(
        &model.defaults,
        model.max_output_tokens,
        state.config.billing.default_max_output_tokens,
    );
    let output = per_choice.saturating_mul(req.n);
    let amount = pricing.most(
        &model.price,
        req.prompt_tokens_bound,
        output,
        model.cache_writes,
    );
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

/// How a request is run besides its body: the usage record's endpoint (`None`: the endpoint's
/// own path), its pricing, and who is told what it was charged.
struct Terms {
    feature: Option<&'static str>,
    pricing: Pricing,
    accept: Option<fn(&[u8]) -> bool>,
    settled: Option<oneshot::Sender<Charged>>,
    paid_by: PaidBy,
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
    let terms = Terms {
        feature: None,
        pricing: Pricing::Metered,
        accept: None,
        settled: None,
        paid_by: PaidBy::Credits,
    };
    start(state, caller, request_id, endpoint, body, terms).await
}

/// Runs a platform feature's chat completion in process (see [`FeatureCall`]).
pub async fn chat_as(
    state: &AppState,
    call: FeatureCall<'_>,
) -> (Result<FeatureReply, OpenAiError>, RateHeaders) {
    let (tx, settled) = oneshot::channel();
    let terms = Terms {
        feature: Some(call.feature),
        pricing: call.pricing,
        accept: call.accept,
        settled: Some(tx),
        paid_by: call.paid_by,
    };
    let (result, headers) = start(
        state,
        call.caller,
        call.request_id,
        Endpoint::Chat,
        call.body,
        terms,
    )
    .await;
    (result.map(|reply| FeatureReply { reply, settled }), headers)
}

async fn start(
    state: &AppState,
    caller: &Caller,
    request_id: Arc<str>,
    endpoint: Endpoint,
    body: Bytes,
    terms: Terms,
) -> (Result<Reply, OpenAiError>, RateHeaders) {
    let started = Instant::now();
    let prepared = match parse(state, endpoint, &body).await {
        Ok(req) => prepare(state, caller, req, terms.pricing),
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
        Ok(p) => {
            let permit = admitted.permit;
            run_prepared(state, caller, request_id, body, p, permit, started, terms).await
        }
        Err(e) => Err(e),
    };
    (result, headers)
}

/// Reserves the most `p` can cost and starts its task; waits for the first reply.
#[allow(clippy::too_many_arguments)]
async fn run_prepared(
    state: &AppState,
    caller: &Caller,
    request_id: Arc<str>,
    body: Bytes,
    p: Prepared,
    permit: Option<Permit>,
    started: Instant,
    terms: Terms,
) -> Result<Reply, OpenAiError> {
    let Prepared {
        user_id,
        req,
        model,
        amount,
        allowance,
        ..
    } = p;
    let endpoint = terms.feature.unwrap_or(req.endpoint.path());
    let mut payer = Payer::new(
        Arc::clone(&request_id),
        user_id,
        caller.key_id,
        &model,
        endpoint,
        req.stream,
    );
    payer.paid_by = terms.paid_by;
    let held = match meter::reserve(state, &payer, amount, started).await {
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
        payer,
        model,
        req,
        body,
        pricing: terms.pricing,
        accept: terms.accept,
        held,
        reserved: amount,
        allowance,
        started,
        permit,
        settled: terms.settled,
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

/// The request's task: try channels, answer, settle.
async fn run(mut ctx: Ctx, mut reply_tx: ReplyTx) {
    let state = ctx.state.clone();
    let max_tokens = ctx.req.output_per_choice(
        &ctx.model.defaults,
        ctx.model.max_output_tokens,
        state.config.billing.default_max_output_tokens,
    );
    let limits = BodyLimits::for_request(&state.config.upstream, ctx.started);
    let first_byte = Duration::from_millis(state.config.upstream.first_byte_timeout_ms);
    let attempt =
        failover::first_answer(&state, &ctx.model, ctx.started, &mut reply_tx, |channel| {
            let upstream_model = channel.upstream_model(&ctx.model.name);
            let body = ctx
                .req
                .upstream_body(&ctx.body, upstream_model, &ctx.model.defaults);
            let call = Call::Tokens {
                endpoint: ctx.req.endpoint,
                body,
                max_tokens,
                limits,
            };
            let http = &state.http;
            async move { provider::call(http, &channel, call, first_byte).await }
        })
        .await;
    let (answer, ending) = match attempt {
        Attempt::Answer { channel, response } => {
            if ctx.req.stream && response.is_event_stream() {
                stream::stream(ctx, channel, response, reply_tx).await;
            } else {
                whole(ctx, channel, response, reply_tx).await;
            }
            return;
        }
        Attempt::ClientGone { channel } => {
            let message = "client closed the connection before the upstream answered".into();
            let ending =
                Ending::failed(UsageStatus::ClientDisconnected, 499, Some(channel), message);
            finish(&mut ctx, ending).await;
            return;
        }
        Attempt::Rejected {
            channel,
            status,
            content_type,
            body,
            detail,
        } => {
            // The upstream's own 4xx (bad request, rate limit, …) reaches the client as it is.
            let reply = Reply::Full {
                status,
                content_type,
                body,
            };
            let ending =
                Ending::failed(UsageStatus::UpstreamRejected, status, Some(channel), detail);
            (Ok(reply), ending)
        }
        Attempt::Failed {
            channel,
            error,
            detail,
        } => {
            let (status, http) = Attempt::failure_status(&error);
            (Err(error), Ending::failed(status, http, channel, detail))
        }
    };
    finish(&mut ctx, ending).await;
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
            let (completion, reasoning) =
                crate::gateway::sse::count_generated(&choices, &mut budget);
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
    mut ctx: Ctx,
    channel: Arc<Channel>,
    mut response: UpstreamResponse,
    mut reply_tx: ReplyTx,
) {
    let limits = BodyLimits::for_request(&ctx.state.config.upstream, ctx.started);
    let read = tokio::select! {
        read = read_whole(&mut response.body, limits) => Some(read),
        _ = reply_tx.closed() => None,
    };
    let body = match read {
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
            finish(&mut ctx, ending).await;
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
        finish(&mut ctx, ending).await;
        let _ = reply_tx.send(Err(OpenAiError::Upstream { message: msg }));
        return;
    }
    let usage = match meter.usage {
        Some(u) => (u, UsageSource::Provider),
        None => estimated(&ctx, meter.take_choices()).await,
    };
    let upstream_model = channel.upstream_model(&ctx.model.name);
    let renamed = (upstream_model != ctx.model.name)
        .then(|| rewrite_model(&body, upstream_model, &ctx.model.name))
        .flatten();
    let body = renamed.map_or(body, Bytes::from);
    let rejected =
        matches!(ctx.pricing, Pricing::Flat(_)) && ctx.accept.is_some_and(|accept| !accept(&body));
    if rejected {
        ctx.pricing = Pricing::Flat(Micros::ZERO);
    }
    let ending = Ending {
        status: UsageStatus::Ok,
        http_status: response.status,
        channel: Some(channel),
        usage: Some(usage),
        ttft_ms: None,
        error: rejected.then(|| "the feature could not use this answer: not charged".to_owned()),
    };
    finish(&mut ctx, ending).await;
    let _ = reply_tx.send(Ok(Reply::Full {
        status: response.status,
        content_type: response.content_type,
        body,
    }));
}

/// Writes the usage record and settles the reservation; tells an in-process caller what was
/// charged.
async fn finish(ctx: &mut Ctx, ending: Ending) {
    let cost = ending.cost(ctx.pricing, &ctx.model.price);
    let (usage, source) = ending
        .usage
        .unwrap_or((TokenUsage::default(), UsageSource::None));
    if let Some(permit) = &ctx.permit {
        let used = usage.prompt_tokens.saturating_add(usage.completion_tokens);
        permit.settle_tokens(used.max(0) as u64).await;
    }
    let ended = Ended {
        status: ending.status,
        http_status: ending.http_status,
        channel: None,
        usage,
        source,
        cost,
        units: 0,
        ttft_ms: ending.ttft_ms,
        error: ending.error,
    }
    .via(ending.channel.as_deref(), &ctx.model.name);
    let latency = ctx.started.elapsed().as_millis() as i64;
    let record = ctx.payer.record(ctx.reserved, latency, ended);
    let settled = settle(&ctx.state.book, &ctx.state.db, Some(ctx.held), &record).await;
    if let Some(tx) = ctx.settled.take() {
        let _ = tx.send(Charged {
            status: record.status,
            usage: record.usage,
            charged: settled.map_or(Micros::ZERO, |s| s.charged),
        });
    }
}
