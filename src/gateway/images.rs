//! `POST images/generations`: priced per image by size and quality. The most the request can
//! cost (n × the image price, plus the model's request price) is reserved; the answer is settled
//! on the images the upstream actually returned, and the rest is released.
//! Spec: <https://platform.openai.com/docs/api-reference/images/create>.

use super::Reply;
use super::auth::Caller;
use super::catalog::Model;
use super::failover::{self, Attempt, Detached};
use super::meter::{self, Ended, Payer};
use super::throttle::{self, RateHeaders};
use crate::billing::settle::settle;
use crate::billing::{Micros, PaidBy, UsageSource, UsageStatus, book::Held, per_unit};
use crate::error::OpenAiError;
use crate::provider::{self, BodyLimits, Call, read_whole};
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
    generate_priced(state, caller, request_id, body, None, PaidBy::Credits).await
}

/// Runs one image generation for a platform feature, in process, at `flat` per image delivered
/// (instead of the model's image prices): the same limits, failover, reservation and settlement.
pub async fn generate_as(
    state: &AppState,
    caller: &Caller,
    request_id: Arc<str>,
    body: Bytes,
    flat: Micros,
    paid_by: PaidBy,
) -> (Result<Reply, OpenAiError>, RateHeaders) {
    generate_priced(state, caller, request_id, body, Some(flat), paid_by).await
}

async fn generate_priced(
    state: &AppState,
    caller: &Caller,
    request_id: Arc<str>,
    body: Bytes,
    flat: Option<Micros>,
    paid_by: PaidBy,
) -> (Result<Reply, OpenAiError>, RateHeaders) {
    let started = Instant::now();
    let prepared = prepare(state, caller, &body, flat);
    let model = prepared.as_ref().ok().map(|p| &*p.1);
    let admitted =
        match throttle::admit(state, caller, &request_id, model, 0, model.is_some()).await {
            Ok(a) => a,
            Err(refused) => return (Err(refused.error), refused.headers),
        };
    let result = match prepared {
        Err(e) => Err(e),
        Ok((req, model, user_id, unit)) => {
            // A flat price is the whole price of an image; the model's request price is not added.
            let request_micros = if flat.is_some() {
                0
            } else {
                model.price.request_micros
            };
            let amount = per_unit(unit, req.n, request_micros);
            let mut payer = Payer::new(
                Arc::clone(&request_id),
                user_id,
                caller.key_id,
                &model,
                ENDPOINT,
                false,
            );
            payer.paid_by = paid_by;
            match meter::reserve(state, &payer, amount, started).await {
                Err(e) => Err(e),
                Ok(held) => {
                    let task = Task {
                        state: state.clone(),
                        payer,
                        req,
                        model,
                        unit,
                        request_micros,
                        held,
                        reserved: amount,
                        started,
                        _permit: admitted.permit,
                    };
                    meter::in_tracked_task(state, &request_id, "image task", task.run()).await
                }
            }
        }
    };
    (result, admitted.headers)
}

/// Checks the request, routes it and finds its image price (`flat` when given).
fn prepare(
    state: &AppState,
    caller: &Caller,
    body: &[u8],
    flat: Option<Micros>,
) -> Result<(ImageRequest, Arc<Model>, i64, i64), OpenAiError> {
    let req = ImageRequest::parse(body)?;
    let (user_id, model) = meter::route(state, caller, &req.model)?;
    if let Some(flat) = flat {
        return Ok((req, model, user_id, flat.0.max(0)));
    }
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
    payer: Payer,
    req: ImageRequest,
    model: Arc<Model>,
    /// Price of one image.
    unit: i64,
    /// Added once to what the images cost.
    request_micros: i64,
    held: Held,
    reserved: Micros,
    started: Instant,
    _permit: Option<crate::limits::Permit>,
}

impl Task {
    async fn run(self) -> Result<Reply, OpenAiError> {
        let state = &self.state;
        let first_byte = Duration::from_millis(state.config.upstream.first_byte_timeout_ms);
        let attempt =
            failover::first_answer(state, &self.model, self.started, &mut Detached, |channel| {
                let mut body = self.req.body.clone();
                let upstream = channel.upstream_model(&self.model.name).to_owned();
                body.insert("model".into(), Value::String(upstream));
                let body = serde_json::to_vec(&body).unwrap_or_default();
                let http = &state.http;
                async move { provider::call(http, &channel, Call::Images { body }, first_byte).await }
            })
            .await;
        let limits = BodyLimits::for_request(&state.config.upstream, self.started);
        let (reply, channel, ended) = match attempt {
            Attempt::Answer {
                channel,
                mut response,
            } => match read_whole(&mut response.body, limits).await {
                Err(e) => {
                    let message = e.to_string();
                    state.health.failure(&channel, "error", &message);
                    let ended =
                        Ended::nothing(UsageStatus::UpstreamError, 502, Some(message.clone()));
                    (Err(OpenAiError::Upstream { message }), Some(channel), ended)
                }
                Ok(body) => {
                    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
                    match parsed.as_ref().and_then(|v| v["data"].as_array()) {
                        Some(images) => {
                            let delivered = (images.len() as i64).min(self.req.n);
                            let reply = Reply::Full {
                                status: response.status,
                                content_type: response.content_type,
                                body,
                            };
                            let ended = Ended {
                                units: delivered,
                                source: UsageSource::Provider,
                                cost: if delivered > 0 {
                                    per_unit(self.unit, delivered, self.request_micros)
                                } else {
                                    Micros::ZERO
                                },
                                http_status: response.status,
                                ..Ended::nothing(UsageStatus::Ok, 200, None)
                            };
                            (Ok(reply), Some(channel), ended)
                        }
                        None => {
                            let message =
                                "upstream returned an image response without data".to_owned();
                            let ended = Ended::nothing(
                                UsageStatus::UpstreamError,
                                502,
                                Some(message.clone()),
                            );
                            (Err(OpenAiError::Upstream { message }), Some(channel), ended)
                        }
                    }
                }
            },
            Attempt::Rejected {
                channel,
                status,
                content_type,
                body,
                detail,
            } => {
                let reply = Reply::Full {
                    status,
                    content_type,
                    body,
                };
                let ended = Ended::nothing(UsageStatus::UpstreamRejected, status, Some(detail));
                (Ok(reply), Some(channel), ended)
            }
            Attempt::Failed {
                channel,
                error,
                detail,
            } => {
                let (status, http) = Attempt::failure_status(&error);
                (
                    Err(error),
                    channel,
                    Ended::nothing(status, http, Some(detail)),
                )
            }
            // Detached: the loop never reports the client gone.
            Attempt::ClientGone { channel } => {
                let message = "client closed the connection".to_owned();
                let ended =
                    Ended::nothing(UsageStatus::ClientDisconnected, 499, Some(message.clone()));
                (Err(OpenAiError::Upstream { message }), Some(channel), ended)
            }
        };
        let ended = ended.via(channel.as_deref(), &self.model.name);
        let latency = self.started.elapsed().as_millis() as i64;
        let record = self.payer.record(self.reserved, latency, ended);
        settle(&state.book, &state.db, Some(self.held), &record).await;
        reply
    }
}
