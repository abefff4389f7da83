//! The `demo` provider: answers chat completions, legacy completions and embeddings locally and
//! deterministically, in OpenAI's JSON and SSE shapes with a usage block, and generates images
//! (a small PNG) and videos (instantly finished tasks), so the quick start works offline. A
//! documented feature for trying Tollgate, never a stand-in for an upstream in tests of the
//! proxy path.

use super::{Call, Endpoint, UpstreamError, UpstreamResponse};
use crate::tokens::Budget;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// Bytes of text one demo answer counts exactly (the rest is extrapolated).
const DEMO_COUNT_BYTES: usize = 64 * 1024;

/// Answers one call locally (`created`: the answer's timestamp, in seconds).
pub fn call(call: Call<'_>, created: i64) -> Result<UpstreamResponse, UpstreamError> {
    match call {
        Call::Tokens { endpoint, body, .. } => answer(endpoint, &body, created),
        Call::Images { body } => images(&body, created),
        Call::CreateVideo { task, .. } => Ok(UpstreamResponse::json(
            200,
            json!({"task_id": format!("demo-{task}")})
                .to_string()
                .into_bytes(),
        )),
        // Demo tasks finish at once, with the seconds asked for.
        Call::PollVideo { .. } => Ok(UpstreamResponse::json(
            200,
            br#"{"status":"succeeded"}"#.to_vec(),
        )),
        Call::VideoFile { .. } => Ok(UpstreamResponse {
            status: 200,
            content_type: Some("video/mp4".into()),
            body: futures_util::stream::iter([Ok(Bytes::from_static(super::video::DEMO_VIDEO))])
                .boxed(),
        }),
    }
}

/// The text of the last user message (string content or text parts).
fn last_user_text(body: &Value) -> String {
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return String::new();
    };
    let Some(last) = messages.iter().rev().find(|m| m["role"] == "user") else {
        return String::new();
    };
    match &last["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Answers a request body (already prepared for upstream) to a token-metered endpoint.
pub fn answer(
    endpoint: Endpoint,
    body: &[u8],
    created: i64,
) -> Result<UpstreamResponse, UpstreamError> {
    match endpoint {
        Endpoint::Chat => chat(body, created),
        Endpoint::Completions => completion(body, created),
        Endpoint::Embeddings => embedding(body),
    }
}

/// The strings of a `prompt` or `input` (token-id arrays are skipped).
fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// A legacy completion: echoes the prompt (no streaming variant; asks for JSON).
fn completion(body: &[u8], created: i64) -> Result<UpstreamResponse, UpstreamError> {
    let request: Value =
        serde_json::from_slice(body).map_err(|e| UpstreamError::Other(e.to_string()))?;
    let prompt = strings(&request["prompt"]).join(" ");
    let text = format!(" (demo) You wrote: {prompt}");
    let mut budget = Budget::new(DEMO_COUNT_BYTES);
    let prompt_tokens = budget.count(&prompt);
    let completion_tokens = budget.count(&text);
    let model = request["model"].as_str().unwrap_or("demo");
    let response = json!({
        "id": "cmpl-demo", "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": null}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    });
    Ok(UpstreamResponse::json(
        200,
        response.to_string().into_bytes(),
    ))
}

/// Embeddings: an 8-dimensional vector per input, derived from its bytes.
fn embedding(body: &[u8]) -> Result<UpstreamResponse, UpstreamError> {
    use sha2::Digest;
    let request: Value =
        serde_json::from_slice(body).map_err(|e| UpstreamError::Other(e.to_string()))?;
    let inputs = strings(&request["input"]);
    let mut tokens = 0;
    let mut budget = Budget::new(DEMO_COUNT_BYTES);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            tokens += budget.count(text);
            let digest = sha2::Sha256::digest(text.as_bytes());
            let vector: Vec<f64> = digest[..8]
                .iter()
                .map(|&b| f64::from(b) / 255.0 - 0.5)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": vector})
        })
        .collect();
    let model = request["model"].as_str().unwrap_or("demo");
    let response = json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
    Ok(UpstreamResponse::json(
        200,
        response.to_string().into_bytes(),
    ))
}

/// Answers a chat completion request body (already prepared for upstream).
fn chat(body: &[u8], created: i64) -> Result<UpstreamResponse, UpstreamError> {
    let request: Value =
        serde_json::from_slice(body).map_err(|e| UpstreamError::Other(e.to_string()))?;
    let model = request["model"].as_str().unwrap_or("demo").to_owned();
    let said = last_user_text(&request);
    let reply = format!("Hello from Tollgate's demo model. You said: {said}");
    // The demo answers on the request's own thread: its counts read a small budget.
    let mut budget = Budget::new(DEMO_COUNT_BYTES);
    let prompt_tokens = request.get("messages").map_or(0, |m| {
        crate::tokens::count_chat_prompt(m, None, &mut budget)
    });
    let completion_tokens = budget.count(&reply);
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let id = "chatcmpl-demo";
    if request["stream"] == true {
        let include_usage = request["stream_options"]["include_usage"] == true;
        let chunk = |delta: Value, finish: Value| {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut events = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        for word in reply.split_inclusive(' ') {
            events.push(chunk(json!({"content": word}), Value::Null));
        }
        events.push(chunk(json!({}), json!("stop")));
        if include_usage {
            events.push(
                json!({"id": id, "object": "chat.completion.chunk", "created": created,
                               "model": model, "choices": [], "usage": usage}),
            );
        }
        let mut frames: Vec<Result<Bytes, UpstreamError>> = events
            .iter()
            .map(|e| Ok(Bytes::from(format!("data: {e}\n\n"))))
            .collect();
        frames.push(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
        return Ok(UpstreamResponse {
            status: 200,
            content_type: Some("text/event-stream".into()),
            body: futures_util::stream::iter(frames).boxed(),
        });
    }
    let response = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        "usage": usage,
    });
    Ok(UpstreamResponse {
        status: 200,
        content_type: Some("application/json".into()),
        body: futures_util::stream::iter([Ok(Bytes::from(response.to_string()))]).boxed(),
    })
}

/// A one-pixel PNG, the demo's every image.
pub const DEMO_PNG_BASE64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

/// Answers an image generation body: `n` images, as base64 or as data URLs.
pub fn images(body: &[u8], created: i64) -> Result<UpstreamResponse, UpstreamError> {
    let request: Value =
        serde_json::from_slice(body).map_err(|e| UpstreamError::Other(e.to_string()))?;
    let n = request["n"].as_i64().unwrap_or(1).clamp(1, 10);
    let prompt = request["prompt"].as_str().unwrap_or_default();
    let b64 = request["response_format"] == "b64_json";
    let data: Vec<Value> = (0..n)
        .map(|_| {
            if b64 {
                json!({"b64_json": DEMO_PNG_BASE64, "revised_prompt": prompt})
            } else {
                json!({"url": format!("data:image/png;base64,{DEMO_PNG_BASE64}"), "revised_prompt": prompt})
            }
        })
        .collect();
    let response = json!({"created": created, "data": data});
    Ok(UpstreamResponse::json(
        200,
        response.to_string().into_bytes(),
    ))
}
