//! A streaming answer: events forwarded as they arrive (only a usage-only chunk dropped, the
//! model name mapped back), metered on the way, cut at the output allowance, and `[DONE]` held
//! back until the request is settled.

use super::ending::{Ending, StreamEnd, StreamFacts, StreamOutcome, Tail, stream_outcome};
use super::{Ctx, ReplyTx, estimated, finish};
use crate::billing::{TokenUsage, UsageSource, UsageStatus};
use crate::gateway::Reply;
use crate::gateway::sse::{Meter, Verdict, rewrite_model};
use crate::metrics as m;
use crate::provider::sse::{EventSplitter, clean_event};
use crate::provider::{BodyLimits, Channel, Endpoint, UpstreamResponse};
use crate::state::AppState;
use crate::tokens::Budget;
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Events buffered between the upstream reader and a slow client.
const STREAM_BUFFER: usize = 64;

/// An SSE error event for a stream cut short, so clients see an error rather than a quiet end.
fn error_event(message: &str, code: &str) -> Bytes {
    let body = serde_json::json!({"error": {"message": message, "type": "upstream_error", "code": code, "param": null}});
    Bytes::from(format!("data: {body}\n\n"))
}

/// The events that end a stream cut at its output allowance the way OpenAI ends one at a length
/// limit: a `finish_reason: "length"` chunk for every unfinished choice, then the usage chunk if
/// the client asked for usage (Tollgate's count, as billed).
fn length_events(ctx: &Ctx, unfinished: &[usize], usage: Option<&TokenUsage>) -> Vec<Bytes> {
    let id = format!("chatcmpl-{}", ctx.payer.request_id);
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

/// The reading half of a stream: what it has seen so far.
struct Forwarder {
    splitter: EventSplitter,
    meter: Meter,
    output: OutputCheck,
    /// Whether the client wants the usage chunk (otherwise a usage-only chunk is dropped).
    strip_usage: bool,
    /// The upstream's name of the model, when it differs from the public one.
    rename: Option<String>,
    ttft_ms: Option<i64>,
    /// The upstream's `[DONE]`, held back until the request is settled.
    done_event: Option<Bytes>,
    /// What broke, for the usage record.
    detail: Option<String>,
    unclean_bytes: usize,
}

impl Forwarder {
    fn new(ctx: &Ctx, channel: &Channel) -> Forwarder {
        let upstream = channel.upstream_model(&ctx.model.name);
        Forwarder {
            splitter: EventSplitter::default(),
            meter: Meter::default(),
            output: OutputCheck {
                allowance: ctx.allowance,
                counted: 0,
            },
            strip_usage: !ctx.req.client_wants_usage,
            rename: (upstream != ctx.model.name).then(|| upstream.to_owned()),
            ttft_ms: None,
            done_event: None,
            detail: None,
            unclean_bytes: 0,
        }
    }

    /// `event` with the upstream model name mapped back to the public one.
    fn public(&self, event: Bytes, public: &str) -> Bytes {
        match self
            .rename
            .as_deref()
            .and_then(|upstream| rewrite_model(&event, upstream, public))
        {
            Some(b) => Bytes::from(b),
            None => event,
        }
    }

    /// Forwards the upstream's events to `tx` until the stream stops, and says how it stopped.
    async fn forward(
        &mut self,
        ctx: &Ctx,
        channel: &Channel,
        response: &mut UpstreamResponse,
        tx: &mpsc::Sender<Bytes>,
    ) -> StreamEnd {
        let state = &ctx.state;
        let limits = BodyLimits::for_request(&state.config.upstream, ctx.started);
        let max_event = state.config.upstream.max_response_bytes;
        loop {
            let next = tokio::select! {
                biased;
                _ = tx.closed() => return StreamEnd::ClientGone,
                _ = state.cut_streams.cancelled() => return StreamEnd::Shutdown,
                _ = tokio::time::sleep_until(limits.deadline) => return StreamEnd::Deadline,
                next = tokio::time::timeout(limits.chunk_timeout, response.body.next()) => next,
            };
            let chunk = match next {
                Err(_) => return StreamEnd::Stalled,
                Ok(None) => return StreamEnd::UpstreamClosed,
                Ok(Some(Err(e))) => {
                    self.detail = Some(e.to_string());
                    return StreamEnd::Broken;
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            let events = self.splitter.push(&chunk);
            if self.splitter.pending() > max_event {
                self.detail = Some(format!("an event is larger than {max_event} bytes"));
                return StreamEnd::TooLarge;
            }
            for event in events {
                let (event, dropped) = clean_event(event);
                if dropped > 0 {
                    if self.unclean_bytes == 0 {
                        tracing::warn!(channel = %channel.name, "dropping upstream lines that are not well-formed SSE");
                    }
                    self.unclean_bytes += dropped;
                    metrics::counter!(m::SSE_LINES_DROPPED).increment(1);
                }
                let Some(event) = event else { continue };
                match self.meter.observe_event(&event, self.strip_usage) {
                    Verdict::Forward => {}
                    Verdict::Drop => continue,
                    Verdict::Malformed => {
                        metrics::counter!(m::SSE_LINES_DROPPED).increment(1);
                        if self.meter.malformed == 1 {
                            tracing::warn!(channel = %channel.name, "dropping upstream SSE data that is not JSON");
                        }
                        continue;
                    }
                }
                if self.meter.saw_done {
                    self.done_event = Some(event);
                    return StreamEnd::Done;
                }
                if self.output.passed(&mut self.meter, state).await {
                    // This event would pass the allowance: it is neither forwarded nor billed.
                    self.meter.undo_last();
                    return StreamEnd::OutputLimit;
                }
                let event = self.public(event, &ctx.model.name);
                if self.ttft_ms.is_none() {
                    let elapsed = ctx.started.elapsed();
                    metrics::histogram!(m::TTFT, "model" => ctx.model.name.clone())
                        .record(elapsed.as_secs_f64());
                    self.ttft_ms = Some(elapsed.as_millis() as i64);
                }
                if tx.send(event).await.is_err() {
                    return StreamEnd::ClientGone;
                }
            }
        }
    }

    /// After the upstream closed: an unterminated last event is terminated and forwarded (so
    /// the client sees what is billed); it may turn out to be the `[DONE]`.
    async fn flush(&mut self, ctx: &Ctx, end: StreamEnd, tx: &mpsc::Sender<Bytes>) -> StreamEnd {
        if end != StreamEnd::UpstreamClosed {
            return end;
        }
        let Some(rest) = self.splitter.finish() else {
            return end;
        };
        let mut event = rest.to_vec();
        event.extend_from_slice(b"\n\n");
        if let (Some(event), _) = clean_event(Bytes::from(event))
            && self.meter.observe_event(&event, self.strip_usage) == Verdict::Forward
        {
            if self.meter.saw_done {
                self.done_event = Some(event);
                return StreamEnd::Done;
            }
            let _ = tx.send(self.public(event, &ctx.model.name)).await;
        }
        end
    }
}

/// A streaming answer: forward events as they arrive, then settle what the ending costs, then
/// send the tail and the held-back `[DONE]`.
pub(super) async fn stream(
    mut ctx: Ctx,
    channel: Arc<Channel>,
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
        finish(&mut ctx, ending).await;
        return;
    }
    metrics::gauge!(m::ACTIVE_STREAMS).increment(1.0);
    let mut reader = Forwarder::new(&ctx, &channel);
    let end = reader.forward(&ctx, &channel, &mut response, &tx).await;
    // Stop reading: dropping the body closes the upstream connection (cancels the generation).
    drop(response.body);
    let end = reader.flush(&ctx, end, &tx).await;
    let Forwarder {
        mut meter,
        ttft_ms,
        done_event,
        detail,
        ..
    } = reader;
    let unfinished = meter.unfinished();
    let usage = match meter.usage {
        Some(u) => (u, UsageSource::Provider),
        None => estimated(&ctx, meter.take_choices()).await,
    };
    if end == StreamEnd::OutputLimit {
        metrics::counter!(m::OUTPUT_CUTS).increment(1);
    }
    let facts = StreamFacts {
        saw_error: meter.saw_error,
        all_finished: meter.all_finished(),
        detail,
        chunk_timeout_ms: ctx.state.config.upstream.chunk_timeout_ms.into(),
        allowance: ctx.allowance,
    };
    let StreamOutcome {
        status,
        error,
        tail,
    } = stream_outcome(end, facts);
    let tail = match tail {
        Tail::Nothing => vec![],
        Tail::Done => vec![Bytes::from_static(b"data: [DONE]\n\n")],
        Tail::Error { message, code } => vec![error_event(&message, code)],
        Tail::Length => length_events(&ctx, &unfinished, Some(&usage.0)),
    };
    let ending = Ending {
        status,
        http_status: 200,
        channel: Some(channel),
        usage: Some(usage),
        ttft_ms,
        error,
    };
    finish(&mut ctx, ending).await;
    for event in tail.into_iter().chain(done_event) {
        if tx.send(event).await.is_err() {
            break;
        }
    }
    metrics::gauge!(m::ACTIVE_STREAMS).decrement(1.0);
}
