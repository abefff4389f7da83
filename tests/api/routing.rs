//! Channels and routing: failover before the first byte, the circuit breaker, channels disabled
//! by a refused credential, and the admin test call.

use crate::both_backends;
use crate::helpers::*;
use serde_json::{Value, json};

/// A base URL where nothing listens (a port bound and released).
async fn dead_base_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}/v1")
}

async fn add_channel(app: &TestApp, name: &str, base_url: &str, priority: i64) -> i64 {
    let data = app
        .admin_post(
            "/api/v1/admin/channels",
            json!({"name": name, "provider": "openai", "base_url": base_url, "api_key": "k-123456789",
                   "models": ["m1"], "priority": priority}),
        )
        .await;
    data["id"].as_i64().expect("id")
}

async fn channel(app: &TestApp, id: i64) -> Value {
    let (status, body) = app
        .admin(
            reqwest::Method::GET,
            &format!("/api/v1/admin/channels/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

fn request() -> Value {
    json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10})
}

async fn failing_channels_are_skipped_until_their_breaker_lets_a_probe_through(b: Backend) {
    let app = TestApp::spawn_with(&b, |c| {
        c.upstream.breaker_failures = 2;
        c.upstream.breaker_cooldown_ms = 700;
    })
    .await;
    let sick = FakeUpstream::start(Script::Raw {
        status: 503,
        content_type: "application/json",
        body: br#"{"error":{"message":"overloaded"}}"#.to_vec(),
    })
    .await;
    let well = FakeUpstream::start(chat_script(&["ok"], 10, 2, 0)).await;
    let dead = add_channel(&app, "dead", &dead_base_url().await, 20).await;
    let sick_id = add_channel(&app, "sick", &sick.base_url, 10).await;
    let well_id = add_channel(&app, "well", &well.base_url, 0).await;
    app.add_model("m1", json!("1"), json!("1"), json!("1"))
        .await;
    let user = app.add_user(json!("1")).await;
    let key = app.add_key(user, json!({})).await;

    for i in 0..5 {
        let resp = app.chat(&key, request()).send().await.expect("request");
        assert_eq!(
            resp.status(),
            200,
            "request {i} must fail over to the healthy channel"
        );
    }
    // Each failing channel was tried until its breaker opened (2 failures), then skipped.
    assert_eq!(sick.calls(), 2);
    assert_eq!(well.calls(), 5);
    let usage = app.wait_for_usage(user, 5).await;
    assert!(
        usage
            .iter()
            .all(|u| u["channel_id"] == well_id && u["cost_micros"] == 12),
        "{usage:?}"
    );
    assert_eq!(channel(&app, sick_id).await["health"]["state"], "open");
    let dead_health = channel(&app, dead).await["health"].clone();
    assert_eq!(dead_health["state"], "open");
    assert!(
        dead_health["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("connect"),
        "{dead_health}"
    );

    // After the cool-down one probe goes to the sick channel; it has recovered, so it closes.
    sick.set_script(chat_script(&["back"], 10, 2, 0));
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let resp = app.chat(&key, request()).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(sick.calls(), 3, "one probe after the cool-down");
    assert_eq!(channel(&app, sick_id).await["health"]["state"], "closed");
    let resp = app.chat(&key, request()).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(sick.calls(), 4, "a closed breaker routes by priority again");
    assert!(
        app.metric("tollgate_upstream_requests_total")
            .await
            .unwrap_or(0.0)
            >= 9.0
    );
    app.assert_books_balance(user).await;
    app.stop().await;
}

async fn a_refused_credential_disables_the_channel_and_says_why(b: Backend) {
    let app = TestApp::spawn(&b).await;
    let refusing = FakeUpstream::start(Script::Raw { status: 401, content_type: "application/json",
        body: br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#.to_vec() }).await;
    let well = FakeUpstream::start(chat_script(&["ok"], 10, 2, 0)).await;
    let refusing_id = add_channel(&app, "refusing", &refusing.base_url, 10).await;
    add_channel(&app, "well", &well.base_url, 0).await;
    app.add_model("m1", json!("1"), json!("1"), json!("1"))
        .await;
    let user = app.add_user(json!("1")).await;
    let key = app.add_key(user, json!({})).await;

    let resp = app.chat(&key, request()).send().await.expect("request");
    assert_eq!(
        resp.status(),
        200,
        "the client is not at fault for the channel's key"
    );
    let c = channel(&app, refusing_id).await;
    assert_eq!(c["status"], "disabled");
    let reason = c["disabled_reason"].as_str().expect("reason");
    assert!(
        reason.contains("401") && reason.contains("Incorrect API key"),
        "{reason}"
    );
    for _ in 0..3 {
        assert_eq!(
            app.chat(&key, request())
                .send()
                .await
                .expect("request")
                .status(),
            200
        );
    }
    assert_eq!(refusing.calls(), 1, "a disabled channel gets no traffic");

    // The admin test call: fails on a dead channel, succeeds on the working one.
    let (status, body) = app
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/admin/channels/{refusing_id}/test"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["ok"], false);
    assert_eq!(body["data"]["status"], 401);
    let dead = add_channel(&app, "dead", &dead_base_url().await, 0).await;
    let (_, body) = app
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/admin/channels/{dead}/test"),
            Some(json!({})),
        )
        .await;
    assert_eq!(body["data"]["ok"], false);
    assert!(
        body["data"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("connect"),
        "{body}"
    );
    assert_eq!(
        channel(&app, dead).await["last_error"],
        body["data"]["error"]
    );

    // Re-enabling it (with a new key) puts it back into routing.
    refusing.set_script(chat_script(&["fixed"], 10, 2, 0));
    let (status, body) = app
        .admin(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/channels/{refusing_id}"),
            Some(json!({"status": "active", "api_key": "new-key-123456"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["disabled_reason"], Value::Null);
    let (_, body) = app
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/admin/channels/{refusing_id}/test"),
            Some(json!({"model": "m1"})),
        )
        .await;
    assert_eq!(body["data"]["ok"], true, "{body}");
    assert_eq!(body["data"]["status"], 200);
    assert_eq!(refusing.calls(), 3);
    assert_eq!(
        app.chat(&key, request())
            .send()
            .await
            .expect("request")
            .status(),
        200
    );
    assert_eq!(refusing.calls(), 4);
    app.assert_books_balance(user).await;
    app.stop().await;
}

both_backends!(
    failing_channels_are_skipped_until_their_breaker_lets_a_probe_through,
    a_refused_credential_disables_the_channel_and_says_why
);

async fn channel_credentials_are_sealed_at_rest_and_legacy_plain_ones_sealed_at_start(b: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let (db_url, pg) = fresh_database(&b, &dir).await;
    let app = TestApp::spawn_with(&b, |c| c.database.url = db_url.clone()).await;
    let Setup { app, fake, key, .. } = Setup::provision(
        app,
        chat_script(&["ok"], 3, 2, 0),
        json!({}),
        Prices {
            input: "1",
            output: "1",
            cached: "1",
        },
        "1",
    )
    .await;
    let body = json!({"model": "m1", "messages": [{"role": "user", "content": "x"}]});
    let last_auth = || {
        fake.state
            .auth
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .unwrap_or_default()
    };
    let resp = app.chat(&key, body.clone()).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(last_auth(), "Bearer upstream-secret");
    let stored = sql_text(&app.state.db, "SELECT api_key FROM channels").await;
    assert!(
        stored.starts_with("enc:v1:") && !stored.contains("upstream-secret"),
        "{stored}"
    );

    // A credential written in plain text (before sealing existed) still works, and the next
    // start seals it.
    sql_i64(
        &app.state.db,
        "UPDATE channels SET api_key = 'sk-legacy-plain-0001'",
    )
    .await;
    let id = sql_i64(&app.state.db, "SELECT id FROM channels").await;
    let data = app
        .admin_post(&format!("/api/v1/admin/channels/{id}/test"), json!({}))
        .await;
    assert_eq!(data["ok"], true, "{data}");
    assert_eq!(last_auth(), "Bearer sk-legacy-plain-0001");
    app.stop().await;
    let app = TestApp::spawn_with(&b, |c| c.database.url = db_url.clone()).await;
    let stored = sql_text(&app.state.db, "SELECT api_key FROM channels").await;
    assert!(
        stored.starts_with("enc:v1:") && !stored.contains("legacy"),
        "{stored}"
    );
    let resp = app.chat(&key, body).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(last_auth(), "Bearer sk-legacy-plain-0001");
    app.stop().await;

    // Another master key cannot open them: the gateway refuses to start and says why.
    let mut config =
        tollgate::config::Config::load_from(None, Vec::<(String, String)>::new()).expect("config");
    config.server.listen = "127.0.0.1:0".into();
    config.database.url = db_url;
    config.master_key = Some("a-different-master-key-0123456789abc".into());
    let err = tollgate::startup::Application::build(config)
        .await
        .err()
        .expect("refused");
    let message = format!("{err:#}");
    assert!(
        message.contains("cannot be opened with this master key"),
        "{message}"
    );
    if let Some((url, name)) = pg {
        drop_pg_database(&url, &name).await;
    }
}

both_backends!(channel_credentials_are_sealed_at_rest_and_legacy_plain_ones_sealed_at_start);
