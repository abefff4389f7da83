//! `POST images/generations`: priced per image by size and quality. The most the request can
//! cost (n × the image price, plus the model's request price) is reserved; the answer is settled
//! on the images the upstream actually returned, and the rest is released.
//! Spec: <https://platform.openai.com/docs/api-reference/images/create>.

use super::Reply;
use super::auth::Caller;
use super::catalog::Model;
use super::chat::Payer;
use super::media::{self, Attempt};
use super::throttle::{self, RateHeaders};
use crate::billing::Micros;
use crate::billing::settle::settle;
use crate::billing::{TokenUsage, UsageSource, UsageStatus, book::Held};
use crate::db::billing::UsageRecord;
use crate::error::OpenAiError;
use crate::provider::{Provider, UpstreamResponse, demo, openai};
use crate::state::AppState;
use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The upstream path and the usage records' `endpoint`.
const ENDPOINT: &str = "images/generations";

/// The model used when a request names none (as the aggregator API documents).
pub const DEFAULT_MODEL: &str = "dall-e-3";
/// The size used when a request names none.
pub const DEFAULT_SIZE: &str = "1024x1024";
/// The quality used when a request names none.
pub const DEFAULT_QUALITY: &str = "standard";

/// An image generation request, checked.
#[derive(Debug)]
pub struct ImageRequest {
    pub model: String,
    pub n: i64,
    pub size: String,
    pub quality: String,
    /// The client's JSON, sent on with the model name mapped.
    pub body: serde_json::Map<String, Value>,
}

fn invalid(param: &'static str, message: impl Into<String>) -> OpenAiError {
    OpenAiError::InvalidRequest {
        message: message.into(),
        param: Some(param),
    }
}

impl ImageRequest {
    pub fn parse(body: &[u8]) -> Result<ImageRequest, OpenAiError> {
        let mut map: serde_json::Map<String, Value> =
            serde_json::from_slice(body).map_err(|e| OpenAiError::InvalidRequest {
                message: format!("request body is not a valid JSON object: {e}"),
                param: None,
            })?;
        let model = match map.get("model") {
            None | Some(Value::Null) => DEFAULT_MODEL.to_owned(),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => return Err(invalid("model", "'model' must be a non-empty string")),
        };
        map.insert("model".into(), Value::String(model.clone()));
        match map.get("prompt") {
            Some(Value::String(s)) if !s.trim().is_empty() => {}
            Some(Value::String(_)) => return Err(invalid("prompt", "'prompt' must not be empty")),
            None | Some(Value::Null) => {
                return Err(invalid("prompt", "'prompt' is a required property"));
            }
            Some(_) => return Err(invalid("prompt", "'prompt' must be a string")),
        }
        let n = match map.get("n") {
            None | Some(Value::Null) => 1,
            Some(v) => match v.as_i64() {
                Some(n) if (1..=10).contains(&n) => n,
                _ => {
                    return Err(invalid(
                        "n",
                        format!("'n' must be an integer from 1 to 10, got {v}"),
                    ));
                }
            },
        };
        let text = |key: &'static str, default: &str| -> Result<String, OpenAiError> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(default.to_owned()),
                Some(Value::String(s)) if !s.is_empty() && s.len() <= 64 => Ok(s.clone()),
                Some(_) => Err(invalid(
                    key,
                    format!("'{key}' must be a short non-empty string"),
                )),
            }
        };
        let size = text("size", DEFAULT_SIZE)?;
        let quality = text("quality", DEFAULT_QUALITY)?;
        match map.get("response_format") {
            None | Some(Value::Null) => {}
            Some(Value::String(f)) if f == "url" || f == "b64_json" => {}
            Some(other) => {
                return Err(invalid(
                    "response_format",
                    format!("'response_format' must be \"url\" or \"b64_json\", got {other}"),
                ));
            }
        }
        Ok(ImageRequest {
            model,
            n,
            size,
            quality,
            body: map,
        })
    }
}

/// Runs one image generation for `caller`: the answer and its rate-limit headers.
pub async fn generate(
    state: &AppState,
    caller: &Caller,
    request_id: Arc<str>,
    body: Bytes,
) -> (Result<Reply, OpenAiError>, RateHeaders) {
    let started = Instant::now();
    let prepared = prepare(state, caller, &body);
    let model = prepared.as_ref().ok().map(|p| &*p.1);
    let admitted =
        match throttle::admit(state, caller, &request_id, model, 0, model.is_some()).await {
            Ok(a) => a,
            Err(refused) => return (Err(refused.error), refused.headers),
        };
    let result = match prepared {
        Err(e) => Err(e),
        Ok((req, model, user_id, unit)) => {
            let amount = Micros(
                unit.saturating_mul(req.n)
                    .saturating_add(model.price.request_micros),
            );
            let payer = Payer {
                caller,
                request_id: &request_id,
                user_id,
                model: &model,
                endpoint: ENDPOINT,
                stream: false,
                started,
            };
            match super::chat::reserve(state, &payer, amount).await {
                Err(e) => Err(e),
                Ok(held) => {
                    let task = Task {
                        state: state.clone(),
                        request_id: Arc::clone(&request_id),
                        user_id,
                        key_id: caller.key_id,
                        req,
                        model,
                        unit,
                        held,
                        reserved: amount,
                        started,
                        _permit: admitted.permit,
                    };
                    media::in_tracked_task(state, &request_id, "image task", task.run()).await
                }
            }
        }
    };
    (result, admitted.headers)
}

/// Checks the request, routes it and finds its image price.
fn prepare(
    state: &AppState,
    caller: &Caller,
    body: &[u8],
) -> Result<(ImageRequest, Arc<Model>, i64, i64), OpenAiError> {
    let req = ImageRequest::parse(body)?;
    let (user_id, model) = super::chat::route(state, caller, &req.model)?;
    let unit = model.media.image(&req.size, &req.quality).ok_or_else(|| {
        invalid(
            "size",
            format!(
                "model {} has no image price for size {} and quality {}",
                req.model, req.size, req.quality
            ),
        )
    })?;
    Ok((req, model, user_id, unit))
}

/// One image request after its reservation: runs in a tracked task, so a client that hangs up
/// cannot skip the settlement.
struct Task {
    state: AppState,
    request_id: Arc<str>,
    user_id: i64,
    key_id: Option<i64>,
    req: ImageRequest,
    model: Arc<Model>,
    /// Price of one image.
    unit: i64,
    held: Held,
    reserved: Micros,
    started: Instant,
    _permit: Option<crate::limits::Permit>,
}

impl Task {
    async fn run(self) -> Result<Reply, OpenAiError> {
        let state = &self.state;
        let first_byte = Duration::from_millis(state.config.upstream.first_byte_timeout_ms);
        let attempt = media::first_answer(state, &self.model, |channel| {
            let mut body = self.req.body.clone();
            let upstream = channel.upstream_model(&self.model.name).to_owned();
            body.insert("model".into(), Value::String(upstream));
            let body = serde_json::to_vec(&body).unwrap_or_default();
            let state = state.clone();
            async move {
                match channel.provider {
                    Provider::OpenAi => {
                        openai::post(&state.http, &channel, ENDPOINT, body, first_byte).await
                    }
                    Provider::Demo => demo::images(&body, crate::clock::now_ms() / 1000),
                    p => Ok(UpstreamResponse::unsupported(p, ENDPOINT)),
                }
            }
        })
        .await;
        let (reply, channel, delivered, status, http_status, error) = match attempt {
            Attempt::Answer {
                channel,
                status,
                content_type,
                body,
            } => {
                let parsed: Option<Value> = serde_json::from_slice(&body).ok();
                match parsed.as_ref().and_then(|v| v["data"].as_array()) {
                    Some(images) => {
                        let delivered = (images.len() as i64).min(self.req.n);
                        let reply = Reply::Full {
                            status,
                            content_type,
                            body,
                        };
                        (
                            Ok(reply),
                            Some(channel),
                            delivered,
                            UsageStatus::Ok,
                            status,
                            None,
                        )
                    }
                    None => {
                        let message = "upstream returned an image response without data".to_owned();
                        (
                            Err(OpenAiError::Upstream {
                                message: message.clone(),
                            }),
                            Some(channel),
                            0,
                            UsageStatus::UpstreamError,
                            502,
                            Some(message),
                        )
                    }
                }
            }
            Attempt::Rejected {
                channel,
                status,
                content_type,
                body,
            } => {
                let error = String::from_utf8_lossy(&body)
                    .chars()
                    .take(500)
                    .collect::<String>();
                let reply = Reply::Full {
                    status,
                    content_type,
                    body,
                };
                (
                    Ok(reply),
                    Some(channel),
                    0,
                    UsageStatus::UpstreamRejected,
                    status,
                    Some(error),
                )
            }
            Attempt::Failed { channel, error } => {
                let (status, http) = match &error {
                    OpenAiError::UpstreamTimeout { .. } => (UsageStatus::UpstreamTimeout, 504),
                    _ => (UsageStatus::UpstreamError, 502),
                };
                let text = error.to_string();
                (Err(error), channel, 0, status, http, Some(text))
            }
        };
        let cost = if delivered > 0 {
            Micros(
                self.unit
                    .saturating_mul(delivered)
                    .saturating_add(self.model.price.request_micros),
            )
        } else {
            Micros::ZERO
        };
        let record = UsageRecord {
            request_id: self.request_id.to_string(),
            user_id: self.user_id,
            key_id: self.key_id,
            model: self.model.name.clone(),
            upstream_model: channel
                .as_ref()
                .map(|c| c.upstream_model(&self.model.name).to_owned()),
            channel_id: channel.as_ref().map(|c| c.id),
            endpoint: ENDPOINT,
            stream: false,
            status,
            http_status,
            usage: TokenUsage::default(),
            usage_source: if delivered > 0 {
                UsageSource::Provider
            } else {
                UsageSource::None
            },
            reserved: self.reserved,
            cost,
            price_version: Some(self.model.price.version),
            latency_ms: self.started.elapsed().as_millis() as i64,
            ttft_ms: None,
            error,
            units: delivered,
        };
        settle(&state.book, &state.db, Some(self.held), &record).await;
        reply
    }
}
