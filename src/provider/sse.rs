//! Server-sent event framing, as upstreams send it and clients read it: split a byte stream into
//! events, keep only well-formed SSE lines, read an event's `data`.
//! Spec: <https://html.spec.whatwg.org/multipage/server-sent-events.html>.

use bytes::{Bytes, BytesMut};
use std::borrow::Cow;

/// Splits a byte stream into complete events (each ending with its blank line).
#[derive(Default)]
pub struct EventSplitter {
    buf: BytesMut,
    /// Where the search for the next boundary resumes.
    scanned: usize,
}

/// Length of the event boundary starting at `i` (`\n\n`, `\r\n\r\n` or `\r\r`), if one does.
fn boundary_at(buf: &[u8], i: usize) -> Option<usize> {
    let rest = &buf[i..];
    if rest.starts_with(b"\r\n\r\n") {
        Some(4)
    } else if rest.starts_with(b"\n\n") || rest.starts_with(b"\r\r") {
        Some(2)
    } else {
        None
    }
}

impl EventSplitter {
    /// Adds bytes and returns every event they complete.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Bytes> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut i = self.scanned;
        while i < self.buf.len() {
            match boundary_at(&self.buf, i) {
                Some(len) => {
                    let event = self.buf.split_to(i + len).freeze();
                    events.push(event);
                    i = 0;
                }
                None => i += 1,
            }
        }
        // A boundary may straddle chunks: re-check the last three bytes next time.
        self.scanned = self.buf.len().saturating_sub(3);
        events
    }

    /// Bytes held for an event not yet complete.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Whatever is left when the stream ends (an unterminated event), if anything.
    pub fn finish(&mut self) -> Option<Bytes> {
        self.scanned = 0;
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }
}

/// Whether one line of an event (without its terminator) is well-formed SSE that every client
/// can read: UTF-8, and a comment (`:`…) or one of the fields `data`, `event`, `id`, `retry`.
fn is_clean_line(line: &[u8]) -> bool {
    if line.is_empty() || line[0] == b':' {
        return std::str::from_utf8(line).is_ok();
    }
    let name = line.split(|&b| b == b':').next().unwrap_or(line);
    matches!(name, b"data" | b"event" | b"id" | b"retry") && std::str::from_utf8(line).is_ok()
}

/// An event with every line that is not well-formed SSE removed: `(event to forward, bytes
/// dropped)`. The event is the same bytes when nothing was dropped, and `None` when no field or
/// comment line is left. Bytes out are always bytes in minus the bytes dropped.
pub fn clean_event(event: Bytes) -> (Option<Bytes>, usize) {
    let lines = || event.split_inclusive(|&b| b == b'\n');
    let content = |line: &[u8]| -> usize {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        line.strip_suffix(b"\r").unwrap_or(line).len()
    };
    let keep = |line: &[u8]| {
        let end = content(line);
        is_clean_line(&line[..end])
    };
    if lines().all(keep) {
        return (Some(event.clone()), 0);
    }
    let mut kept = Vec::with_capacity(event.len());
    let mut fields = 0;
    for line in lines() {
        if keep(line) {
            if content(line) > 0 {
                fields += 1;
            }
            kept.extend_from_slice(line);
        }
    }
    if fields == 0 {
        return (None, event.len());
    }
    let dropped = event.len() - kept.len();
    (Some(Bytes::from(kept)), dropped)
}

/// The `data` of an event (lines joined by `\n`), or `None` for comments and other fields.
pub fn event_data(event: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut data: Option<Cow<'_, [u8]>> = None;
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(value) = line.strip_prefix(b"data:") else {
            continue;
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        data = Some(match data {
            None => Cow::Borrowed(value),
            Some(prev) => {
                let mut joined = prev.into_owned();
                joined.push(b'\n');
                joined.extend_from_slice(value);
                Cow::Owned(joined)
            }
        });
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_chunk_boundaries() {
        let mut s = EventSplitter::default();
        assert!(s.push(b"data: {\"a\":1}\n").is_empty());
        let ev = s.push(b"\ndata: {\"b\"");
        assert_eq!(ev, vec![Bytes::from_static(b"data: {\"a\":1}\n\n")]);
        let ev = s.push(b":2}\r\n\r\ndata: [DONE]\n\n");
        assert_eq!(ev.len(), 2);
        assert_eq!(&ev[0][..], b"data: {\"b\":2}\r\n\r\n");
        assert_eq!(s.finish(), None);
        s.push(b"data: tail");
        assert_eq!(s.finish(), Some(Bytes::from_static(b"data: tail")));
    }
}
