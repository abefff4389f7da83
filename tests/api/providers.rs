//! Providers other than plain OpenAI chat: Anthropic's Messages API behind chat completions,
//! embeddings and legacy completions, all metered by tokens.

use crate::both_backends;
use crate::helpers::*;
use serde_json::{Value, json};

/// The `data` payloads of an SSE body, `[DONE]` included.
fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_owned)
        .collect()
}

/// An Anthropic-backed `claude` model priced 3 / 15 / 0.3 credits per 1M tokens (cache writes at
/// the default 1.25 × input = 3.75), with a user holding 10 credits.
async fn anthropic_setup(b: &Backend, script: Script) -> (TestApp, FakeUpstream, i64, String) {
    let app = TestApp::spawn(b).await;
    let fake = FakeUpstream::start(script).await;
    app.add_channel_of(
        "anthropic",
        &fake.base_url,
        &["claude"],
        json!({"claude": "claude-sonnet-4-5"}),
    )
    .await;
    app.add_model("claude", json!("3"), json!("15"), json!("0.3"))
        .await;
    let user = app.add_user(json!("10")).await;
    let key = app.add_key(user, json!({})).await;
    (app, fake, user, key)
}

async fn anthropic_stream_becomes_chat_chunks_with_tool_calls_and_cache_tokens_priced(b: Backend) {
    let events = fixture_events("anthropic_stream.sse");
    let (app, fake, user, key) = anthropic_setup(
        &b,
        Script::Sse {
            events,
            event_delay_ms: 0,
            stall_after: None,
        },
    )
    .await;
    let resp = app.chat(&key, json!({
        "model": "claude", "stream": true, "stream_options": {"include_usage": true}, "max_tokens": 1000,
        "messages": [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": [{"type": "text", "text": "Weather in SF?"},
                          {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/AAAA"}}]}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]
    })).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("body");
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk json"))
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" || c.get("usage").is_some())
    );
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        content,
        "Okay, let's check the weather for San Francisco, CA:"
    );
    let start = chunks
        .iter()
        .find(|c| c["choices"][0]["delta"]["tool_calls"][0]["id"].is_string())
        .expect("tool call start");
    assert_eq!(
        start["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).expect("arguments json"),
        json!({"location": "San Francisco, CA"})
    );
    let finish: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, vec!["tool_calls"]);
    let usage = &chunks.last().expect("usage chunk")["usage"];
    assert_eq!(usage["prompt_tokens"], 3472);
    assert_eq!(usage["completion_tokens"], 89);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 2000);
    assert!(
        chunks.iter().all(|c| c["model"] == "claude"),
        "the public model name is shown"
    );

    // What Anthropic received: the Messages shape, with the key in x-api-key.
    let sent: Value = serde_json::from_slice(&fake.last_body()).expect("json");
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(sent["system"], "You are terse.");
    assert_eq!(sent["max_tokens"], 1000);
    assert_eq!(sent["stream"], true);
    assert_eq!(
        sent["messages"][0]["content"][1]["source"],
        json!({"type": "base64", "media_type": "image/jpeg", "data": "/9j/AAAA"})
    );
    assert_eq!(sent["tools"][0]["name"], "get_weather");
    assert!(sent.get("stream_options").is_none());
    assert_eq!(
        fake.state
            .auth
            .lock()
            .expect("lock")
            .last()
            .map(String::as_str),
        Some("x-api-key upstream-secret version 2023-06-01")
    );

    // 472 × 3 + 2000 × 0.3 + 1000 × 3.75 + 89 × 15 = 1416 + 600 + 3750 + 1335 = 7101 micros.
    let usage = app.wait_for_usage(user, 1).await;
    assert_eq!(usage[0]["cost_micros"], 7101);
    assert_eq!(usage[0]["cached_tokens"], 2000);
    assert_eq!(usage[0]["cache_write_tokens"], 1000);
    assert_eq!(usage[0]["usage_source"], "provider");
    assert_eq!(app.balance_micros(user).await, 10_000_000 - 7101);
    app.assert_books_balance(user).await;
    app.stop().await;
}

async fn anthropic_json_answer_is_a_chat_completion_and_its_errors_keep_their_status(b: Backend) {
    let body = fixture("anthropic_message.json");
    let (app, fake, user, key) = anthropic_setup(
        &b,
        Script::Raw {
            status: 200,
            content_type: "application/json",
            body,
        },
    )
    .await;
    let resp = app
        .chat(
            &key,
            json!({"model": "claude", "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let got: Value = resp.json().await.expect("json");
    assert_eq!(got["object"], "chat.completion");
    assert_eq!(got["model"], "claude");
    assert_eq!(
        got["choices"][0]["message"]["content"],
        "Hello! How can I help?"
    );
    assert_eq!(got["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        got["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21,
        "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0}})
    );
    let sent: Value = serde_json::from_slice(&fake.last_body()).expect("json");
    assert_eq!(
        sent["max_tokens"], 4096,
        "the API needs max_tokens: the billing default is sent"
    );
    // 12 × 3 + 9 × 15 = 171 micros.
    assert_eq!(app.wait_for_usage(user, 1).await[0]["cost_micros"], 171);

    let error = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too large"}}"#.to_vec();
    fake.set_script(Script::Raw {
        status: 400,
        content_type: "application/json",
        body: error,
    });
    let resp = app
        .chat(
            &key,
            json!({"model": "claude", "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 400);
    let got: Value = resp.json().await.expect("json");
    assert_eq!(got["error"]["message"], "max_tokens: too large");
    assert_eq!(got["error"]["type"], "invalid_request_error");
    assert_eq!(app.wait_for_usage(user, 2).await[1]["cost_micros"], 0);
    assert_eq!(app.balance_micros(user).await, 10_000_000 - 171);
    app.assert_books_balance(user).await;
    app.stop().await;
}

async fn embeddings_and_legacy_completions_are_metered_by_tokens(b: Backend) {
    let app = TestApp::spawn(&b).await;
    let embedding = json!({"object": "list", "model": "text-embedding-3-small",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}, {"object": "embedding", "index": 1, "embedding": [0.3, 0.4]}],
        "usage": {"prompt_tokens": 8, "total_tokens": 8}});
    let fake = FakeUpstream::start(Script::Raw {
        status: 200,
        content_type: "application/json",
        body: embedding.to_string().into_bytes(),
    })
    .await;
    app.add_channel(
        &fake.base_url,
        &["embed", "instruct"],
        json!({"embed": "text-embedding-3-small"}),
    )
    .await;
    app.add_model("embed", json!("0.02"), json!("0"), json!("0.02"))
        .await;
    app.add_model("instruct", json!("1.5"), json!("2"), json!("1.5"))
        .await;
    let user = app.add_user(json!("1")).await;
    let key = app.add_key(user, json!({})).await;

    let resp = app
        .client
        .post(app.url("/v1/embeddings"))
        .bearer_auth(&key)
        .json(&json!({"model": "embed", "input": ["hello", "world"]}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let got: Value = resp.json().await.expect("json");
    assert_eq!(got["model"], "embed");
    assert_eq!(got["data"][1]["embedding"], json!([0.3, 0.4]));
    let sent: Value = serde_json::from_slice(&fake.last_body()).expect("json");
    assert_eq!(
        sent,
        json!({"model": "text-embedding-3-small", "input": ["hello", "world"]})
    );
    // 8 × 0.02 = 0.16 → 1 micro.
    let usage = app.wait_for_usage(user, 1).await;
    assert_eq!(usage[0]["endpoint"], "embeddings");
    assert_eq!(usage[0]["prompt_tokens"], 8);
    assert_eq!(usage[0]["cost_micros"], 1);

    let completion = json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "instruct",
        "choices": [{"index": 0, "text": " world", "finish_reason": "stop", "logprobs": null}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 200, "total_tokens": 300}});
    fake.set_script(Script::Raw {
        status: 200,
        content_type: "application/json",
        body: completion.to_string().into_bytes(),
    });
    let resp = app
        .client
        .post(app.url("/api/v1/completions"))
        .header("x-api-key", &key)
        .json(&json!({"model": "instruct", "prompt": "hello", "max_tokens": 300}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.expect("json")["choices"][0]["text"],
        " world"
    );
    // 100 × 1.5 + 200 × 2 = 550 micros.
    let usage = app.wait_for_usage(user, 2).await;
    assert_eq!(usage[1]["endpoint"], "completions");
    assert_eq!(usage[1]["cost_micros"], 550);
    assert_eq!(app.balance_micros(user).await, 1_000_000 - 551);

    // Bad input is named, and charges nothing.
    for (path, body, param) in [
        ("/v1/embeddings", json!({"model": "embed"}), "input"),
        (
            "/v1/embeddings",
            json!({"model": "embed", "input": [[]]}),
            "input",
        ),
        (
            "/v1/embeddings",
            json!({"model": "embed", "input": "x", "stream": true}),
            "stream",
        ),
        (
            "/v1/completions",
            json!({"model": "instruct", "prompt": {"a": 1}}),
            "prompt",
        ),
    ] {
        let resp = app
            .client
            .post(app.url(path))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 400, "{body}");
        assert_eq!(
            resp.json::<Value>().await.expect("json")["error"]["param"],
            param
        );
    }
    assert_eq!(fake.calls(), 2);
    app.assert_books_balance(user).await;
    app.stop().await;
}

both_backends!(
    anthropic_stream_becomes_chat_chunks_with_tool_calls_and_cache_tokens_priced,
    anthropic_json_answer_is_a_chat_completion_and_its_errors_keep_their_status,
    embeddings_and_legacy_completions_are_metered_by_tokens
);

async fn images_reserve_n_times_the_price_and_charge_the_images_returned(b: Backend) {
    let app = TestApp::spawn(&b).await;
    let two = json!({"created": 1, "data": [{"url": "https://cdn.example/a.png"}, {"url": "https://cdn.example/b.png"}]});
    let fake = FakeUpstream::start(Script::Raw {
        status: 200,
        content_type: "application/json",
        body: two.to_string().into_bytes(),
    })
    .await;
    app.add_channel(&fake.base_url, &["img"], json!({"img": "dall-e-3"}))
        .await;
    app.admin_post(
        "/api/v1/admin/models",
        json!({"model": "img", "image_price": "0.05",
        "image_prices": {"1024x1024": "0.04", "1024x1792/hd": "0.12"}}),
    )
    .await;
    let user = app.add_user(json!("1")).await;
    let key = app.add_key(user, json!({})).await;

    let resp = app.client.post(app.url("/v1/images/generations")).bearer_auth(&key)
        .json(&json!({"model": "img", "prompt": "a cat", "n": 3, "size": "1024x1792", "quality": "hd"}))
        .send().await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.expect("json")["data"][1]["url"],
        "https://cdn.example/b.png"
    );
    let sent: Value = serde_json::from_slice(&fake.last_body()).expect("json");
    assert_eq!(sent["model"], "dall-e-3");
    assert_eq!(sent["n"], 3);
    // Reserved 3 × 0.12, charged for the 2 returned.
    let usage = app.wait_for_usage(user, 1).await;
    assert_eq!(usage[0]["endpoint"], "images/generations");
    assert_eq!(usage[0]["reserved_micros"], 360_000);
    assert_eq!(usage[0]["cost_micros"], 240_000);
    assert_eq!(usage[0]["units"], 2);
    // Size alone, then the default price.
    for (size, cost) in [("1024x1024", 80_000), ("512x512", 100_000)] {
        let resp = app
            .client
            .post(app.url("/api/v1/images/generations"))
            .bearer_auth(&key)
            .json(&json!({"model": "img", "prompt": "a cat", "n": 2, "size": size}))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        let n = app.usage(user).await.len();
        assert_eq!(
            app.wait_for_usage(user, n).await.last().expect("record")["cost_micros"],
            cost,
            "{size}"
        );
    }
    assert_eq!(
        app.balance_micros(user).await,
        1_000_000 - 240_000 - 80_000 - 100_000
    );

    // More than the balance covers: 402, nothing sent upstream.
    let calls = fake.calls();
    let resp = app.client.post(app.url("/v1/images/generations")).bearer_auth(&key)
        .json(&json!({"model": "img", "prompt": "a cat", "n": 10, "size": "1024x1792", "quality": "hd"})).send().await.expect("request");
    assert_eq!(resp.status(), 402);
    let usage = app.wait_for_usage(user, 4).await;
    let refused = usage
        .iter()
        .find(|u| u["http_status"] == 402)
        .expect("the 402 is recorded");
    assert_eq!(
        (
            &refused["endpoint"],
            &refused["status"],
            &refused["cost_micros"]
        ),
        (
            &json!("images/generations"),
            &json!("insufficient_balance"),
            &json!(0)
        )
    );
    // Bad input is named.
    for (body, param) in [
        (json!({"model": "img", "prompt": "x", "n": 11}), "n"),
        (json!({"model": "img", "prompt": "x", "n": 0}), "n"),
        (json!({"model": "img"}), "prompt"),
        (
            json!({"model": "img", "prompt": "x", "response_format": "png"}),
            "response_format",
        ),
    ] {
        let resp = app
            .client
            .post(app.url("/v1/images/generations"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 400, "{body}");
        assert_eq!(
            resp.json::<Value>().await.expect("json")["error"]["param"],
            param
        );
    }
    assert_eq!(fake.calls(), calls);

    // An upstream failure charges nothing.
    fake.set_script(Script::Raw {
        status: 500,
        content_type: "application/json",
        body: b"{}".to_vec(),
    });
    let resp = app
        .client
        .post(app.url("/v1/images/generations"))
        .bearer_auth(&key)
        .json(&json!({"model": "img", "prompt": "a cat"}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 502);
    let n = app.usage(user).await.len();
    let last = app.wait_for_usage(user, n).await;
    assert_eq!(last.last().expect("record")["cost_micros"], 0);
    assert_eq!(app.balance_micros(user).await, 580_000);
    app.assert_books_balance(user).await;
    app.stop().await;
}

both_backends!(images_reserve_n_times_the_price_and_charge_the_images_returned);
