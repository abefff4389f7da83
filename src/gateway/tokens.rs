//! Local token counts (tiktoken-compatible, `o200k_base`): the prompt estimate a reservation is
//! sized from, and the fallback count for a response that arrives without usage.

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// Tokens a message costs besides its text (role, separators), as OpenAI documents for chat.
const TOKENS_PER_MESSAGE: i64 = 4;
/// Tokens that prime the assistant's reply.
const REPLY_PRIMING_TOKENS: i64 = 3;
/// Allowance for an image or audio part, whose true cost depends on its size.
const MEDIA_PART_TOKENS: i64 = 1_000;

fn bpe() -> &'static CoreBPE {
    tiktoken_rs::o200k_base_singleton()
}

/// Tokens in `text`.
pub fn count_text(text: &str) -> i64 {
    if text.is_empty() {
        return 0;
    }
    i64::try_from(bpe().encode_ordinary(text).len()).unwrap_or(i64::MAX)
}

/// Adds the tokens of every string inside `value`; media payloads (`url`, base64 `data`) count
/// as a fixed allowance instead of by their text.
fn count_value(value: &Value, key: Option<&str>) -> i64 {
    match value {
        Value::String(s) => match key {
            Some("url" | "data" | "image_url" | "file_data") => MEDIA_PART_TOKENS,
            _ => count_text(s),
        },
        Value::Array(items) => items.iter().map(|v| count_value(v, key)).sum(),
        Value::Object(map) => map.iter().map(|(k, v)| count_value(v, Some(k))).sum(),
        _ => 0,
    }
}

/// The prompt tokens a chat request will be billed for, estimated: every message's text plus
/// per-message overhead, plus tool definitions.
pub fn estimate_chat_prompt(messages: &Value, tools: Option<&Value>) -> i64 {
    let per_message = match messages {
        Value::Array(items) => items
            .iter()
            .map(|m| TOKENS_PER_MESSAGE + count_value(m, None))
            .sum(),
        other => count_value(other, None),
    };
    let tools = tools.map_or(0, |t| count_text(&t.to_string()));
    per_message + tools + REPLY_PRIMING_TOKENS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_known_text() {
        assert_eq!(count_text(""), 0);
        assert_eq!(count_text("hello world"), 2);
    }

    #[test]
    fn chat_estimate_adds_overheads() {
        let messages = serde_json::json!([{"role": "user", "content": "hello world"}]);
        // role "user" (1) + "hello world" (2) + 4 per message + 3 priming.
        assert_eq!(estimate_chat_prompt(&messages, None), 10);
    }
}
