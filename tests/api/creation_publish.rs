//! Publishing creations (seed 001): a creation to a fake WeChat Official Account through token →
//! upload → cover → draft → submit → poll, its token shared by two instances; the price held,
//! charged once out, released on a failure (IP not whitelisted, an unverified account); a lost
//! submit answer never submitted twice; hand-off platforms never reported as published.

use crate::both_backends;
use crate::fakes::wechat::{APP_ID, APP_SECRET, FakeWechat, start_fake_wechat};
use crate::helpers::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const CREDIT: i64 = 1_000_000;

fn configure(c: &mut tollgate::config::Config, base: &str) {
    c.social.wechat.api_base = base.to_owned();
    c.social.wechat.poll_interval_ms = 50;
    c.jobs.poll_interval_ms = 50;
    c.jobs.retry_base_ms = 100;
    c.jobs.max_attempts = 2;
    c.limits.other_per_minute = 1_000_000;
    c.limits.query_per_minute = 1_000_000;
}

async fn setup(b: &Backend) -> (TestApp, Arc<FakeWechat>) {
    let (fake, base) = start_fake_wechat().await;
    let app = TestApp::spawn_with(b, |c| configure(c, &base)).await;
    (app, fake)
}

async fn call(
    app: &TestApp,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A writing creation of the user's with `content` (saved through the creations API).
async fn creation(app: &TestApp, key: &str, user: i64, title: &str, content: &str) -> i64 {
    let c = tollgate::db::creations::insert(
        &app.state.db,
        &tollgate::db::creations::NewCreation {
            user_id: user,
            kind: "writing",
            tool_type: Some("wechat_article"),
            title: "draft",
            content: "",
            model: None,
            request_id: None,
            credits_micros: 0,
            upstream_cost_micros: 0,
            paid_by: "credits",
            file_id: None,
        },
    )
    .await
    .expect("creation");
    let (status, v) = call(
        app,
        key,
        reqwest::Method::PUT,
        &format!("/api/v1/creations/{}", c.id),
        Some(json!({"title": title, "content": content})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    c.id
}

/// An image uploaded through the media route: its Tollgate URL.
async fn image(app: &TestApp, key: &str) -> String {
    let png = include_bytes!("../../assets/wechat_cover.png").to_vec();
    let (status, v) = crate::media::upload(app, key, &[("a.png", png)]).await;
    assert_eq!(status, 200, "{v}");
    v["data"]["uploads"][0]["url"]
        .as_str()
        .expect("url")
        .to_owned()
}

async fn bind_wechat(app: &TestApp, key: &str) -> (u16, Value) {
    call(
        app,
        key,
        reqwest::Method::POST,
        "/api/v1/publish/platforms/bind",
        Some(json!({"platform": "wechat", "credentials": {"app_id": APP_ID, "app_secret": APP_SECRET}})),
    )
    .await
}

async fn publish(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    call(
        app,
        key,
        reqwest::Method::POST,
        "/api/v1/publish",
        Some(body),
    )
    .await
}

/// Waits until publish `id` is no longer pending; its history entry.
async fn settled(app: &TestApp, key: &str, id: i64) -> Value {
    for _ in 0..400 {
        let (status, v) = call(
            app,
            key,
            reqwest::Method::GET,
            &format!("/api/v1/publish/{id}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{v}");
        if v["data"]["status"] != "pending" {
            return v["data"].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("publish {id} did not settle");
}

fn platform<'a>(entry: &'a Value, name: &str) -> &'a Value {
    entry["platforms"]
        .as_array()
        .expect("platforms")
        .iter()
        .find(|p| p["platform"] == name)
        .expect("listed")
}

async fn a_creation_goes_to_a_wechat_official_account_through_its_api(b: Backend) {
    let (app, fake) = setup(&b).await;
    let user = app.add_user(json!("100")).await;
    let key = app.add_key(user, json!({})).await;

    // Nothing bound: the list says so, and publishing is 40008.
    let (status, v) = call(
        &app,
        &key,
        reqwest::Method::GET,
        "/api/v1/publish/platforms",
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let list = v["data"]["platforms"].as_array().expect("platforms");
    let names: Vec<&str> = list
        .iter()
        .map(|p| p["platform"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        ["wechat", "xiaohongshu", "douyin", "kuaishou", "toutiao"]
    );
    assert!(list.iter().all(|p| p["bound"] == false));
    assert_eq!(list[0]["mode"], "api");
    assert!(list[1..].iter().all(|p| p["mode"] == "handoff"));
    let img = image(&app, &key).await;
    let content = format!(
        "# 效率\n\n第一段 **重点**，见 [官网](https://example.com)。\n\n![配图]({img})\n\n- 一\n- 二\n\n#效率 #职场"
    );
    let c = creation(&app, &key, user, "如何提高工作效率", &content).await;
    let (status, v) = publish(
        &app,
        &key,
        json!({"creation_id": c, "platforms": ["wechat"]}),
    )
    .await;
    assert_eq!(
        (status, v["code"].clone(), v["error"].clone()),
        (400, json!(40008), json!("ACCOUNT_NOT_BOUND")),
        "{v}"
    );

    // A wrong secret is said at binding; the right one is checked by fetching a token.
    let (status, v) = call(
        &app,
        &key,
        reqwest::Method::POST,
        "/api/v1/publish/platforms/bind",
        Some(
            json!({"platform": "wechat", "credentials": {"app_id": APP_ID, "app_secret": "wrong"}}),
        ),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["message"].as_str().expect("message").contains("40125"),
        "{v}"
    );
    let (status, v) = bind_wechat(&app, &key).await;
    assert_eq!((status, v["code"].clone()), (200, json!(200)), "{v}");
    assert_eq!(fake.token_calls.load(Ordering::SeqCst), 2);
    // The secret is sealed at rest.
    let stored = sql_text(
        &app.state.db,
        "SELECT secret FROM publish_bindings WHERE platform = 'wechat'",
    )
    .await;
    assert!(!stored.contains(APP_SECRET), "sealed: {stored}");

    // Published: token (the one binding fetched), image, cover, draft, submit, polled to the URL.
    let (status, v) = publish(
        &app,
        &key,
        json!({"creation_id": c.to_string(), "platforms": ["wechat"]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (
            v["code"].clone(),
            v["message"].clone(),
            v["data"]["status"].clone()
        ),
        (json!(200), json!("发布任务已创建"), json!("pending"))
    );
    let id = v["data"]["publish_id"]
        .as_i64()
        .expect("numeric publish id");
    assert_eq!(app.balance_micros(user).await, 90 * CREDIT, "held");
    let done = settled(&app, &key, id).await;
    let w = platform(&done, "wechat");
    assert_eq!(w["status"], "published", "{done}");
    let url = w["url"].as_str().expect("url");
    assert!(url.starts_with("https://mp.weixin.qq.com/s/"), "{url}");
    assert_eq!(app.balance_micros(user).await, 90 * CREDIT, "charged once");
    assert_eq!(
        fake.token_calls.load(Ordering::SeqCst),
        2,
        "the bound token was reused"
    );
    let drafts = fake.drafts.lock().expect("lock").clone();
    assert_eq!(drafts.len(), 1);
    let d = drafts.values().next().expect("draft");
    assert_eq!(d.title, "如何提高工作效率");
    assert!(d.thumb.starts_with("THUMB_MEDIA_"), "a cover: {}", d.thumb);
    assert!(d.content.contains("<h1"), "{}", d.content);
    assert!(d.content.contains("<strong>重点</strong>"));
    assert!(
        !d.content.contains("https://example.com"),
        "outside links go"
    );
    let images = fake.images.lock().expect("lock").clone();
    assert_eq!(images.len(), 1, "the body image went up");
    let uploaded = images.keys().next().expect("url");
    assert!(
        d.content.contains(uploaded.as_str()),
        "the image points at WeChat: {}",
        d.content
    );
    assert!(!d.content.contains(&img));
    assert!(d.digest.starts_with("效率"), "{}", d.digest);
    assert_eq!(fake.submits.lock().expect("lock").len(), 1);

    // A token WeChat no longer takes is replaced once, and the publish goes on.
    fake.invalidate_tokens();
    let (_, v) = publish(
        &app,
        &key,
        json!({"creation_id": c, "platforms": ["wechat"]}),
    )
    .await;
    let id = v["data"]["publish_id"].as_i64().expect("id");
    assert_eq!(
        platform(&settled(&app, &key, id).await, "wechat")["status"],
        "published"
    );
    assert_eq!(
        fake.forced_calls.load(Ordering::SeqCst),
        1,
        "one forced refresh"
    );
    assert_eq!(app.balance_micros(user).await, 80 * CREDIT);

    // Refused by the platform's review: failed with the reason and 40009, refunded.
    fake.final_status.store(4, Ordering::SeqCst);
    let (_, v) = publish(
        &app,
        &key,
        json!({"creation_id": c, "platforms": ["wechat"]}),
    )
    .await;
    let id = v["data"]["publish_id"].as_i64().expect("id");
    let done = settled(&app, &key, id).await;
    let w = platform(&done, "wechat");
    assert_eq!(
        (
            done["status"].clone(),
            w["status"].clone(),
            w["error_code"].clone()
        ),
        (json!("failed"), json!("failed"), json!(40009)),
        "{done}"
    );
    assert!(w["error"].as_str().expect("why").contains("review"), "{w}");
    assert_eq!(app.balance_micros(user).await, 80 * CREDIT, "refunded");
    fake.final_status.store(0, Ordering::SeqCst);

    // An account that may not publish through the API (48001): failed with what to do.
    fake.verified.store(false, Ordering::SeqCst);
    let (_, v) = publish(
        &app,
        &key,
        json!({"creation_id": c, "platforms": ["wechat"]}),
    )
    .await;
    let id = v["data"]["publish_id"].as_i64().expect("id");
    let w = platform(&settled(&app, &key, id).await, "wechat").clone();
    assert_eq!(w["status"], "failed");
    assert!(w["error"].as_str().expect("why").contains("48001"), "{w}");
    fake.verified.store(true, Ordering::SeqCst);

    // The server's IP off the whitelist (40164): said so, refunded.
    fake.ip_whitelisted.store(false, Ordering::SeqCst);
    let (_, v) = publish(
        &app,
        &key,
        json!({"creation_id": c, "platforms": ["wechat"]}),
    )
    .await;
    let id = v["data"]["publish_id"].as_i64().expect("id");
    let w = platform(&settled(&app, &key, id).await, "wechat").clone();
    assert!(w["error"].as_str().expect("why").contains("40164"), "{w}");
    fake.ip_whitelisted.store(true, Ordering::SeqCst);
    assert_eq!(app.balance_micros(user).await, 80 * CREDIT);

    // A submit whose answer is lost: unconfirmed, held, never submitted again.
    fake.drop_next_submit.store(true, Ordering::SeqCst);
    let before = fake.submits.lock().expect("lock").len();
    let (_, v) = publish(
        &app,
        &key,
        json!({"creation_id": c, "platforms": ["wechat"]}),
    )
    .await;
    let id = v["data"]["publish_id"].as_i64().expect("id");
    let done = settled(&app, &key, id).await;
    assert_eq!(platform(&done, "wechat")["status"], "unconfirmed", "{done}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.submits.lock().expect("lock").len(),
        before + 1,
        "submitted once"
    );
    assert_eq!(
        app.balance_micros(user).await,
        70 * CREDIT,
        "held while unconfirmed"
    );

    // History, newest first, in seed 001's page shape.
    let (status, v) = call(
        &app,
        &key,
        reqwest::Method::GET,
        "/api/v1/publish/history?page=1&page_size=2",
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (
            v["data"]["total"].clone(),
            v["data"]["page"].clone(),
            v["data"]["page_size"].clone()
        ),
        (json!(6), json!(1), json!(2))
    );
    assert_eq!(v["data"]["items"][0]["publish_id"], id);
    let (status, _) = call(
        &app,
        &key,
        reqwest::Method::GET,
        "/api/v1/publish/history?page=0",
        None,
    )
    .await;
    assert_eq!(status, 400);
    app.assert_books_balance(user).await;
    let (ok, out) = app.ledger_verify_cli().await;
    assert!(ok, "{out}");
    app.stop().await;
}

async fn hand_off_platforms_get_a_package_and_are_never_reported_published(b: Backend) {
    let (app, _fake) = setup(&b).await;
    let user = app.add_user(json!("100")).await;
    let key = app.add_key(user, json!({})).await;
    let long: String = "很长的正文。".repeat(300);
    let c = creation(
        &app,
        &key,
        user,
        "一个超过二十个字的小红书标题应该被截断掉的",
        &format!("{long}\n\n#好物 #日常"),
    )
    .await;
    // No password or cookie is taken.
    let (status, v) = call(
        &app,
        &key,
        reqwest::Method::POST,
        "/api/v1/publish/platforms/bind",
        Some(json!({"platform": "xiaohongshu", "credentials": {"password": "x"}})),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    for p in ["xiaohongshu", "douyin"] {
        let (status, v) = call(
            &app,
            &key,
            reqwest::Method::POST,
            "/api/v1/publish/platforms/bind",
            Some(json!({"platform": p, "credentials": {"account": "me"}})),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    let (status, v) = publish(
        &app,
        &key,
        json!({"creation_id": c, "platforms": ["xiaohongshu", "douyin", "kuaishou"]}),
    )
    .await;
    assert_eq!(
        (status, v["code"].clone()),
        (400, json!(40008)),
        "kuaishou is not bound: {v}"
    );
    assert!(v["message"].as_str().expect("message").contains("kuaishou"));
    // Scheduled by seed 001's own time format (no offset: China Standard Time).
    let (status, v) = publish(
        &app,
        &key,
        json!({"creation_id": c, "platforms": ["xiaohongshu", "douyin"], "schedule_time": "2099-01-23T10:00:00"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["schedule_time"], "2099-01-23T02:00:00Z");
    let later = v["data"]["publish_id"].as_i64().expect("id");
    let (_, v) = publish(
        &app,
        &key,
        json!({"creation_id": c, "platforms": ["xiaohongshu", "douyin"]}),
    )
    .await;
    let id = v["data"]["publish_id"].as_i64().expect("id");
    let done = settled(&app, &key, id).await;
    assert_eq!(done["status"], "awaiting_user", "{done}");
    let x = platform(&done, "xiaohongshu");
    assert_eq!(
        (x["status"].clone(), x["mode"].clone()),
        (json!("awaiting_user"), json!("handoff"))
    );
    let pkg = &x["package"];
    assert_eq!(pkg["title"].as_str().expect("title").chars().count(), 20);
    assert!(pkg["text"].as_str().expect("text").chars().count() <= 1000);
    assert_eq!(pkg["truncated"], true);
    assert_eq!(pkg["tags"], json!(["#好物", "#日常"]));
    let d = platform(&done, "douyin");
    assert!(d["package"]["text"].as_str().expect("text").chars().count() <= 1000);
    // The user marks one done: done, not published; never anything but what they said.
    let (status, v) = call(
        &app,
        &key,
        reqwest::Method::POST,
        &format!("/api/v1/publish/{id}/done"),
        Some(json!({"platform": "xiaohongshu", "url": "https://www.xiaohongshu.com/explore/1"})),
    )
    .await;
    assert_eq!(
        (status, v["data"]["status"].clone()),
        (200, json!("done")),
        "{v}"
    );
    let (status, _) = call(
        &app,
        &key,
        reqwest::Method::POST,
        &format!("/api/v1/publish/{id}/done"),
        Some(json!({"platform": "xiaohongshu"})),
    )
    .await;
    assert_eq!(status, 409, "only once");
    let (_, v) = call(
        &app,
        &key,
        reqwest::Method::GET,
        &format!("/api/v1/publish/{id}"),
        None,
    )
    .await;
    let statuses: Vec<&str> = v["data"]["platforms"]
        .as_array()
        .expect("p")
        .iter()
        .map(|p| p["status"].as_str().expect("s"))
        .collect();
    assert!(!statuses.contains(&"published"), "{v}");
    let (_, v) = call(
        &app,
        &key,
        reqwest::Method::GET,
        &format!("/api/v1/publish/{later}"),
        None,
    )
    .await;
    assert_eq!(v["data"]["status"], "pending", "scheduled for 2099: {v}");
    assert_eq!(
        app.balance_micros(user).await,
        100 * CREDIT,
        "hand-offs are free"
    );
    app.stop().await;
}

/// Two instances publishing for one AppID fetch its token once.
async fn two_instances_share_one_wechat_token(b: Backend) {
    if !matches!(b, Backend::Postgres(_)) {
        return; // one SQLite file serves one process
    }
    let (fake, base) = start_fake_wechat().await;
    let app = TestApp::spawn_with(&b, |c| configure(c, &base)).await;
    let shared = app.db_url.clone();
    let second = TestApp::spawn_with(&b, |c| {
        configure(c, &base);
        c.database.url = shared;
    })
    .await;
    let user = app.add_user(json!("1000")).await;
    let key = app.add_key(user, json!({})).await;
    let (status, _) = bind_wechat(&app, &key).await;
    assert_eq!(status, 200);
    let c = creation(&app, &key, user, "共享令牌", "正文").await;
    let mut ids = Vec::new();
    for k in 0..6 {
        let target = if k % 2 == 0 { &app } else { &second };
        let (status, v) = publish(
            target,
            &key,
            json!({"creation_id": c, "platforms": ["wechat"]}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        ids.push(v["data"]["publish_id"].as_i64().expect("id"));
    }
    for id in ids {
        assert_eq!(
            platform(&settled(&app, &key, id).await, "wechat")["status"],
            "published"
        );
    }
    assert_eq!(
        fake.token_calls.load(Ordering::SeqCst),
        1,
        "one token fetch across both instances"
    );
    assert_eq!(fake.submits.lock().expect("lock").len(), 6);
    assert_eq!(app.balance_micros(user).await, 940 * CREDIT);
    second.stop().await;
    app.stop().await;
}

both_backends!(
    a_creation_goes_to_a_wechat_official_account_through_its_api,
    hand_off_platforms_get_a_package_and_are_never_reported_published,
    two_instances_share_one_wechat_token
);
