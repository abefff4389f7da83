//! The stream-ending conformance suite: every way a chat completion can end, each asserting the
//! exact charge, the usage record's `usage_source`, the bytes the client saw and the ledger, on
//! both backends. The README's billing section states the rule each case checks.
//!
//! Prices in every case: input 1, output 2, cached input 0.5 micro-credits per token (1, 2 and
//! 0.5 credits per 1M tokens); the user starts with 10 credits.

use crate::both_backends;
use crate::helpers::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;

/// The user's starting balance, in micro-credits.
const START: i64 = 10_000_000;
/// The local prompt estimate of [`request`]'s one message (o200k_base): 4 per message,
/// "user" 1, "x" 1, 3 to prime the reply.
const PROMPT_ESTIMATE: i64 = 9;
/// The bound a reservation takes for that prompt, without a tokenizer: its bytes ("user" 4,
/// "x" 1) plus the same overheads.
const PROMPT_BOUND: i64 = 12;
/// Tokens of "Hello there" (o200k_base): "Hello", " there".
const HELLO_THERE: i64 = 2;

fn chunk_with(choices: Value) -> String {
    let chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m1",
                       "choices": choices});
    format!("data: {chunk}\n\n")
}

fn delta(index: u32, delta: Value) -> String {
    chunk_with(json!([{"index": index, "delta": delta, "finish_reason": null}]))
}

fn text(t: &str) -> String {
    delta(0, json!({"content": t}))
}

fn finish(index: u32, reason: &str) -> String {
    chunk_with(json!([{"index": index, "delta": {}, "finish_reason": reason}]))
}

fn usage_event(prompt: i64, completion: i64, cached: i64, reasoning: i64) -> String {
    let chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m1",
                       "choices": [], "usage": {
                           "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                           "prompt_tokens_details": {"cached_tokens": cached},
                           "completion_tokens_details": {"reasoning_tokens": reasoning}}});
    format!("data: {chunk}\n\n")
}

const DONE: &str = "data: [DONE]\n\n";

fn sse(events: &[String]) -> Script {
    Script::Sse {
        events: events.to_vec(),
        event_delay_ms: 0,
        stall_after: None,
    }
}

fn request(stream: bool) -> Value {
    json!({"model": "m1", "stream": stream, "messages": [{"role": "user", "content": "x"}]})
}

/// One channel serving `m1` under its own name, the prices above, a user with 10 credits.
async fn gateway_with(
    b: &Backend,
    script: Script,
    adjust: impl FnOnce(&mut tollgate::config::Config),
) -> Setup {
    let app = TestApp::spawn_with(b, adjust).await;
    Setup::provision(
        app,
        script,
        json!({}),
        Prices {
            input: "1",
            output: "2",
            cached: "0.5",
        },
        "10",
    )
    .await
}

async fn gateway(b: &Backend, script: Script) -> Setup {
    gateway_with(b, script, |_| {}).await
}

/// Sends `body` and reads the whole answer: (status, request id, body text).
async fn call(s: &Setup, body: Value) -> (u16, String, String) {
    let resp = s.app.chat(&s.key, body).send().await.expect("send");
    let status = resp.status().as_u16();
    let id = resp.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    let bytes = resp.bytes().await.expect("body");
    (status, id, String::from_utf8(bytes.to_vec()).expect("utf8"))
}

/// Asserts the request's one usage record and the money: `cost` charged exactly once (or
/// nothing at all), the ledger row matching it, and `tollgate ledger verify`'s checks passing.
async fn assert_settled(s: &Setup, status: &str, source: &str, cost: i64) -> Value {
    let usage = s.app.wait_for_usage(s.user, 1).await;
    assert_eq!(usage.len(), 1, "{usage:?}");
    let record = usage[0].clone();
    assert_eq!(record["status"], status, "{record}");
    assert_eq!(record["usage_source"], source, "{record}");
    assert_eq!(record["cost_micros"], cost, "{record}");
    assert_eq!(record["unbilled_micros"], 0, "{record}");
    assert_eq!(record["price_version"], 1, "{record}");
    assert_eq!(s.app.balance_micros(s.user).await, START - cost);
    let (_, ledger) = s
        .app
        .admin(
            reqwest::Method::GET,
            &format!("/api/v1/admin/users/{}/ledger?page_size=100", s.user),
            None,
        )
        .await;
    let charges: Vec<&Value> = ledger["data"]["items"]
        .as_array()
        .expect("ledger items")
        .iter()
        .filter(|e| e["type"] == "charge")
        .collect();
    if cost > 0 {
        assert_eq!(charges.len(), 1, "{ledger}");
        assert_eq!(charges[0]["amount_micros"], -cost);
        assert_eq!(charges[0]["balance_after_micros"], START - cost);
        assert_eq!(charges[0]["request_id"], record["request_id"]);
    } else {
        assert!(charges.is_empty(), "nothing may be charged: {ledger}");
    }
    s.app.assert_books_balance(s.user).await;
    record
}

/// Waits until the fake upstream has seen `n` requests cancelled.
async fn wait_cancelled(fake: &FakeUpstream, n: usize) {
    for _ in 0..250 {
        if fake.cancelled() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        fake.cancelled(),
        n,
        "the upstream request must be cancelled"
    );
}

async fn normal_end_with_usage_is_billed_from_the_provider(b: Backend) {
    let events = [
        text("Hello"),
        text(" there"),
        finish(0, "stop"),
        usage_event(20, 5, 0, 0),
        DONE.into(),
    ];
    let s = gateway(&b, sse(&events)).await;
    let (status, id, body) = call(&s, request(true)).await;
    assert_eq!(status, 200);
    // The usage chunk was asked for by Tollgate, not by the client: it is removed.
    assert_eq!(body, [&events[..3], &events[4..]].concat().concat());
    // 20 × 1 + 5 × 2.
    let record = assert_settled(&s, "ok", "provider", 30).await;
    assert_eq!(record["request_id"], id);
    assert_eq!(
        (
            record["prompt_tokens"].as_i64(),
            record["completion_tokens"].as_i64()
        ),
        (Some(20), Some(5))
    );
    s.app.stop().await;
}

async fn end_without_usage_is_billed_from_a_local_count(b: Backend) {
    let events = [
        text("Hello"),
        text(" there"),
        finish(0, "stop"),
        DONE.into(),
    ];
    let s = gateway(&b, sse(&events)).await;
    let (status, _, body) = call(&s, request(true)).await;
    assert_eq!(status, 200);
    assert_eq!(body, events.concat());
    let record = assert_settled(&s, "ok", "estimated", PROMPT_ESTIMATE + 2 * HELLO_THERE).await;
    assert_eq!(record["prompt_tokens"], PROMPT_ESTIMATE);
    assert_eq!(record["completion_tokens"], HELLO_THERE);
    s.app.stop().await;
}

async fn cached_input_is_billed_at_the_cached_price_and_reasoning_as_output(b: Backend) {
    let events = [
        text("Hello"),
        finish(0, "stop"),
        usage_event(1000, 300, 400, 200),
        DONE.into(),
    ];
    let s = gateway(&b, sse(&events)).await;
    let mut body = request(true);
    body["stream_options"] = json!({"include_usage": true});
    let (status, _, got) = call(&s, body).await;
    assert_eq!(status, 200);
    // The client asked for usage: every byte passes through.
    assert_eq!(got, events.concat());
    // 600 uncached × 1 + 400 cached × 0.5 + 300 completion (200 of them reasoning) × 2.
    let record = assert_settled(&s, "ok", "provider", 600 + 200 + 600).await;
    assert_eq!(record["cached_tokens"], 400);
    assert_eq!(record["reasoning_tokens"], 200);
    assert_eq!(record["completion_tokens"], 300);
    s.app.stop().await;
}

async fn client_gone_before_the_first_byte_is_charged_nothing(b: Backend) {
    let events = [
        text("Hello"),
        finish(0, "stop"),
        usage_event(20, 5, 0, 0),
        DONE.into(),
    ];
    let s = gateway(&b, sse(&events)).await;
    s.fake.set_headers_delay(3_000);
    let result = s
        .app
        .chat(&s.key, request(true))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(result.is_err(), "the client gave up before any byte");
    let record = assert_settled(&s, "client_disconnected", "none", 0).await;
    assert_eq!(record["completion_tokens"], 0);
    wait_cancelled(&s.fake, 1).await;
    s.app.stop().await;
}

async fn client_gone_mid_stream_is_billed_for_what_was_generated(b: Backend) {
    let events = [
        text("alpha"),
        text(" beta"),
        text(" gamma"),
        text(" delta"),
        finish(0, "stop"),
        DONE.into(),
    ];
    let script = Script::Sse {
        events: events.to_vec(),
        event_delay_ms: 0,
        stall_after: Some(3),
    };
    let s = gateway(&b, script).await;
    let resp = s
        .app
        .chat(&s.key, request(true))
        .send()
        .await
        .expect("send");
    let mut stream = resp.bytes_stream();
    let mut seen = String::new();
    while seen.matches("data: ").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("in time")
            .expect("chunk")
            .expect("bytes");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(seen, events[..3].concat());
    drop(stream);
    // "alpha beta gamma" is 3 tokens.
    let record = assert_settled(
        &s,
        "client_disconnected",
        "estimated",
        PROMPT_ESTIMATE + 3 * 2,
    )
    .await;
    assert_eq!(record["completion_tokens"], 3);
    wait_cancelled(&s.fake, 1).await;
    s.app.stop().await;
}

async fn client_gone_right_after_done_is_billed_in_full_and_already_settled(b: Backend) {
    let events = [
        text("Hello"),
        text(" there"),
        finish(0, "stop"),
        usage_event(20, 5, 0, 0),
        DONE.into(),
    ];
    let s = gateway(&b, sse(&events)).await;
    let resp = s
        .app
        .chat(&s.key, request(true))
        .send()
        .await
        .expect("send");
    let mut stream = resp.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("[DONE]") {
        let chunk = stream.next().await.expect("chunk").expect("bytes");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(stream);
    // [DONE] is sent only after the settlement is written: the record is there already.
    let usage = s.app.usage(s.user).await;
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0]["cost_micros"], 30);
    assert_settled(&s, "ok", "provider", 30).await;
    s.app.stop().await;
}

async fn an_upstream_error_event_mid_stream_is_passed_on_and_what_came_before_is_billed(
    b: Backend,
) {
    let error = "data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n";
    let events = [text("Hello"), text(" there"), error.into()];
    let s = gateway(&b, sse(&events)).await;
    let (status, _, body) = call(&s, request(true)).await;
    assert_eq!(status, 200);
    assert_eq!(body, events.concat());
    let record = assert_settled(
        &s,
        "upstream_error",
        "estimated",
        PROMPT_ESTIMATE + 2 * HELLO_THERE,
    )
    .await;
    assert_eq!(record["error"], "upstream sent an error event");
    s.app.stop().await;
}

async fn upstream_closing_after_the_last_choice_finished_gets_done_added(b: Backend) {
    let events = [
        text("Hello"),
        text(" there"),
        finish(0, "stop"),
        usage_event(20, 5, 0, 0),
    ];
    let s = gateway(&b, sse(&events)).await;
    let (status, _, body) = call(&s, request(true)).await;
    assert_eq!(status, 200);
    assert_eq!(body, format!("{}{DONE}", events[..3].concat()));
    assert_settled(&s, "ok", "provider", 30).await;
    s.app.stop().await;
}

async fn upstream_closing_mid_answer_ends_with_an_error_event_and_bills_what_was_sent(b: Backend) {
    let events = [text("Hello"), text(" there")];
    let s = gateway(&b, sse(&events)).await;
    let (status, _, body) = call(&s, request(true)).await;
    assert_eq!(status, 200);
    let tail = body
        .strip_prefix(events.concat().as_str())
        .expect("events first");
    let error: Value =
        serde_json::from_str(tail.strip_prefix("data: ").expect("data").trim_end()).expect("json");
    assert_eq!(error["error"]["code"], "upstream_incomplete");
    assert!(tail.ends_with("\n\n"));
    assert_settled(
        &s,
        "incomplete",
        "estimated",
        PROMPT_ESTIMATE + 2 * HELLO_THERE,
    )
    .await;
    s.app.stop().await;
}

async fn upstream_stalling_past_the_chunk_timeout_is_cut_and_billed_for_what_was_sent(b: Backend) {
    let events = [
        text("Hello"),
        text(" there"),
        finish(0, "stop"),
        DONE.into(),
    ];
    let script = Script::Sse {
        events: events.to_vec(),
        event_delay_ms: 0,
        stall_after: Some(2),
    };
    let s = gateway_with(&b, script, |c| c.upstream.chunk_timeout_ms = 300).await;
    let (status, _, body) = call(&s, request(true)).await;
    assert_eq!(status, 200);
    let tail = body
        .strip_prefix(events[..2].concat().as_str())
        .expect("events first");
    let error: Value =
        serde_json::from_str(tail.strip_prefix("data: ").expect("data").trim_end()).expect("json");
    assert_eq!(error["error"]["code"], "upstream_timeout");
    assert_eq!(
        error["error"]["message"],
        "upstream sent nothing for 300 ms"
    );
    assert_settled(
        &s,
        "upstream_timeout",
        "estimated",
        PROMPT_ESTIMATE + 2 * HELLO_THERE,
    )
    .await;
    wait_cancelled(&s.fake, 1).await;
    s.app.stop().await;
}

async fn upstream_429_before_the_stream_reaches_the_client_as_is_and_costs_nothing(b: Backend) {
    let upstream = br#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    let s = gateway(
        &b,
        Script::Raw {
            status: 429,
            content_type: "application/json",
            body: upstream.to_vec(),
        },
    )
    .await;
    let (status, _, body) = call(&s, request(true)).await;
    assert_eq!(status, 429);
    assert_eq!(body.as_bytes(), upstream);
    assert_settled(&s, "upstream_rejected", "none", 0).await;
    s.app.stop().await;
}

async fn upstream_500_before_the_stream_becomes_502_and_costs_nothing(b: Backend) {
    let s = gateway(
        &b,
        Script::Raw {
            status: 500,
            content_type: "application/json",
            body: br#"{"error":{"message":"boom"}}"#.to_vec(),
        },
    )
    .await;
    let (status, _, body) = call(&s, request(true)).await;
    assert_eq!(status, 502);
    let error: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(error["error"]["code"], "upstream_error");
    assert_eq!(
        error["error"]["message"],
        "upstream error: upstream returned status 500"
    );
    assert_settled(&s, "upstream_error", "none", 0).await;
    s.app.stop().await;
}

async fn malformed_json_before_the_stream_becomes_502_and_costs_nothing(b: Backend) {
    let broken = br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"content":"Hel"#;
    let s = gateway(
        &b,
        Script::Raw {
            status: 200,
            content_type: "application/json",
            body: broken.to_vec(),
        },
    )
    .await;
    for stream in [true, false] {
        let (status, _, body) = call(&s, request(stream)).await;
        assert_eq!(status, 502);
        let error: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            error["error"]["message"],
            "upstream error: upstream returned a response that is not JSON"
        );
    }
    let usage = s.app.wait_for_usage(s.user, 2).await;
    assert!(usage.iter().all(|u| u["cost_micros"] == 0
        && u["usage_source"] == "none"
        && u["status"] == "upstream_error"));
    assert_eq!(s.app.balance_micros(s.user).await, START);
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn a_malformed_sse_line_mid_stream_is_dropped_and_the_rest_billed_normally(b: Backend) {
    let events = [
        text("Hello"),
        "data: {\"choices\": [oops\n\n".into(),
        text(" there"),
        finish(0, "stop"),
        usage_event(20, 5, 0, 0),
        DONE.into(),
    ];
    let s = gateway(&b, sse(&events)).await;
    let (status, _, body) = call(&s, request(true)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        [events[0].as_str(), &events[2], &events[3], &events[5]].concat()
    );
    assert_settled(&s, "ok", "provider", 30).await;
    s.app.stop().await;
}

async fn one_very_large_chunk_passes_through_whole(b: Backend) {
    let big = "abcdefgh".repeat(131_072);
    let events = [
        text(&big),
        finish(0, "stop"),
        usage_event(10, 50_000, 0, 0),
        DONE.into(),
    ];
    let s = gateway(&b, sse(&events)).await;
    // Enough output reserved for a megabyte of text (a token is at least a byte).
    let mut req = request(true);
    req["max_tokens"] = json!(2_000_000);
    let (status, _, body) = call(&s, req).await;
    assert_eq!(status, 200);
    assert!(body.len() > 1_048_576);
    assert_eq!(body, [&events[..2], &events[3..]].concat().concat());
    // 10 × 1 + 50 000 × 2.
    assert_settled(&s, "ok", "provider", 100_010).await;
    s.app.stop().await;
}

async fn n_choices_are_reserved_and_counted_each(b: Backend) {
    let events = [
        delta(0, json!({"role": "assistant", "content": "Hello"})),
        delta(1, json!({"role": "assistant", "content": "Goodbye"})),
        delta(0, json!({"content": " there"})),
        delta(1, json!({"content": " now"})),
        finish(0, "stop"),
        finish(1, "stop"),
        DONE.into(),
    ];
    let s = gateway(&b, sse(&events)).await;
    let mut body = request(true);
    body["n"] = json!(2);
    body["max_tokens"] = json!(10);
    let (status, _, got) = call(&s, body).await;
    assert_eq!(status, 200);
    assert_eq!(got, events.concat());
    // Each choice counted on its own: "Hello there" 2 + "Good", "bye", " now" 3.
    let record = assert_settled(&s, "ok", "estimated", PROMPT_ESTIMATE + 5 * 2).await;
    assert_eq!(record["completion_tokens"], 5);
    // Reserved: the prompt's bound × 1 + 2 choices × 10 tokens × 2.
    assert_eq!(record["reserved_micros"], PROMPT_BOUND + 40);
    s.app.stop().await;
}

async fn tool_call_deltas_are_counted(b: Backend) {
    let events = [
        delta(
            0,
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                                              "function": {"name": "get_weather", "arguments": ""}}]}),
        ),
        delta(
            0,
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\""}}]}),
        ),
        delta(
            0,
            json!({"tool_calls": [{"index": 0, "function": {"arguments": ": \"Paris\"}"}}]}),
        ),
        finish(0, "tool_calls"),
        DONE.into(),
    ];
    let s = gateway(&b, sse(&events)).await;
    let (status, _, got) = call(&s, request(true)).await;
    assert_eq!(status, 200);
    assert_eq!(got, events.concat());
    // `get_weather{"city": "Paris"}`: "get", "_weather", "{\"", "city", "\":", " \"", "Paris", "\"}" = 8 tokens.
    let record = assert_settled(&s, "ok", "estimated", PROMPT_ESTIMATE + 8 * 2).await;
    assert_eq!(record["completion_tokens"], 8);
    s.app.stop().await;
}

async fn a_whole_response_without_usage_is_billed_from_a_local_count(b: Backend) {
    let answer = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m1","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there"},"finish_reason":"stop"}]}"#;
    let s = gateway(
        &b,
        Script::Raw {
            status: 200,
            content_type: "application/json",
            body: answer.to_vec(),
        },
    )
    .await;
    let (status, _, body) = call(&s, request(false)).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_bytes(), answer);
    let record = assert_settled(&s, "ok", "estimated", PROMPT_ESTIMATE + 2 * HELLO_THERE).await;
    assert_eq!(record["stream"], false);
    s.app.stop().await;
}

async fn a_stream_past_its_reserved_output_is_cut_like_a_length_limit_and_charged_at_most_the_reservation(
    b: Backend,
) {
    // The upstream ignores max_tokens and would go on for 200 tokens (and claim them).
    let mut events: Vec<String> = (0..200).map(|_| text(" word")).collect();
    events.extend([finish(0, "stop"), usage_event(9, 200, 0, 0), DONE.into()]);
    // Paced, so that the upstream is still sending when it is cut.
    let s = gateway(
        &b,
        Script::Sse {
            events: events.clone(),
            event_delay_ms: 5,
            stall_after: None,
        },
    )
    .await;
    let mut req = request(true);
    req["max_tokens"] = json!(5);
    let (status, _, body) = call(&s, req).await;
    assert_eq!(status, 200);
    // Five tokens reach the client, then the stream ends the way OpenAI ends one at its limit.
    assert!(body.starts_with(&events[..5].concat()), "{body}");
    let tail: Vec<&str> = body[events[..5].concat().len()..]
        .split_inclusive("\n\n")
        .collect();
    assert_eq!(tail.len(), 2, "{tail:?}");
    let last: Value =
        serde_json::from_str(tail[0].strip_prefix("data: ").expect("data").trim_end())
            .expect("json");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["choices"][0]["index"], 0);
    assert_eq!(last["model"], "m1");
    assert_eq!(tail[1], DONE);
    wait_cancelled(&s.fake, 1).await;
    // Reserved 12 + 5 × 2 = 22; charged what was delivered: 9 + 5 × 2 = 19.
    let record = assert_settled(&s, "truncated", "estimated", PROMPT_ESTIMATE + 5 * 2).await;
    assert_eq!(record["reserved_micros"], PROMPT_BOUND + 5 * 2);
    assert_eq!(record["completion_tokens"], 5);
    s.app.stop().await;
}

async fn a_cut_stream_gives_the_client_usage_it_asked_for(b: Backend) {
    let mut events: Vec<String> = (0..50).map(|_| text(" word")).collect();
    events.push(DONE.into());
    let s = gateway(&b, sse(&events)).await;
    let mut req = request(true);
    req["max_completion_tokens"] = json!(3);
    req["stream_options"] = json!({"include_usage": true});
    let (status, _, body) = call(&s, req).await;
    assert_eq!(status, 200);
    let chunks: Vec<&str> = body.split_inclusive("\n\n").collect();
    assert_eq!(chunks.len(), 3 + 3, "{body}");
    let usage: Value =
        serde_json::from_str(chunks[4].strip_prefix("data: ").expect("data").trim_end())
            .expect("json");
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": PROMPT_ESTIMATE, "completion_tokens": 3, "total_tokens": PROMPT_ESTIMATE + 3})
    );
    assert_eq!(usage["choices"], json!([]));
    assert_settled(&s, "truncated", "estimated", PROMPT_ESTIMATE + 3 * 2).await;
    s.app.stop().await;
}

async fn a_whole_answer_that_claims_more_than_was_reserved_is_charged_the_reservation(b: Backend) {
    let answer = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "word ".repeat(1000)}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1000, "total_tokens": 1009}});
    let s = gateway(
        &b,
        Script::Raw {
            status: 200,
            content_type: "application/json",
            body: answer.to_string().into_bytes(),
        },
    )
    .await;
    let mut req = request(false);
    req["max_tokens"] = json!(5);
    let (status, _, body) = call(&s, req).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).expect("json"), answer);
    let usage = s.app.wait_for_usage(s.user, 1).await;
    let record = &usage[0];
    // It costs 9 + 1000 × 2 = 2009, but only 12 + 5 × 2 = 22 was reserved: 22 is charged.
    assert_eq!(record["reserved_micros"], 22, "{record}");
    assert_eq!(record["cost_micros"], 22, "{record}");
    assert_eq!(record["unbilled_micros"], 2009 - 22, "{record}");
    assert_eq!(record["usage_source"], "provider");
    assert_eq!(s.app.balance_micros(s.user).await, START - 22);
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn an_upstream_connection_reset_mid_answer_ends_with_upstream_incomplete(b: Backend) {
    let events = [text("Hello"), text(" there")];
    let s = gateway(
        &b,
        Script::SseThenReset {
            events: events.to_vec(),
        },
    )
    .await;
    let (status, _, body) = call(&s, request(true)).await;
    assert_eq!(status, 200);
    let tail = body
        .strip_prefix(events.concat().as_str())
        .expect("events first");
    let error: Value =
        serde_json::from_str(tail.strip_prefix("data: ").expect("data").trim_end()).expect("json");
    assert_eq!(error["error"]["code"], "upstream_incomplete", "{error}");
    assert_settled(
        &s,
        "incomplete",
        "estimated",
        PROMPT_ESTIMATE + 2 * HELLO_THERE,
    )
    .await;
    s.app.stop().await;
}

async fn lines_that_are_not_sse_are_dropped_and_the_stream_billed_as_without_them(b: Backend) {
    let garbage = "\u{1}\u{7f}garbage that is no SSE field\n\n".to_owned();
    let mixed = format!("{}\nretry: 1000\nrandom: x\n\n", text("Hello").trim_end());
    let events = [
        garbage,
        mixed,
        ": keep-alive\n\n".into(),
        text(" there"),
        finish(0, "stop"),
        usage_event(20, 5, 0, 0),
        DONE.into(),
    ];
    let s = gateway(&b, sse(&events)).await;
    let (status, _, body) = call(&s, request(true)).await;
    assert_eq!(status, 200);
    let cleaned = format!("{}\nretry: 1000\n\n", text("Hello").trim_end());
    assert_eq!(
        body,
        [
            cleaned.as_str(),
            &events[2],
            &events[3],
            &events[4],
            &events[6]
        ]
        .concat()
    );
    assert_settled(&s, "ok", "provider", 30).await;
    s.app.stop().await;
}

both_backends!(normal_end_with_usage_is_billed_from_the_provider, end_without_usage_is_billed_from_a_local_count, cached_input_is_billed_at_the_cached_price_and_reasoning_as_output, client_gone_before_the_first_byte_is_charged_nothing, client_gone_mid_stream_is_billed_for_what_was_generated, client_gone_right_after_done_is_billed_in_full_and_already_settled, an_upstream_error_event_mid_stream_is_passed_on_and_what_came_before_is_billed, upstream_closing_after_the_last_choice_finished_gets_done_added, upstream_closing_mid_answer_ends_with_an_error_event_and_bills_what_was_sent, upstream_stalling_past_the_chunk_timeout_is_cut_and_billed_for_what_was_sent, upstream_429_before_the_stream_reaches_the_client_as_is_and_costs_nothing, upstream_500_before_the_stream_becomes_502_and_costs_nothing, malformed_json_before_the_stream_becomes_502_and_costs_nothing, a_malformed_sse_line_mid_stream_is_dropped_and_the_rest_billed_normally, one_very_large_chunk_passes_through_whole, n_choices_are_reserved_and_counted_each, tool_call_deltas_are_counted, a_whole_response_without_usage_is_billed_from_a_local_count, a_stream_past_its_reserved_output_is_cut_like_a_length_limit_and_charged_at_most_the_reservation, a_cut_stream_gives_the_client_usage_it_asked_for, a_whole_answer_that_claims_more_than_was_reserved_is_charged_the_reservation, an_upstream_connection_reset_mid_answer_ends_with_upstream_incomplete, lines_that_are_not_sse_are_dropped_and_the_stream_billed_as_without_them);
