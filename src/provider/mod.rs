//! Upstream wire formats, a closed set: [`Provider::OpenAi`] (any OpenAI-compatible upstream),
//! [`Provider::Anthropic`] (the Messages API, translated to and from chat completions),
//! [`Provider::Video`] (a task-style video API: create, poll, fetch) and [`Provider::Demo`] (a
//! local, deterministic model for trying Tollgate offline). Each provider turns a prepared
//! request into an [`UpstreamResponse`] in OpenAI's shape: a status, a content type and a body
//! stream, which the gateway meters the same way whatever produced it.

pub mod anthropic;
pub mod demo;
pub mod openai;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

/// The provider types a channel may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    OpenAi,
    Anthropic,
    Video,
    Demo,
}

impl Provider {
    pub fn parse(s: &str) -> Option<Provider> {
        match s {
            "openai" => Some(Provider::OpenAi),
            "anthropic" => Some(Provider::Anthropic),
            "video" => Some(Provider::Video),
            "demo" => Some(Provider::Demo),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Video => "video",
            Provider::Demo => "demo",
        }
    }

    /// Every accepted name, for error messages.
    pub const NAMES: &'static str = "openai, anthropic, video, demo";
}

/// How an upstream call failed before a response could be read.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to upstream: {0}")]
    Connect(String),
    #[error("upstream did not answer within {0} ms")]
    Timeout(u64),
    #[error("upstream request failed: {0}")]
    Other(String),
}

/// A response (or the start of one) from an upstream.
pub struct UpstreamResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: BoxStream<'static, Result<Bytes, UpstreamError>>,
}

impl UpstreamResponse {
    /// A complete JSON response.
    pub fn json(status: u16, body: Vec<u8>) -> UpstreamResponse {
        UpstreamResponse {
            status,
            content_type: Some("application/json".into()),
            body: futures_util::stream::iter([Ok(Bytes::from(body))]).boxed(),
        }
    }

    /// A 400 in OpenAI's error shape for an endpoint `provider` does not offer.
    pub fn unsupported(provider: Provider, endpoint: &str) -> UpstreamResponse {
        let message = format!(
            "this model is served by a {} channel, which has no {endpoint} endpoint",
            provider.as_str()
        );
        let body = serde_json::json!({"error": {"message": message, "type": "invalid_request_error",
            "code": "unsupported_endpoint", "param": null}});
        UpstreamResponse::json(400, body.to_string().into_bytes())
    }

    /// Whether the body is a server-sent event stream.
    pub fn is_event_stream(&self) -> bool {
        self.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("text/event-stream"))
    }
}
