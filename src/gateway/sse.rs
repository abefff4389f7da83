//! Server-sent events, read only as far as metering needs: split the upstream byte stream into
//! events, keep only well-formed SSE lines ([`crate::provider::sse::clean_event`]), look at each event's `data` for
//! usage and generated text, and pass the event's bytes on unchanged (only the usage-only chunk
//! may be dropped, and the model name mapped back).
//! Spec: <https://html.spec.whatwg.org/multipage/server-sent-events.html>.

use crate::billing::TokenUsage;
use crate::provider::sse::event_data;
use crate::tokens::Budget;
use serde::Deserialize;
use std::borrow::Cow;

#[derive(Deserialize, Default)]
struct CachedDetails {
    cached_tokens: Option<i64>,
    /// Prompt tokens written to the cache (Anthropic's cache creation, as translated).
    cache_write_tokens: Option<i64>,
}

#[derive(Deserialize, Default)]
struct ReasoningDetails {
    reasoning_tokens: Option<i64>,
}

/// OpenAI's usage block.
#[derive(Deserialize)]
pub struct UsageView {
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    prompt_tokens_details: Option<CachedDetails>,
    completion_tokens_details: Option<ReasoningDetails>,
}

impl UsageView {
    pub fn to_usage(&self) -> TokenUsage {
        TokenUsage {
            prompt_tokens: self.prompt_tokens.unwrap_or(0).max(0),
            completion_tokens: self.completion_tokens.unwrap_or(0).max(0),
            cached_tokens: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0)
                .max(0),
            reasoning_tokens: self
                .completion_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0)
                .max(0),
            cache_write_tokens: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cache_write_tokens)
                .unwrap_or(0)
                .max(0),
        }
    }
}

#[derive(Deserialize)]
struct FunctionView<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ToolCallView<'a> {
    #[serde(borrow)]
    function: Option<FunctionView<'a>>,
}

/// A streamed `delta` or a complete `message`: the generated text.
#[derive(Deserialize)]
struct TextView<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<ToolCallView<'a>>>,
}

#[derive(Deserialize)]
struct ChoiceView<'a> {
    index: Option<usize>,
    #[serde(borrow)]
    delta: Option<TextView<'a>>,
    #[serde(borrow)]
    message: Option<TextView<'a>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

/// A chat completion or one chunk of one, as far as metering reads it.
#[derive(Deserialize)]
struct CompletionView<'a> {
    #[serde(borrow)]
    choices: Option<Vec<ChoiceView<'a>>>,
    usage: Option<UsageView>,
    error: Option<serde::de::IgnoredAny>,
}

/// Choices metered separately at most (OpenAI allows `n` up to 128); higher indexes share the
/// last slot.
const MAX_CHOICES: usize = 128;

/// What one choice has generated so far.
#[derive(Default)]
pub struct ChoiceText {
    /// Answer text: content, refusal, tool-call names and arguments.
    text: String,
    /// Reasoning text (`reasoning_content`), billed as output like the rest.
    reasoning: String,
    finished: bool,
    /// How far `text` and `reasoning` were handed out by [`Meter::take_uncounted`].
    counted: (usize, usize),
    /// Their lengths before the last event added to them (for [`Meter::undo_last`]).
    before_last: (usize, usize),
}

impl ChoiceText {
    /// Bytes of text (answer and reasoning).
    pub fn len(&self) -> usize {
        self.text.len() + self.reasoning.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A local count of the generated tokens of `choices`: `(completion, reasoning)`, each choice
/// counted on its own; reasoning is a part of completion. CPU-heavy: for the CPU pool.
pub fn count_generated(choices: &[ChoiceText], budget: &mut Budget) -> (i64, i64) {
    choices.iter().fold((0, 0), |(all, reasoning), c| {
        let r = budget.count(&c.reasoning);
        let t = budget.count(&c.text);
        (
            all.saturating_add(t).saturating_add(r),
            reasoning.saturating_add(r),
        )
    })
}

/// What a response has shown so far: usage if reported, and each choice's generated text for
/// a local count otherwise.
#[derive(Default)]
pub struct Meter {
    pub usage: Option<TokenUsage>,
    choices: Vec<ChoiceText>,
    pub saw_done: bool,
    pub saw_error: bool,
    /// `data` payloads that were not JSON (dropped, not forwarded).
    pub malformed: u32,
    /// Bytes of generated text (answer and reasoning, every choice).
    generated_bytes: usize,
    /// Of those, the bytes handed out by [`Meter::take_uncounted`].
    handed_bytes: usize,
    /// The choices the last event added text to.
    last_touched: Vec<usize>,
}

/// What to do with one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    /// The usage-only chunk the client did not ask for.
    Drop,
    /// A `data` payload that is neither JSON nor `[DONE]`: no client could parse it.
    Malformed,
}

impl Meter {
    fn choice(&mut self, index: Option<usize>) -> &mut ChoiceText {
        let i = index.unwrap_or(0).min(MAX_CHOICES - 1);
        if self.choices.len() <= i {
            self.choices.resize_with(i + 1, ChoiceText::default);
        }
        &mut self.choices[i]
    }

    fn take_text(&mut self, index: Option<usize>, t: &TextView<'_>) {
        let i = index.unwrap_or(0).min(MAX_CHOICES - 1);
        if !self.last_touched.contains(&i) {
            self.last_touched.push(i);
            let c = self.choice(index);
            c.before_last = (c.text.len(), c.reasoning.len());
        }
        let choice = self.choice(index);
        let before = choice.text.len() + choice.reasoning.len();
        for s in [&t.content, &t.refusal].into_iter().flatten() {
            choice.text.push_str(s);
        }
        if let Some(r) = &t.reasoning_content {
            choice.reasoning.push_str(r);
        }
        for call in t.tool_calls.iter().flatten() {
            if let Some(f) = &call.function {
                for s in [&f.name, &f.arguments].into_iter().flatten() {
                    choice.text.push_str(s);
                }
            }
        }
        let added = choice.text.len() + choice.reasoning.len() - before;
        self.generated_bytes += added;
    }

    /// The text generated since the last call, as pieces to count apart, with how many bytes
    /// they cover.
    pub fn take_uncounted(&mut self) -> (Vec<String>, usize) {
        let mut pieces = Vec::new();
        let mut bytes = 0;
        for c in &mut self.choices {
            let (t, r) = c.counted;
            for (text, from) in [(&c.text, t), (&c.reasoning, r)] {
                if text.len() > from {
                    pieces.push(text[from..].to_owned());
                    bytes += text.len() - from;
                }
            }
            c.counted = (c.text.len(), c.reasoning.len());
        }
        self.handed_bytes += bytes;
        (pieces, bytes)
    }

    /// Takes back the text the last event added (an event that is not forwarded is not billed).
    pub fn undo_last(&mut self) {
        for i in std::mem::take(&mut self.last_touched) {
            if let Some(c) = self.choices.get_mut(i) {
                let (t, r) = c.before_last;
                let removed = (c.text.len() - t) + (c.reasoning.len() - r);
                let counted = (c.counted.0.min(t), c.counted.1.min(r));
                self.handed_bytes -= (c.counted.0 - counted.0) + (c.counted.1 - counted.1);
                c.text.truncate(t);
                c.reasoning.truncate(r);
                c.counted = counted;
                self.generated_bytes -= removed;
            }
        }
    }

    /// Bytes generated and not yet handed out by [`Meter::take_uncounted`].
    pub fn uncounted_bytes(&self) -> usize {
        self.generated_bytes - self.handed_bytes
    }

    /// The choices, for the final count (see [`count_generated`]).
    pub fn take_choices(&mut self) -> Vec<ChoiceText> {
        std::mem::take(&mut self.choices)
    }

    /// The index of every choice that has not finished.
    pub fn unfinished(&self) -> Vec<usize> {
        (0..self.choices.len().max(1))
            .filter(|&i| self.choices.get(i).is_none_or(|c| !c.finished))
            .collect()
    }

    /// Reads a whole JSON completion (or one chunk's JSON); returns whether it carried choices,
    /// or `None` when it is not a completion.
    fn observe_json(&mut self, json: &[u8]) -> Option<bool> {
        self.last_touched.clear();
        let view: CompletionView = serde_json::from_slice(json).ok()?;
        if view.error.is_some() {
            self.saw_error = true;
        }
        if let Some(u) = &view.usage {
            self.usage = Some(u.to_usage());
        }
        let choices = view.choices.unwrap_or_default();
        for c in &choices {
            if let Some(d) = &c.delta {
                self.take_text(c.index, d);
            }
            if let Some(m) = &c.message {
                self.take_text(c.index, m);
            }
            if let Some(t) = &c.text {
                self.choice(c.index).text.push_str(t);
            }
            if c.finish_reason.is_some() {
                self.choice(c.index).finished = true;
            }
        }
        Some(!choices.is_empty() || view.usage.is_none())
    }

    /// Reads a complete non-streaming response body; false when it is not JSON at all.
    pub fn observe_body(&mut self, body: &[u8]) -> bool {
        self.observe_json(body).is_some() || is_json(body)
    }

    /// Reads one event; `strip_usage` drops a usage-only chunk.
    pub fn observe_event(&mut self, event: &[u8], strip_usage: bool) -> Verdict {
        let Some(data) = event_data(event) else {
            return Verdict::Forward;
        };
        let trimmed = data.trim_ascii();
        if trimmed == b"[DONE]" {
            self.saw_done = true;
            return Verdict::Forward;
        }
        match self.observe_json(trimmed) {
            Some(false) if strip_usage => Verdict::Drop,
            Some(_) => Verdict::Forward,
            None if is_json(trimmed) => Verdict::Forward,
            None => {
                self.malformed += 1;
                Verdict::Malformed
            }
        }
    }

    /// Whether every choice seen so far has a `finish_reason` (and there was at least one).
    pub fn all_finished(&self) -> bool {
        !self.choices.is_empty() && self.choices.iter().all(|c| c.finished)
    }
}

fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

/// Rewrites `"model": "<from>"` to `"model": "<to>"` in a JSON text, keeping everything else;
/// `None` when there is nothing to rewrite.
pub fn rewrite_model(json: &[u8], from: &str, to: &str) -> Option<Vec<u8>> {
    let key = b"\"model\"";
    let from_quoted = serde_json::to_vec(from).ok()?;
    let to_quoted = serde_json::to_vec(to).ok()?;
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut i = 0;
    while let Some(pos) = find(&json[i..], key) {
        let key_end = i + pos + key.len();
        let mut j = key_end;
        while j < json.len() && json[j].is_ascii_whitespace() {
            j += 1;
        }
        if j < json.len() && json[j] == b':' {
            j += 1;
            while j < json.len() && json[j].is_ascii_whitespace() {
                j += 1;
            }
            if json[j..].starts_with(&from_quoted) {
                let buf = out.get_or_insert_with(|| Vec::with_capacity(json.len() + to.len()));
                buf.extend_from_slice(&json[copied..j]);
                buf.extend_from_slice(&to_quoted);
                copied = j + from_quoted.len();
                i = copied;
                continue;
            }
        }
        i = key_end;
    }
    let mut buf = out?;
    buf.extend_from_slice(&json[copied..]);
    Some(buf)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::count_text;

    fn count(m: &mut Meter) -> (i64, i64) {
        count_generated(&m.take_choices(), &mut Budget::new(1 << 20))
    }

    #[test]
    fn meter_reads_usage_and_text_and_drops_usage_only_chunk() {
        let mut m = Meter::default();
        let v = m.observe_event(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            true,
        );
        assert_eq!(v, Verdict::Forward);
        m.observe_event(b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":{\"arguments\":\"{}\"}}]}}]}\n\n", true);
        let v = m.observe_event(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":4},\"completion_tokens_details\":{\"reasoning_tokens\":1}}}\n\n",
            true,
        );
        assert_eq!(v, Verdict::Drop);
        assert_eq!(m.observe_event(b"data: [DONE]\n\n", true), Verdict::Forward);
        assert!(m.saw_done);
        assert_eq!(count(&mut m), (count_text("Hel{}"), 0));
        assert_eq!(
            m.usage,
            Some(TokenUsage {
                prompt_tokens: 9,
                completion_tokens: 3,
                cached_tokens: 4,
                reasoning_tokens: 1,
                cache_write_tokens: 0,
            })
        );
    }

    #[test]
    fn choices_are_counted_apart_and_malformed_data_is_flagged() {
        let mut m = Meter::default();
        for event in [
            &b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hello\"}}]}\n\n"[..],
            b"data: {\"choices\":[{\"index\":1,\"delta\":{\"reasoning_content\":\"think\"}}]}\n\n",
            b"data: {\"choices\":[{\"index\":1,\"delta\":{\"content\":\" world\"},\"finish_reason\":\"stop\"}]}\n\n",
        ] {
            assert_eq!(m.observe_event(event, true), Verdict::Forward);
        }
        assert!(!m.all_finished());
        assert_eq!(
            m.observe_event(b"data: {oops\n\n", true),
            Verdict::Malformed
        );
        assert_eq!(m.observe_event(b": keep-alive\n\n", true), Verdict::Forward);
        m.observe_event(
            b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            true,
        );
        assert!(m.all_finished());
        let think = count_text("think");
        assert_eq!(
            count(&mut m),
            (count_text("hello") + count_text(" world") + think, think)
        );
        assert_eq!(m.malformed, 1);
    }

    #[test]
    fn model_is_rewritten_in_place() {
        let json = br#"{"id":"x","model": "gpt-4o-2024","choices":[]}"#;
        let out = rewrite_model(json, "gpt-4o-2024", "m1").expect("rewritten");
        assert_eq!(out, br#"{"id":"x","model": "m1","choices":[]}"#.to_vec());
        assert_eq!(rewrite_model(json, "other", "m1"), None);
    }
}
