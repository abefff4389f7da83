//! Upstream wire formats, a closed set: [`Provider::OpenAi`] (any OpenAI-compatible upstream)
//! and [`Provider::Demo`] (a local, deterministic model for trying Tollgate offline). Each
//! provider turns a prepared request into an [`UpstreamResponse`]: a status, a content type and
//! a body stream, which the gateway meters the same way whatever produced it.

pub mod demo;
pub mod openai;

use bytes::Bytes;
use futures_util::stream::BoxStream;

/// The provider types a channel may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    OpenAi,
    Demo,
}

impl Provider {
    pub fn parse(s: &str) -> Option<Provider> {
        match s {
            "openai" => Some(Provider::OpenAi),
            "demo" => Some(Provider::Demo),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Demo => "demo",
        }
    }

    /// Every accepted name, for error messages.
    pub const NAMES: &'static str = "openai, demo";
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
    /// Whether the body is a server-sent event stream.
    pub fn is_event_stream(&self) -> bool {
        self.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("text/event-stream"))
    }
}
