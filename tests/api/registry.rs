//! The model registry in the platform's shape (`/api/v1/models` for admins) and admin usage
//! summed by user, model and channel.

use crate::both_backends;
use crate::helpers::*;
use serde_json::{Value, json};

async fn registry_models_get_an_implicit_channel_and_a_flat_credit_cost(b: Backend) {
    let app = TestApp::spawn(&b).await;
    let fake = FakeUpstream::start(chat_script(&["你好"], 10, 5, 0)).await;
    let created = app.admin_post("/api/v1/models", json!({
        "name": "通义千问Plus", "provider": "qwen", "model_name": "qwen-plus", "api_key": "sk-qwen-123456",
        "api_base": fake.base_url, "config": {"temperature": 0.7, "max_tokens": 2000}, "credits_cost": 8})).await;
    let id = created["id"].as_i64().expect("id");
    assert_eq!(created["name"], "通义千问Plus");
    assert_eq!(created["provider"], "qwen");
    assert_eq!(created["model_name"], "qwen-plus");
    assert_eq!(created["is_active"], true);
    assert_eq!(created["credits_cost"], json!(8));
    assert_eq!(created["config"]["max_tokens"], 2000);

    let (status, list) = app
        .admin(
            reqwest::Method::GET,
            "/api/v1/models?provider=qwen&is_active=true",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().expect("list").len(), 1);
    assert_eq!(list["data"][0]["model_name"], "qwen-plus");
    let (_, none) = app
        .admin(reqwest::Method::GET, "/api/v1/models?provider=openai", None)
        .await;
    assert_eq!(none["data"], json!([]));
    let (status, _) = app.admin(reqwest::Method::POST, "/api/v1/models", Some(json!({
        "name": "again", "provider": "qwen", "model_name": "qwen-plus", "api_base": fake.base_url}))).await;
    assert_eq!(status, 409);
    let (status, bad) = app
        .admin(
            reqwest::Method::POST,
            "/api/v1/models",
            Some(json!({
        "name": "x", "provider": "qwen", "model_name": "x", "api_base": "not a url"})),
        )
        .await;
    assert_eq!(status, 400, "{bad}");

    // An ordinary key sees OpenAI's list, and pays the flat cost per answered request.
    let user = app.add_user(json!("20")).await;
    let key = app.add_key(user, json!({})).await;
    let openai_list: Value = app
        .client
        .get(app.url("/api/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(openai_list["object"], "list");
    assert_eq!(openai_list["data"][0]["id"], "qwen-plus");
    let resp = app
        .chat(
            &key,
            json!({"model": "qwen-plus", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .expect("chat");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        fake.state
            .auth
            .lock()
            .expect("lock")
            .last()
            .map(String::as_str),
        Some("Bearer sk-qwen-123456")
    );
    // The configured defaults go upstream when the request sets none.
    let sent: Value = serde_json::from_slice(&fake.last_body()).expect("json");
    assert_eq!(
        (&sent["temperature"], &sent["max_tokens"]),
        (&json!(0.7), &json!(2000)),
        "{sent}"
    );
    let usage = app.wait_for_usage(user, 1).await;
    assert_eq!(usage[0]["cost_micros"], 8_000_000);
    assert_eq!(usage[0]["reserved_micros"], 8_000_000);

    // Usage summed per model and per user.
    let (status, totals) = app
        .admin(
            reqwest::Method::GET,
            "/api/v1/admin/usage?group_by=model&start=2020-01-01",
            None,
        )
        .await;
    assert_eq!(status, 200, "{totals}");
    let item = &totals["data"]["items"][0];
    assert_eq!(item["model"], "qwen-plus");
    assert_eq!(item["requests"], 1);
    assert_eq!(item["cost_micros"], 8_000_000);
    assert_eq!(item["prompt_tokens"], 10);
    let (_, by_user) = app
        .admin(
            reqwest::Method::GET,
            "/api/v1/admin/usage?group_by=user",
            None,
        )
        .await;
    assert_eq!(by_user["data"]["items"][0]["user"], user);
    let (_, by_channel) = app
        .admin(
            reqwest::Method::GET,
            "/api/v1/admin/usage?group_by=channel",
            None,
        )
        .await;
    assert_eq!(
        by_channel["data"]["items"][0]["channel"],
        created["channel_id"]
    );
    let (_, future) = app
        .admin(
            reqwest::Method::GET,
            "/api/v1/admin/usage?group_by=model&start=2999-01-01&end=2999-02-01",
            None,
        )
        .await;
    assert_eq!(future["data"]["items"], json!([]));
    let (status, _) = app
        .admin(
            reqwest::Method::GET,
            "/api/v1/admin/usage?group_by=planet",
            None,
        )
        .await;
    assert_eq!(status, 400);

    // PUT changes the cost and deactivates; DELETE retires.
    let (status, updated) = app
        .admin(
            reqwest::Method::PUT,
            &format!("/api/v1/models/{id}"),
            Some(json!({"credits_cost": 5, "name": "Qwen Plus"})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["data"]["credits_cost"], json!(5));
    assert_eq!(updated["data"]["name"], "Qwen Plus");
    app.chat(
        &key,
        json!({"model": "qwen-plus", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .send()
    .await
    .expect("chat");
    assert_eq!(
        app.wait_for_usage(user, 2).await[1]["cost_micros"],
        5_000_000
    );
    let (status, _) = app
        .admin(
            reqwest::Method::DELETE,
            &format!("/api/v1/models/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (_, list) = app
        .admin(reqwest::Method::GET, "/api/v1/models?is_active=false", None)
        .await;
    assert_eq!(list["data"][0]["is_active"], false);
    let resp = app
        .chat(
            &key,
            json!({"model": "qwen-plus", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .expect("chat");
    assert_eq!(resp.status(), 400, "a retired model cannot be called");
    let (status, _) = app
        .admin(reqwest::Method::DELETE, "/api/v1/models/99999", None)
        .await;
    assert_eq!(status, 404);
    // Not for ordinary keys.
    let resp = app
        .client
        .put(app.url(&format!("/api/v1/models/{id}")))
        .bearer_auth(&key)
        .json(&json!({}))
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 403);
    app.assert_books_balance(user).await;
    app.stop().await;
}

both_backends!(registry_models_get_an_implicit_channel_and_a_flat_credit_cost);
