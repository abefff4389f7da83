//! Operations: metrics, health, request ids, graceful shutdown.

use crate::both_backends;
use crate::helpers::*;
use futures_util::StreamExt;
use serde_json::json;
use std::time::Duration;

async fn metrics_health_and_request_ids_are_served(b: Backend) {
    let s = setup(
        &b,
        chat_script(&["ok"], 3, 2, 0),
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
            json!({"model": "m1", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .expect("send");
    let _ = resp.bytes().await;
    let health = s
        .app
        .client
        .get(s.app.url("/healthz"))
        .send()
        .await
        .expect("send");
    assert_eq!(health.status(), 200);
    let ready = s
        .app
        .client
        .get(s.app.url("/readyz"))
        .send()
        .await
        .expect("send");
    assert_eq!(ready.status(), 200);
    let missing = s
        .app
        .client
        .get(s.app.url("/v1/nothing-here"))
        .send()
        .await
        .expect("send");
    assert_eq!(missing.status(), 404);
    assert!(missing.headers().contains_key("x-request-id"));
    let text = s
        .app
        .client
        .get(s.app.url("/metrics"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    for name in [
        "tollgate_http_requests_total",
        "tollgate_http_request_duration_seconds_bucket",
        "tollgate_upstream_duration_seconds",
        "tollgate_time_to_first_token_seconds",
        "tollgate_tokens_total",
        "tollgate_credits_charged_micros_total",
        "tollgate_active_streams",
        "tollgate_reservations_held",
        "tollgate_settlement_failures_total",
        "tollgate_gateway_overhead_seconds",
    ] {
        assert!(text.contains(name), "missing {name} in /metrics");
    }
    assert!(text.contains("route=\"/v1/chat/completions\""));
    assert!(text.contains("tollgate_settlement_failures_total 0"));
    s.app.stop().await;
}

async fn shutdown_lets_an_open_stream_finish_and_settles_it(b: Backend) {
    let events: Vec<String> = (0..5)
        .map(|i| {
            format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}}}}]}}\n\n"
            )
        })
        .chain([
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":5}}\n\n"
                .to_owned(),
            "data: [DONE]\n\n".to_owned(),
        ])
        .collect();
    let s = setup(
        &b,
        Script::Sse {
            events,
            event_delay_ms: 100,
            stall_after: None,
        },
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
            json!({"model": "m1", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .expect("send");
    let mut body = resp.bytes_stream();
    let first = body.next().await.expect("first chunk").expect("bytes");
    assert!(String::from_utf8_lossy(&first).contains("w0"));
    let stopping = tokio::spawn(s.app.stop());
    let mut rest = String::new();
    while let Some(chunk) = body.next().await {
        rest.push_str(&String::from_utf8_lossy(&chunk.expect("bytes")));
    }
    // `[DONE]` is sent only after the settlement is written, so its arrival proves it.
    assert!(
        rest.contains("w4") && rest.ends_with("data: [DONE]\n\n"),
        "{rest}"
    );
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("stopped in time")
        .expect("stop");
}

both_backends!(
    metrics_health_and_request_ids_are_served,
    shutdown_lets_an_open_stream_finish_and_settles_it
);

async fn settlements_are_counted_by_outcome_and_usage_source(b: Backend) {
    let s = setup(
        &b,
        chat_script(&["ok"], 3, 2, 0),
        Prices {
            input: "1",
            output: "1",
            cached: "1",
        },
        "1",
    )
    .await;
    let series = "tollgate_settlements_total{outcome=\"ok\",usage_source=\"provider\"}";
    let before = s.app.metric(series).await.unwrap_or(0.0);
    let resp = s
        .app
        .chat(
            &s.key,
            json!({"model": "m1", "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert!(s.app.metric(series).await.unwrap_or(0.0) >= before + 1.0);
    s.fake.set_script(Script::Raw {
        status: 500,
        content_type: "application/json",
        body: b"{}".to_vec(),
    });
    let resp = s
        .app
        .chat(
            &s.key,
            json!({"model": "m1", "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 502);
    assert!(
        s.app
            .metric("tollgate_settlements_total{outcome=\"upstream_error\",usage_source=\"none\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn the_reconciler_releases_only_expired_reservations(b: Backend) {
    // Only this test's passes release: the start-up pass is over before the server answers,
    // and the periodic one does not come round while the test runs.
    let app = TestApp::spawn_with(&b, |c| c.billing.reconcile_interval_ms = 3_600_000).await;
    let s = Setup::provision(
        app,
        chat_script(&["ok"], 3, 2, 0),
        json!({"m1": "upstream-m1"}),
        Prices {
            input: "1",
            output: "1",
            cached: "1",
        },
        "1",
    )
    .await;
    let db = &s.app.state.db;
    // What a crashed instance left: one reservation past its expiry, one still running.
    sql_i64(db, "INSERT INTO reservations (request_id, user_id, key_id, model, amount_micros, price_version, created_at_ms, expires_at_ms)
                 VALUES ('req_expired', 1, 1, 'm1', 700, 1, 0, 1000), ('req_running', 1, 1, 'm1', 300, 1, 0, 9999999999999)").await;
    sql_i64(db, "UPDATE users SET reserved_micros = 1000 WHERE id = 1").await;
    let (ok, out) = s.app.ledger_verify_cli().await;
    assert!(
        !ok && out.contains("reservation for request req_expired"),
        "{out}"
    );
    let before = s
        .app
        .metric("tollgate_reconciler_releases_total")
        .await
        .unwrap_or(0.0);
    assert_eq!(
        tollgate::billing::reconcile::run_once(db)
            .await
            .expect("reconcile"),
        1
    );
    assert_eq!(
        sql_i64(db, "SELECT reserved_micros FROM users WHERE id = 1").await,
        300
    );
    assert_eq!(sql_i64(db, "SELECT COUNT(*) FROM reservations").await, 1);
    assert!(
        s.app
            .metric("tollgate_reconciler_releases_total")
            .await
            .unwrap_or(0.0)
            >= before + 1.0
    );
    // A second pass (another instance) finds nothing more to release.
    assert_eq!(
        tollgate::billing::reconcile::run_once(db)
            .await
            .expect("reconcile"),
        0
    );
    let (ok, out) = s.app.ledger_verify_cli().await;
    assert!(ok, "{out}");
    s.app.stop().await;
}

both_backends!(
    settlements_are_counted_by_outcome_and_usage_source,
    the_reconciler_releases_only_expired_reservations
);
