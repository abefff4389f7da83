//! Upstream wire formats, a closed set: [`Provider::OpenAi`] (any OpenAI-compatible upstream),
//! [`Provider::Anthropic`] (the Messages API, translated to and from chat completions),
//! [`Provider::Video`] (a task-style video API: create, poll, fetch) and [`Provider::Demo`] (a
//! local, deterministic model for trying Tollgate offline). Each provider turns a prepared
//! request into an [`UpstreamResponse`] in OpenAI's shape: a status, a content type and a body
//! stream, which the gateway meters the same way whatever produced it.

pub mod anthropic;
pub mod demo;
pub mod openai;
pub mod sse;
pub mod video;

use crate::secrets::Secret;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use std::collections::HashMap;

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

/// The OpenAI endpoints metered by tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    /// Legacy `completions` (a `prompt`, answers in `choices[].text`).
    Completions,
    Embeddings,
}

impl Endpoint {
    /// The path under the upstream's `/v1` root, also the usage record's `endpoint`.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat/completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// `Bearer {key}` as a sensitive header value (`None` without a key, or for a key that is no
/// header value: reqwest then reports it when the request is built).
fn bearer(key: &Secret) -> Option<reqwest::header::HeaderValue> {
    if key.is_empty() {
        return None;
    }
    let mut v = reqwest::header::HeaderValue::try_from(format!("Bearer {}", key.expose())).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// An upstream channel, ready to call.
#[derive(Debug)]
pub struct Channel {
    pub id: i64,
    pub name: String,
    pub provider: Provider,
    /// The upstream's `/v1` root, without a trailing slash.
    pub base_url: String,
    pub api_key: Secret,
    pub priority: i64,
    pub weight: i64,
    model_map: HashMap<String, String>,
    /// `Bearer {api_key}`, built once (`None` without a key or when it is no header value).
    bearer: Option<reqwest::header::HeaderValue>,
    /// `{base_url}/{path}` parsed (`None`: it does not parse), per path posted to (a handful:
    /// the endpoints).
    urls: crate::memo::Memo<Option<reqwest::Url>>,
}

impl Channel {
    /// A stored channel, ready to call (`None` for a provider this build does not know).
    pub fn from_row(row: &crate::db::catalog::ChannelRow) -> Option<Channel> {
        Some(Channel {
            id: row.id,
            name: row.name.clone(),
            provider: Provider::parse(&row.provider)?,
            base_url: row.base_url.trim_end_matches('/').to_owned(),
            api_key: row.api_key.clone(),
            priority: row.priority,
            weight: row.weight,
            model_map: serde_json::from_str(&row.model_map).unwrap_or_default(),
            bearer: bearer(&row.api_key),
            urls: crate::memo::Memo::new(16),
        })
    }

    /// A POST of `body` (JSON) to `{base_url}/{path}`, with the channel's key. The URL is parsed
    /// once per path; one that does not parse is left to reqwest, which reports it.
    pub fn post_json(
        &self,
        http: &reqwest::Client,
        path: &str,
        body: Vec<u8>,
    ) -> reqwest::RequestBuilder {
        let url = self.urls.get(path, || {
            reqwest::Url::parse(&format!("{}/{}", self.base_url, path)).ok()
        });
        let request = match url {
            Some(url) => http.post(url),
            None => http.post(format!("{}/{}", self.base_url, path)),
        };
        let request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        match &self.bearer {
            Some(auth) => request.header(reqwest::header::AUTHORIZATION, auth.clone()),
            None if !self.api_key.is_empty() => request.bearer_auth(self.api_key.expose()),
            None => request,
        }
    }

    /// The name the upstream knows `model` by.
    pub fn upstream_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.model_map.get(model).map_or(model, String::as_str)
    }
}

/// What one upstream call asks for.
pub enum Call<'a> {
    /// A token-metered endpoint with its prepared body; `max_tokens` is the output cap for
    /// providers that need one, `limits` bound what a provider reads whole (Anthropic's answer,
    /// to translate it).
    Tokens {
        endpoint: Endpoint,
        body: Vec<u8>,
        max_tokens: i64,
        limits: BodyLimits,
    },
    /// `images/generations`.
    Images { body: Vec<u8> },
    /// Create a video task: the body from [`video::create_body`] with its content type, and
    /// Tollgate's id of the task.
    CreateVideo {
        body: (String, Vec<u8>),
        task: &'a str,
    },
    /// How a video task is doing (the provider's id of it).
    PollVideo { task: &'a str },
    /// A finished video's file, at `url` as the provider reported it (`None`: it named none).
    VideoFile { url: Option<&'a str> },
}

impl Call<'_> {
    /// What the call is, for error messages.
    fn name(&self) -> &'static str {
        match self {
            Call::Tokens { endpoint, .. } => endpoint.path(),
            Call::Images { .. } => "images/generations",
            Call::CreateVideo { .. } | Call::PollVideo { .. } | Call::VideoFile { .. } => {
                "video task"
            }
        }
    }
}

/// Makes one call to `channel`: the one place a provider is chosen. `first_byte` bounds the wait
/// for the response headers.
pub async fn call(
    http: &reqwest::Client,
    channel: &Channel,
    call: Call<'_>,
    first_byte: std::time::Duration,
) -> Result<UpstreamResponse, UpstreamError> {
    match (channel.provider, call) {
        (Provider::Demo, call) => demo::call(call, crate::clock::now_ms() / 1000),
        (Provider::OpenAi, Call::Tokens { endpoint, body, .. }) => {
            openai::post(http, channel, endpoint.path(), body, first_byte).await
        }
        (Provider::OpenAi, Call::Images { body }) => {
            openai::post(http, channel, "images/generations", body, first_byte).await
        }
        (
            Provider::Anthropic,
            Call::Tokens {
                endpoint: Endpoint::Chat,
                body,
                max_tokens,
                limits,
            },
        ) => anthropic::chat(http, channel, body, max_tokens, first_byte, limits).await,
        (Provider::OpenAi | Provider::Video, Call::CreateVideo { body, .. }) => {
            video::create(http, channel, body, first_byte).await
        }
        (Provider::OpenAi | Provider::Video, Call::PollVideo { task }) => {
            video::poll(http, channel, task, first_byte).await
        }
        (Provider::OpenAi | Provider::Video, Call::VideoFile { url }) => match url {
            Some(url) => video::fetch(http, Some(channel), url, first_byte).await,
            None => Ok(video::no_file()),
        },
        (provider, call) => Ok(UpstreamResponse::unsupported(provider, call.name())),
    }
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

impl UpstreamError {
    /// The `outcome` label of `tollgate_upstream_requests_total` for this failure.
    pub fn outcome(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect_error",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Other(_) => "error",
        }
    }
}

/// How much of a whole (non-streaming) upstream body is read, and for how long: silence between
/// chunks, size, and the request's deadline.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub chunk_timeout: std::time::Duration,
    pub max_bytes: usize,
    pub deadline: tokio::time::Instant,
}

impl BodyLimits {
    /// The configured limits (`[upstream]`) for a request that started at `started`.
    pub fn for_request(
        c: &crate::config::UpstreamConfig,
        started: std::time::Instant,
    ) -> BodyLimits {
        BodyLimits {
            chunk_timeout: std::time::Duration::from_millis(c.chunk_timeout_ms),
            max_bytes: c.max_response_bytes,
            deadline: tokio::time::Instant::from_std(started)
                + std::time::Duration::from_millis(c.max_request_ms),
        }
    }
}

/// Why reading a whole upstream body stopped short.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream body stalled for {0} ms")]
    Stalled(u64),
    #[error("upstream body did not end before the request's deadline")]
    Deadline,
    #[error("upstream response is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Broken(String),
}

/// Reads a whole upstream body within `limits` (the one reader of whole bodies: chat, media,
/// Anthropic's translation and the admin channel test all use it).
pub async fn read_whole(
    body: &mut BoxStream<'static, Result<Bytes, UpstreamError>>,
    limits: BodyLimits,
) -> Result<Bytes, BodyError> {
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(limits.chunk_timeout, body.next()) => next,
            _ = tokio::time::sleep_until(limits.deadline) => return Err(BodyError::Deadline),
        };
        match next {
            Err(_) => {
                return Err(BodyError::Stalled(limits.chunk_timeout.as_millis() as u64));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Broken(e.to_string())),
            Ok(Some(Ok(chunk))) => {
                let have = first.as_ref().map_or(0, Bytes::len) + rest.len();
                if have + chunk.len() > limits.max_bytes {
                    return Err(BodyError::TooLarge(limits.max_bytes));
                }
                // One chunk is kept as it is; only a body of several is copied together.
                match &first {
                    None => first = Some(chunk),
                    Some(f) => {
                        if rest.is_empty() {
                            rest.extend_from_slice(f);
                        }
                        rest.extend_from_slice(&chunk);
                    }
                }
            }
        }
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        Bytes::from(rest)
    })
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

/// A reqwest error with its causes (its own text alone rarely says what went wrong).
pub fn error_text(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Sends `request`, waiting up to `first_byte_timeout` for the response headers; classifies
/// what went wrong.
pub async fn send(
    request: reqwest::RequestBuilder,
    first_byte_timeout: std::time::Duration,
) -> Result<reqwest::Response, UpstreamError> {
    let timeout_ms = first_byte_timeout.as_millis() as u64;
    match tokio::time::timeout(first_byte_timeout, request.send()).await {
        Err(_) => Err(UpstreamError::Timeout(timeout_ms)),
        Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect(error_text(&e))),
        Ok(Err(e)) if e.is_timeout() => Err(UpstreamError::Timeout(timeout_ms)),
        Ok(Err(e)) => Err(UpstreamError::Other(error_text(&e))),
        Ok(Ok(r)) => Ok(r),
    }
}

impl UpstreamResponse {
    /// A reqwest response as it is: status, content type and the body as a stream.
    pub fn from_reqwest(response: reqwest::Response) -> UpstreamResponse {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .bytes_stream()
            .map(|r| r.map_err(|e| UpstreamError::Other(error_text(&e))))
            .boxed();
        UpstreamResponse {
            status,
            content_type,
            body,
        }
    }
}
