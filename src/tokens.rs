//! Token counts for metering, in two kinds:
//! - **bounds**, read without a tokenizer, that a reservation is sized from: `o200k_base` (like
//!   every byte-level BPE) never makes a token of less than one byte, so a text's byte length
//!   is at least its token count; media parts count a fixed allowance; the per-message
//!   overheads are OpenAI's. A bound costs one pass over the JSON and cannot stall a worker.
//! - **local counts** (tiktoken-compatible, `o200k_base`) for a response that arrives without
//!   usage, which read at most a [`Budget`] of bytes (the rest is extrapolated from what was read)
//!   and run on the bounded CPU pool ([`crate::gateway::cpu`]), never on an async worker.

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;
use tiktoken_rs::CoreBPE;

/// Tokens a message costs besides its text (role, separators), as OpenAI documents for chat.
const TOKENS_PER_MESSAGE: i64 = 4;
/// Tokens that prime the assistant's reply.
const REPLY_PRIMING_TOKENS: i64 = 3;
/// Allowance for an image or audio part, whose true cost depends on its size.
const MEDIA_PART_TOKENS: i64 = 1_000;
/// Bytes a count must have read before its tokens-per-byte ratio is trusted for extrapolation.
const MIN_SAMPLE_BYTES: usize = 1024;

fn bpe() -> &'static CoreBPE {
    tiktoken_rs::o200k_base_singleton()
}

/// Tokens in `text`, counted whole (callers on the request path use a [`Budget`] instead).
pub fn count_text(text: &str) -> i64 {
    if text.is_empty() {
        return 0;
    }
    i64::try_from(bpe().encode_ordinary(text).len()).unwrap_or(i64::MAX)
}

/// The largest char boundary of `text` at or below `at`.
fn floor_boundary(text: &str, at: usize) -> usize {
    let mut i = at.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// How many bytes of text a local count may still read exactly; past that, each text's count
/// is extrapolated from the tokens per byte seen so far (or 4 bytes a token before any).
#[derive(Debug, Clone)]
pub struct Budget {
    left: usize,
    read_bytes: usize,
    read_tokens: i64,
}

impl Budget {
    pub fn new(bytes: usize) -> Budget {
        Budget {
            left: bytes,
            read_bytes: 0,
            read_tokens: 0,
        }
    }

    /// Tokens in `text`: exact while the budget lasts, extrapolated beyond it.
    pub fn count(&mut self, text: &str) -> i64 {
        if text.is_empty() {
            return 0;
        }
        let cut = floor_boundary(text, self.left);
        let exact = count_text(&text[..cut]);
        self.left -= cut;
        self.read_bytes += cut;
        self.read_tokens = self.read_tokens.saturating_add(exact);
        exact.saturating_add(self.extrapolate(text.len() - cut))
    }

    fn extrapolate(&self, bytes: usize) -> i64 {
        if bytes == 0 {
            return 0;
        }
        let bytes = bytes as i128;
        let tokens = if self.read_bytes >= MIN_SAMPLE_BYTES {
            let (t, b) = (i128::from(self.read_tokens), self.read_bytes as i128);
            (bytes * t + b - 1) / b
        } else {
            (bytes + 3) / 4
        };
        i64::try_from(tokens).unwrap_or(i64::MAX)
    }
}

fn is_media_key(key: &str) -> bool {
    matches!(key, "url" | "data" | "image_url" | "file_data")
}

/// Adds the tokens of every string inside `value`; media payloads (`url`, base64 `data`) count
/// as a fixed allowance instead of by their text.
fn count_value(value: &Value, key: Option<&str>, budget: &mut Budget) -> i64 {
    match value {
        Value::String(s) => match key {
            Some(k) if is_media_key(k) => MEDIA_PART_TOKENS,
            _ => budget.count(s),
        },
        Value::Array(items) => items
            .iter()
            .fold(0_i64, |n, v| n.saturating_add(count_value(v, key, budget))),
        Value::Object(map) => map.iter().fold(0_i64, |n, (k, v)| {
            n.saturating_add(count_value(v, Some(k), budget))
        }),
        _ => 0,
    }
}

/// The prompt tokens a chat request will be billed for, counted locally: every message's text
/// plus per-message overhead, plus tool definitions.
pub fn count_chat_prompt(messages: &Value, tools: Option<&Value>, budget: &mut Budget) -> i64 {
    let per_message = match messages {
        Value::Array(items) => items.iter().fold(0_i64, |n, m| {
            n.saturating_add(TOKENS_PER_MESSAGE + count_value(m, None, budget))
        }),
        other => count_value(other, None, budget),
    };
    let tools = tools.map_or(0, |t| budget.count(&t.to_string()));
    per_message
        .saturating_add(tools)
        .saturating_add(REPLY_PRIMING_TOKENS)
}

/// What a chat request's `messages` turned out to be, read for its bound.
#[derive(Debug, PartialEq, Eq)]
pub enum Messages {
    /// A non-empty array of objects, and the bound on its prompt tokens.
    Bound(i64),
    NotArray,
    Empty,
    NotObjects,
}

/// The upper bound on a chat prompt's tokens (see the module docs) from the raw JSON of its
/// `messages`, in one pass and without building the document.
pub fn chat_prompt_bound(messages_json: &str) -> Result<Messages, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(messages_json);
    let shape = MessagesSeed.deserialize(&mut de)?;
    de.end()?;
    Ok(shape)
}

/// Implements the scalar `visit_*` methods of a visitor as returning `$value`.
macro_rules! scalars_are {
    ($value:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

struct MessagesSeed;

impl<'de> DeserializeSeed<'de> for MessagesSeed {
    type Value = Messages;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Messages, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MessagesSeed {
    type Value = Messages;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of messages")
    }
    scalars_are!(Messages::NotArray);
    fn visit_str<E>(self, _: &str) -> Result<Messages, E> {
        Ok(Messages::NotArray)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Messages, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Messages::NotArray)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Messages, A::Error> {
        let (mut total, mut count, mut all_objects) = (REPLY_PRIMING_TOKENS, 0_usize, true);
        while let Some(item) = seq.next_element_seed(MessageSeed)? {
            count += 1;
            match item {
                Some(n) => total = total.saturating_add(TOKENS_PER_MESSAGE.saturating_add(n)),
                None => all_objects = false,
            }
        }
        Ok(match (count, all_objects) {
            (0, _) => Messages::Empty,
            (_, false) => Messages::NotObjects,
            _ => Messages::Bound(total),
        })
    }
}

/// One message: the bound on its text, or `None` when it is not an object.
struct MessageSeed;

impl<'de> DeserializeSeed<'de> for MessageSeed {
    type Value = Option<i64>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<i64>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed {
    type Value = Option<i64>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a message object")
    }
    scalars_are!(None);
    fn visit_str<E>(self, _: &str) -> Result<Option<i64>, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<i64>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Option<i64>, A::Error> {
        TextBound { media: false }.visit_map(map).map(Some)
    }
}

/// The bound on the text inside a JSON value: string bytes, media parts a fixed allowance.
struct TextBound {
    /// Whether the value sits under a media key (`url`, `data`, …).
    media: bool,
}

impl<'de> DeserializeSeed<'de> for TextBound {
    type Value = i64;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TextBound {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    scalars_are!(0);
    fn visit_str<E>(self, s: &str) -> Result<i64, E> {
        Ok(if self.media {
            MEDIA_PART_TOKENS
        } else {
            i64::try_from(s.len()).unwrap_or(i64::MAX)
        })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<i64, A::Error> {
        let mut total = 0_i64;
        while let Some(n) = seq.next_element_seed(TextBound { media: self.media })? {
            total = total.saturating_add(n);
        }
        Ok(total)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<i64, A::Error> {
        let mut total = 0_i64;
        while let Some(media) = map.next_key_seed(MediaKey)? {
            total = total.saturating_add(map.next_value_seed(TextBound { media })?);
        }
        Ok(total)
    }
}

/// An object key, read as whether it names a media payload.
struct MediaKey;

impl<'de> DeserializeSeed<'de> for MediaKey {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for MediaKey {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(is_media_key(key))
    }
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
    fn chat_count_adds_overheads() {
        let messages = serde_json::json!([{"role": "user", "content": "hello world"}]);
        // role "user" (1) + "hello world" (2) + 4 per message + 3 priming.
        let mut budget = Budget::new(1 << 20);
        assert_eq!(count_chat_prompt(&messages, None, &mut budget), 10);
    }

    #[test]
    fn the_bound_is_bytes_with_the_same_overheads_and_media_allowance() {
        let raw = r#"[{"role": "user", "content": [{"type": "text", "text": "hello world"},
                      {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]"#;
        // 4 + "user" 4 + "text" 4 + "hello world" 11 + "image_url" 9 + media 1000, + 3.
        assert_eq!(chat_prompt_bound(raw).expect("json"), Messages::Bound(1035));
        let exact = count_chat_prompt(
            &serde_json::from_str(raw).expect("json"),
            None,
            &mut Budget::new(1 << 20),
        );
        assert!(exact <= 1035, "{exact}");
        assert_eq!(chat_prompt_bound("[]").expect("json"), Messages::Empty);
        assert_eq!(
            chat_prompt_bound("{\"a\": [1]}").expect("json"),
            Messages::NotArray
        );
        assert_eq!(
            chat_prompt_bound("[{}, [1, {}]]").expect("json"),
            Messages::NotObjects
        );
    }

    #[test]
    fn a_budget_counts_exactly_then_extrapolates() {
        let text = "hello world ".repeat(1000);
        let exact = count_text(&text);
        assert_eq!(Budget::new(1 << 20).count(&text), exact);
        let mut small = Budget::new(6000);
        let estimate = small.count(&text);
        assert!(
            (exact - 2..=exact + 2).contains(&estimate),
            "{estimate} vs {exact}"
        );
        // Nothing left: the ratio read so far carries on (rounded up).
        assert!((2..=3).contains(&small.count("hello world ")));
        let mut none = Budget::new(0);
        assert_eq!(none.count("abcdefgh"), 2);
    }
}
