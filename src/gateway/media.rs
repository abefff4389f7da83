//! What the media endpoints (images, video tasks) share: calling a model's channels in order for
//! one whole JSON answer, with the same failover rules as chat (connect and other pre-response
//! errors, 429 and 5xx try the next channel; 401/403 disable the channel; other 4xx pass
//! through; timeouts end the request).

use super::catalog::Model;
use crate::provider::Channel;
use super::health::Judgement;
use crate::error::OpenAiError;
use crate::provider::{BodyLimits, UpstreamError, UpstreamResponse, read_whole};
use crate::state::AppState;
use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use tracing::Instrument;

/// Channels tried for one request at most.
const MAX_ATTEMPTS: usize = 3;

/// How calling the channels ended.
pub enum Attempt {
    /// A 2xx with its whole body.
    Answer {
        channel: Arc<Channel>,
        status: u16,
        content_type: Option<String>,
        body: Bytes,
    },
    /// The upstream's own 4xx (about the request), passed to the client as it is.
    Rejected {
        channel: Arc<Channel>,
        status: u16,
        content_type: Option<String>,
        body: Bytes,
    },
    /// No answer: the error for the client, and the channel last tried.
    Failed {
        channel: Option<Arc<Channel>>,
        error: OpenAiError,
    },
}

/// Calls `model`'s channels in order until one answers; `call` sends to one channel.
pub async fn first_answer<F, Fut>(state: &AppState, model: &Model, call: F) -> Attempt
where
    F: Fn(Arc<Channel>) -> Fut,
    Fut: Future<Output = Result<UpstreamResponse, UpstreamError>>,
{
    let health = &state.health;
    let started = std::time::Instant::now();
    let mut last = Attempt::Failed {
        channel: None,
        error: OpenAiError::Upstream {
            message: format!(
                "every channel serving {} is failing (circuit breaker open); try again shortly",
                model.name
            ),
        },
    };
    for channel in model
        .channel_order()
        .into_iter()
        .filter(|c| health.allow(c))
        .take(MAX_ATTEMPTS)
    {
        let failed = |channel: &Arc<Channel>, message: String| Attempt::Failed {
            channel: Some(Arc::clone(channel)),
            error: OpenAiError::Upstream { message },
        };
        let mut response = match call(Arc::clone(&channel)).await {
            Err(UpstreamError::Timeout(ms)) => {
                let message = format!("no response from upstream within {ms} ms");
                health.failure(&channel, "timeout", &message);
                return Attempt::Failed {
                    channel: Some(channel),
                    error: OpenAiError::UpstreamTimeout { message },
                };
            }
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(channel = %channel.name, error = %message, "upstream call failed");
                health.failure(&channel, e.outcome(), &message);
                last = failed(&channel, message);
                continue;
            }
            Ok(r) => r,
        };
        let limits = BodyLimits::for_request(&state.config.upstream, started);
        let body = match read_whole(&mut response.body, limits).await {
            Ok(b) => b,
            Err(e) => {
                let message = e.to_string();
                health.failure(&channel, "error", &message);
                last = failed(&channel, message);
                continue;
            }
        };
        let status = response.status;
        let snippet = match status {
            200..=299 => String::new(),
            _ => super::health::snippet(&body),
        };
        match super::health::judge(state, &channel, status, &snippet).await {
            Judgement::Answer => {
                return Attempt::Answer {
                    channel,
                    status,
                    content_type: response.content_type,
                    body,
                };
            }
            Judgement::CredentialRefused => {
                last = failed(&channel, "upstream refused the channel's credential".into());
            }
            Judgement::Retry if status >= 500 => {
                last = failed(&channel, format!("upstream returned status {status}"));
            }
            // A 429 is passed on as it is if no other channel answers.
            Judgement::Retry | Judgement::Reject => {
                let retry = status == 429;
                let rejected = Attempt::Rejected {
                    channel,
                    status,
                    content_type: response.content_type,
                    body,
                };
                if !retry {
                    return rejected;
                }
                last = rejected;
            }
        }
    }
    last
}

/// Runs `work` in a tracked task (a client hanging up cannot cut it short, and shutdown waits
/// for it) and waits for its result; `what` names it in the error if the task dies.
pub async fn in_tracked_task<T, F>(
    state: &AppState,
    request_id: &str,
    what: &str,
    work: F,
) -> Result<T, OpenAiError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, OpenAiError>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    state.tasks.spawn(
        async move {
            let _ = tx.send(work.await);
        }
        .instrument(tracing::Span::current()),
    );
    rx.await.unwrap_or_else(|_| {
        Err(OpenAiError::internal(
            request_id,
            format!("{what} ended without a reply"),
        ))
    })
}
