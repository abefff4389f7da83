//! Reservations and settlement: refusals, refunds, concurrency.

use crate::helpers::*;
use crate::on_both_backends;
use serde_json::{Value, json};

on_both_backends! {
    async fn a_request_that_does_not_fit_the_balance_gets_402_and_never_reaches_the_upstream(b: Backend) {
        // max_tokens 1000 at 10 credits per 1M output = 10 000 micros; the balance is 5 000.
        let s = setup(&b, chat_script(&["ok"], 1, 1, 0), ("0", "10", "0"), "0.005").await;
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
        let script = Script::Raw { status: 500, content_type: "application/json", body: br#"{"error":{"message":"boom"}}"#.to_vec() };
        let s = setup(&b, script, ("1", "1", "1"), "1").await;
        for stream in [false, true] {
            let resp = s.app.chat(&s.key, json!({"model": "m1", "stream": stream, "messages": [{"role": "user", "content": "x"}]})).send().await.expect("send");
            assert_eq!(resp.status(), 502);
            let err: Value = resp.json().await.expect("json");
            assert_eq!(err["error"]["code"], "upstream_error");
        }
        assert_eq!(s.app.balance_micros(s.user).await, 1_000_000);
        let usage = s.app.usage(s.user).await;
        assert_eq!(usage.len(), 2);
        assert!(usage.iter().all(|u| u["cost_micros"] == 0 && u["status"] == "upstream_error"));
        s.app.assert_books_balance(s.user).await;
        s.app.stop().await;
    }

    async fn an_upstream_4xx_passes_through_and_costs_nothing(b: Backend) {
        let upstream_error = br#"{"error":{"message":"Invalid value for 'temperature'","type":"invalid_request_error","param":"temperature","code":null}}"#;
        let script = Script::Raw { status: 400, content_type: "application/json", body: upstream_error.to_vec() };
        let s = setup(&b, script, ("1", "1", "1"), "1").await;
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
        let resp = app.chat(&key, json!({"model": "m1", "messages": [{"role": "user", "content": "x"}]})).send().await.expect("send");
        assert_eq!(resp.status(), 504);
        let err: Value = resp.json().await.expect("json");
        assert_eq!(err["error"]["code"], "upstream_timeout");
        assert_eq!(app.balance_micros(user).await, 1_000_000);
        let usage = app.usage(user).await;
        assert_eq!(usage[0]["status"], "upstream_timeout");
        app.assert_books_balance(user).await;
        app.stop().await;
    }

    async fn two_hundred_concurrent_requests_against_a_balance_for_fifty_admit_at_most_fifty(b: Backend) {
        // Each request reserves and costs exactly 10 output tokens × 1 credit per 1M = 10 micros.
        let s = setup(&b, chat_script(&["0123456789"], 5, 10, 0), ("0", "1", "0"), "0.0005").await;
        let start = s.app.balance_micros(s.user).await;
        assert_eq!(start, 500);
        let mut handles = Vec::new();
        for i in 0..200 {
            let req = s.app.chat(&s.key, json!({"model": "m1", "max_tokens": 10, "stream": i % 2 == 0,
                                                 "messages": [{"role": "user", "content": "x"}]}));
            handles.push(tokio::spawn(async move {
                let resp = req.send().await.expect("send");
                let status = resp.status().as_u16();
                let _ = resp.bytes().await;
                status
            }));
        }
        let mut ok = 0;
        let mut refused = 0;
        for h in handles {
            match h.await.expect("task") {
                200 => ok += 1,
                402 => refused += 1,
                other => panic!("unexpected status {other}"),
            }
        }
        assert!(ok <= 50, "admitted {ok}");
        assert_eq!(ok + refused, 200);
        let usage = s.app.wait_for_usage(s.user, 200).await;
        let charged: i64 = usage.iter().map(|u| u["cost_micros"].as_i64().expect("cost")).sum();
        let balance = s.app.balance_micros(s.user).await;
        assert_eq!(balance, start - charged);
        assert_eq!(charged, 10 * ok as i64);
        assert!(balance >= 0);
        s.app.assert_books_balance(s.user).await;
        s.app.stop().await;
    }
}
