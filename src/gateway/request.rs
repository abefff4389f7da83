//! A metered request as Tollgate sees it (chat completions, legacy completions, embeddings): the
//! few fields metering needs, read from the raw body without re-serializing it. The upstream
//! body is the client's bytes with a few surgical edits: the `model` value mapped to the upstream
//! name, for streams `stream_options.include_usage` switched on so the upstream reports usage,
//! and the model's configured `temperature` and `max_tokens` added where the client set none.

use crate::provider::Endpoint;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::ops::Range;

/// A client error in the request body, naming the field.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct InvalidRequest {
    pub message: String,
    pub param: Option<&'static str>,
}

fn invalid(param: &'static str, message: impl Into<String>) -> InvalidRequest {
    InvalidRequest {
        message: message.into(),
        param: Some(param),
    }
}

#[derive(Deserialize)]
struct TopLevel<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
    #[serde(borrow)]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    n: Option<&'a RawValue>,
    #[serde(borrow)]
    tools: Option<&'a RawValue>,
    #[serde(borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    best_of: Option<&'a RawValue>,
    #[serde(borrow)]
    temperature: Option<&'a RawValue>,
}

/// OpenAI's default `max_tokens` for legacy completions.
const COMPLETIONS_DEFAULT_MAX_TOKENS: i64 = 16;

/// What a registry model's `config` sets on generating requests that leave it out.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Defaults {
    pub temperature: Option<serde_json::Number>,
    pub max_tokens: Option<i64>,
}

impl Defaults {
    /// The defaults in a registry `config` (`{"temperature": 0.2, "max_tokens": 1024}`);
    /// values of the wrong type are ignored.
    pub fn from_config(config: Option<&str>) -> Defaults {
        let Some(config) = config.and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
        else {
            return Defaults::default();
        };
        Defaults {
            temperature: config["temperature"].as_number().cloned(),
            max_tokens: config["max_tokens"].as_i64().filter(|&n| n > 0),
        }
    }
}

type JsonObject = serde_json::Map<String, serde_json::Value>;

/// What metering needs from a chat completion request, plus where to edit the raw body.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    /// Whether the client itself asked for the usage chunk.
    pub client_wants_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`, if set (0 for embeddings).
    pub max_output_tokens: Option<i64>,
    /// Whether the body has a `temperature`, and an output limit key (even `null`).
    has_temperature: bool,
    has_output_limit: bool,
    /// Number of choices (`n`, default 1).
    pub n: i64,
    /// At least the prompt's tokens, found without a tokenizer (what reservations and token
    /// limits are sized from); [`ChatRequest::count_prompt`] counts them.
    pub prompt_tokens_bound: i64,
    model_span: Range<usize>,
    stream_options: Option<(Range<usize>, Option<JsonObject>)>,
}

fn span(body: &[u8], raw: &RawValue) -> Range<usize> {
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    start..start + raw.get().len()
}

fn is_null(raw: Option<&RawValue>) -> bool {
    raw.is_none_or(|r| r.get() == "null")
}

fn positive_int(
    raw: Option<&RawValue>,
    param: &'static str,
) -> Result<Option<i64>, InvalidRequest> {
    if is_null(raw) {
        return Ok(None);
    }
    let text = raw.map_or("", RawValue::get);
    match text.parse::<i64>() {
        Ok(v) if v >= 1 => Ok(Some(v)),
        _ => Err(invalid(
            param,
            format!("'{param}' must be a positive integer, got {text}"),
        )),
    }
}

/// Tokens of a `prompt` or `input` (a string, an array of strings, an array of token ids, or an
/// array of such arrays), each string measured by `text`; `None` when it is none of these (or
/// empty).
fn text_or_tokens(value: &serde_json::Value, text: &mut impl FnMut(&str) -> i64) -> Option<i64> {
    use serde_json::Value;
    match value {
        Value::String(s) => Some(text(s)),
        Value::Array(items) if !items.is_empty() => {
            if items.iter().all(Value::is_u64) {
                return i64::try_from(items.len()).ok();
            }
            items.iter().try_fold(0_i64, |sum, item| match item {
                Value::String(s) => Some(sum.saturating_add(text(s))),
                Value::Array(ids) if !ids.is_empty() && ids.iter().all(Value::is_u64) => {
                    Some(sum.saturating_add(i64::try_from(ids.len()).unwrap_or(i64::MAX)))
                }
                _ => None,
            })
        }
        _ => None,
    }
}

/// A string's byte length: the bound on its tokens.
fn byte_bound(s: &str) -> i64 {
    i64::try_from(s.len()).unwrap_or(i64::MAX)
}

/// Reads a required `prompt`/`input` field and bounds its tokens.
fn required_text(raw: Option<&RawValue>, param: &'static str) -> Result<i64, InvalidRequest> {
    let raw = raw
        .filter(|r| r.get() != "null")
        .ok_or_else(|| invalid(param, format!("'{param}' is a required property")))?;
    let value: serde_json::Value = serde_json::from_str(raw.get())
        .map_err(|e| invalid(param, format!("'{param}' is not valid JSON: {e}")))?;
    text_or_tokens(&value, &mut byte_bound).ok_or_else(|| {
        invalid(
            param,
            format!(
                "'{param}' must be a non-empty string, array of strings, array of token ids, or array of token-id arrays"
            ),
        )
    })
}

/// Checks a chat body's `messages` (and `tools`) and bounds its prompt tokens.
fn chat_prompt_bound(top: &TopLevel<'_>) -> Result<i64, InvalidRequest> {
    use crate::tokens::Messages;
    let messages_raw = top
        .messages
        .ok_or_else(|| invalid("messages", "'messages' is a required property"))?;
    let messages = crate::tokens::chat_prompt_bound(messages_raw.get())
        .map_err(|e| invalid("messages", format!("'messages' is not valid JSON: {e}")))?;
    let bound = match messages {
        Messages::Bound(n) => n,
        Messages::NotObjects => {
            return Err(invalid(
                "messages",
                "every item of 'messages' must be an object",
            ));
        }
        Messages::Empty => {
            return Err(invalid(
                "messages",
                "'messages' must contain at least one message",
            ));
        }
        Messages::NotArray => return Err(invalid("messages", "'messages' must be an array")),
    };
    // A tool definition's text is at most its JSON's bytes.
    let tools = top
        .tools
        .filter(|t| t.get() != "null")
        .map_or(0, |t| byte_bound(t.get()));
    Ok(bound.saturating_add(tools))
}

/// Whether `body` is a JSON object (not an array that serde would read field by field into a
/// struct); every request body parser checks it first.
pub fn is_object(body: &[u8]) -> bool {
    body.trim_ascii_start().first() == Some(&b'{')
}

impl ChatRequest {
    /// Reads a chat completion body; refuses what the upstream would refuse for sure.
    pub fn parse(body: &[u8]) -> Result<ChatRequest, InvalidRequest> {
        ChatRequest::parse_for(Endpoint::Chat, body)
    }

    /// Reads a body for `endpoint`; refuses what the upstream would refuse for sure.
    pub fn parse_for(endpoint: Endpoint, body: &[u8]) -> Result<ChatRequest, InvalidRequest> {
        if !is_object(body) {
            return Err(InvalidRequest {
                message: "request body must be a JSON object".into(),
                param: None,
            });
        }
        let top: TopLevel = serde_json::from_slice(body).map_err(|e| InvalidRequest {
            message: format!("request body is not a valid JSON object: {e}"),
            param: None,
        })?;
        let model_raw = top
            .model
            .ok_or_else(|| invalid("model", "you must provide a model parameter"))?;
        let model: String = serde_json::from_str(model_raw.get())
            .map_err(|_| invalid("model", "'model' must be a string"))?;
        if model.is_empty() {
            return Err(invalid("model", "'model' must not be empty"));
        }
        let prompt_tokens_bound = match endpoint {
            Endpoint::Chat => chat_prompt_bound(&top)?,
            Endpoint::Completions => required_text(top.prompt, "prompt")?,
            Endpoint::Embeddings => required_text(top.input, "input")?,
        };
        let stream = match top.stream.map(RawValue::get) {
            None | Some("null") | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(invalid(
                    "stream",
                    format!("'stream' must be a boolean, got {other}"),
                ));
            }
        };
        let max_completion = positive_int(top.max_completion_tokens, "max_completion_tokens")?;
        let max_tokens = positive_int(top.max_tokens, "max_tokens")?;
        let n = positive_int(top.n, "n")?.unwrap_or(1);
        if n > 128 {
            return Err(invalid("n", format!("'n' must be at most 128, got {n}")));
        }
        // Legacy completions generate `best_of` candidates and bill them all.
        let n = match endpoint {
            Endpoint::Completions => n.max(positive_int(top.best_of, "best_of")?.unwrap_or(1)),
            _ => n,
        };
        if stream && endpoint == Endpoint::Embeddings {
            return Err(invalid("stream", "embeddings cannot be streamed"));
        }
        let mut client_wants_usage = false;
        let stream_options = match top.stream_options {
            None => None,
            Some(raw) if raw.get() == "null" => Some((span(body, raw), None)),
            Some(raw) => {
                let map: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(raw.get()).map_err(|_| {
                        invalid("stream_options", "'stream_options' must be an object")
                    })?;
                client_wants_usage =
                    map.get("include_usage") == Some(&serde_json::Value::Bool(true));
                Some((span(body, raw), Some(map)))
            }
        };
        let max_output_tokens = match endpoint {
            Endpoint::Chat => max_completion.or(max_tokens),
            Endpoint::Completions => max_tokens,
            // An embedding generates nothing.
            Endpoint::Embeddings => Some(0),
        };
        Ok(ChatRequest {
            endpoint,
            prompt_tokens_bound,
            model_span: span(body, model_raw),
            model,
            stream,
            client_wants_usage,
            max_output_tokens,
            n,
            stream_options,
            has_temperature: top.temperature.is_some(),
            has_output_limit: top.max_tokens.is_some() || top.max_completion_tokens.is_some(),
        })
    }

    /// Counts the prompt of `body` (the body this request was parsed from) locally, reading at
    /// most `budget`'s bytes; CPU-heavy, for the [`super::cpu`] pool.
    pub fn count_prompt(&self, body: &[u8], budget: &mut crate::tokens::Budget) -> i64 {
        let Ok(top) = serde_json::from_slice::<TopLevel>(body) else {
            return self.prompt_tokens_bound;
        };
        let parse = |raw: Option<&RawValue>| {
            raw.and_then(|r| serde_json::from_str::<serde_json::Value>(r.get()).ok())
        };
        let counted = match self.endpoint {
            Endpoint::Chat => parse(top.messages).map(|messages| {
                let tools = parse(top.tools).filter(|t| !t.is_null());
                crate::tokens::count_chat_prompt(&messages, tools.as_ref(), budget)
            }),
            Endpoint::Completions => {
                parse(top.prompt).and_then(|p| text_or_tokens(&p, &mut |s| budget.count(s)))
            }
            Endpoint::Embeddings => {
                parse(top.input).and_then(|p| text_or_tokens(&p, &mut |s| budget.count(s)))
            }
        };
        counted.unwrap_or(self.prompt_tokens_bound)
    }

    /// The `max_tokens` to add from the model's `defaults`, if the client set no limit.
    fn injected_max_tokens(&self, defaults: &Defaults) -> Option<i64> {
        let generates = self.endpoint != Endpoint::Embeddings;
        (generates && !self.has_output_limit)
            .then_some(defaults.max_tokens)
            .flatten()
    }

    /// The most output tokens one choice may take: the client's limit, else the model's
    /// configured `max_tokens` (which is sent upstream), else for legacy completions OpenAI's
    /// default of 16, else the model's cap, else `fallback`.
    pub fn output_per_choice(
        &self,
        defaults: &Defaults,
        model_cap: Option<i64>,
        fallback: i64,
    ) -> i64 {
        self.max_output_tokens
            .or_else(|| self.injected_max_tokens(defaults))
            .or((self.endpoint == Endpoint::Completions).then_some(COMPLETIONS_DEFAULT_MAX_TOKENS))
            .or(model_cap)
            .unwrap_or(fallback)
    }

    /// The body to send upstream: the client's bytes, with `model` set to `upstream_model`,
    /// for a stream usage reporting switched on, and the `defaults` the client left out.
    pub fn upstream_body(&self, body: &[u8], upstream_model: &str, defaults: &Defaults) -> Vec<u8> {
        let mut edits: Vec<(Range<usize>, Vec<u8>)> = Vec::with_capacity(2);
        if upstream_model != self.model {
            let quoted = serde_json::to_vec(upstream_model).unwrap_or_default();
            edits.push((self.model_span.clone(), quoted));
        }
        let open = body.iter().position(|&b| b == b'{').unwrap_or(0);
        let mut added = String::new();
        if self.endpoint != Endpoint::Embeddings
            && !self.has_temperature
            && let Some(t) = &defaults.temperature
        {
            added.push_str(&format!("\"temperature\":{t},"));
        }
        if let Some(n) = self.injected_max_tokens(defaults) {
            added.push_str(&format!("\"max_tokens\":{n},"));
        }
        if !added.is_empty() {
            edits.push((open + 1..open + 1, added.into_bytes()));
        }
        if self.stream && !self.client_wants_usage {
            match &self.stream_options {
                Some((range, map)) => {
                    let mut map = map.clone().unwrap_or_default();
                    map.insert("include_usage".into(), serde_json::Value::Bool(true));
                    let text = serde_json::to_vec(&map).unwrap_or_default();
                    edits.push((range.clone(), text));
                }
                None => {
                    edits.push((
                        open + 1..open + 1,
                        b"\"stream_options\":{\"include_usage\":true},".to_vec(),
                    ));
                }
            }
        }
        if edits.is_empty() {
            return body.to_vec();
        }
        edits.sort_by_key(|(r, _)| r.start);
        let extra: usize = edits.iter().map(|(_, t)| t.len()).sum();
        let mut out = Vec::with_capacity(body.len() + extra);
        let mut at = 0;
        for (range, text) in edits {
            out.extend_from_slice(&body[at..range.start]);
            out.extend_from_slice(&text);
            at = range.end;
        }
        out.extend_from_slice(&body[at..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_is_replaced_and_everything_else_kept() {
        let body =
            br#"{"model": "m1", "messages":[{"role":"user","content":"hi"}], "temperature": 0.70}"#;
        let req = ChatRequest::parse(body).expect("valid");
        let out = req.upstream_body(body, "gpt-4o-2024", &Defaults::default());
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#"{"model": "gpt-4o-2024", "messages":[{"role":"user","content":"hi"}], "temperature": 0.70}"#
        );
    }

    #[test]
    fn streams_get_usage_switched_on() {
        let body = br#"{"model":"m1","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        let req = ChatRequest::parse(body).expect("valid");
        assert!(!req.client_wants_usage);
        let out: serde_json::Value =
            serde_json::from_slice(&req.upstream_body(body, "m1", &Defaults::default()))
                .expect("json");
        assert_eq!(out["stream_options"]["include_usage"], true);

        let body = br#"{"model":"m1","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"x":1}}"#;
        let req = ChatRequest::parse(body).expect("valid");
        let out: serde_json::Value =
            serde_json::from_slice(&req.upstream_body(body, "m1", &Defaults::default()))
                .expect("json");
        assert_eq!(
            out["stream_options"],
            serde_json::json!({"x": 1, "include_usage": true})
        );

        let body = br#"{"model":"m1","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#;
        let req = ChatRequest::parse(body).expect("valid");
        assert!(req.client_wants_usage);
        assert_eq!(
            req.upstream_body(body, "m1", &Defaults::default()),
            body.to_vec()
        );
    }

    #[test]
    fn bad_fields_are_named() {
        for (body, param) in [
            (&br#"{"messages":[]}"#[..], "model"),
            (
                br#"{"model":1,"messages":[{"role":"user","content":"x"}]}"#,
                "model",
            ),
            (br#"{"model":"m"}"#, "messages"),
            (br#"{"model":"m","messages":"hi"}"#, "messages"),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
                "max_tokens",
            ),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
                "stream",
            ),
        ] {
            let err = ChatRequest::parse(body).expect_err("invalid");
            assert_eq!(err.param, Some(param), "{}", String::from_utf8_lossy(body));
        }
        assert!(ChatRequest::parse(b"not json").is_err());
        assert!(ChatRequest::parse(b"[1,2]").is_err());
    }

    #[test]
    fn configured_defaults_fill_only_what_the_client_left_out() {
        let defaults = Defaults::from_config(Some(r#"{"temperature": 0.2, "max_tokens": 300}"#));
        let body = br#"{"model":"m1","messages":[{"role":"user","content":"hi"}]}"#;
        let req = ChatRequest::parse(body).expect("valid");
        let out: serde_json::Value =
            serde_json::from_slice(&req.upstream_body(body, "m1", &defaults)).expect("json");
        assert_eq!(out["temperature"], serde_json::json!(0.2));
        assert_eq!(out["max_tokens"], 300);
        assert_eq!(req.output_per_choice(&defaults, Some(100), 4096), 300);

        let body = br#"{"model":"m1","messages":[{"role":"user","content":"hi"}],"temperature":1,"max_completion_tokens":7}"#;
        let req = ChatRequest::parse(body).expect("valid");
        assert_eq!(req.upstream_body(body, "m1", &defaults), body.to_vec());
        assert_eq!(req.output_per_choice(&defaults, Some(100), 4096), 7);

        // No defaults: legacy completions reserve OpenAI's 16, chat the model's cap.
        let none = Defaults::default();
        let body = br#"{"model":"m1","prompt":"hi"}"#;
        let req = ChatRequest::parse_for(Endpoint::Completions, body).expect("valid");
        assert_eq!(req.upstream_body(body, "m1", &none), body.to_vec());
        assert_eq!(req.output_per_choice(&none, Some(100), 4096), 16);
        assert_eq!(req.output_per_choice(&defaults, Some(100), 4096), 300);
        let body = br#"{"model":"m1","input":"hi"}"#;
        let req = ChatRequest::parse_for(Endpoint::Embeddings, body).expect("valid");
        assert_eq!(req.upstream_body(body, "m1", &defaults), body.to_vec());
        assert_eq!(req.output_per_choice(&defaults, Some(100), 4096), 0);
    }
}
