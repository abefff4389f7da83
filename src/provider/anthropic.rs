//! The `anthropic` provider: chat completions translated to Anthropic's Messages API and the
//! answers translated back, so the gateway meters and forwards them like any OpenAI answer.
//!
//! Request: `system`/`developer` messages become `system`; text and image parts become content
//! blocks (data URLs as base64 sources, other URLs as url sources); assistant `tool_calls`
//! become `tool_use` blocks and `tool` messages `tool_result` blocks; consecutive messages of one
//! role are merged, as the API requires alternating roles; `tools`, `tool_choice`, `stop`,
//! `temperature`, `top_p`, `user` and `max_tokens` are mapped. Response: text, `tool_use` and
//! `thinking` blocks become `content`, `tool_calls` and `reasoning_content`; stop reasons map to
//! finish reasons; usage counts cache writes and reads into `prompt_tokens`, with the reads as
//! `prompt_tokens_details.cached_tokens` and the writes as `cache_write_tokens`.
//! Streams: `message_start`, `content_block_*`, `message_delta` and `error` events become
//! chat completion chunks, a usage chunk and `[DONE]`. Answers name the model as requested (the
//! gateway maps it back to the public name), not Anthropic's dated snapshot.
//! Spec: <https://docs.anthropic.com/en/api/messages> and
//! <https://docs.anthropic.com/en/api/messages-streaming>.

use super::Channel;
use super::sse::{EventSplitter, event_data};
use super::{UpstreamError, UpstreamResponse};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::{Map, Value, json};
use std::time::Duration;

/// The API version sent in `anthropic-version`.
pub const API_VERSION: &str = "2023-06-01";

/// An OpenAI error body with `status`, as an upstream response.
fn openai_error(status: u16, kind: &str, message: &str) -> UpstreamResponse {
    let body = json!({"error": {"message": message, "type": kind, "code": null, "param": null}});
    UpstreamResponse::json(status, body.to_string().into_bytes())
}

/// Sends a chat completion request (OpenAI's body, model already mapped) as a Messages request.
/// `max_tokens` is used when the request sets no output limit (the API requires one).
pub async fn chat(
    http: &reqwest::Client,
    channel: &Channel,
    body: Vec<u8>,
    max_tokens: i64,
    first_byte_timeout: Duration,
    limits: super::BodyLimits,
) -> Result<UpstreamResponse, UpstreamError> {
    let request: Value =
        serde_json::from_slice(&body).map_err(|e| UpstreamError::Other(e.to_string()))?;
    let translated = match to_messages_request(&request, max_tokens) {
        Ok(t) => t,
        Err(message) => return Ok(openai_error(400, "invalid_request_error", &message)),
    };
    let stream = request["stream"] == true;
    let include_usage = request["stream_options"]["include_usage"] == true;
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    let url = format!("{}/messages", channel.base_url);
    let send = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("x-api-key", channel.api_key.expose())
        .header("anthropic-version", API_VERSION)
        .body(translated.to_string());
    let response = UpstreamResponse::from_reqwest(super::send(send, first_byte_timeout).await?);
    let status = response.status;
    let is_stream = response.is_event_stream();
    let mut body = response.body;
    if (200..300).contains(&status) && stream && is_stream {
        return Ok(UpstreamResponse {
            status,
            content_type: Some("text/event-stream".into()),
            body: translate_stream(body, model, include_usage),
        });
    }
    let whole = super::read_whole(&mut body, limits)
        .await
        .map_err(|e| UpstreamError::Other(e.to_string()))?;
    let translated = if (200..300).contains(&status) {
        match serde_json::from_slice::<Value>(&whole) {
            Ok(message) => from_message(&message, &model, now_s()).to_string(),
            Err(_) => String::from_utf8_lossy(&whole).into_owned(),
        }
    } else {
        error_body(&whole).to_string()
    };
    Ok(UpstreamResponse::json(status, translated.into_bytes()))
}

fn now_s() -> i64 {
    crate::clock::now_ms() / 1000
}

/// An Anthropic error body (`{"type":"error","error":{"type","message"}}`) in OpenAI's shape.
fn error_body(body: &[u8]) -> Value {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = &parsed["error"];
    let message = error["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect());
    let kind = error["type"].as_str().unwrap_or("upstream_error");
    json!({"error": {"message": message, "type": kind, "code": kind, "param": null}})
}

/// One OpenAI content part as an Anthropic content block.
fn content_block(part: &Value) -> Result<Value, String> {
    match part["type"].as_str() {
        Some("text") => {
            let mut block =
                json!({"type": "text", "text": part["text"].as_str().unwrap_or_default()});
            if let Some(c) = part.get("cache_control") {
                block["cache_control"] = c.clone();
            }
            Ok(block)
        }
        Some("image_url") => {
            let url = part["image_url"]["url"]
                .as_str()
                .or_else(|| part["image_url"].as_str())
                .ok_or("an image_url part has no url")?;
            let source = match url.strip_prefix("data:") {
                Some(rest) => {
                    let (media_type, data) = rest
                        .split_once(";base64,")
                        .ok_or("an image data URL must be base64 (data:<type>;base64,<data>)")?;
                    json!({"type": "base64", "media_type": media_type, "data": data})
                }
                None => json!({"type": "url", "url": url}),
            };
            Ok(json!({"type": "image", "source": source}))
        }
        other => Err(format!(
            "content parts of type {} cannot be sent to an Anthropic model",
            other.unwrap_or("(none)")
        )),
    }
}

/// A message's content as Anthropic blocks (a string becomes one text block).
fn content_blocks(content: &Value) -> Result<Vec<Value>, String> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => parts.iter().map(content_block).collect(),
        _ => Err("message content must be a string or an array of parts".into()),
    }
}

/// The text of a system message's content.
fn system_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Translates a chat completion request into a Messages request.
pub fn to_messages_request(req: &Value, default_max_tokens: i64) -> Result<Value, String> {
    if req["n"].as_i64().is_some_and(|n| n > 1) {
        return Err("'n' greater than 1 is not supported by Anthropic models".into());
    }
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    let push = |messages: &mut Vec<Value>, role: &str, blocks: Vec<Value>| {
        if blocks.is_empty() {
            return;
        }
        if let Some(last) = messages.last_mut()
            && last["role"] == role
            && let Some(content) = last["content"].as_array_mut()
        {
            content.extend(blocks);
            return;
        }
        messages.push(json!({"role": role, "content": blocks}));
    };
    for m in req["messages"].as_array().into_iter().flatten() {
        match m["role"].as_str().unwrap_or_default() {
            "system" | "developer" => system.push(system_text(&m["content"])),
            "user" => push(&mut messages, "user", content_blocks(&m["content"])?),
            "assistant" => {
                let mut blocks = content_blocks(&m["content"])?;
                for call in m["tool_calls"].as_array().into_iter().flatten() {
                    let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
                    let input: Value = serde_json::from_str(if arguments.trim().is_empty() {
                        "{}"
                    } else {
                        arguments
                    })
                    .map_err(|_| "a tool call's arguments are not a JSON object".to_owned())?;
                    blocks.push(json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": input}));
                }
                push(&mut messages, "assistant", blocks);
            }
            "tool" => {
                let content = match &m["content"] {
                    Value::String(s) => Value::String(s.clone()),
                    other => Value::Array(content_blocks(other)?),
                };
                let block = json!({"type": "tool_result", "tool_use_id": m["tool_call_id"], "content": content});
                push(&mut messages, "user", vec![block]);
            }
            other => return Err(format!("message role {other:?} is not supported")),
        }
    }
    if messages.is_empty() {
        return Err("at least one user or assistant message is required".into());
    }
    let max_tokens = req["max_completion_tokens"]
        .as_i64()
        .or_else(|| req["max_tokens"].as_i64())
        .unwrap_or(default_max_tokens);
    let mut out = Map::new();
    out.insert("model".into(), req["model"].clone());
    out.insert("messages".into(), Value::Array(messages));
    out.insert("max_tokens".into(), json!(max_tokens));
    if !system.is_empty() {
        out.insert("system".into(), json!(system.join("\n\n")));
    }
    for key in ["temperature", "top_p", "top_k"] {
        if let Some(v) = req.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    match &req["stop"] {
        Value::String(s) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Value::Array(a) => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if req["stream"] == true {
        out.insert("stream".into(), json!(true));
    }
    if let Some(user) = req["user"].as_str() {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(tools) = req["tools"].as_array() {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let f = &t["function"];
                let mut tool = json!({"name": f["name"], "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"}))});
                if let Some(d) = f["description"].as_str() {
                    tool["description"] = json!(d);
                }
                tool
            })
            .collect();
        out.insert("tools".into(), Value::Array(tools));
    }
    let mut choice = match &req["tool_choice"] {
        Value::String(s) if s == "required" => Some(json!({"type": "any"})),
        Value::String(s) if s == "none" => Some(json!({"type": "none"})),
        Value::String(s) if s == "auto" => Some(json!({"type": "auto"})),
        Value::Object(o) => o
            .get("function")
            .and_then(|f| f["name"].as_str())
            .map(|name| json!({"type": "tool", "name": name})),
        _ => None,
    };
    if req["parallel_tool_calls"] == false && req["tools"].is_array() {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        c["disable_parallel_tool_use"] = json!(true);
    }
    if let Some(c) = choice {
        out.insert("tool_choice".into(), c);
    }
    Ok(Value::Object(out))
}

/// An Anthropic stop reason as an OpenAI finish reason.
fn finish_reason(stop: &Value) -> Value {
    match stop.as_str() {
        None => Value::Null,
        Some("max_tokens") | Some("model_context_window_exceeded") => json!("length"),
        Some("tool_use") => json!("tool_calls"),
        Some("refusal") => json!("content_filter"),
        Some(_) => json!("stop"),
    }
}

/// Anthropic usage as an OpenAI usage block: cache writes and reads are part of the prompt.
fn usage_block(u: &Value) -> Value {
    let n = |k: &str| u[k].as_i64().unwrap_or(0).max(0);
    let input = n("input_tokens");
    let write = n("cache_creation_input_tokens");
    let read = n("cache_read_input_tokens");
    let output = n("output_tokens");
    let prompt = input + write + read;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": write},
    })
}

/// A (non-streaming) Messages response as a chat completion.
pub fn from_message(msg: &Value, model: &str, created: i64) -> Value {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for block in msg["content"].as_array().into_iter().flatten() {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or_default()),
            Some("thinking") => reasoning.push_str(block["thinking"].as_str().unwrap_or_default()),
            Some("tool_use") => calls.push(json!({
                "id": block["id"], "type": "function",
                "function": {"name": block["name"], "arguments": block["input"].to_string()},
            })),
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    json!({
        "id": msg["id"],
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(&msg["stop_reason"])}],
        "usage": usage_block(&msg["usage"]),
    })
}

/// Turns an Anthropic event stream into chat completion chunks, one event at a time.
struct StreamTranslator {
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
    /// Usage so far: `message_start` carries the input side, `message_delta` the output.
    usage: Map<String, Value>,
    /// Anthropic block index → OpenAI tool call index, for tool_use blocks.
    tools: Vec<(u64, usize)>,
    finished: bool,
}

impl StreamTranslator {
    fn chunk(&self, delta: Value, finish: Value) -> Bytes {
        let chunk = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        Bytes::from(format!("data: {chunk}\n\n"))
    }

    fn merge_usage(&mut self, u: &Value) {
        if let Some(map) = u.as_object() {
            for (k, v) in map {
                if !v.is_null() {
                    self.usage.insert(k.clone(), v.clone());
                }
            }
        }
    }

    /// The chunks for one Anthropic event's data.
    fn translate(&mut self, data: &Value) -> Vec<Bytes> {
        match data["type"].as_str().unwrap_or_default() {
            "message_start" => {
                let msg = &data["message"];
                if let Some(id) = msg["id"].as_str() {
                    self.id = id.to_owned();
                }
                self.merge_usage(&msg["usage"]);
                vec![self.chunk(json!({"role": "assistant", "content": ""}), Value::Null)]
            }
            "content_block_start" => {
                let block = &data["content_block"];
                match block["type"].as_str() {
                    Some("tool_use") => {
                        let index = self.tools.len();
                        self.tools
                            .push((data["index"].as_u64().unwrap_or(0), index));
                        let call = json!({"index": index, "id": block["id"], "type": "function",
                            "function": {"name": block["name"], "arguments": ""}});
                        vec![self.chunk(json!({"tool_calls": [call]}), Value::Null)]
                    }
                    Some("text") => match block["text"].as_str() {
                        Some(t) if !t.is_empty() => {
                            vec![self.chunk(json!({"content": t}), Value::Null)]
                        }
                        _ => Vec::new(),
                    },
                    _ => Vec::new(),
                }
            }
            "content_block_delta" => {
                let delta = &data["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        vec![self.chunk(json!({"content": delta["text"]}), Value::Null)]
                    }
                    Some("thinking_delta") => vec![
                        self.chunk(json!({"reasoning_content": delta["thinking"]}), Value::Null),
                    ],
                    Some("input_json_delta") => {
                        let block = data["index"].as_u64().unwrap_or(0);
                        let index = self
                            .tools
                            .iter()
                            .find(|(b, _)| *b == block)
                            .map_or(0, |(_, i)| *i);
                        let call = json!({"index": index, "function": {"arguments": delta["partial_json"]}});
                        vec![self.chunk(json!({"tool_calls": [call]}), Value::Null)]
                    }
                    _ => Vec::new(),
                }
            }
            "message_delta" => {
                self.merge_usage(&data["usage"]);
                let reason = finish_reason(&data["delta"]["stop_reason"]);
                if reason.is_null() {
                    return Vec::new();
                }
                vec![self.chunk(json!({}), reason)]
            }
            "message_stop" => {
                self.finished = true;
                let mut out = Vec::with_capacity(2);
                if self.include_usage {
                    let usage = usage_block(&Value::Object(self.usage.clone()));
                    let chunk = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "choices": [], "usage": usage});
                    out.push(Bytes::from(format!("data: {chunk}\n\n")));
                }
                out.push(Bytes::from_static(b"data: [DONE]\n\n"));
                out
            }
            "error" => {
                self.finished = true;
                let error = &data["error"];
                let kind = error["type"].as_str().unwrap_or("upstream_error");
                let body = json!({"error": {"message": error["message"], "type": kind, "code": kind, "param": null}});
                vec![Bytes::from(format!("data: {body}\n\n"))]
            }
            _ => Vec::new(),
        }
    }
}

/// The translated stream: upstream bytes in, chat completion chunk events out.
fn translate_stream(
    body: BoxStream<'static, Result<Bytes, UpstreamError>>,
    model: String,
    include_usage: bool,
) -> BoxStream<'static, Result<Bytes, UpstreamError>> {
    let translator = StreamTranslator {
        id: String::new(),
        model,
        created: now_s(),
        include_usage,
        usage: Map::new(),
        tools: Vec::new(),
        finished: false,
    };
    let state = (body, EventSplitter::default(), translator);
    futures_util::stream::unfold(state, |(mut body, mut splitter, mut tr)| async move {
        loop {
            if tr.finished {
                return None;
            }
            let chunk = match body.next().await? {
                Ok(c) => c,
                Err(e) => return Some((Err(e), (body, splitter, tr))),
            };
            let mut out = Vec::new();
            for event in splitter.push(&chunk) {
                let Some(data) = event_data(&event) else {
                    continue;
                };
                let Ok(value) = serde_json::from_slice::<Value>(&data) else {
                    continue;
                };
                out.extend(tr.translate(&value));
                if tr.finished {
                    break;
                }
            }
            if !out.is_empty() {
                return Some((Ok(Bytes::from(out.concat())), (body, splitter, tr)));
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_moves_system_and_tools_and_merges_tool_results() {
        let req = json!({
            "model": "claude-x", "max_tokens": 100, "stop": "END", "temperature": 0.5,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "what is in"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":1}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "a cat"},
                {"role": "user", "content": "thanks"}
            ],
            "tools": [{"type": "function", "function": {"name": "look", "description": "d", "parameters": {"type": "object"}}}],
            "tool_choice": "required"
        });
        let out = to_messages_request(&req, 4096).expect("translates");
        assert_eq!(out["system"], "be brief");
        assert_eq!(out["max_tokens"], 100);
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["tool_choice"], json!({"type": "any"}));
        assert_eq!(out["tools"][0]["input_schema"], json!({"type": "object"}));
        let messages = out["messages"].as_array().expect("array");
        assert_eq!(messages.len(), 3);
        assert_eq!(
            messages[0]["content"][1]["source"],
            json!({"type": "base64", "media_type": "image/png", "data": "AAAA"})
        );
        assert_eq!(messages[1]["content"][0]["input"], json!({"q": 1}));
        assert_eq!(messages[2]["content"][0]["type"], "tool_result");
        assert_eq!(messages[2]["content"][1]["text"], "thanks");
    }

    #[test]
    fn response_maps_tool_use_stop_reason_and_cache_usage() {
        let msg = json!({"id": "msg_1", "model": "claude-x", "stop_reason": "tool_use",
            "content": [{"type": "text", "text": "Let me look."},
                        {"type": "tool_use", "id": "t1", "name": "look", "input": {"q": 1}}],
            "usage": {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 100,
                      "cache_read_input_tokens": 1000}});
        let out = from_message(&msg, "claude-x", 7);
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"q\":1}"
        );
        assert_eq!(out["usage"]["prompt_tokens"], 1110);
        assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 1000);
        assert_eq!(
            out["usage"]["prompt_tokens_details"]["cache_write_tokens"],
            100
        );
    }
}
