//! A user's own view: balance, transactions (the ledger) and usage, with their API key, in the
//! platform envelope.

use crate::both_backends;
use crate::helpers::*;
use serde_json::{Value, json};

async fn get(app: &TestApp, key: &str, path: &str) -> (u16, Value) {
    let resp = app
        .client
        .get(app.url(path))
        .header("x-api-key", key)
        .send()
        .await
        .expect("send");
    (resp.status().as_u16(), resp.json().await.expect("json"))
}

async fn a_user_sees_their_balance_transactions_and_usage(b: Backend) {
    let s = setup(
        &b,
        chat_script(&["ok"], 20, 5, 0),
        Prices {
            input: "1",
            output: "2",
            cached: "0",
        },
        "1.5",
    )
    .await;
    let resp = s
        .app
        .chat(
            &s.key,
            json!({"model": "m1", "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .expect("send");
    let request_id = resp.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    assert_eq!(resp.status(), 200);

    let (status, body) = get(&s.app, &s.key, "/api/v1/credit/balance").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["success"].clone(), body["code"].clone()),
        (json!(true), json!(200))
    );
    // 1.5 credits − (20 × 1 + 5 × 2) micro-credits.
    assert_eq!(body["data"]["balance_micros"], 1_500_000 - 30);
    assert_eq!(body["data"]["credit_balance"], json!(1.49997));
    assert_eq!(body["data"]["reserved_micros"], 0);
    assert_eq!(body["data"]["available_micros"], 1_500_000 - 30);

    let (status, body) = get(
        &s.app,
        &s.key,
        "/api/v1/credit/transactions?page=1&page_size=20",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let data = &body["data"];
    assert_eq!(
        (
            data["total"].clone(),
            data["page"].clone(),
            data["page_size"].clone()
        ),
        (json!(2), json!(1), json!(20))
    );
    let items = data["items"].as_array().expect("items");
    assert_eq!(items[0]["type"], "charge");
    assert_eq!(items[0]["amount"], json!(-0.00003));
    assert_eq!(items[0]["amount_micros"], -30);
    assert_eq!(items[0]["balance_after"], json!(1.49997));
    assert_eq!(items[0]["request_id"], request_id.as_str());
    assert!(
        items[0]["description"]
            .as_str()
            .is_some_and(|d| d.contains("m1"))
    );
    assert!(items[0]["id"].is_i64() && items[0]["created_at"].is_string());
    assert_eq!(items[1]["type"], "grant");
    assert_eq!(items[1]["amount"], json!(1.5));

    // Defaults, paging and bounds.
    let (_, body) = get(&s.app, &s.key, "/api/v1/credit/transactions").await;
    assert_eq!(body["data"]["page_size"], 20);
    let (_, body) = get(
        &s.app,
        &s.key,
        "/api/v1/credit/transactions?page=2&page_size=1",
    )
    .await;
    assert_eq!(body["data"]["items"][0]["type"], "grant");
    let (status, body) = get(&s.app, &s.key, "/api/v1/credit/transactions?page_size=101").await;
    assert_eq!(status, 400);
    assert_eq!(body["success"], false);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("page_size")),
        "{body}"
    );

    let (status, body) = get(&s.app, &s.key, "/api/v1/usage").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["total"], 1);
    let record = &body["data"]["items"][0];
    assert_eq!(record["request_id"], request_id.as_str());
    assert_eq!(record["model"], "m1");
    assert_eq!(
        (
            record["prompt_tokens"].clone(),
            record["completion_tokens"].clone()
        ),
        (json!(20), json!(5))
    );
    assert_eq!(record["cost_micros"], 30);
    assert_eq!(record["usage_source"], "provider");
    assert!(
        record.get("channel_id").is_none(),
        "channel internals stay private"
    );

    // Another user sees only their own.
    let other = s.app.add_user(json!(2)).await;
    let other_key = s.app.add_key(other, json!({})).await;
    let (_, body) = get(&s.app, &other_key, "/api/v1/usage").await;
    assert_eq!(body["data"]["total"], 0);
    let (_, body) = get(&s.app, &other_key, "/api/v1/credit/balance").await;
    assert_eq!(body["data"]["balance_micros"], 2_000_000);
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn the_user_views_need_a_user_key(b: Backend) {
    let app = TestApp::spawn(&b).await;
    let resp = app
        .client
        .get(app.url("/api/v1/credit/balance"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        (body["success"].clone(), body["code"].clone()),
        (json!(false), json!(401))
    );
    let (status, _) = get(&app, "sk-wrong", "/api/v1/usage").await;
    assert_eq!(status, 401);
    let (status, body) = get(&app, ADMIN_KEY, "/api/v1/credit/transactions").await;
    assert_eq!(status, 403, "{body}");
    app.stop().await;
}

both_backends!(
    a_user_sees_their_balance_transactions_and_usage,
    the_user_views_need_a_user_key
);

async fn post(app: &TestApp, bearer: Option<&str>, path: &str, body: Value) -> (u16, Value) {
    let mut req = app.client.post(app.url(path)).json(&body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.expect("send");
    (resp.status().as_u16(), resp.json().await.expect("json"))
}

async fn a_registered_user_logs_in_and_uses_the_token_like_a_key(b: Backend) {
    let s = setup(
        &b,
        chat_script(&["ok"], 20, 5, 0),
        Prices {
            input: "1",
            output: "2",
            cached: "0",
        },
        "1",
    )
    .await;
    let app = &s.app;
    let account =
        json!({"username": "ada", "email": "ada@example.com", "password": "correct horse"});
    let (status, body) = post(app, None, "/api/v1/auth/register", account.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["username"], "ada");
    assert_eq!(body["data"]["credit_balance"], 0);
    let user = body["data"]["id"].as_i64().expect("id");
    let (status, body) = post(app, None, "/api/v1/auth/register", account.clone()).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = post(
        app,
        None,
        "/api/v1/auth/register",
        json!({"username": "bob", "email": "bob@example.com", "password": "short"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("password")),
        "{body}"
    );

    let (status, _) = post(
        app,
        None,
        "/api/v1/auth/login",
        json!({"username": "ada", "password": "wrong horse"}),
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = post(
        app,
        None,
        "/api/v1/auth/login",
        json!({"username": "ada@example.com", "password": "correct horse"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["token_type"], "bearer");
    let access = body["data"]["access_token"]
        .as_str()
        .expect("access")
        .to_owned();
    let refresh = body["data"]["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();

    app.admin_post(
        &format!("/api/v1/admin/users/{user}/balance"),
        json!({"delta": 2, "reason": "welcome"}),
    )
    .await;
    let resp = app
        .client
        .get(app.url("/api/v1/credit/balance"))
        .bearer_auth(&access)
        .send()
        .await
        .expect("send");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["data"]["balance_micros"], 2_000_000, "{body}");

    // The access token calls models like a key; the charge lands on this account.
    let resp = app
        .chat(
            &access,
            json!({"model": "m1", "messages": [{"role": "user", "content": "x"}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let resp = app
        .client
        .get(app.url("/api/v1/usage"))
        .bearer_auth(&access)
        .send()
        .await
        .expect("send");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["data"]["items"][0]["cost_micros"], 30, "{body}");
    assert_eq!(body["data"]["items"][0]["key_id"], Value::Null);
    let resp = app
        .client
        .get(app.url("/api/v1/credit/transactions"))
        .bearer_auth(&access)
        .send()
        .await
        .expect("send");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["data"]["total"], 2);
    assert_eq!(body["data"]["items"][0]["balance_after"], json!(1.99997));
    app.assert_books_balance(user).await;

    // Refresh: only a refresh token buys new tokens.
    let (status, _) = post(app, Some(&access), "/api/v1/auth/refresh", json!({})).await;
    assert_eq!(status, 401);
    let (status, body) = post(app, Some(&refresh), "/api/v1/auth/refresh", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let renewed = body["data"]["access_token"]
        .as_str()
        .expect("access")
        .to_owned();
    let resp = app
        .client
        .get(app.url("/api/v1/auth/me"))
        .bearer_auth(&renewed)
        .send()
        .await
        .expect("send");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["data"]["username"], "ada", "{body}");

    // A forged token and a disabled account are refused.
    let at = access.len() - 5;
    let swapped = if &access[at..=at] == "A" { "B" } else { "A" };
    let forged = format!("{}{swapped}{}", &access[..at], &access[at + 1..]);
    let resp = app
        .client
        .get(app.url("/api/v1/auth/me"))
        .bearer_auth(&forged)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    let (status, _) = app
        .admin(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/users/{user}"),
            Some(json!({"status": "disabled"})),
        )
        .await;
    assert_eq!(status, 200);
    let resp = app
        .client
        .get(app.url("/api/v1/credit/balance"))
        .bearer_auth(&access)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 403);
    s.app.stop().await;
}

both_backends!(a_registered_user_logs_in_and_uses_the_token_like_a_key);
