//! Authentication and key rules.

use crate::both_backends;
use crate::helpers::*;
use serde_json::{Value, json};

async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn missing_wrong_disabled_and_expired_keys_get_401(b: Backend) {
    let s = setup(
        &b,
        chat_script(&["ok"], 1, 1, 0),
        Prices {
            input: "1",
            output: "1",
            cached: "1",
        },
        "1",
    )
    .await;
    let body = json!({"model": "m1", "messages": [{"role": "user", "content": "x"}]});

    let (status, err) = error_of(
        s.app
            .client
            .post(s.app.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(err["error"]["code"], "missing_api_key");

    let (status, err) = error_of(
        s.app
            .chat("sk-not-a-real-key-000000000000000000000000", body.clone())
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(err["error"]["code"], "invalid_api_key");

    // A key that works, then is disabled: refused on the very next request.
    let key_id = {
        let (_, keys) = s
            .app
            .admin(
                reqwest::Method::GET,
                &format!("/api/v1/admin/users/{}/keys", s.user),
                None,
            )
            .await;
        keys["data"][0]["id"].as_i64().expect("key id")
    };
    assert_eq!(
        s.app
            .chat(&s.key, body.clone())
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
    let (status, _) = s
        .app
        .admin(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/keys/{key_id}"),
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = error_of(s.app.chat(&s.key, body.clone()).send().await.expect("send")).await;
    assert_eq!(status, 401);

    let expired = s
        .app
        .add_key(s.user, json!({"expires_at": "2020-01-01T00:00:00Z"}))
        .await;
    let (status, err) = error_of(
        s.app
            .chat(&expired, body.clone())
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(err["error"]["code"], "expired_api_key");

    let future = s
        .app
        .add_key(s.user, json!({"expires_at": "2999-01-01T00:00:00Z"}))
        .await;
    let r = s
        .app
        .chat(&future, body.clone())
        .send()
        .await
        .expect("send");
    let status = r.status();
    assert_eq!(status, 200, "{}", r.text().await.unwrap_or_default());
    assert_eq!(s.fake.calls(), 2);
    s.app.stop().await;
}

async fn a_disabled_user_is_refused_with_403_at_once(b: Backend) {
    let s = setup(
        &b,
        chat_script(&["ok"], 1, 1, 0),
        Prices {
            input: "1",
            output: "1",
            cached: "1",
        },
        "1",
    )
    .await;
    let body = json!({"model": "m1", "messages": [{"role": "user", "content": "x"}]});
    assert_eq!(
        s.app
            .chat(&s.key, body.clone())
            .send()
            .await
            .expect("send")
            .status(),
        200
    );
    let (status, _) = s
        .app
        .admin(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/users/{}", s.user),
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, err) =
        error_of(s.app.chat(&s.key, body.clone()).send().await.expect("send")).await;
    assert_eq!(status, 403);
    assert_eq!(err["error"]["code"], "account_disabled");
    assert_eq!(s.fake.calls(), 1);
    s.app.stop().await;
}

async fn keys_are_accepted_in_all_three_headers(b: Backend) {
    let s = setup(
        &b,
        chat_script(&["ok"], 1, 1, 0),
        Prices {
            input: "1",
            output: "1",
            cached: "1",
        },
        "1",
    )
    .await;
    for header in ["authorization", "x-api-key", "xai-key"] {
        let value = if header == "authorization" {
            format!("Bearer {}", s.key)
        } else {
            s.key.clone()
        };
        let resp = s
            .app
            .client
            .get(s.app.url("/v1/models"))
            .header(header, value)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200, "{header}");
    }
    s.app.stop().await;
}

async fn a_key_limited_to_some_models_cannot_call_others(b: Backend) {
    let app = TestApp::spawn(&b).await;
    let fake = FakeUpstream::start(chat_script(&["ok"], 1, 1, 0)).await;
    app.add_channel(&fake.base_url, &["m1", "m2"], json!({}))
        .await;
    app.add_model("m1", json!(1), json!(1), json!(1)).await;
    app.add_model("m2", json!(1), json!(1), json!(1)).await;
    let user = app.add_user(json!(1)).await;
    let key = app.add_key(user, json!({"models": ["m1"]})).await;
    let (status, err) = error_of(
        app.chat(
            &key,
            json!({"model": "m2", "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .expect("send"),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(err["error"]["code"], "model_not_allowed");
    assert_eq!(fake.calls(), 0);
    assert_eq!(
        app.chat(
            &key,
            json!({"model": "m1", "messages": [{"role": "user", "content": "x"}]})
        )
        .send()
        .await
        .expect("send")
        .status(),
        200
    );
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
    assert_eq!(models["data"].as_array().map(Vec::len), Some(1));
    app.stop().await;
}

async fn keys_are_stored_only_as_hashes(b: Backend) {
    let s = setup(
        &b,
        chat_script(&["ok"], 1, 1, 0),
        Prices {
            input: "1",
            output: "1",
            cached: "1",
        },
        "1",
    )
    .await;
    assert!(s.key.starts_with("sk-") && s.key.len() >= 35);
    let hash = tollgate::gateway::auth::hash_key(&s.key);
    let found = tollgate::db::keys::find_for_auth(&s.app.state.db, &hash)
        .await
        .expect("query");
    assert!(found.is_some());
    let (_, listed) = s
        .app
        .admin(
            reqwest::Method::GET,
            &format!("/api/v1/admin/users/{}/keys", s.user),
            None,
        )
        .await;
    assert!(
        !listed.to_string().contains(&s.key),
        "the full key must never be shown again"
    );
    s.app.stop().await;
}

both_backends!(
    missing_wrong_disabled_and_expired_keys_get_401,
    a_disabled_user_is_refused_with_403_at_once,
    keys_are_accepted_in_all_three_headers,
    a_key_limited_to_some_models_cannot_call_others,
    keys_are_stored_only_as_hashes
);
