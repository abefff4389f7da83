//! Streaming chat completions: SSE pass-through, usage injection and stripping. How streams
//! end (disconnects, stalls, errors) is in `endings`.

use crate::both_backends;
use crate::helpers::*;
use serde_json::{Value, json};

/// Reads a whole SSE response body as text.
async fn read_all(resp: reqwest::Response) -> String {
    String::from_utf8(resp.bytes().await.expect("body").to_vec()).expect("utf8")
}

async fn stream_passes_through_byte_for_byte_and_the_injected_usage_chunk_is_stripped(b: Backend) {
    let app = TestApp::spawn(&b).await;
    let events = fixture_events("chat_stream.sse");
    let fake = FakeUpstream::start(Script::Sse {
        events: events.clone(),
        event_delay_ms: 0,
        stall_after: None,
    })
    .await;
    app.add_channel(
        &fake.base_url,
        &["m1"],
        json!({"m1": "gpt-4o-mini-2024-07-18"}),
    )
    .await;
    app.add_model("m1", json!("0.15"), json!("0.6"), json!("0.075"))
        .await;
    let user = app.add_user(json!(5)).await;
    let key = app.add_key(user, json!({})).await;

    let resp = app
        .chat(&key, json!({"model": "m1", "stream": true, "messages": [{"role": "user", "content": "Hello"}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/event-stream")
    );
    let got = read_all(resp).await;
    let expected: String = events
        .iter()
        .filter(|e| !e.contains("\"choices\":[]"))
        .map(|e| e.replace("\"model\":\"gpt-4o-mini-2024-07-18\"", "\"model\":\"m1\""))
        .collect();
    assert_eq!(got, expected);

    let sent: Value = serde_json::from_slice(&fake.last_body()).expect("json");
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "usage must be requested upstream"
    );
    assert_eq!(sent["model"], "gpt-4o-mini-2024-07-18");

    // Fixture usage: 19 prompt, 10 completion → 19 × 0.15 + 10 × 0.6 = 2.85 + 6 = 8.85 → 9 micros.
    assert_eq!(app.balance_micros(user).await, 5_000_000 - 9);
    let usage = app.usage(user).await;
    assert_eq!(usage[0]["usage_source"], "provider");
    assert_eq!(usage[0]["stream"], true);
    assert_eq!(usage[0]["status"], "ok");
    assert!(usage[0]["ttft_ms"].is_i64());
    app.assert_books_balance(user).await;
    app.stop().await;
}

async fn a_client_that_asks_for_usage_gets_the_usage_chunk(b: Backend) {
    let s = setup(
        &b,
        chat_script(&["a", "b"], 7, 2, 0),
        Prices {
            input: "1",
            output: "1",
            cached: "1",
        },
        "1",
    )
    .await;
    let resp = s
        .app
        .chat(
            &s.key,
            json!({"model": "m1", "stream": true, "stream_options": {"include_usage": true},
                             "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .expect("send");
    let text = read_all(resp).await;
    assert!(text.contains("\"usage\":{"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"));
    // The client's own stream_options went upstream untouched.
    assert_eq!(
        String::from_utf8_lossy(&s.fake.last_body())
            .matches("include_usage")
            .count(),
        1
    );
    assert_eq!(s.app.balance_micros(s.user).await, 1_000_000 - 9);
    s.app.stop().await;
}

both_backends!(
    stream_passes_through_byte_for_byte_and_the_injected_usage_chunk_is_stripped,
    a_client_that_asks_for_usage_gets_the_usage_chunk
);
