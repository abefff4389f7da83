//! The studio's writing tools and creations (seed 001), end to end over HTTP: a real gateway, a
//! fake OpenAI-compatible upstream, exact balances after every scenario.

use crate::both_backends;
use crate::helpers::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;

const PRICES: Prices = Prices {
    input: "1",
    output: "2",
    cached: "0",
};

/// A POST to a platform route with `key`; (status, body as JSON or text).
async fn post(app: &TestApp, key: &str, path: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(app.url(path))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn call(app: &TestApp, key: &str, method: reqwest::Method, path: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .request(method, app.url(path))
        .bearer_auth(key)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The inputs that satisfy `tool`'s required fields.
fn inputs_for(tool: &Value) -> Value {
    let mut body = json!({});
    for f in tool["fields"].as_array().expect("fields") {
        if f["required"] == true {
            let name = f["name"].as_str().expect("name");
            let value = match name {
                "target_language" => "English",
                "content" => "原文内容：效率来自专注。",
                _ => "如何提高工作效率",
            };
            body[name] = json!(value);
        }
    }
    body["keywords"] = json!(["时间管理", "效率工具"]);
    body["requirements"] = json!("字数500字");
    body
}

/// The first system and user messages the upstream was last sent.
fn last_prompt(fake: &FakeUpstream) -> (String, String) {
    let body: Value = serde_json::from_slice(&fake.last_body()).expect("upstream body");
    (
        body["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        body["messages"][1]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

async fn every_tool_generates_and_saves_a_creation_charged_its_price(b: Backend) {
    let s = setup(
        &b,
        chat_script(&["第一段", "。第二段"], 40, 30, 0),
        PRICES,
        "1000",
    )
    .await;
    let (status, tools) = call(
        &s.app,
        &s.key,
        reqwest::Method::GET,
        "/api/v1/writing/tools",
    )
    .await;
    assert_eq!(status, 200, "{tools}");
    let tools = tools["data"].as_array().expect("tools").clone();
    let types: Vec<&str> = tools.iter().filter_map(|t| t["type"].as_str()).collect();
    assert_eq!(
        types,
        [
            "wechat_article",
            "xiaohongshu_note",
            "official_document",
            "academic_paper",
            "marketing_copy",
            "news_article",
            "video_script",
            "story_novel",
            "business_plan",
            "work_report",
            "resume",
            "lesson_plan",
            "content_rewrite",
            "translation"
        ]
    );
    assert!(
        tools.iter().all(|t| t["credits_cost"] == json!(10)),
        "{tools:?}"
    );
    assert_eq!(tools[1]["name"], "小红书笔记");
    let translation = &tools[13];
    let required: Vec<&str> = translation["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .filter(|f| f["required"] == true)
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(required, ["content", "target_language"]);

    // Metrics are the process's, and tests run at once: compare before and after.
    let ok_before = s
        .app
        .metric_where(
            "tollgate_addon_generations_total",
            "tool=\"resume\",outcome=\"ok\"",
        )
        .await
        .unwrap_or(0.0);
    let mut systems = std::collections::HashSet::new();
    for tool in &tools {
        let t = tool["type"].as_str().expect("type");
        let (status, answer) = post(
            &s.app,
            &s.key,
            &format!("/api/v1/writing/{t}/generate"),
            inputs_for(tool),
        )
        .await;
        assert_eq!(status, 200, "{t}: {answer}");
        assert_eq!(answer["code"], 200);
        assert_eq!(answer["data"]["content"], "第一段。第二段");
        assert_eq!(answer["data"]["credits_used"], json!(10));
        let (system, user) = last_prompt(&s.fake);
        assert!(user.contains("字数500字"), "{t}: {user}");
        assert!(!user.contains("{{"), "{t}: {user}");
        systems.insert(system);
        let id = answer["data"]["creation_id"].as_i64().expect("creation id");
        let (status, c) = call(
            &s.app,
            &s.key,
            reqwest::Method::GET,
            &format!("/api/v1/creations/{id}"),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            (c["data"]["type"].clone(), c["data"]["tool_type"].clone()),
            (json!("writing"), json!(t))
        );
        assert_eq!(c["data"]["content"], "第一段。第二段");
    }
    assert_eq!(systems.len(), 14, "every tool has its own system prompt");
    let (_, sys_xhs) = (
        0,
        systems
            .iter()
            .any(|s| s.contains("emoji") && s.contains("#")),
    );
    assert!(sys_xhs);
    // 14 generations at 10 credits each.
    assert_eq!(
        s.app.balance_micros(s.user).await,
        1_000_000_000 - 14 * 10_000_000
    );
    let usage = s.app.wait_for_usage(s.user, 14).await;
    assert!(
        usage.iter().all(|u| u["endpoint"] == "writing/generate"
            && u["prompt_tokens"] == 40
            && u["completion_tokens"] == 30),
        "{usage:?}"
    );
    let (_, list) = call(
        &s.app,
        &s.key,
        reqwest::Method::GET,
        "/api/v1/creations?type=writing&page_size=5",
    )
    .await;
    assert_eq!(list["data"]["total"], 14);
    assert_eq!(list["data"]["items"].as_array().map(Vec::len), Some(5));
    // Per tool: 10 credits of revenue against 40 × 1 + 30 × 2 = 100 micros of token cost.
    let (_, report) = s
        .app
        .admin(reqwest::Method::GET, "/api/v1/admin/writing/report", None)
        .await;
    let rows = report["data"].as_array().expect("report");
    assert_eq!(rows.len(), 14);
    assert!(
        rows.iter()
            .all(|r| r["credits_charged_micros"] == 10_000_000
                && r["upstream_cost_micros"] == 100
                && r["generations"] == 1),
        "{report}"
    );
    let ok_after = s
        .app
        .metric_where(
            "tollgate_addon_generations_total",
            "tool=\"resume\",outcome=\"ok\"",
        )
        .await
        .unwrap_or(0.0);
    assert!(ok_after >= ok_before + 1.0, "{ok_before} -> {ok_after}");
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

/// The events of a studio SSE reply, as JSON (the `[DONE]` sentinel as a string).
fn studio_events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap_or(Value::String(d.to_owned())))
        .collect()
}

async fn a_streamed_generation_sends_its_deltas_then_the_creation(b: Backend) {
    let s = setup(
        &b,
        chat_script(&["Hel", "lo", " world"], 5, 3, 0),
        PRICES,
        "100",
    )
    .await;
    let resp = reqwest::Client::new()
        .post(s.app.url("/api/v1/writing/news_article/generate"))
        .bearer_auth(&s.key)
        .json(&json!({"title": "发布会", "stream": true}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().ok(),
        Some("text/event-stream")
    );
    let events = studio_events(&resp.text().await.expect("body"));
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "delta")
        .filter_map(|e| e["content"].as_str())
        .collect();
    assert_eq!(deltas, "Hello world");
    let done = events
        .iter()
        .find(|e| e["type"] == "done")
        .expect("done event");
    assert_eq!(done["credits_used"], json!(10));
    assert_eq!(events.last(), Some(&json!("[DONE]")));
    let id = done["creation_id"].as_i64().expect("id");
    let (_, c) = call(
        &s.app,
        &s.key,
        reqwest::Method::GET,
        &format!("/api/v1/creations/{id}"),
    )
    .await;
    assert_eq!(c["data"]["content"], "Hello world");
    assert_eq!(c["data"]["title"], "发布会");
    assert_eq!(s.app.balance_micros(s.user).await, 90_000_000);
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn a_client_that_hangs_up_mid_stream_still_gets_its_creation_charged_once(b: Backend) {
    let events = fixture_events("chat_stream.sse");
    let expected: String = events
        .iter()
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let script = Script::Sse {
        events,
        event_delay_ms: 100,
        stall_after: None,
    };
    let s = setup(&b, script, PRICES, "100").await;
    let resp = reqwest::Client::new()
        .post(s.app.url("/api/v1/writing/story_novel/generate"))
        .bearer_auth(&s.key)
        .json(&json!({"title": "夜航船", "stream": true}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let first = body.next().await.expect("a first event").expect("bytes");
    assert!(String::from_utf8_lossy(&first).contains("delta"));
    drop(body);
    // The generation goes on without the client: the creation appears, paid once.
    let mut saved = Value::Null;
    for _ in 0..100 {
        let (_, list) = call(&s.app, &s.key, reqwest::Method::GET, "/api/v1/creations").await;
        if list["data"]["total"] == 1 {
            saved = list["data"]["items"][0].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(saved["content"], json!(expected), "{saved}");
    assert_eq!(saved["credits_used"], json!(10));
    assert_eq!(s.app.balance_micros(s.user).await, 90_000_000);
    let usage = s.app.wait_for_usage(s.user, 1).await;
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0]["status"], "ok");
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn failures_are_refunded_in_full_with_40006_or_40007(b: Backend) {
    let s = setup(
        &b,
        Script::Raw {
            status: 500,
            content_type: "application/json",
            body: br#"{"error":{"message":"boom","type":"server_error"}}"#.to_vec(),
        },
        PRICES,
        "100",
    )
    .await;
    let failed_before = s
        .app
        .metric_where(
            "tollgate_addon_generations_total",
            "tool=\"resume\",outcome=\"failed\"",
        )
        .await
        .unwrap_or(0.0);
    let (status, e) = post(
        &s.app,
        &s.key,
        "/api/v1/writing/resume/generate",
        json!({"title": "工程师"}),
    )
    .await;
    assert_eq!((status, e["code"].clone()), (502, json!(40006)), "{e}");
    // An answer with no content: 422, 40007, nothing charged.
    s.fake.set_script(chat_script(&[], 5, 0, 0));
    for stream in [false, true] {
        let (status, e) = post(
            &s.app,
            &s.key,
            "/api/v1/writing/resume/generate",
            json!({"title": "工程师", "stream": stream}),
        )
        .await;
        assert_eq!((status, e["code"].clone()), (422, json!(40007)), "{e}");
    }
    // The upstream refusing the request (its own 400) is a failed generation too.
    s.fake.set_script(Script::Raw {
        status: 400,
        content_type: "application/json",
        body: br#"{"error":{"message":"context too long","type":"invalid_request_error"}}"#
            .to_vec(),
    });
    let (status, e) = post(
        &s.app,
        &s.key,
        "/api/v1/writing/resume/generate",
        json!({"title": "x"}),
    )
    .await;
    assert_eq!((status, e["code"].clone()), (422, json!(40007)), "{e}");
    assert_eq!(s.app.balance_micros(s.user).await, 100_000_000);
    let (_, list) = call(&s.app, &s.key, reqwest::Method::GET, "/api/v1/creations").await;
    assert_eq!(list["data"]["total"], 0);
    let usage = s.app.wait_for_usage(s.user, 4).await;
    assert!(usage.iter().all(|u| u["cost_micros"] == 0), "{usage:?}");
    let failed_after = s
        .app
        .metric_where(
            "tollgate_addon_generations_total",
            "tool=\"resume\",outcome=\"failed\"",
        )
        .await
        .unwrap_or(0.0);
    assert!(
        failed_after >= failed_before + 4.0,
        "{failed_before} -> {failed_after}"
    );
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn too_little_balance_is_40001_before_any_upstream_call(b: Backend) {
    let s = setup(&b, chat_script(&["x"], 1, 1, 0), PRICES, "9.999999").await;
    for stream in [false, true] {
        let (status, e) = post(
            &s.app,
            &s.key,
            "/api/v1/writing/wechat_article/generate",
            json!({"title": "t", "stream": stream}),
        )
        .await;
        assert_eq!((status, e["code"].clone()), (402, json!(40001)), "{e}");
    }
    assert_eq!(s.fake.calls(), 0);
    assert_eq!(s.app.balance_micros(s.user).await, 9_999_999);
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn members_pay_nothing_and_only_non_members_meet_the_hourly_generation_limit(b: Backend) {
    let app = TestApp::spawn_with(&b, |c| c.limits.generation_per_hour = 2).await;
    let s = Setup::provision(
        app,
        chat_script(&["ok"], 3, 2, 0),
        json!({"m1": "upstream-m1"}),
        PRICES,
        "100",
    )
    .await;
    let path = "/api/v1/writing/marketing_copy/generate";
    for _ in 0..2 {
        let (status, e) = post(&s.app, &s.key, path, json!({"title": "咖啡"})).await;
        assert_eq!(status, 200, "{e}");
    }
    let (status, e) = post(&s.app, &s.key, path, json!({"title": "咖啡"})).await;
    assert_eq!(status, 429, "{e}");
    assert_eq!(s.app.balance_micros(s.user).await, 80_000_000);

    let member = s.app.add_user(json!("0")).await;
    let (status, _) = s
        .app
        .admin(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/users/{member}"),
            Some(
                json!({"membership_type": "monthly", "membership_end_date": "2099-02-22T10:00:00"}),
            ),
        )
        .await;
    assert_eq!(status, 200);
    let member_key = s.app.add_key(member, json!({})).await;
    let (_, balance) = call(
        &s.app,
        &member_key,
        reqwest::Method::GET,
        "/api/v1/credit/balance",
    )
    .await;
    assert_eq!(
        (
            balance["data"]["is_member"].clone(),
            balance["data"]["membership_type"].clone()
        ),
        (json!(true), json!("monthly")),
        "{balance}"
    );
    for _ in 0..4 {
        let (status, answer) = post(&s.app, &member_key, path, json!({"title": "咖啡"})).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["data"]["credits_used"], json!(0));
    }
    let (_, list) = call(
        &s.app,
        &member_key,
        reqwest::Method::GET,
        "/api/v1/creations",
    )
    .await;
    assert_eq!(list["data"]["total"], 4);
    assert!(
        list["data"]["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|c| c["paid_by"] == "membership")
    );
    assert_eq!(s.app.balance_micros(member).await, 0);
    let usage = s.app.wait_for_usage(member, 4).await;
    assert!(
        usage.iter().all(|u| u["completion_tokens"] == 2
            && u["cost_micros"] == 0
            && u["paid_by"] == "membership"),
        "{usage:?}"
    );
    let paying = s.app.wait_for_usage(s.user, 2).await;
    assert!(
        paying.iter().all(|u| u["paid_by"] == "credits"),
        "{paying:?}"
    );
    s.app.assert_books_balance(member).await;
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn bad_input_is_named_and_charges_nothing(b: Backend) {
    let s = setup(&b, chat_script(&["x"], 1, 1, 0), PRICES, "100").await;
    let cases = [
        (
            "/api/v1/writing/poem/generate",
            json!({"title": "t"}),
            404,
            "wechat_article",
        ),
        (
            "/api/v1/writing/news_article/generate",
            json!({"keywords": ["a"]}),
            400,
            "title: required",
        ),
        (
            "/api/v1/writing/translation/generate",
            json!({"content": "hi"}),
            400,
            "target_language",
        ),
        (
            "/api/v1/writing/content_rewrite/generate",
            json!({"content": "x".repeat(50_001)}),
            400,
            "content: 50001 characters",
        ),
        (
            "/api/v1/writing/news_article/generate",
            json!({"title": "t", "model_id": 9999}),
            400,
            "no model has id 9999",
        ),
        (
            "/api/v1/writing/news_article/generate",
            json!({"title": "t", "model_id": "nope"}),
            400,
            "model_id",
        ),
        (
            "/api/v1/writing/news_article/generate",
            json!({"title": "t", "stream": "yes"}),
            400,
            "stream",
        ),
        (
            "/api/v1/writing/news_article/generate",
            json!({"title": ["a", {"b": 1}]}),
            400,
            "title: must be",
        ),
    ];
    for (path, body, want, names) in cases {
        let (status, e) = post(&s.app, &s.key, path, body).await;
        assert_eq!(status, want, "{path}: {e}");
        assert!(
            e["message"].as_str().unwrap_or_default().contains(names),
            "{path}: {e}"
        );
    }
    let (status, e) = post(
        &s.app,
        &s.key,
        "/api/v1/writing/news_article/generate",
        json!([1]),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(s.fake.calls(), 0);
    assert_eq!(s.app.balance_micros(s.user).await, 100_000_000);
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn creations_are_private_editable_and_deletable(b: Backend) {
    let s = setup(&b, chat_script(&["正文"], 1, 1, 0), PRICES, "100").await;
    let (_, answer) = post(
        &s.app,
        &s.key,
        "/api/v1/writing/work_report/generate",
        json!({"title": "周报"}),
    )
    .await;
    let id = answer["data"]["creation_id"].as_i64().expect("id");
    let other = s.app.add_user(json!("1")).await;
    let other_key = s.app.add_key(other, json!({})).await;
    let path = format!("/api/v1/creations/{id}");
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let (status, _) = call(&s.app, &other_key, method, &path).await;
        assert_eq!(status, 404);
    }
    let (status, _) = post(&s.app, &other_key, &path, json!({})).await;
    assert_eq!(status, 405);
    let put = |key: String, body: Value| {
        let url = s.app.url(&path);
        async move {
            let resp = reqwest::Client::new()
                .put(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .expect("put");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(put(other_key.clone(), json!({"title": "x"})).await.0, 404);
    let (status, c) = put(
        s.key.clone(),
        json!({"title": "第三周周报", "content": "改过的正文"}),
    )
    .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(
        (c["data"]["title"].clone(), c["data"]["content"].clone()),
        (json!("第三周周报"), json!("改过的正文"))
    );
    assert_eq!(put(s.key.clone(), json!({})).await.0, 400);
    assert_eq!(put(s.key.clone(), json!({"title": ""})).await.0, 400);
    assert_eq!(put(s.key.clone(), json!({"colour": "red"})).await.0, 400);
    let (status, e) = call(
        &s.app,
        &s.key,
        reqwest::Method::GET,
        "/api/v1/creations?type=poem",
    )
    .await;
    assert_eq!(status, 400, "{e}");
    let (status, _) = call(
        &s.app,
        &s.key,
        reqwest::Method::GET,
        "/api/v1/creations/abc",
    )
    .await;
    assert_eq!(status, 400);
    let (_, list) = call(
        &s.app,
        &s.key,
        reqwest::Method::GET,
        "/api/v1/creations?type=image",
    )
    .await;
    assert_eq!(list["data"]["total"], 0);
    let (status, _) = call(&s.app, &s.key, reqwest::Method::DELETE, &path).await;
    assert_eq!(status, 200);
    let (status, _) = call(&s.app, &s.key, reqwest::Method::GET, &path).await;
    assert_eq!(status, 404);
    s.app.stop().await;
}

async fn admins_set_a_tools_price_default_model_template_and_availability(b: Backend) {
    let s = setup(&b, chat_script(&["好"], 1, 1, 0), PRICES, "100").await;
    let (status, tools) = s
        .app
        .admin(reqwest::Method::GET, "/api/v1/admin/writing/tools", None)
        .await;
    assert_eq!(status, 200);
    assert!(
        tools["data"][0]["user_template"]
            .as_str()
            .unwrap_or_default()
            .contains("{{title}}")
    );
    let path = "/api/v1/admin/writing/tools/video_script";
    let (status, t) = s
        .app
        .admin(
            reqwest::Method::PUT,
            path,
            Some(json!({"credits_cost": "2.5", "model": "m1", "user_template": "拍一条关于{{title}}的视频\n时长{{duration}}秒"})),
        )
        .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["data"]["credits_cost_micros"], 2_500_000);
    let (status, answer) = post(
        &s.app,
        &s.key,
        "/api/v1/writing/video_script/generate",
        json!({"title": "猫"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["credits_used"], json!(2.5));
    assert_eq!(last_prompt(&s.fake).1, "拍一条关于猫的视频");
    // A registry id picks the model too.
    let models = s
        .app
        .admin(reqwest::Method::GET, "/api/v1/models", None)
        .await
        .1;
    let id = models["data"][0]["id"].clone();
    let (status, answer) = post(
        &s.app,
        &s.key,
        "/api/v1/writing/video_script/generate",
        json!({"title": "狗", "duration": 15, "model_id": id}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(last_prompt(&s.fake).1, "拍一条关于狗的视频\n时长15秒");
    for bad in [
        json!({"user_template": "{{colour}}"}),
        json!({"credits_cost": -1}),
        json!({"model": "nope"}),
        json!({"price": 1}),
    ] {
        let (status, e) = s
            .app
            .admin(reqwest::Method::PUT, path, Some(bad.clone()))
            .await;
        assert_eq!(status, 400, "{bad}: {e}");
    }
    let (status, _) = s
        .app
        .admin(
            reqwest::Method::PUT,
            "/api/v1/admin/writing/tools/poem",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = s
        .app
        .admin(reqwest::Method::PUT, path, Some(json!({"enabled": false})))
        .await;
    assert_eq!(status, 200);
    let (_, listed) = call(
        &s.app,
        &s.key,
        reqwest::Method::GET,
        "/api/v1/writing/tools",
    )
    .await;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(13));
    let (status, e) = post(
        &s.app,
        &s.key,
        "/api/v1/writing/video_script/generate",
        json!({"title": "猫"}),
    )
    .await;
    assert_eq!(status, 404, "{e}");
    // Users may not change tools.
    let resp = reqwest::Client::new()
        .put(s.app.url(path))
        .bearer_auth(&s.key)
        .json(&json!({"enabled": true}))
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 403);
    assert_eq!(
        s.app.balance_micros(s.user).await,
        100_000_000 - 2 * 2_500_000
    );
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

/// A PNG's signature and a few bytes: what the fake's image is.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n0123456789 not really pixels";

/// A gateway whose fake upstream returns one base64 PNG, with `img` priced at 20 credits.
async fn image_setup(b: &Backend) -> (TestApp, FakeUpstream, i64, String) {
    use base64::Engine;
    let app = TestApp::spawn(b).await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(PNG);
    let fake = FakeUpstream::start(Script::Raw {
        status: 200,
        content_type: "application/json",
        body: json!({"created": 1, "data": [{"b64_json": b64}]})
            .to_string()
            .into_bytes(),
    })
    .await;
    app.add_channel(&fake.base_url, &["img"], json!({"img": "dall-e-3"}))
        .await;
    app.admin_post(
        "/api/v1/admin/models",
        json!({"model": "img", "credits_cost": "20"}),
    )
    .await;
    let user = app.add_user(json!("100")).await;
    let key = app.add_key(user, json!({})).await;
    (app, fake, user, key)
}

async fn an_image_is_stored_by_tollgate_and_served_through_a_signed_url(b: Backend) {
    let (app, fake, user, key) = image_setup(&b).await;
    let (status, answer) = post(
        &app,
        &key,
        "/api/v1/image/generate",
        json!({"prompt": "一只可爱的猫咪在花园里玩耍", "size": "1024x1024", "model_id": "img"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["credits_used"], json!(20));
    let sent: Value = serde_json::from_slice(&fake.last_body()).expect("upstream body");
    assert_eq!(
        (sent["model"].clone(), sent["n"].clone()),
        (json!("dall-e-3"), json!(1))
    );
    let url = answer["data"]["image_url"]
        .as_str()
        .expect("url")
        .to_owned();
    assert!(url.starts_with(&app.url("/api/v1/files/f_")), "{url}");
    // No credential needed: an <img src> can load it.
    let resp = reqwest::get(&url).await.expect("download");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert_eq!(resp.bytes().await.expect("bytes").as_ref(), PNG);
    // A changed signature, id or expiry is refused; so is an expired URL.
    let last = url.chars().last().expect("a signature");
    let flipped = format!(
        "{}{}",
        &url[..url.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    let file_id = answer["data"]["file_id"]
        .as_str()
        .expect("file id")
        .to_owned();
    let other_id = url.replace(&file_id, "f_00000000000000000000000000000000");
    let later = url.replacen("expires=", "expires=9", 1);
    let expired = app.url(&tollgate::files::signed_path(
        &app.state.secrets,
        &file_id,
        1_000,
    ));
    for bad in [
        flipped,
        other_id,
        later,
        expired.clone(),
        app.url(&format!("/api/v1/files/{file_id}")),
    ] {
        let resp = reqwest::get(&bad).await.expect("download");
        assert_eq!(resp.status(), 403, "{bad}");
    }
    let e: Value = reqwest::get(&expired)
        .await
        .expect("download")
        .json()
        .await
        .expect("json");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{e}"
    );
    // The creation carries a fresh signed URL; deleting it deletes the file.
    let (_, list) = call(
        &app,
        &key,
        reqwest::Method::GET,
        "/api/v1/creations?type=image",
    )
    .await;
    assert_eq!(list["data"]["total"], 1);
    let creation = &list["data"]["items"][0];
    assert_eq!(creation["content"], "一只可爱的猫咪在花园里玩耍");
    let fresh = creation["file_url"].as_str().expect("file url").to_owned();
    assert_eq!(reqwest::get(&fresh).await.expect("download").status(), 200);
    assert_eq!(app.balance_micros(user).await, 80_000_000);
    let usage = app.wait_for_usage(user, 1).await;
    assert_eq!(
        (
            usage[0]["endpoint"].clone(),
            usage[0]["cost_micros"].clone()
        ),
        (json!("images/generations"), json!(20_000_000))
    );
    let path = format!("/api/v1/creations/{}", creation["id"]);
    assert_eq!(
        call(&app, &key, reqwest::Method::DELETE, &path).await.0,
        200
    );
    assert_eq!(reqwest::get(&fresh).await.expect("download").status(), 404);
    app.assert_books_balance(user).await;
    app.stop().await;
}

async fn a_failed_or_bad_image_request_charges_nothing(b: Backend) {
    let (app, fake, user, key) = image_setup(&b).await;
    for (body, want) in [
        (json!({"size": "1024x1024"}), "prompt: required"),
        (json!({"prompt": "猫", "size": "big"}), "size"),
        (
            json!({"prompt": "猫", "model_id": 4242}),
            "no model has id 4242",
        ),
        (
            json!({"prompt": "x".repeat(4_001)}),
            "prompt: 4001 characters",
        ),
    ] {
        let (status, e) = post(&app, &key, "/api/v1/image/generate", body).await;
        assert_eq!(status, 400, "{e}");
        assert!(
            e["message"].as_str().unwrap_or_default().contains(want),
            "{e}"
        );
    }
    assert_eq!(fake.calls(), 0);
    fake.set_script(Script::Raw {
        status: 500,
        content_type: "application/json",
        body: br#"{"error":{"message":"boom"}}"#.to_vec(),
    });
    let (status, e) = post(
        &app,
        &key,
        "/api/v1/image/generate",
        json!({"prompt": "猫", "model_id": "img"}),
    )
    .await;
    assert_eq!((status, e["code"].clone()), (502, json!(40006)), "{e}");
    fake.set_script(Script::Raw {
        status: 200,
        content_type: "application/json",
        body: br#"{"created":1,"data":[]}"#.to_vec(),
    });
    let (status, e) = post(
        &app,
        &key,
        "/api/v1/image/generate",
        json!({"prompt": "猫", "model_id": "img"}),
    )
    .await;
    assert_eq!((status, e["code"].clone()), (422, json!(40007)), "{e}");
    let poor = app.add_user(json!("19.999999")).await;
    let poor_key = app.add_key(poor, json!({})).await;
    let calls = fake.calls();
    let (status, e) = post(
        &app,
        &poor_key,
        "/api/v1/image/generate",
        json!({"prompt": "猫", "model_id": "img"}),
    )
    .await;
    assert_eq!((status, e["code"].clone()), (402, json!(40001)), "{e}");
    assert_eq!(fake.calls(), calls);
    assert_eq!(app.balance_micros(user).await, 100_000_000);
    assert_eq!(app.balance_micros(poor).await, 19_999_999);
    let (_, list) = call(&app, &key, reqwest::Method::GET, "/api/v1/creations").await;
    assert_eq!(list["data"]["total"], 0);
    app.assert_books_balance(user).await;
    app.assert_books_balance(poor).await;
    app.stop().await;
}

/// On PostgreSQL every instance serves a file another one stored (the bytes are in the shared
/// database and the URL key comes from the shared master key).
async fn a_file_made_on_one_instance_downloads_from_another(b: Backend) {
    if !matches!(b, Backend::Postgres(_)) {
        return; // one SQLite file serves one process
    }
    let (app, _fake, _user, key) = image_setup(&b).await;
    let (status, answer) = post(
        &app,
        &key,
        "/api/v1/image/generate",
        json!({"prompt": "猫", "model_id": "img"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let url = answer["data"]["image_url"]
        .as_str()
        .expect("url")
        .to_owned();
    let shared = app.db_url.clone();
    let second = TestApp::spawn_with(&b, |c| c.database.url = shared).await;
    let there = url.replace(&app.base, &second.base);
    assert_ne!(there, url);
    let resp = reqwest::get(&there).await.expect("download");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.expect("bytes").as_ref(), PNG);
    second.stop().await;
    app.stop().await;
}

/// A Python that has python-pptx: `TOLLGATE_TEST_PYTHON` (CI's venv has it, so there it must
/// work), else `python3` if it has it; `None` (that check skipped) otherwise.
fn python_with_pptx() -> Option<String> {
    let has = |python: &str| {
        std::process::Command::new(python)
            .args(["-c", "import pptx"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    match std::env::var("TOLLGATE_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => {
            assert!(has(&p), "TOLLGATE_TEST_PYTHON={p} cannot import pptx");
            Some(p)
        }
        _ => has("python3").then(|| "python3".to_owned()),
    }
}

/// The pages of the PDF LibreOffice makes of `pptx`, or `None` where `soffice` is not installed.
fn pdf_pages_by_libreoffice(pptx: &[u8]) -> Option<usize> {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("deck.pptx");
    std::fs::write(&file, pptx).expect("write");
    let out = std::process::Command::new("soffice")
        .arg(format!(
            "-env:UserInstallation=file://{}/profile",
            dir.path().display()
        ))
        .args(["--headless", "--convert-to", "pdf", "--outdir"])
        .arg(dir.path())
        .arg(&file)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pdf = std::fs::read(dir.path().join("deck.pdf")).expect("LibreOffice wrote no PDF");
    let text = String::from_utf8_lossy(&pdf);
    let pages = text.matches("/Type/Page").count() + text.matches("/Type /Page").count();
    let trees = text.matches("/Type/Pages").count() + text.matches("/Type /Pages").count();
    Some(pages - trees)
}

fn deck_answer() -> String {
    json!({"title": "产品发布会", "subtitle": "2026 春季",
           "slides": [
               {"title": "产品介绍", "bullets": ["更快", "更稳"], "notes": "先讲故事"},
               {"title": "核心功能", "bullets": ["一键生成", "多平台发布", "A&B <测试>"], "notes": "演示"},
               {"title": "市场分析", "bullets": ["规模", "竞品"], "notes": ""}]})
    .to_string()
}

async fn a_deck_is_a_real_pptx_with_the_slides_the_model_wrote(b: Backend) {
    let answer = format!("```json\n{}\n```", deck_answer());
    let s = setup(&b, chat_script(&[&answer], 50, 200, 0), PRICES, "100").await;
    let (status, done) = post(
        &s.app,
        &s.key,
        "/api/v1/ppt/generate",
        json!({"topic": "产品发布会", "outline": ["产品介绍", "核心功能", "市场分析"]}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["data"]["credits_used"], json!(30));
    assert_eq!(done["data"]["slides"], 4);
    let (_, user) = last_prompt(&s.fake);
    assert!(
        user.contains("大纲：产品介绍、核心功能、市场分析"),
        "{user}"
    );
    let url = done["data"]["download_url"]
        .as_str()
        .expect("url")
        .to_owned();
    let resp = reqwest::get(&url).await.expect("download");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.openxmlformats-officedocument.presentationml.presentation"
    );
    let bytes = resp.bytes().await.expect("bytes");
    assert!(bytes.starts_with(b"PK"));
    if let Some(python) = python_with_pptx() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("deck.pptx");
        std::fs::write(&file, &bytes).expect("write");
        let script = "import sys, json\nfrom pptx import Presentation\np = Presentation(sys.argv[1])\n\
                      print(json.dumps([{'texts': [sh.text_frame.text for sh in s.shapes if sh.has_text_frame], \
                      'notes': s.notes_slide.notes_text_frame.text} for s in p.slides], ensure_ascii=False))";
        let out = std::process::Command::new(python)
            .args(["-c", script, &file.to_string_lossy()])
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let slides: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(
            slides,
            json!([
                {"texts": ["产品发布会", "2026 春季"], "notes": "2026 春季"},
                {"texts": ["产品介绍", "更快\n更稳"], "notes": "先讲故事"},
                {"texts": ["核心功能", "一键生成\n多平台发布\nA&B <测试>"], "notes": "演示"},
                {"texts": ["市场分析", "规模\n竞品"], "notes": ""}
            ])
        );
    }
    // LibreOffice converts it (where it is installed; CI installs it): one PDF page a slide.
    if let Some(pages) = pdf_pages_by_libreoffice(&bytes) {
        assert_eq!(pages, 4);
    }
    let (_, list) = call(
        &s.app,
        &s.key,
        reqwest::Method::GET,
        "/api/v1/creations?type=ppt",
    )
    .await;
    assert_eq!(list["data"]["total"], 1);
    assert_eq!(list["data"]["items"][0]["id"], done["data"]["ppt_id"]);
    assert_eq!(s.app.balance_micros(s.user).await, 70_000_000);
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn a_deck_the_model_cannot_write_gets_one_repair_then_40007_and_no_charge(b: Backend) {
    let s = setup(&b, chat_script(&["这不是JSON"], 50, 20, 0), PRICES, "100").await;
    let (status, e) = post(
        &s.app,
        &s.key,
        "/api/v1/ppt/generate",
        json!({"topic": "年会"}),
    )
    .await;
    assert_eq!((status, e["code"].clone()), (422, json!(40007)), "{e}");
    // The first answer, then one repair attempt that shows the model its answer.
    assert_eq!(s.fake.calls(), 2);
    let sent: Value = serde_json::from_slice(&s.fake.last_body()).expect("body");
    assert_eq!(sent["messages"][2]["content"], "这不是JSON");
    assert_eq!(s.app.balance_micros(s.user).await, 100_000_000);
    let usage = s.app.wait_for_usage(s.user, 2).await;
    assert!(
        usage
            .iter()
            .all(|u| u["cost_micros"] == 0 && u["endpoint"] == "ppt/generate"),
        "{usage:?}"
    );
    let (status, e) = post(
        &s.app,
        &s.key,
        "/api/v1/ppt/generate",
        json!({"outline": ["a"]}),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["message"].as_str().unwrap_or_default().contains("topic"),
        "{e}"
    );
    // The deck's price is set like a tool's.
    let (status, _) = s
        .app
        .admin(
            reqwest::Method::PUT,
            "/api/v1/admin/writing/tools/ppt_deck",
            Some(json!({"credits_cost": 5})),
        )
        .await;
    assert_eq!(status, 200);
    s.fake
        .set_script(chat_script(&[&deck_answer()], 50, 200, 0));
    let (status, done) = post(
        &s.app,
        &s.key,
        "/api/v1/ppt/generate",
        json!({"topic": "年会"}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["data"]["credits_used"], json!(5));
    assert_eq!(s.app.balance_micros(s.user).await, 95_000_000);
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

/// A fake chat upstream answering whole completions: `answers` in turn (the last one again
/// after that); how many it was asked.
async fn answering_in_turn(
    answers: Vec<String>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let asked = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&asked);
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let content = answers[n.min(answers.len() - 1)].clone();
            async move {
                axum::Json(
                    json!({"id": format!("c{n}"), "object": "chat.completion", "created": 1,
                    "model": "upstream-m1",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 50, "completion_tokens": 200, "total_tokens": 250}}),
                )
            }
        }),
    );
    (crate::fakes::serve_fake(app).await, asked)
}

async fn a_deck_the_model_repairs_is_charged_once_for_the_repaired_answer(b: Backend) {
    let app = TestApp::spawn(&b).await;
    let (base, asked) =
        answering_in_turn(vec!["```json\n{\"slides\": [".into(), deck_answer()]).await;
    app.add_channel(&base, &["m1"], json!({"m1": "upstream-m1"}))
        .await;
    app.add_model("m1", json!("1"), json!("2"), json!("0"))
        .await;
    let user = app.add_user(json!("100")).await;
    let key = app.add_key(user, json!({})).await;
    let (status, done) = post(
        &app,
        &key,
        "/api/v1/ppt/generate",
        json!({"topic": "产品发布会", "outline": ["产品介绍", "核心功能"]}),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(done["data"]["credits_used"], json!(30));
    assert_eq!(app.balance_micros(user).await, 70_000_000);
    let mut usage = app.wait_for_usage(user, 2).await;
    usage.sort_by_key(|u| u["cost_micros"].as_i64());
    assert_eq!(
        usage
            .iter()
            .map(|u| u["cost_micros"].clone())
            .collect::<Vec<_>>(),
        vec![json!(0), json!(30_000_000)],
        "the unusable answer is not charged, the repaired one is"
    );
    let url = done["data"]["download_url"].as_str().expect("url");
    let deck = reqwest::get(url).await.expect("get");
    assert_eq!(deck.status(), 200);
    assert!(deck.bytes().await.expect("bytes").starts_with(b"PK"));
    app.assert_books_balance(user).await;
    app.stop().await;
}

async fn an_image_the_upstream_answers_by_url_is_fetched_and_stored(b: Backend) {
    let files = axum::Router::new().route(
        "/v1/out/cat.png",
        axum::routing::get(|| async { ([("content-type", "image/png")], PNG) }),
    );
    let files_base = crate::fakes::serve_fake(files).await;
    let app = TestApp::spawn(&b).await;
    let fake = FakeUpstream::start(Script::Raw {
        status: 200,
        content_type: "application/json",
        body: json!({"created": 1, "data": [{"url": format!("{files_base}/out/cat.png")}]})
            .to_string()
            .into_bytes(),
    })
    .await;
    app.add_channel(&fake.base_url, &["img"], json!({"img": "dall-e-3"}))
        .await;
    app.admin_post(
        "/api/v1/admin/models",
        json!({"model": "img", "credits_cost": "20"}),
    )
    .await;
    let user = app.add_user(json!("100")).await;
    let key = app.add_key(user, json!({})).await;
    let (status, answer) = post(
        &app,
        &key,
        "/api/v1/image/generate",
        json!({"prompt": "猫", "model_id": "img"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let url = answer["data"]["image_url"].as_str().expect("url");
    assert!(url.starts_with(&app.url("/api/v1/files/f_")), "{url}");
    let resp = reqwest::get(url).await.expect("download");
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert_eq!(resp.bytes().await.expect("bytes").as_ref(), PNG);
    assert_eq!(app.balance_micros(user).await, 80_000_000);
    app.assert_books_balance(user).await;
    app.stop().await;
}

both_backends!(
    every_tool_generates_and_saves_a_creation_charged_its_price,
    a_streamed_generation_sends_its_deltas_then_the_creation,
    a_client_that_hangs_up_mid_stream_still_gets_its_creation_charged_once,
    failures_are_refunded_in_full_with_40006_or_40007,
    too_little_balance_is_40001_before_any_upstream_call,
    members_pay_nothing_and_only_non_members_meet_the_hourly_generation_limit,
    bad_input_is_named_and_charges_nothing,
    creations_are_private_editable_and_deletable,
    admins_set_a_tools_price_default_model_template_and_availability,
    an_image_is_stored_by_tollgate_and_served_through_a_signed_url,
    a_failed_or_bad_image_request_charges_nothing,
    a_file_made_on_one_instance_downloads_from_another,
    a_deck_is_a_real_pptx_with_the_slides_the_model_wrote,
    a_deck_the_model_cannot_write_gets_one_repair_then_40007_and_no_charge,
    a_deck_the_model_repairs_is_charged_once_for_the_repaired_answer,
    an_image_the_upstream_answers_by_url_is_fetched_and_stored
);
