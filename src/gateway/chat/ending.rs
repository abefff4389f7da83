//! What the end of a token-metered request means for its usage record and its client: pure
//! functions of how it ended, tested on their own.

use crate::billing::{Micros, Pricing, TokenPrice, TokenUsage, UsageSource, UsageStatus};
use crate::provider::Channel;
use std::sync::Arc;

/// How a request ended, for its usage record.
#[derive(Debug)]
pub struct Ending {
    pub status: UsageStatus,
    pub http_status: u16,
    pub channel: Option<Arc<Channel>>,
    /// Usage and its source; `None` means nothing was generated.
    pub usage: Option<(TokenUsage, UsageSource)>,
    pub ttft_ms: Option<i64>,
    pub error: Option<String>,
}

impl Ending {
    /// Nothing was generated.
    pub fn failed(
        status: UsageStatus,
        http_status: u16,
        channel: Option<Arc<Channel>>,
        error: String,
    ) -> Ending {
        Ending {
            status,
            http_status,
            channel,
            usage: None,
            ttft_ms: None,
            error: Some(error),
        }
    }

    /// What this ending costs under `pricing`: a metered request pays for whatever was
    /// generated (a client that hung up mid-stream included), a flat-priced one only for an
    /// answer that ended well.
    pub fn cost(&self, pricing: Pricing, price: &TokenPrice) -> Micros {
        let usage = self.usage.as_ref().map(|(u, _)| u);
        pricing.cost(price, usage, self.status == UsageStatus::Ok)
    }
}

/// How a forwarded stream stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The upstream sent `[DONE]`.
    Done,
    /// The upstream closed the stream without `[DONE]`.
    UpstreamClosed,
    ClientGone,
    /// Nothing arrived for the chunk timeout.
    Stalled,
    /// The request's maximum duration passed.
    Deadline,
    /// The upstream connection failed mid-answer.
    Broken,
    /// One event grew past `upstream.max_response_bytes`.
    TooLarge,
    /// The output passed what was reserved for it.
    OutputLimit,
    Shutdown,
}

/// What the stream's reader saw, besides how it stopped.
#[derive(Debug, Clone, Default)]
pub struct StreamFacts {
    /// The upstream sent an error event.
    pub saw_error: bool,
    /// Every choice sent its `finish_reason`.
    pub all_finished: bool,
    /// What broke (`Broken`, `TooLarge`).
    pub detail: Option<String>,
    /// The chunk timeout, for the message of a stalled stream.
    pub chunk_timeout_ms: u128,
    /// Output tokens reserved, for the message of a cut stream.
    pub allowance: i64,
}

/// What the client gets after the last forwarded event (before the held-back `[DONE]`, if the
/// upstream sent one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    Nothing,
    /// Only `[DONE]` was missing: the client gets one.
    Done,
    /// An SSE error event with this message and code, so the client sees an error rather than
    /// a quiet end.
    Error {
        message: String,
        code: &'static str,
    },
    /// A `finish_reason: "length"` chunk for every unfinished choice, the usage chunk if asked
    /// for, and `[DONE]`: the way OpenAI ends a stream at its length limit.
    Length,
}

/// A stream's usage status, the error its record keeps, and what its client gets last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOutcome {
    pub status: UsageStatus,
    pub error: Option<String>,
    pub tail: Tail,
}

/// Decides what a stream that stopped with `end` is: a pure function.
pub fn stream_outcome(end: StreamEnd, facts: StreamFacts) -> StreamOutcome {
    let outcome = |status, error: Option<String>, tail| StreamOutcome {
        status,
        error,
        tail,
    };
    let error_tail = |status, message: String, code| {
        outcome(status, Some(message.clone()), Tail::Error { message, code })
    };
    match end {
        StreamEnd::Done | StreamEnd::UpstreamClosed if facts.saw_error => outcome(
            UsageStatus::UpstreamError,
            Some("upstream sent an error event".to_owned()),
            Tail::Nothing,
        ),
        StreamEnd::Done => outcome(UsageStatus::Ok, None, Tail::Nothing),
        StreamEnd::UpstreamClosed if facts.all_finished => {
            outcome(UsageStatus::Ok, None, Tail::Done)
        }
        StreamEnd::UpstreamClosed | StreamEnd::Broken => {
            let message = match facts.detail {
                Some(d) => format!("upstream closed the stream before it finished: {d}"),
                None => "upstream closed the stream before it finished".to_owned(),
            };
            error_tail(UsageStatus::Incomplete, message, "upstream_incomplete")
        }
        StreamEnd::ClientGone => outcome(
            UsageStatus::ClientDisconnected,
            Some("client closed the connection mid-stream".to_owned()),
            Tail::Nothing,
        ),
        StreamEnd::Stalled => error_tail(
            UsageStatus::UpstreamTimeout,
            format!("upstream sent nothing for {} ms", facts.chunk_timeout_ms),
            "upstream_timeout",
        ),
        StreamEnd::Deadline => error_tail(
            UsageStatus::UpstreamTimeout,
            "request exceeded the gateway's maximum duration".to_owned(),
            "upstream_timeout",
        ),
        StreamEnd::TooLarge => error_tail(
            UsageStatus::UpstreamError,
            format!(
                "upstream stream broke: {}",
                facts.detail.unwrap_or_default()
            ),
            "upstream_error",
        ),
        StreamEnd::OutputLimit => outcome(
            UsageStatus::Truncated,
            Some(format!(
                "the output passed the {} tokens reserved for it; the upstream was cut",
                facts.allowance
            )),
            Tail::Length,
        ),
        StreamEnd::Shutdown => error_tail(
            UsageStatus::Shutdown,
            "the gateway is shutting down".to_owned(),
            "shutting_down",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRICE: TokenPrice = TokenPrice {
        input_micros_per_mtok: 1_000_000,
        output_micros_per_mtok: 2_000_000,
        cached_input_micros_per_mtok: 0,
        cache_write_micros_per_mtok: 0,
        request_micros: 0,
        version: 1,
    };

    fn facts() -> StreamFacts {
        StreamFacts {
            chunk_timeout_ms: 30_000,
            allowance: 64,
            ..StreamFacts::default()
        }
    }

    fn ending(status: UsageStatus, usage: Option<TokenUsage>) -> Ending {
        Ending {
            status,
            http_status: 200,
            channel: None,
            usage: usage.map(|u| (u, UsageSource::Provider)),
            ttft_ms: None,
            error: None,
        }
    }

    #[test]
    fn a_finished_stream_is_ok_and_needs_no_tail() {
        let o = stream_outcome(StreamEnd::Done, facts());
        assert_eq!(
            o,
            StreamOutcome {
                status: UsageStatus::Ok,
                error: None,
                tail: Tail::Nothing
            }
        );
    }

    #[test]
    fn an_error_event_makes_the_stream_an_upstream_error_however_it_ends() {
        for end in [StreamEnd::Done, StreamEnd::UpstreamClosed] {
            let o = stream_outcome(
                end,
                StreamFacts {
                    saw_error: true,
                    all_finished: true,
                    ..facts()
                },
            );
            assert_eq!(o.status, UsageStatus::UpstreamError);
            assert_eq!(o.tail, Tail::Nothing);
        }
    }

    #[test]
    fn a_stream_missing_only_its_terminator_gets_one() {
        let o = stream_outcome(
            StreamEnd::UpstreamClosed,
            StreamFacts {
                all_finished: true,
                ..facts()
            },
        );
        assert_eq!((o.status, o.tail), (UsageStatus::Ok, Tail::Done));
    }

    #[test]
    fn a_stream_cut_short_by_the_upstream_is_incomplete_with_an_error_event() {
        let o = stream_outcome(StreamEnd::UpstreamClosed, facts());
        assert_eq!(o.status, UsageStatus::Incomplete);
        let broken = stream_outcome(
            StreamEnd::Broken,
            StreamFacts {
                detail: Some("connection reset".into()),
                ..facts()
            },
        );
        let message = "upstream closed the stream before it finished: connection reset";
        assert_eq!(broken.error.as_deref(), Some(message));
        assert_eq!(
            broken.tail,
            Tail::Error {
                message: message.into(),
                code: "upstream_incomplete"
            }
        );
    }

    #[test]
    fn timeouts_shutdown_and_oversized_events_end_with_their_own_codes() {
        let cases = [
            (
                StreamEnd::Stalled,
                UsageStatus::UpstreamTimeout,
                "upstream_timeout",
            ),
            (
                StreamEnd::Deadline,
                UsageStatus::UpstreamTimeout,
                "upstream_timeout",
            ),
            (
                StreamEnd::TooLarge,
                UsageStatus::UpstreamError,
                "upstream_error",
            ),
            (StreamEnd::Shutdown, UsageStatus::Shutdown, "shutting_down"),
        ];
        for (end, status, code) in cases {
            let o = stream_outcome(end, facts());
            assert_eq!(o.status, status, "{end:?}");
            assert!(
                matches!(o.tail, Tail::Error { code: c, .. } if c == code),
                "{end:?}"
            );
        }
        let stalled = stream_outcome(StreamEnd::Stalled, facts());
        assert_eq!(
            stalled.error.as_deref(),
            Some("upstream sent nothing for 30000 ms")
        );
    }

    #[test]
    fn a_client_that_hangs_up_gets_nothing_more_and_pays_for_what_was_generated() {
        let o = stream_outcome(StreamEnd::ClientGone, facts());
        assert_eq!(
            (o.status, o.tail),
            (UsageStatus::ClientDisconnected, Tail::Nothing)
        );
        let used = TokenUsage {
            prompt_tokens: 10,
            completion_tokens: 5,
            ..Default::default()
        };
        let e = ending(UsageStatus::ClientDisconnected, Some(used));
        // One micro-credit per input token, two per output token: 10 + 5 × 2.
        assert_eq!(e.cost(Pricing::Metered, &PRICE), Micros(20));
        // A flat price is paid only for an answer that ended well.
        assert_eq!(e.cost(Pricing::Flat(Micros(500)), &PRICE), Micros::ZERO);
        let ok = ending(UsageStatus::Ok, Some(used));
        assert_eq!(ok.cost(Pricing::Flat(Micros(500)), &PRICE), Micros(500));
    }

    #[test]
    fn a_stream_past_its_allowance_ends_like_a_length_limit() {
        let o = stream_outcome(StreamEnd::OutputLimit, facts());
        assert_eq!((o.status, o.tail), (UsageStatus::Truncated, Tail::Length));
        assert!(o.error.expect("an error").contains("64 tokens reserved"));
    }

    #[test]
    fn nothing_generated_costs_nothing() {
        let e = Ending::failed(UsageStatus::UpstreamError, 502, None, "x".into());
        assert_eq!(e.cost(Pricing::Metered, &PRICE), Micros::ZERO);
        assert_eq!(e.cost(Pricing::Flat(Micros(9)), &PRICE), Micros::ZERO);
    }

    #[test]
    fn a_flat_price_is_not_paid_for_an_answer_without_visible_output() {
        let empty = TokenUsage {
            prompt_tokens: 10,
            ..Default::default()
        };
        let thinking_only = TokenUsage {
            prompt_tokens: 10,
            completion_tokens: 7,
            reasoning_tokens: 7,
            ..Default::default()
        };
        for used in [empty, thinking_only] {
            let ok = ending(UsageStatus::Ok, Some(used));
            assert_eq!(ok.cost(Pricing::Flat(Micros(500)), &PRICE), Micros::ZERO);
            assert!(ok.cost(Pricing::Metered, &PRICE) > Micros::ZERO);
        }
    }
}
