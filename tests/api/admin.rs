//! The admin API: access, validation, exact decimal handling, ledger.

use crate::both_backends;
use crate::helpers::*;
use reqwest::Method;
use serde_json::json;

async fn the_admin_api_requires_an_admin_credential(b: Backend) {
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
    let anonymous = s
        .app
        .client
        .get(s.app.url("/api/v1/admin/users"))
        .send()
        .await
        .expect("send");
    assert_eq!(anonymous.status(), 401);
    let body: serde_json::Value = anonymous.json().await.expect("json");
    assert_eq!(body["success"], false);
    assert_eq!(body["error"], "UNAUTHORIZED");
    let user_key = s
        .app
        .client
        .get(s.app.url("/api/v1/admin/users"))
        .bearer_auth(&s.key)
        .send()
        .await
        .expect("send");
    assert_eq!(user_key.status(), 403);
    let (status, list) = s.app.admin(Method::GET, "/api/v1/admin/users", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"]["total"], 1);
    s.app.stop().await;
}

async fn prices_and_balances_are_parsed_exactly_and_bad_input_names_the_field(b: Backend) {
    let app = TestApp::spawn(&b).await;
    let data = app
        .admin_post("/api/v1/admin/models", json!({"model": "m", "input_price": 0.000001, "output_price": "123456.789012", "cached_input_price": 0.1}))
        .await;
    assert_eq!(data["input_price_micros"], 1);
    assert_eq!(data["output_price_micros"], 123_456_789_012_i64);
    assert_eq!(data["cached_input_price_micros"], 100_000);
    assert_eq!(data["price_version"], 1);
    // Re-posting with a new price makes a new version.
    let data = app
        .admin_post(
            "/api/v1/admin/models",
            json!({"model": "m", "input_price": 2, "output_price": 3}),
        )
        .await;
    assert_eq!(data["price_version"], 2);
    assert_eq!(data["cached_input_price_micros"], 2_000_000);

    for (path, body, field) in [
        (
            "/api/v1/admin/models",
            json!({"model": "x", "input_price": 0.0000001, "output_price": 1}),
            "input_price",
        ),
        (
            "/api/v1/admin/models",
            json!({"model": "x", "input_price": -1, "output_price": 1}),
            "input_price",
        ),
        (
            "/api/v1/admin/models",
            json!({"model": "x", "input_price": 1}),
            "output_price",
        ),
        (
            "/api/v1/admin/users",
            json!({"email": "not-an-email", "balance": 1}),
            "email",
        ),
        (
            "/api/v1/admin/users",
            json!({"email": "a@b.c", "balance": "lots"}),
            "balance",
        ),
        (
            "/api/v1/admin/channels",
            json!({"name": "c", "provider": "nope", "base_url": "http://x/v1", "models": ["m"]}),
            "provider",
        ),
        (
            "/api/v1/admin/channels",
            json!({"name": "c", "provider": "openai", "base_url": "not a url", "models": ["m"]}),
            "base_url",
        ),
        (
            "/api/v1/admin/channels",
            json!({"name": "c", "provider": "openai", "base_url": "http://x/v1", "models": []}),
            "models",
        ),
    ] {
        let (status, resp) = app.admin(Method::POST, path, Some(body.clone())).await;
        assert_eq!(status, 400, "{body} → {resp}");
        assert_eq!(resp["success"], false);
        assert_eq!(resp["error"], "INVALID_INPUT");
        assert!(
            resp["message"].as_str().unwrap_or("").contains(field),
            "{resp} should name {field}"
        );
    }
    app.stop().await;
}

async fn balance_adjustments_are_ledger_entries_with_balance_after(b: Backend) {
    let app = TestApp::spawn(&b).await;
    let user = app.add_user(json!(100)).await;
    let entry = app
        .admin_post(
            &format!("/api/v1/admin/users/{user}/balance"),
            json!({"delta": 12.5, "reason": "top-up"}),
        )
        .await;
    assert_eq!(entry["amount_micros"], 12_500_000);
    assert_eq!(entry["balance_after_micros"], 112_500_000);
    assert_eq!(entry["description"], "top-up");
    let entry = app
        .admin_post(
            &format!("/api/v1/admin/users/{user}/balance"),
            json!({"delta": "-0.000001"}),
        )
        .await;
    assert_eq!(entry["balance_after_micros"], 112_499_999);
    let u = app.user(user).await;
    assert_eq!(u["balance_micros"], 112_499_999);
    assert_eq!(u["balance"], json!(112.499999));
    // A debit below zero is refused and changes nothing.
    let (status, resp) = app
        .admin(
            Method::POST,
            &format!("/api/v1/admin/users/{user}/balance"),
            Some(json!({"delta": -1000})),
        )
        .await;
    assert_eq!(status, 409, "{resp}");
    assert_eq!(app.balance_micros(user).await, 112_499_999);
    let (_, ledger) = app
        .admin(
            Method::GET,
            &format!("/api/v1/admin/users/{user}/ledger"),
            None,
        )
        .await;
    assert_eq!(ledger["data"]["total"], 3);
    app.assert_books_balance(user).await;
    let (status, _) = app
        .admin(Method::GET, "/api/v1/admin/users/999999", None)
        .await;
    assert_eq!(status, 404);
    app.stop().await;
}

both_backends!(
    the_admin_api_requires_an_admin_credential,
    prices_and_balances_are_parsed_exactly_and_bad_input_names_the_field,
    balance_adjustments_are_ledger_entries_with_balance_after
);
