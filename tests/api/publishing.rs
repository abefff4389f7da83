//! Publishing (seed 000): social sets and drafts over HTTP with the `xai-key` header, in seed
//! 000's own bodies; X's weighted counts and each platform's validity on every draft.

use crate::both_backends;
use crate::helpers::*;
use serde_json::{Value, json};

/// A request with seed 000's `xai-key` header: (status, body).
async fn xai(
    app: &TestApp,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app
        .client
        .request(method, app.url(path))
        .header("xai-key", key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn user(app: &TestApp) -> String {
    let id = app.add_user(json!("100")).await;
    app.add_key(id, json!({})).await
}

async fn social_sets_are_created_renamed_listed_and_deleted(b: Backend) {
    let app = TestApp::spawn(&b).await;
    let key = user(&app).await;
    use reqwest::Method as M;
    let (status, created) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/social-sets",
        Some(json!({"name": "我的 Social Set"})),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["success"], true);
    let id = created["socialSet"]["id"].as_str().expect("id").to_owned();
    assert_eq!(created["socialSet"]["accounts"], json!([]));
    let (status, renamed) = xai(
        &app,
        &key,
        M::PUT,
        &format!("/api/v1/social-sets/{id}"),
        Some(json!({"name": "品牌矩阵"})),
    )
    .await;
    assert_eq!(status, 200, "{renamed}");
    let (_, list) = xai(&app, &key, M::GET, "/api/v1/social-sets", None).await;
    assert_eq!(
        list["socialSets"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    assert_eq!(list["socialSets"][0]["name"], "品牌矩阵");
    // Only connected accounts of the user's may join; errors are seed 000's shape.
    let (status, e) = xai(
        &app,
        &key,
        M::POST,
        &format!("/api/v1/social-sets/{id}/accounts"),
        Some(json!({"accountId": "nope"})),
    )
    .await;
    assert_eq!(
        (status, e["success"].clone(), e["error"].clone()),
        (400, json!(false), json!("INVALID_INPUT")),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("accountId"),
        "{e}"
    );
    let (status, e) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/social-sets",
        Some(json!({"name": " "})),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    // Another user sees none of it.
    let other = user(&app).await;
    let (_, theirs) = xai(&app, &other, M::GET, "/api/v1/social-sets", None).await;
    assert_eq!(theirs["socialSets"], json!([]));
    let (status, e) = xai(
        &app,
        &other,
        M::DELETE,
        &format!("/api/v1/social-sets/{id}"),
        None,
    )
    .await;
    assert_eq!((status, e["error"].clone()), (404, json!("NOT_FOUND")));
    let (status, _) = xai(
        &app,
        &key,
        M::DELETE,
        &format!("/api/v1/social-sets/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, list) = xai(&app, &key, M::GET, "/api/v1/social-sets", None).await;
    assert_eq!(list["socialSets"], json!([]));
    let (status, _) = xai(&app, "sk-not-a-key", M::GET, "/api/v1/social-sets", None).await;
    assert_eq!(status, 401);
    app.stop().await;
}

async fn drafts_count_each_item_the_way_each_platform_does(b: Backend) {
    let app = TestApp::spawn(&b).await;
    let key = user(&app).await;
    use reqwest::Method as M;
    let (_, set) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/social-sets",
        Some(json!({"name": "s"})),
    )
    .await;
    let set_id = set["socialSet"]["id"].as_str().expect("id").to_owned();
    // A CJK + URL thread, counted by each platform.
    let head = "<p>来自 API 的问候!</p>";
    let second = "<p>详情见 https://example.com/a/very/long/path?with=query 👨‍👩‍👧</p>";
    let long = format!("<p>{}</p>", "长".repeat(141));
    let body = json!({
        "title": "我的草稿",
        "tweets": [{"content": head}, {"content": second}, {"content": long}],
        "socialSetId": set_id,
        "scheduledFor": "2026-01-15T10:00:00Z",
    });
    let (status, created) = xai(&app, &key, M::POST, "/api/v1/twitter/drafts", Some(body)).await;
    assert_eq!(status, 200, "{created}");
    let draft = &created["draft"];
    assert_eq!(
        (draft["title"].clone(), draft["status"].clone()),
        (json!("我的草稿"), json!("draft"))
    );
    assert_eq!(draft["scheduledFor"], "2026-01-15T10:00:00Z");
    assert_eq!(draft["socialSetId"], json!(set_id));
    let tweets = draft["tweets"].as_array().expect("tweets");
    assert_eq!(tweets[0]["content"], head);
    assert_eq!(tweets[0]["plainText"], "来自 API 的问候!");
    // 来自 (4) + space + API (3) + space + 的问候 (6) + ! = 16.
    assert_eq!(
        (
            tweets[0]["characterCount"].clone(),
            tweets[0]["isValid"].clone(),
            tweets[0]["position"].clone()
        ),
        (json!(16), json!(true), json!(0))
    );
    // 详情见 (6) + space + URL (23) + space + one family emoji (2) = 33.
    assert_eq!(tweets[1]["characterCount"], 33);
    assert_eq!(
        (
            tweets[2]["characterCount"].clone(),
            tweets[2]["isValid"].clone()
        ),
        (json!(282), json!(false))
    );
    assert_eq!(draft["isValid"], false);
    // No accounts chosen: every platform's view; 141 CJK characters fit all but X.
    let validity = &draft["platformValidity"];
    assert_eq!(validity["twitter"]["isValid"], false);
    assert_eq!(validity["twitter"]["limit"], 280);
    for p in ["bluesky", "mastodon", "threads", "linkedin"] {
        assert_eq!(validity[p]["isValid"], true, "{p}: {validity}");
    }
    assert_eq!(validity["bluesky"]["characterCount"], 141);
    assert_eq!(
        validity["bluesky"]["items"][1]["characterCount"],
        3 + 1 + 47 + 1 + 1
    );
    assert_eq!(
        validity["threads"]["items"][1]["characterCount"],
        3 + 1 + 47 + 1 + 18
    );
    assert_eq!(
        validity["mastodon"]["items"][1]["characterCount"],
        3 + 1 + 23 + 1 + 5
    );
    assert_eq!(validity["linkedin"]["limit"], 3000);

    // Edit: the long item goes, ids of kept items stay, HTML is sanitised.
    let id = draft["id"].as_str().expect("id").to_owned();
    let first_item = tweets[0]["id"].clone();
    let (status, updated) = xai(&app, &key, M::PUT, &format!("/api/v1/twitter/drafts/{id}"), Some(json!({
        "tweets": [{"id": first_item, "content": head}, {"content": "<p onclick=\"x()\">二<script>alert(1)</script></p>"}],
        "scheduledFor": null,
    }))).await;
    assert_eq!(status, 200, "{updated}");
    let d = &updated["draft"];
    assert_eq!(d["tweets"][0]["id"], first_item);
    assert_eq!(d["tweets"][1]["content"], "<p>二</p>");
    assert_eq!(
        (d["isValid"].clone(), d["scheduledFor"].clone()),
        (json!(true), Value::Null)
    );
    assert_eq!(d["title"], "我的草稿");

    // Lists: all, by set; a second user sees none; read and delete.
    let (_, other_set) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/twitter/drafts",
        Some(json!({"title": "b", "tweets": [{"content": "hi"}]})),
    )
    .await;
    assert_eq!(other_set["draft"]["socialSetId"], Value::Null);
    let (_, all) = xai(&app, &key, M::GET, "/api/v1/twitter/drafts", None).await;
    assert_eq!(all["drafts"].as_array().map(Vec::len), Some(2));
    let (_, in_set) = xai(
        &app,
        &key,
        M::GET,
        &format!("/api/v1/twitter/drafts?socialSetId={set_id}"),
        None,
    )
    .await;
    assert_eq!(in_set["drafts"].as_array().map(Vec::len), Some(1));
    assert_eq!(in_set["drafts"][0]["id"], json!(id));
    let stranger = user(&app).await;
    let (status, _) = xai(
        &app,
        &stranger,
        M::GET,
        &format!("/api/v1/twitter/drafts/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (_, theirs) = xai(&app, &stranger, M::GET, "/api/v1/twitter/drafts", None).await;
    assert_eq!(theirs["drafts"], json!([]));

    // Bad input is named, and nothing is written.
    for (body, want) in [
        (json!({"tweets": [{"content": "x"}]}), "title"),
        (json!({"title": "t"}), "tweets"),
        (json!({"title": "t", "tweets": []}), "tweets"),
        (
            json!({"title": "t", "tweets": [{"content": "x"}], "scheduledFor": "2026-01-15T10:00:00"}),
            "scheduledFor",
        ),
        (
            json!({"title": "t", "tweets": [{"content": "x"}], "socialSetId": "nope"}),
            "socialSetId",
        ),
        (
            json!({"title": "t", "tweets": [{"content": "x"}], "selectedAccountIds": ["nope"]}),
            "selectedAccountIds",
        ),
        (
            json!({"title": "t", "tweets": [{"content": "x", "media": ["f_0000"]}]}),
            "media",
        ),
        (
            json!({"title": "t", "tweets": [{"content": "x"}], "status": "sent"}),
            "status",
        ),
    ] {
        let (status, e) = xai(
            &app,
            &key,
            M::POST,
            "/api/v1/twitter/drafts",
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (status, e["error"].clone()),
            (400, json!("INVALID_INPUT")),
            "{body}: {e}"
        );
        assert!(
            e["message"].as_str().unwrap_or_default().contains(want),
            "{body}: {e}"
        );
    }
    let (_, all) = xai(&app, &key, M::GET, "/api/v1/twitter/drafts", None).await;
    assert_eq!(all["drafts"].as_array().map(Vec::len), Some(2));
    let (status, _) = xai(
        &app,
        &key,
        M::DELETE,
        &format!("/api/v1/twitter/drafts/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, e) = xai(
        &app,
        &key,
        M::GET,
        &format!("/api/v1/twitter/drafts/{id}"),
        None,
    )
    .await;
    assert_eq!((status, e["error"].clone()), (404, json!("NOT_FOUND")));
    app.stop().await;
}

both_backends!(
    social_sets_are_created_renamed_listed_and_deleted,
    drafts_count_each_item_the_way_each_platform_does
);
