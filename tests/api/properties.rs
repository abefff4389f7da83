//! Property tests of what reads client and upstream bytes: the request parser, the SSE splitter,
//! cleaner and meter, and the decimal money parser, each against arbitrary input (over 100 000
//! cases in all). None may panic, and each keeps its invariants: a reservation's bound is at
//! least the prompt's local count; bytes out are bytes in minus what was dropped; money
//! round-trips exactly.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use tollgate::billing::Micros;
use tollgate::gateway::request::{ChatRequest, Defaults};
use tollgate::gateway::sse::{Meter, count_generated};
use tollgate::provider::Endpoint;
use tollgate::provider::sse::{EventSplitter, clean_event};
use tollgate::tokens::Budget;

const ENDPOINTS: [Endpoint; 3] = [Endpoint::Chat, Endpoint::Completions, Endpoint::Embeddings];

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(any::<char>(), 0..24).prop_map(|c| c.into_iter().collect()),
        proptest::collection::vec(
            prop_oneof![
                Just("hello"),
                Just(" world"),
                Just("多"),
                Just("\n"),
                Just("  "),
                Just("😀"),
                Just("aaaa")
            ],
            0..12
        )
        .prop_map(|p| p.concat()),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e6_f64..1e6).prop_map(|f| json!(f)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just("content".to_owned()),
                        Just("url".to_owned()),
                        Just("text".to_owned()),
                        text()
                    ],
                    inner
                ),
                0..4
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A chat message: mostly well-formed, sometimes not.
fn message() -> impl Strategy<Value = Value> {
    let part = prop_oneof![
        text().prop_map(|t| json!({"type": "text", "text": t})),
        text().prop_map(|u| json!({"type": "image_url", "image_url": {"url": u}})),
    ];
    prop_oneof![
        (
            prop_oneof![Just("user"), Just("system"), Just("assistant")],
            text()
        )
            .prop_map(|(r, c)| json!({"role": r, "content": c})),
        (Just("user"), proptest::collection::vec(part, 0..3))
            .prop_map(|(r, parts)| json!({"role": r, "content": parts})),
        json_value(),
    ]
}

/// A request body for any endpoint, with the fields metering reads, each sometimes wrong.
fn request_body() -> impl Strategy<Value = Value> {
    (
        prop_oneof![text().prop_map(Value::String), json_value()],
        proptest::collection::vec(message(), 0..4),
        prop_oneof![
            Just(Value::Bool(true)),
            Just(Value::Bool(false)),
            json_value()
        ],
        prop_oneof![(1_i64..5000).prop_map(|n| json!(n)), json_value()],
        prop_oneof![(1_i64..4).prop_map(|n| json!(n)), json_value()],
        prop_oneof![
            text().prop_map(Value::String),
            proptest::collection::vec(text(), 0..3).prop_map(|v| json!(v)),
            json_value()
        ],
        proptest::bits::u8::ANY,
    )
        .prop_map(
            |(model, messages, stream, max_tokens, n, prompt, present)| {
                let mut body = serde_json::Map::new();
                let fields = [
                    ("model", model),
                    ("messages", Value::Array(messages)),
                    ("stream", stream),
                    ("max_tokens", max_tokens),
                    ("n", n),
                    ("prompt", prompt.clone()),
                    ("input", prompt),
                    (
                        "tools",
                        json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]),
                    ),
                ];
                for (i, (k, v)) in fields.into_iter().enumerate() {
                    if present & (1 << i) != 0 || k == "messages" || k == "model" {
                        body.insert(k.to_owned(), v);
                    }
                }
                Value::Object(body)
            },
        )
}

#[test]
fn the_request_parser_never_panics_on_arbitrary_bytes() {
    runner(20_000)
        .run(&proptest::collection::vec(any::<u8>(), 0..256), |bytes| {
            for endpoint in ENDPOINTS {
                let _ = ChatRequest::parse_for(endpoint, &bytes);
            }
            Ok(())
        })
        .expect("property");
}

#[test]
fn a_parsed_request_is_bounded_above_its_count_and_edits_keep_json() {
    runner(20_000)
        .run(&request_body(), |body| {
            let raw = serde_json::to_vec(&body).expect("json");
            for endpoint in ENDPOINTS {
                let Ok(req) = ChatRequest::parse_for(endpoint, &raw) else {
                    continue;
                };
                let counted = req.count_prompt(&raw, &mut Budget::new(1 << 20));
                prop_assert!(
                    counted <= req.prompt_tokens_bound,
                    "{counted} > {} for {body}",
                    req.prompt_tokens_bound
                );
                prop_assert!(req.n >= 1 && req.n <= 128);
                let defaults = Defaults {
                    temperature: None,
                    max_tokens: Some(7),
                };
                let edited = req.upstream_body(&raw, "upstream-model", &defaults);
                let edited: Value =
                    serde_json::from_slice(&edited).expect("the upstream body is JSON");
                prop_assert_eq!(&edited["model"], "upstream-model");
                if req.stream {
                    prop_assert_eq!(&edited["stream_options"]["include_usage"], true);
                }
                // Everything else the client sent is passed on (compared as read by the same
                // parser, which rounds some floats).
                let sent: Value = serde_json::from_slice(&raw).expect("json");
                for (k, v) in sent.as_object().expect("object") {
                    if !["model", "stream_options", "max_tokens", "temperature"]
                        .contains(&k.as_str())
                    {
                        prop_assert_eq!(&edited[k], v);
                    }
                }
            }
            // The same fields as an array are never a request.
            let array = Value::Array(
                body.as_object()
                    .expect("object")
                    .values()
                    .cloned()
                    .collect(),
            );
            for endpoint in ENDPOINTS {
                prop_assert!(
                    ChatRequest::parse_for(endpoint, &serde_json::to_vec(&array).expect("json"))
                        .is_err()
                );
            }
            Ok(())
        })
        .expect("property");
}

/// An upstream byte stream: events (well-formed or not) and noise.
fn sse_stream() -> impl Strategy<Value = Vec<u8>> {
    let event = prop_oneof![
        text().prop_map(|t| format!("data: {}\n\n", json!({"choices": [{"index": 0, "delta": {"content": t}}]})).into_bytes()),
        (0_usize..3, text()).prop_map(|(i, t)| format!("data: {}\r\n\r\n", json!({"choices": [{"index": i, "delta": {"reasoning_content": t}, "finish_reason": "stop"}]})).into_bytes()),
        Just(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n".to_vec()),
        Just(b": keep-alive\n\n".to_vec()),
        Just(b"event: ping\nid: 7\nretry: 10\ndata: {}\n\n".to_vec()),
        Just(b"data: [DONE]\n\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'd'), Just(b':'), Just(0xff_u8)], 0..12),
    ];
    proptest::collection::vec(event, 0..12).prop_map(|e| e.concat())
}

#[test]
fn the_splitter_cleaner_and_meter_keep_every_byte_accounted_for() {
    let strategy = (
        sse_stream(),
        proptest::collection::vec(1_usize..64, 1..16),
        any::<bool>(),
    );
    runner(40_000)
        .run(&strategy, |(input, cuts, strip_usage)| {
            let mut splitter = EventSplitter::default();
            let mut events = Vec::new();
            let (mut at, mut i) = (0, 0);
            while at < input.len() {
                let len = cuts[i % cuts.len()].min(input.len() - at);
                events.extend(splitter.push(&input[at..at + len]));
                at += len;
                i += 1;
            }
            let rest = splitter.finish();
            // The splitter loses and adds nothing.
            let mut joined: Vec<u8> = events.iter().flat_map(|e| e.to_vec()).collect();
            joined.extend(rest.iter().flat_map(|r| r.to_vec()));
            prop_assert_eq!(&joined, &input);
            let mut meter = Meter::default();
            for event in events {
                prop_assert!(
                    event.ends_with(b"\n\n")
                        || event.ends_with(b"\r\r")
                        || event.ends_with(b"\r\n\r\n")
                );
                let before = event.len();
                let (kept, dropped) = clean_event(event);
                let kept_len = kept.as_ref().map_or(0, |k| k.len());
                // Bytes out = bytes in minus what was dropped; what is kept is clean.
                prop_assert_eq!(kept_len + dropped, before);
                if let Some(kept) = kept {
                    prop_assert!(std::str::from_utf8(&kept).is_ok());
                    let (again, none) = clean_event(kept.clone());
                    prop_assert_eq!(none, 0);
                    prop_assert_eq!(again, Some(kept.clone()));
                    let _ = meter.observe_event(&kept, strip_usage);
                    let _ = meter.take_uncounted();
                }
            }
            let (completion, reasoning) =
                count_generated(&meter.take_choices(), &mut Budget::new(4096));
            prop_assert!(completion >= reasoning && reasoning >= 0);
            Ok(())
        })
        .expect("property");
}

#[test]
fn money_round_trips_exactly_and_no_text_panics_the_parser() {
    runner(15_000)
        .run(&any::<i64>(), |m| {
            let text = Micros(m).to_decimal_string();
            prop_assert_eq!(Micros::parse_decimal(&text), Ok(Micros(m)));
            prop_assert_eq!(Micros::from_json_text(&text), Ok(Micros(m)));
            prop_assert_eq!(
                Micros::from_json_text(&format!("\"{text}\"")),
                Ok(Micros(m))
            );
            Ok(())
        })
        .expect("round trip");
    let junk = prop_oneof![
        proptest::collection::vec(
            prop_oneof![
                Just('0'),
                Just('9'),
                Just('.'),
                Just('-'),
                Just('+'),
                Just('e'),
                Just('E'),
                Just(' '),
                Just('"'),
                any::<char>()
            ],
            0..48
        )
        .prop_map(|c| c.into_iter().collect::<String>()),
        (any::<i64>(), 0_u32..8, -45_i32..45)
            .prop_map(|(m, places, exp)| format!("{m}.{}e{exp}", "5".repeat(places as usize))),
    ];
    runner(15_000)
        .run(&junk, |text| {
            if let Ok(m) = Micros::parse_decimal(&text) {
                // Whatever parses means what it says: formatting it parses back to it.
                prop_assert_eq!(Micros::parse_decimal(&m.to_decimal_string()), Ok(m));
            }
            let _ = Micros::from_json_text(&text);
            Ok(())
        })
        .expect("no panic");
}
