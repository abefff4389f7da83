//! The one failover loop: a model's channels are called in order (by priority, weighted random
//! within one) until one answers, for every metered endpoint. Connect and other pre-response
//! errors, 429 and 5xx try the next channel; 401/403 disable the channel and try the next; other
//! 4xx are the request's fault and reach the client as they are; a timeout ends the request (the
//! upstream may still be generating, and charging, for it). Every answer counts for the
//! channel's circuit breaker.

use super::catalog::Model;
use crate::billing::UsageStatus;
use crate::error::OpenAiError;
use crate::metrics as m;
use crate::provider::{BodyLimits, Channel, UpstreamError, UpstreamResponse, read_whole};
use crate::state::AppState;
use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// Channels tried for one request at most.
pub const MAX_ATTEMPTS: usize = 3;

/// How calling the channels ended.
pub enum Attempt {
    /// A 2xx; its body is not read yet.
    Answer {
        channel: Arc<Channel>,
        response: UpstreamResponse,
    },
    /// The upstream's own 4xx about the request (or a 429 no other channel did better than),
    /// read whole, for the client as it is.
    Rejected {
        channel: Arc<Channel>,
        status: u16,
        content_type: Option<String>,
        body: Bytes,
        /// For the usage record: `upstream status N: <start of the body>`.
        detail: String,
    },
    /// No answer: the client's error, and what the usage record says.
    Failed {
        channel: Option<Arc<Channel>>,
        error: OpenAiError,
        detail: String,
    },
    /// The client hung up while a channel was being called.
    ClientGone { channel: Arc<Channel> },
}

impl Attempt {
    /// The usage status and HTTP status of a failure.
    pub fn failure_status(error: &OpenAiError) -> (UsageStatus, u16) {
        match error {
            OpenAiError::UpstreamTimeout { .. } => (UsageStatus::UpstreamTimeout, 504),
            _ => (UsageStatus::UpstreamError, 502),
        }
    }
}

/// Tells the loop that nobody waits for the answer any more.
pub trait Watch {
    /// Resolves when the client has gone.
    fn gone(&mut self) -> impl Future<Output = ()> + Send;
}

/// A request's reply channel: the client is gone when its receiver is dropped.
impl<T: Send> Watch for tokio::sync::oneshot::Sender<T> {
    async fn gone(&mut self) {
        self.closed().await
    }
}

/// Work that runs to its end whether or not the client waits (media, video submissions).
pub struct Detached;

impl Watch for Detached {
    async fn gone(&mut self) {
        std::future::pending::<()>().await
    }
}

/// Calls `model`'s channels in order until one answers; `call` sends to one channel. `started`
/// is when the request began (its deadline and the gateway-overhead metric count from it).
pub async fn first_answer<W, F, Fut>(
    state: &AppState,
    model: &Model,
    started: Instant,
    watch: &mut W,
    mut call: F,
) -> Attempt
where
    W: Watch,
    F: FnMut(Arc<Channel>) -> Fut,
    Fut: Future<Output = Result<UpstreamResponse, UpstreamError>>,
{
    let health = &state.health;
    let mut last = Attempt::Failed {
        channel: None,
        error: OpenAiError::Upstream {
            message: format!(
                "every channel serving {} is failing (circuit breaker open); try again shortly",
                model.name
            ),
        },
        detail: format!("every channel serving {} is failing", model.name),
    };
    let mut first = true;
    for channel in model
        .channel_order()
        .into_iter()
        .filter(|c| health.allow(c))
        .take(MAX_ATTEMPTS)
    {
        if std::mem::take(&mut first) {
            metrics::histogram!(m::GATEWAY_OVERHEAD).record(started.elapsed().as_secs_f64());
        }
        let sent = Instant::now();
        let result = tokio::select! {
            r = call(Arc::clone(&channel)) => r,
            _ = watch.gone() => {
                health.release_probe(&channel);
                return Attempt::ClientGone { channel };
            }
        };
        let outcome = match &result {
            Ok(r) => m::status_class(r.status),
            Err(UpstreamError::Timeout(_)) => "timeout",
            Err(_) => "error",
        };
        metrics::histogram!(m::UPSTREAM_DURATION, "model" => model.name.clone(), "outcome" => outcome)
            .record(sent.elapsed().as_secs_f64());
        let failed = |channel: &Arc<Channel>, message: String, detail: String| Attempt::Failed {
            channel: Some(Arc::clone(channel)),
            error: OpenAiError::Upstream { message },
            detail,
        };
        let mut response = match result {
            Err(UpstreamError::Timeout(ms)) => {
                let message = format!("no response from upstream within {ms} ms");
                health.failure(&channel, "timeout", &message);
                return Attempt::Failed {
                    channel: Some(channel),
                    error: OpenAiError::UpstreamTimeout {
                        message: message.clone(),
                    },
                    detail: message,
                };
            }
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(channel = %channel.name, error = %message, "upstream call failed");
                health.failure(&channel, e.outcome(), &message);
                last = failed(&channel, message.clone(), message);
                continue;
            }
            Ok(r) => r,
        };
        let status = response.status;
        if (200..300).contains(&status) {
            health.record_answer(&channel, status, "");
            return Attempt::Answer { channel, response };
        }
        let limits = BodyLimits::for_request(&state.config.upstream, started);
        let body = tokio::select! {
            read = read_whole(&mut response.body, limits) => read.unwrap_or_default(),
            _ = watch.gone() => return Attempt::ClientGone { channel },
        };
        let snippet = snippet(&body);
        tracing::warn!(channel = %channel.name, status, body = %snippet, "upstream returned an error");
        let detail = format!("upstream status {status}: {snippet}");
        match status {
            401 | 403 => {
                // The channel's credential is refused: the client's request is not at fault.
                disable_for_credentials(state, &channel, status, &snippet).await;
                let message = "upstream refused the channel's credential".to_owned();
                last = failed(&channel, message, detail);
            }
            _ => {
                health.record_answer(&channel, status, &detail);
                if status >= 500 {
                    last = failed(
                        &channel,
                        format!("upstream returned status {status}"),
                        detail,
                    );
                    continue;
                }
                let rejected = Attempt::Rejected {
                    channel,
                    status,
                    content_type: response.content_type.take(),
                    body,
                    detail,
                };
                // A 429 is passed on as it is if no other channel answers.
                if status != 429 {
                    return rejected;
                }
                last = rejected;
            }
        }
    }
    last
}

/// The start of an upstream error body, as shown to admins and in logs.
pub fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(500).collect()
}

/// Records an upstream answer with HTTP `status` (`snippet`: the start of an error's body) for
/// `channel` outside a request (the admin channel test): breaker and metrics, or disabling the
/// channel on 401/403.
pub async fn record(state: &AppState, channel: &Channel, status: u16, snippet: &str) {
    match status {
        200..=299 => state.health.record_answer(channel, status, ""),
        401 | 403 => disable_for_credentials(state, channel, status, snippet).await,
        _ => {
            let detail = format!("upstream status {status}: {snippet}");
            state.health.record_answer(channel, status, &detail);
        }
    }
}

/// Takes a channel out of service because its upstream refused the credential (401/403):
/// disabled in the database with the reason, on this instance at once and on the others
/// through the change notice.
async fn disable_for_credentials(state: &AppState, channel: &Channel, status: u16, detail: &str) {
    let reason = format!(
        "upstream answered {status} (credential refused): {}",
        detail.chars().take(300).collect::<String>()
    );
    state.health.failure(channel, "auth_error", &reason);
    tracing::error!(channel = %channel.name, status, "disabling channel: upstream refused its credential");
    metrics::counter!(m::CHANNELS_DISABLED, "channel" => channel.name.clone()).increment(1);
    match crate::db::catalog::disable_channel(&state.db, channel.id, &reason).await {
        Ok(()) => {
            if let Err(e) = state.announce(crate::cluster::Change::Catalog).await {
                tracing::warn!(error = %e, "catalog reload after disabling a channel failed");
            }
        }
        Err(e) => tracing::error!(error = %e, channel = %channel.name, "could not disable channel"),
    }
}
