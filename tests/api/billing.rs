//! Reservations and settlement: refusals, refunds, concurrency.

use crate::both_backends;
use crate::helpers::*;
use serde_json::{Value, json};

async fn a_request_that_does_not_fit_the_balance_gets_402_and_never_reaches_the_upstream(
    b: Backend,
) {
    // max_tokens 1000 at 10 credits per 1M output = 10 000 micros; the balance is 5 000.
    let s = setup(
        &b,
        chat_script(&["ok"], 1, 1, 0),
        Prices {
            input: "0",
            output: "10",
            cached: "0",
        },
        "0.005",
    )
    .await;
    let resp = s
        .app
        .chat(&s.key, json!({"model": "m1", "max_tokens": 1000, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 402);
    let err: Value = resp.json().await.expect("json");
    assert_eq!(err["error"]["type"], "insufficient_quota");
    assert_eq!(err["error"]["code"], "insufficient_balance");
    assert_eq!(s.fake.calls(), 0);
    assert_eq!(s.app.balance_micros(s.user).await, 5000);
    let usage = s.app.wait_for_usage(s.user, 1).await;
    assert_eq!(usage[0]["status"], "insufficient_balance");
    assert_eq!(usage[0]["cost_micros"], 0);
    // A smaller allowance fits.
    let resp = s
        .app
        .chat(&s.key, json!({"model": "m1", "max_tokens": 100, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(s.app.balance_micros(s.user).await, 5000 - 10);
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn an_upstream_500_becomes_502_and_is_refunded_in_full(b: Backend) {
    let script = Script::Raw {
        status: 500,
        content_type: "application/json",
        body: br#"{"error":{"message":"boom"}}"#.to_vec(),
    };
    let s = setup(
        &b,
        script,
        Prices {
            input: "1",
            output: "1",
            cached: "1",
        },
        "1",
    )
    .await;
    for stream in [false, true] {
        let resp = s.app.chat(&s.key, json!({"model": "m1", "stream": stream, "messages": [{"role": "user", "content": "x"}]})).send().await.expect("send");
        assert_eq!(resp.status(), 502);
        let err: Value = resp.json().await.expect("json");
        assert_eq!(err["error"]["code"], "upstream_error");
    }
    assert_eq!(s.app.balance_micros(s.user).await, 1_000_000);
    let usage = s.app.usage(s.user).await;
    assert_eq!(usage.len(), 2);
    assert!(
        usage
            .iter()
            .all(|u| u["cost_micros"] == 0 && u["status"] == "upstream_error")
    );
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn an_upstream_4xx_passes_through_and_costs_nothing(b: Backend) {
    let upstream_error = br#"{"error":{"message":"Invalid value for 'temperature'","type":"invalid_request_error","param":"temperature","code":null}}"#;
    let script = Script::Raw {
        status: 400,
        content_type: "application/json",
        body: upstream_error.to_vec(),
    };
    let s = setup(
        &b,
        script,
        Prices {
            input: "1",
            output: "1",
            cached: "1",
        },
        "1",
    )
    .await;
    let resp = s.app.chat(&s.key, json!({"model": "m1", "temperature": 9, "messages": [{"role": "user", "content": "x"}]})).send().await.expect("send");
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.bytes().await.expect("body").as_ref(), upstream_error);
    assert_eq!(s.app.balance_micros(s.user).await, 1_000_000);
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn an_upstream_timeout_becomes_504_and_is_refunded_in_full(b: Backend) {
    let app = TestApp::spawn_with(&b, |c| c.upstream.first_byte_timeout_ms = 200).await;
    let fake = FakeUpstream::start(chat_script(&["late"], 1, 1, 0)).await;
    fake.set_headers_delay(2_000);
    app.add_channel(&fake.base_url, &["m1"], json!({})).await;
    app.add_model("m1", json!(1), json!(1), json!(1)).await;
    let user = app.add_user(json!(1)).await;
    let key = app.add_key(user, json!({})).await;
    let resp = app
        .chat(
            &key,
            json!({"model": "m1", "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 504);
    let err: Value = resp.json().await.expect("json");
    assert_eq!(err["error"]["code"], "upstream_timeout");
    assert_eq!(app.balance_micros(user).await, 1_000_000);
    let usage = app.usage(user).await;
    assert_eq!(usage[0]["status"], "upstream_timeout");
    app.assert_books_balance(user).await;
    app.stop().await;
}

async fn a_thousand_concurrent_requests_against_a_balance_for_fifty_admit_at_most_fifty(
    b: Backend,
) {
    // Each request reserves and costs exactly 10 output tokens × 1 credit per 1M = 10 micros
    // (no input price), so a balance of 500 micros covers K = 50 of them.
    let s = setup(
        &b,
        chat_script(&["0123456789"], 5, 10, 0),
        Prices {
            input: "0",
            output: "1",
            cached: "0",
        },
        "0.0005",
    )
    .await;
    let start = s.app.balance_micros(s.user).await;
    assert_eq!(start, 500);
    let gate = std::sync::Arc::new(tokio::sync::Barrier::new(1000));
    let mut handles = Vec::new();
    for i in 0..1000 {
        let req = s.app.chat(
            &s.key,
            json!({"model": "m1", "max_tokens": 10, "stream": i % 2 == 0,
                                             "messages": [{"role": "user", "content": "x"}]}),
        );
        let gate = std::sync::Arc::clone(&gate);
        handles.push(tokio::spawn(async move {
            gate.wait().await;
            let resp = req.send().await.expect("send");
            let status = resp.status().as_u16();
            let body = resp.bytes().await.expect("body");
            (status, body)
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for h in handles {
        match h.await.expect("task") {
            (200, body) => {
                assert!(
                    body.starts_with(b"{") || body.ends_with(b"data: [DONE]\n\n"),
                    "a complete answer"
                );
                ok += 1;
            }
            (402, _) => refused += 1,
            (other, body) => panic!("unexpected status {other}: {body:?}"),
        }
    }
    assert!(ok <= 50, "admitted {ok}");
    assert!(ok >= 1, "the balance covers some requests");
    assert_eq!(ok + refused, 1000);
    let usage = s.app.wait_for_usage(s.user, 1000).await;
    let charged: i64 = usage
        .iter()
        .map(|u| u["cost_micros"].as_i64().expect("cost"))
        .sum();
    assert_eq!(charged, 10 * ok as i64);
    assert_eq!(
        usage
            .iter()
            .filter(|u| u["status"] == "insufficient_balance")
            .count(),
        refused
    );
    let balance = s.app.balance_micros(s.user).await;
    assert_eq!(balance, start - 10 * ok as i64);
    assert!(balance >= 0);
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn a_price_change_never_touches_settled_records_and_in_flight_requests_keep_their_price(
    b: Backend,
) {
    // Version 1: 1 and 2 micro-credits per input and output token.
    let s = setup(
        &b,
        chat_script(&["ok"], 5, 10, 0),
        Prices {
            input: "1",
            output: "2",
            cached: "0",
        },
        "1",
    )
    .await;
    let body = |stream: bool| json!({"model": "m1", "stream": stream, "max_tokens": 100, "messages": [{"role": "user", "content": "x"}]});
    let resp = s.app.chat(&s.key, body(false)).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    let first = s.app.usage(s.user).await[0].clone();
    assert_eq!(
        (
            first["cost_micros"].as_i64(),
            first["price_version"].as_i64()
        ),
        (Some(25), Some(1))
    );

    // A slow stream that is reserved (and reaches the upstream) at version 1…
    let slow = [
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":10}}\n\n",
        "data: [DONE]\n\n",
    ];
    s.fake.set_script(Script::Sse {
        events: slow.iter().map(|e| e.to_string()).collect(),
        event_delay_ms: 500,
        stall_after: None,
    });
    let in_flight = tokio::spawn(s.app.chat(&s.key, body(true)).send());
    while s.fake.calls() < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // …while the price goes up tenfold (version 2).
    let model = s.app.admin_post("/api/v1/admin/models", json!({"model": "m1", "input_price": "10", "output_price": "20", "cached_input_price": "0"})).await;
    assert_eq!(model["price_version"], 2);
    let resp = in_flight.await.expect("task").expect("send");
    assert!(
        resp.text()
            .await
            .expect("body")
            .ends_with("data: [DONE]\n\n")
    );

    s.fake.set_script(chat_script(&["ok"], 5, 10, 0));
    let resp = s.app.chat(&s.key, body(false)).send().await.expect("send");
    assert_eq!(resp.status(), 200);

    let usage = s.app.usage(s.user).await;
    let costs: Vec<(i64, i64)> = usage
        .iter()
        .map(|u| {
            (
                u["cost_micros"].as_i64().expect("cost"),
                u["price_version"].as_i64().expect("version"),
            )
        })
        .collect();
    // Settled before: unchanged. In flight: the price it was reserved with. After: the new one.
    assert_eq!(costs, vec![(25, 1), (25, 1), (5 * 10 + 10 * 20, 2)]);
    assert_eq!(usage[0], first, "a settled record never changes");
    assert_eq!(
        s.app.balance_micros(s.user).await,
        1_000_000 - 25 - 25 - 250
    );
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

both_backends!(
    a_request_that_does_not_fit_the_balance_gets_402_and_never_reaches_the_upstream,
    an_upstream_500_becomes_502_and_is_refunded_in_full,
    an_upstream_4xx_passes_through_and_costs_nothing,
    an_upstream_timeout_becomes_504_and_is_refunded_in_full,
    a_thousand_concurrent_requests_against_a_balance_for_fifty_admit_at_most_fifty,
    a_price_change_never_touches_settled_records_and_in_flight_requests_keep_their_price
);
