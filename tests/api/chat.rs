//! Non-streaming chat completions: pass-through, model mapping, exact charges.

use crate::both_backends;
use crate::helpers::*;
use serde_json::{Value, json};

async fn json_response_passes_through_byte_for_byte_apart_from_the_model_name(b: Backend) {
    let app = TestApp::spawn(&b).await;
    let upstream_json = fixture("chat_completion.json");
    let fake = FakeUpstream::start(Script::Raw {
        status: 200,
        content_type: "application/json",
        body: upstream_json.clone(),
    })
    .await;
    app.add_channel(&fake.base_url, &["m1"], json!({"m1": "gpt-4o-2024-08-06"}))
        .await;
    app.add_model("m1", json!(2.5), json!(10), json!(1.25))
        .await;
    let user = app.add_user(json!(100)).await;
    let key = app.add_key(user, json!({})).await;

    // Every field a client may send, in an order and spacing serde would not produce.
    let client_body = r#"{"temperature": 0.70, "model": "m1", "n": 2, "logprobs": true, "top_logprobs": 2,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "describe"}]}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
        "response_format": {"type": "json_object"}, "max_tokens": 100, "x_vendor_field": {"keep": [1, 2.50]}}"#;
    let resp = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(client_body)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let got = resp.bytes().await.expect("body");

    let expected = String::from_utf8(upstream_json)
        .expect("utf8")
        .replace(r#""model": "gpt-4o-2024-08-06""#, r#""model": "m1""#);
    assert_eq!(
        String::from_utf8_lossy(&got),
        expected,
        "client must get the upstream's bytes, model renamed"
    );

    let sent = fake.last_body();
    assert_eq!(
        String::from_utf8_lossy(&sent),
        client_body.replace(r#""model": "m1""#, r#""model": "gpt-4o-2024-08-06""#),
        "upstream must get the client's bytes, model mapped"
    );
    assert_eq!(
        fake.state
            .auth
            .lock()
            .expect("lock")
            .last()
            .map(String::as_str),
        Some("Bearer upstream-secret")
    );

    // usage 1117 prompt (1024 cached), 46 completion:
    // 93 × 2.5 + 1024 × 1.25 + 46 × 10 = 232.5 + 1280 + 460 = 1972.5 → 1973 micros.
    assert_eq!(app.balance_micros(user).await, 100_000_000 - 1973);
    let usage = app.usage(user).await;
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0]["cost_micros"], 1973);
    assert_eq!(usage[0]["usage_source"], "provider");
    assert_eq!(usage[0]["prompt_tokens"], 1117);
    assert_eq!(usage[0]["cached_tokens"], 1024);
    assert_eq!(usage[0]["completion_tokens"], 46);
    assert_eq!(usage[0]["upstream_model"], "gpt-4o-2024-08-06");
    assert_eq!(usage[0]["price_version"], 1);
    app.assert_books_balance(user).await;
    app.stop().await;
}

async fn known_usage_is_charged_exactly_with_cached_tokens_at_the_cached_price(b: Backend) {
    let s = setup(
        &b,
        chat_script(&["Hi", " there"], 1000, 500, 200),
        Prices {
            input: "2.5",
            output: "10",
            cached: "1.25",
        },
        "12.5",
    )
    .await;
    let resp = s
        .app
        .chat(
            &s.key,
            json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["model"], "m1");
    assert_eq!(body["choices"][0]["message"]["content"], "Hi there");
    // 800 × 2.5 + 200 × 1.25 + 500 × 10 = 2000 + 250 + 5000 = 7250 micros.
    assert_eq!(s.app.balance_micros(s.user).await, 12_500_000 - 7250);
    let usage = s.app.usage(s.user).await;
    assert_eq!(usage[0]["cost_micros"], 7250);
    assert_eq!(usage[0]["status"], "ok");
    // The upstream was sent the mapped name and no stream options.
    let sent: Value = serde_json::from_slice(&s.fake.last_body()).expect("json");
    assert_eq!(sent["model"], "upstream-m1");
    assert!(sent.get("stream_options").is_none());
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn a_response_without_usage_is_billed_from_a_local_count(b: Backend) {
    let script = Script::Chat {
        pieces: vec!["hello world".into()],
        usage: None,
        stall_after: None,
    };
    let s = setup(
        &b,
        script,
        Prices {
            input: "0",
            output: "1000",
            cached: "0",
        },
        "10",
    )
    .await;
    let resp = s
        .app
        .chat(
            &s.key,
            json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let usage = s.app.usage(s.user).await;
    assert_eq!(usage[0]["usage_source"], "estimated");
    // "hello world" is 2 tokens (o200k_base); output at 1000 credits per 1M = 1000 micros each.
    assert_eq!(usage[0]["completion_tokens"], 2);
    assert_eq!(usage[0]["cost_micros"], 2000);
    assert_eq!(s.app.balance_micros(s.user).await, 10_000_000 - 2000);
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn the_same_routes_work_under_api_v1(b: Backend) {
    let s = setup(
        &b,
        chat_script(&["ok"], 10, 1, 0),
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
        .client
        .post(s.app.url("/api/v1/chat/completions"))
        .header("x-api-key", &s.key)
        .json(&json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let models: Value = s
        .app
        .client
        .get(s.app.url("/api/v1/models"))
        .bearer_auth(&s.key)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "m1");
    // 10 × 1 + 1 × 1 = 11 micros.
    assert_eq!(s.app.balance_micros(s.user).await, 1_000_000 - 11);
    s.app.stop().await;
}

async fn malformed_requests_get_a_400_naming_the_field_and_cost_nothing(b: Backend) {
    let s = setup(
        &b,
        chat_script(&["ok"], 10, 1, 0),
        Prices {
            input: "1",
            output: "1",
            cached: "1",
        },
        "1",
    )
    .await;
    for (body, param) in [
        ("{not json", Value::Null),
        (
            r#"{"messages": [{"role": "user", "content": "x"}]}"#,
            json!("model"),
        ),
        (r#"{"model": "m1"}"#, json!("messages")),
        (
            r#"{"model": "m1", "messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}"#,
            json!("max_tokens"),
        ),
    ] {
        let resp = s
            .app
            .client
            .post(s.app.url("/v1/chat/completions"))
            .bearer_auth(&s.key)
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 400, "{body}");
        let err: Value = resp.json().await.expect("json");
        assert_eq!(err["error"]["type"], "invalid_request_error");
        assert_eq!(err["error"]["param"], param, "{body}");
        assert!(!err["error"]["message"].as_str().unwrap_or("").is_empty());
    }
    assert_eq!(s.fake.calls(), 0);
    assert_eq!(s.app.balance_micros(s.user).await, 1_000_000);
    s.app.stop().await;
}

async fn unknown_and_unpriced_models_are_refused_without_an_upstream_call(b: Backend) {
    let app = TestApp::spawn(&b).await;
    let fake = FakeUpstream::start(chat_script(&["ok"], 1, 1, 0)).await;
    app.add_channel(&fake.base_url, &["m1", "unpriced"], json!({}))
        .await;
    app.add_model("m1", json!(1), json!(1), json!(1)).await;
    let user = app.add_user(json!(1)).await;
    let key = app.add_key(user, json!({})).await;
    let resp = app
        .chat(
            &key,
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 404);
    let err: Value = resp.json().await.expect("json");
    assert_eq!(err["error"]["code"], "model_not_found");
    let resp = app
        .chat(
            &key,
            json!({"model": "unpriced", "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("json");
    assert_eq!(err["error"]["code"], "model_not_priced");
    assert_eq!(fake.calls(), 0);
    let models: Value = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["m1"], "only priced models are listed");
    let one = app
        .client
        .get(app.url("/v1/models/m1"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("send");
    assert_eq!(one.status(), 200);
    let one: Value = one.json().await.expect("json");
    assert_eq!(one["object"], "model");
    assert_eq!(
        app.client
            .get(app.url("/v1/models/nope"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("send")
            .status(),
        404
    );
    app.stop().await;
}

both_backends!(
    json_response_passes_through_byte_for_byte_apart_from_the_model_name,
    known_usage_is_charged_exactly_with_cached_tokens_at_the_cached_price,
    a_response_without_usage_is_billed_from_a_local_count,
    the_same_routes_work_under_api_v1,
    malformed_requests_get_a_400_naming_the_field_and_cost_nothing,
    unknown_and_unpriced_models_are_refused_without_an_upstream_call
);
