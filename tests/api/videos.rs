//! Video tasks: submitted in OpenAI's shape (a multipart form, as the SDK sends it) and the
//! aggregator's, followed by the poller against a fake task-style provider, charged for the
//! seconds delivered, refunded exactly once when they fail, also across a SIGKILL restart.

use crate::both_backends;
use crate::fakes::video::*;
use crate::helpers::*;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A multipart form like the OpenAI SDK's.
fn form(fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "----tollgate-test-boundary";
    let mut body = String::new();
    for (k, v) in fields {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    (
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
}

/// Admin setup on any server: a `video` channel for `vid` at 0.1 credits per second.
async fn provision(
    admin: impl AsyncFn(reqwest::Method, &str, Value) -> Value,
    base: &str,
) -> (i64, String) {
    admin(reqwest::Method::POST, "/api/v1/admin/channels", json!({"name": "videos", "provider": "video",
        "base_url": base, "api_key": "vk-123456789", "models": ["vid"], "model_map": {"vid": "gen-3"}})).await;
    admin(
        reqwest::Method::POST,
        "/api/v1/admin/models",
        json!({"model": "vid", "video_second_price": "0.1"}),
    )
    .await;
    let user = admin(
        reqwest::Method::POST,
        "/api/v1/admin/users",
        json!({"email": format!("v{:x}@example.com", rand_u64()), "balance": "2"}),
    )
    .await;
    let user = user["id"].as_i64().expect("user");
    let key = admin(
        reqwest::Method::POST,
        &format!("/api/v1/admin/users/{user}/keys"),
        json!({}),
    )
    .await;
    (user, key["key"].as_str().expect("key").to_owned())
}

async fn wait_until(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..400 {
        let v: Value = client
            .get(url)
            .bearer_auth(key)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if done(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{url} never reached the expected state");
}

fn fast_polls(c: &mut tollgate::config::Config) {
    c.video.poll_interval_ms = 50;
    c.video.lease_ms = 2000;
}

async fn a_video_is_charged_for_the_seconds_the_provider_delivered(b: Backend) {
    let app = TestApp::spawn_with(&b, fast_polls).await;
    let (fake, base) = start_fake(Plan {
        running_polls: 2,
        delivers: Some(6),
    })
    .await;
    let (user, key) = provision(
        async |m, p, body| {
            let (status, v) = app.admin(m, p, Some(body)).await;
            assert_eq!(status, 200, "{p}: {v}");
            v["data"].clone()
        },
        &base,
    )
    .await;

    let (content_type, body) = form(&[
        ("model", "vid"),
        ("prompt", "waves on a beach"),
        ("seconds", "8"),
        ("size", "1280x720"),
    ]);
    let resp = app
        .client
        .post(app.url("/v1/videos"))
        .bearer_auth(&key)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("create");
    assert_eq!(resp.status(), 200);
    let video: Value = resp.json().await.expect("json");
    assert_eq!(video["object"], "video");
    assert_eq!(video["status"], "queued");
    assert_eq!(video["seconds"], "8");
    let id = video["id"].as_str().expect("id").to_owned();
    assert_eq!(
        fake.bodies.lock().expect("lock")[0],
        json!({"model": "gen-3", "prompt": "waves on a beach", "duration": 8, "size": "1280x720"})
    );
    // 8 s × 0.1 held at once.
    assert_eq!(app.balance_micros(user).await, 2_000_000 - 800_000);

    let url = app.url(&format!("/v1/videos/{id}"));
    let done = wait_until(&app.client, &url, &key, |v| v["status"] == "completed").await;
    assert_eq!(done["progress"], 100);
    // What was delivered, not what was asked for.
    assert_eq!(done["seconds"], "6");
    let file = app
        .client
        .get(app.url(&format!("/v1/videos/{id}/content")))
        .bearer_auth(&key)
        .send()
        .await
        .expect("content");
    assert_eq!(file.status(), 200);
    assert_eq!(file.bytes().await.expect("bytes").as_ref(), FILE);
    // Delivered 6 s: charged 0.6, the rest given back.
    assert_eq!(app.balance_micros(user).await, 2_000_000 - 600_000);
    let usage = app.wait_for_usage(user, 1).await;
    assert_eq!(usage[0]["endpoint"], "videos");
    assert_eq!(usage[0]["units"], 6);
    assert_eq!(usage[0]["cost_micros"], 600_000);
    assert_eq!(usage[0]["reserved_micros"], 800_000);

    // The aggregator shape, with its defaults (10 s, 16:9); someone else's task is not found.
    let resp = app
        .client
        .post(app.url("/api/v1/videos/generations"))
        .bearer_auth(&key)
        .json(&json!({"model": "vid", "prompt": "rain"}))
        .send()
        .await
        .expect("create");
    assert_eq!(resp.status(), 200);
    let task: Value = resp.json().await.expect("json");
    assert_eq!(task["duration"], 10);
    assert_eq!(task["aspect_ratio"], "16:9");
    let gen_url = app.url(&format!(
        "/api/v1/videos/generations/{}",
        task["id"].as_str().expect("id")
    ));
    let done = wait_until(&app.client, &gen_url, &key, |v| v["status"] == "completed").await;
    assert_eq!(done["cost"], json!(0.6));
    assert_eq!(done["duration"], 6);
    // The file is fetched from Tollgate with the caller's key, never from the provider.
    let gen_id = task["id"].as_str().expect("id");
    assert_eq!(
        done["video_url"],
        json!(app.url(&format!("/api/v1/videos/{gen_id}/content")))
    );
    let file = app
        .client
        .get(done["video_url"].as_str().expect("url"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("file");
    assert_eq!(file.status(), 200);
    assert_eq!(file.bytes().await.expect("bytes").as_ref(), FILE);
    let on_v1: Value = app
        .client
        .get(app.url(&format!("/v1/videos/generations/{gen_id}")))
        .bearer_auth(&key)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        on_v1["video_url"],
        json!(app.url(&format!("/v1/videos/{gen_id}/content")))
    );

    // The caller's videos, newest first, a page at a time.
    let list: Value = app
        .client
        .get(app.url("/v1/videos?limit=1"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], gen_id);
    assert_eq!(list["has_more"], true);
    let next: Value = app
        .client
        .get(app.url(&format!("/v1/videos?limit=1&after={gen_id}")))
        .bearer_auth(&key)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(next["data"][0]["id"], json!(id));
    assert_eq!(
        (&next["has_more"], &next["last_id"]),
        (&json!(false), &json!(id))
    );
    let oldest: Value = app
        .client
        .get(app.url("/api/v1/videos?order=asc"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(oldest["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(oldest["data"][0]["id"], json!(id));
    let bad = app
        .client
        .get(app.url("/v1/videos?limit=0"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("list");
    assert_eq!(bad.status(), 400);
    let other = app.add_user(json!("1")).await;
    let other_key = app.add_key(other, json!({})).await;
    let resp = app
        .client
        .get(&url)
        .bearer_auth(&other_key)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 404);

    // Bad input is named and holds nothing.
    for (body, param) in [
        (
            json!({"model": "vid", "prompt": "x", "duration": 0}),
            "duration",
        ),
        (json!({"model": "vid"}), "prompt"),
        (
            json!({"model": "vid", "prompt": "x", "aspect_ratio": "wide"}),
            "aspect_ratio",
        ),
    ] {
        let resp = app
            .client
            .post(app.url("/v1/videos/generations"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 400, "{body}");
        assert_eq!(
            resp.json::<Value>().await.expect("json")["error"]["param"],
            param
        );
    }
    let resp = app
        .client
        .post(app.url("/v1/videos/generations"))
        .bearer_auth(&key)
        .json(&json!({"model": "vid", "prompt": "x", "duration": 100}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 402, "100 s × 0.1 is more than the 0.8 left");
    let usage = app.wait_for_usage(user, 3).await;
    let refused = usage
        .iter()
        .find(|u| u["http_status"] == 402)
        .expect("the 402 is recorded");
    assert_eq!(
        (
            &refused["endpoint"],
            &refused["status"],
            &refused["cost_micros"]
        ),
        (&json!("videos"), &json!("insufficient_balance"), &json!(0))
    );
    assert_eq!(app.balance_micros(user).await, 2_000_000 - 1_200_000);
    app.assert_books_balance(user).await;
    app.stop().await;
}

async fn a_failed_video_is_refunded_exactly_once(b: Backend) {
    let app = TestApp::spawn_with(&b, fast_polls).await;
    let (fake, base) = start_fake(Plan {
        running_polls: 1,
        delivers: None,
    })
    .await;
    let (user, key) = provision(
        async |m, p, body| app.admin(m, p, Some(body)).await.1["data"].clone(),
        &base,
    )
    .await;
    let resp = app
        .client
        .post(app.url("/v1/videos/generations"))
        .bearer_auth(&key)
        .json(&json!({"model": "vid", "prompt": "forbidden", "duration": 5}))
        .send()
        .await
        .expect("create");
    assert_eq!(resp.status(), 200);
    let id = resp.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let failed = wait_until(
        &app.client,
        &app.url(&format!("/v1/videos/{id}")),
        &key,
        |v| v["status"] == "failed",
    )
    .await;
    assert_eq!(failed["error"]["message"], "content policy");
    // Ended: not stuck at the last progress the provider reported.
    assert_eq!(failed["progress"], 100);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fake.polls.load(Ordering::SeqCst),
        2,
        "a settled task is not polled again"
    );
    assert_eq!(app.balance_micros(user).await, 2_000_000);
    let (_, ledger) = app
        .admin(
            reqwest::Method::GET,
            &format!("/api/v1/admin/users/{user}/ledger?page_size=100"),
            None,
        )
        .await;
    let kinds: Vec<&str> = ledger["data"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "release").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "hold").count(),
        1,
        "{kinds:?}"
    );
    assert!(!kinds.contains(&"charge"));
    let content = app
        .client
        .get(app.url(&format!("/v1/videos/{id}/content")))
        .bearer_auth(&key)
        .send()
        .await
        .expect("content");
    assert_eq!(content.status(), 400);
    app.assert_books_balance(user).await;
    app.stop().await;
}

async fn a_task_outlives_a_sigkill_and_is_refunded_once_after_the_restart(b: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let (db_url, pg) = fresh_database(&b, &dir).await;
    // Running for the first 1000 polls: the task is still open when the gateway dies.
    let (fake, base) = start_fake(Plan {
        running_polls: 1000,
        delivers: None,
    })
    .await;
    let env = [
        ("TOLLGATE__VIDEO__POLL_INTERVAL_MS", "50"),
        ("TOLLGATE__VIDEO__LEASE_MS", "500"),
        ("TOLLGATE__JOBS__LEASE_MS", "500"),
        ("TOLLGATE__JOBS__POLL_INTERVAL_MS", "50"),
    ];
    let server = Server::start(&db_url, &env).await;
    let (user, key) = provision(
        async |m, p, body| server.admin(m, p, Some(body)).await,
        &base,
    )
    .await;
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/v1/videos/generations", server.base))
        .bearer_auth(&key)
        .json(&json!({"model": "vid", "prompt": "long one", "duration": 7}))
        .send()
        .await
        .expect("create");
    assert_eq!(resp.status(), 200);
    let id = resp.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let url = format!("{}/v1/videos/{id}", server.base);
    wait_until(&client, &url, &key, |v| v["status"] == "in_progress").await;
    server.kill().await;

    // While it is down the provider gives up on the task; the restarted gateway finds out.
    fake.polls.store(1000, Ordering::SeqCst);
    let server = Server::start(&db_url, &env).await;
    let url = format!("{}/v1/videos/{id}", server.base);
    let failed = wait_until(&client, &url, &key, |v| v["status"] == "failed").await;
    assert_eq!(failed["error"]["message"], "content policy");
    let user_now = server
        .admin(
            reqwest::Method::GET,
            &format!("/api/v1/admin/users/{user}"),
            None,
        )
        .await;
    assert_eq!(user_now["balance_micros"], 2_000_000, "refunded in full");
    let ledger = server
        .admin(
            reqwest::Method::GET,
            &format!("/api/v1/admin/users/{user}/ledger?page_size=100"),
            None,
        )
        .await;
    let releases = ledger["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["type"] == "release")
        .count();
    assert_eq!(releases, 1);
    server.kill().await;
    let (ok, report) = ledger_verify_cli(&db_url).await;
    assert!(ok, "{report}");
    if let Some((url, name)) = pg {
        drop_pg_database(&url, &name).await;
    }
}

both_backends!(
    a_video_is_charged_for_the_seconds_the_provider_delivered,
    a_failed_video_is_refunded_exactly_once,
    a_task_outlives_a_sigkill_and_is_refunded_once_after_the_restart
);

async fn an_openai_channel_runs_videos_through_openais_videos_api(b: Backend) {
    let app = TestApp::spawn_with(&b, fast_polls).await;
    let (fake, base) = start_openai_videos().await;
    app.admin_post(
        "/api/v1/admin/channels",
        json!({"name": "sora", "provider": "openai", "base_url": base,
        "api_key": "sk-openai-video", "models": ["sora-2"]}),
    )
    .await;
    app.admin_post(
        "/api/v1/admin/models",
        json!({"model": "sora-2", "video_second_price": "0.1"}),
    )
    .await;
    let user = app.add_user(json!("2")).await;
    let key = app.add_key(user, json!({})).await;

    let (content_type, body) = form(&[
        ("model", "sora-2"),
        ("prompt", "a paper boat"),
        ("seconds", "8"),
        ("size", "1280x720"),
    ]);
    let resp = app
        .client
        .post(app.url("/v1/videos"))
        .bearer_auth(&key)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("create");
    assert_eq!(resp.status(), 200);
    let id = resp.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(
        fake.forms.lock().expect("lock")[0],
        json!({"model": "sora-2", "prompt": "a paper boat", "seconds": "8", "size": "1280x720"})
    );
    assert_eq!(fake.auth.lock().expect("lock")[0], "Bearer sk-openai-video");
    assert_eq!(app.balance_micros(user).await, 2_000_000 - 800_000);

    let done = wait_until(
        &app.client,
        &app.url(&format!("/v1/videos/{id}")),
        &key,
        |v| v["status"] == "completed",
    )
    .await;
    assert_eq!(done["progress"], 100);
    let file = app
        .client
        .get(app.url(&format!("/v1/videos/{id}/content")))
        .bearer_auth(&key)
        .send()
        .await
        .expect("content");
    assert_eq!(file.status(), 200);
    assert_eq!(file.bytes().await.expect("bytes").as_ref(), FILE);
    // 4 s delivered: 0.4 charged.
    assert_eq!(app.balance_micros(user).await, 2_000_000 - 400_000);
    let usage = app.wait_for_usage(user, 1).await;
    assert_eq!(
        (&usage[0]["units"], &usage[0]["cost_micros"]),
        (&json!(4), &json!(400_000))
    );
    app.assert_books_balance(user).await;
    app.stop().await;
}

both_backends!(an_openai_channel_runs_videos_through_openais_videos_api);

// Video in the platform's shape (seed 001): `POST /api/v1/video/generate`, then
// `GET /api/v1/video/{task_id}/status`; the file stored by Tollgate and saved as a creation.

/// Admin setup for the platform routes: one `video` channel serving `vid` (0.1 credits per
/// second) and `clip` (a flat `credits_cost` of 0.5); a user with 2 credits and a key.
async fn provision_platform(
    admin: impl AsyncFn(reqwest::Method, &str, Value) -> Value,
    base: &str,
) -> (i64, String) {
    admin(
        reqwest::Method::POST,
        "/api/v1/admin/channels",
        json!({"name": "videos", "provider": "video",
        "base_url": base, "api_key": "vk-123456789", "models": ["vid", "clip"],
        "model_map": {"vid": "gen-3", "clip": "gen-3"}}),
    )
    .await;
    admin(
        reqwest::Method::POST,
        "/api/v1/admin/models",
        json!({"model": "clip", "credits_cost": "0.5"}),
    )
    .await;
    provision(admin, base).await
}

/// A platform request with `key`: (status, body).
async fn platform(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client.request(method, url).bearer_auth(key);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Polls a platform task's status until `done` holds; its `data`.
async fn wait_for_status(
    client: &reqwest::Client,
    base: &str,
    task: &str,
    key: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let url = format!("{base}/api/v1/video/{task}/status");
    let v = wait_until(client, &url, key, |v| done(&v["data"])).await;
    v["data"].clone()
}

async fn a_platform_video_is_stored_saved_and_charged_its_credits_cost(b: Backend) {
    let app = TestApp::spawn_with(&b, fast_polls).await;
    let (fake, base) = start_fake(Plan {
        running_polls: 1,
        delivers: Some(6),
    })
    .await;
    let admin = async |m, p: &str, body| {
        let (status, v) = app.admin(m, p, Some(body)).await;
        assert_eq!(status, 200, "{p}: {v}");
        v["data"].clone()
    };
    let (user, key) = provision_platform(admin, &base).await;
    let create = app.url("/api/v1/video/generate");
    let (status, created) = platform(
        &app.client,
        reqwest::Method::POST,
        &create,
        &key,
        Some(json!({"script": "海边日落的延时摄影", "duration": 8, "model_id": "clip"})),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["message"], "任务已创建");
    assert_eq!(created["data"]["status"], "processing");
    let task = created["data"]["task_id"]
        .as_str()
        .expect("task id")
        .to_owned();
    assert_eq!(
        fake.bodies.lock().expect("lock")[0],
        json!({"model": "gen-3", "prompt": "海边日落的延时摄影", "duration": 8})
    );
    // The flat price is held at once, whatever the duration.
    assert_eq!(app.balance_micros(user).await, 1_500_000);

    let done = wait_for_status(&app.client, &app.url(""), &task, &key, |d| {
        d["status"] != "processing"
    })
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["credits_used"], json!(0.5));
    assert_eq!(done["credits_used_micros"], 500_000);
    assert_eq!(done["duration"], 6);
    let url = done["video_url"].as_str().expect("video url").to_owned();
    assert!(url.starts_with(&app.url("/api/v1/files/f_")), "{url}");
    // Plays in a <video>: no credential, a video type, and the parts it asks for to seek.
    let resp = reqwest::get(&url).await.expect("download");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "video/mp4");
    assert_eq!(resp.headers()["accept-ranges"], "bytes");
    assert_eq!(resp.bytes().await.expect("bytes").as_ref(), FILE);
    let part = app
        .client
        .get(&url)
        .header("range", "bytes=4-11")
        .send()
        .await
        .expect("range");
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 4-11/{}", FILE.len()).as_str()
    );
    assert_eq!(part.bytes().await.expect("bytes").as_ref(), &FILE[4..12]);
    let beyond = app
        .client
        .get(&url)
        .header("range", format!("bytes={}-", FILE.len()))
        .send()
        .await
        .expect("range");
    assert_eq!(beyond.status(), 416);
    let tampered = url.replacen("expires=", "expires=9", 1);
    assert_eq!(reqwest::get(&tampered).await.expect("get").status(), 403);
    // Stored by Tollgate: the provider is not asked again, also through the OpenAI route.
    let fetched = fake.file_fetches.load(Ordering::SeqCst);
    let content = app
        .client
        .get(app.url(&format!("/v1/videos/{task}/content")))
        .bearer_auth(&key)
        .send()
        .await
        .expect("content");
    assert_eq!(content.bytes().await.expect("bytes").as_ref(), FILE);
    assert_eq!(fake.file_fetches.load(Ordering::SeqCst), fetched);

    // Saved as a video creation, charged once at the flat price.
    let (_, list) = platform(
        &app.client,
        reqwest::Method::GET,
        &app.url("/api/v1/creations?type=video"),
        &key,
        None,
    )
    .await;
    assert_eq!(list["data"]["total"], 1, "{list}");
    let creation = &list["data"]["items"][0];
    assert_eq!(creation["id"], done["creation_id"]);
    assert_eq!(creation["content"], "海边日落的延时摄影");
    let fresh = creation["file_url"].as_str().expect("file url");
    assert_eq!(reqwest::get(fresh).await.expect("get").status(), 200);
    assert_eq!(app.balance_micros(user).await, 1_500_000);
    let usage = app.wait_for_usage(user, 1).await;
    assert_eq!(
        (
            &usage[0]["endpoint"],
            &usage[0]["cost_micros"],
            &usage[0]["paid_by"]
        ),
        (&json!("videos"), &json!(500_000), &json!("credits"))
    );

    // Someone else's task is not found; bad input is named and holds nothing.
    let other = app.add_user(json!("1")).await;
    let other_key = app.add_key(other, json!({})).await;
    let status_url = app.url(&format!("/api/v1/video/{task}/status"));
    let (status, _) = platform(
        &app.client,
        reqwest::Method::GET,
        &status_url,
        &other_key,
        None,
    )
    .await;
    assert_eq!(status, 404);
    for (body, want, code) in [
        (json!({"duration": 5, "model_id": "clip"}), "script", 400),
        (
            json!({"script": "x", "duration": 0, "model_id": "clip"}),
            "duration",
            400,
        ),
        (
            json!({"script": "x", "duration": "long", "model_id": "clip"}),
            "duration",
            400,
        ),
        (json!({"script": "x", "model_id": "nope"}), "model_id", 400),
        (json!({"script": "x", "model_id": 999_999}), "model_id", 400),
        (
            json!({"script": "x".repeat(10_001), "model_id": "clip"}),
            "script",
            400,
        ),
    ] {
        let (status, e) = platform(
            &app.client,
            reqwest::Method::POST,
            &create,
            &key,
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, code, "{body}: {e}");
        assert!(
            e["message"].as_str().unwrap_or_default().contains(want),
            "{body}: {e}"
        );
    }
    // 1.5 left; a 20 s video at 0.1 per second does not fit: 40001, no provider call.
    let (status, e) = platform(
        &app.client,
        reqwest::Method::POST,
        &create,
        &key,
        Some(json!({"script": "x", "duration": 20, "model_id": "vid"})),
    )
    .await;
    assert_eq!((status, e["code"].clone()), (402, json!(40001)), "{e}");
    assert_eq!(fake.created.load(Ordering::SeqCst), 1);
    assert_eq!(app.balance_micros(user).await, 1_500_000);
    app.assert_books_balance(user).await;
    app.stop().await;
}

async fn a_platform_video_that_fails_is_refunded_and_a_members_costs_nothing(b: Backend) {
    let app = TestApp::spawn_with(&b, fast_polls).await;
    let (fake, base) = start_fake(Plan {
        running_polls: 0,
        delivers: None,
    })
    .await;
    let admin = async |m, p: &str, body| {
        let (status, v) = app.admin(m, p, Some(body)).await;
        assert_eq!(status, 200, "{p}: {v}");
        v["data"].clone()
    };
    let (user, key) = provision_platform(admin, &base).await;
    let create = app.url("/api/v1/video/generate");
    let body = json!({"script": "城市夜景", "duration": 5, "model_id": "clip"});
    let (status, created) = platform(
        &app.client,
        reqwest::Method::POST,
        &create,
        &key,
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let task = created["data"]["task_id"].as_str().expect("id").to_owned();
    let failed = wait_for_status(&app.client, &app.url(""), &task, &key, |d| {
        d["status"] != "processing"
    })
    .await;
    assert_eq!(
        (
            &failed["status"],
            &failed["credits_used"],
            &failed["video_url"]
        ),
        (&json!("failed"), &json!(0), &Value::Null),
        "{failed}"
    );
    assert_eq!(failed["error"], "content policy");
    assert_eq!(
        app.balance_micros(user).await,
        2_000_000,
        "refunded in full"
    );

    // Metered by the second when the model has no credits_cost: 5 asked, 4 delivered.
    *fake.plan.lock().expect("lock") = Some(Plan {
        running_polls: 0,
        delivers: Some(4),
    });
    fake.polls.store(0, Ordering::SeqCst);
    let vid = json!({"script": "森林", "duration": 5, "model_id": "vid"});
    let (status, created) = platform(
        &app.client,
        reqwest::Method::POST,
        &create,
        &key,
        Some(vid.clone()),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["data"]["credits_reserved"], json!(0.5));
    let task = created["data"]["task_id"].as_str().expect("id").to_owned();
    let done = wait_for_status(&app.client, &app.url(""), &task, &key, |d| {
        d["status"] != "processing"
    })
    .await;
    assert_eq!(
        (&done["status"], &done["credits_used_micros"]),
        (&json!("completed"), &json!(400_000))
    );
    assert_eq!(app.balance_micros(user).await, 1_600_000);

    // A member pays nothing, and the usage record says so.
    let member = app.add_user(json!("0")).await;
    let (status, _) = app
        .admin(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/users/{member}"),
            Some(
                json!({"membership_type": "monthly", "membership_end_date": "2099-02-22T10:00:00"}),
            ),
        )
        .await;
    assert_eq!(status, 200);
    let member_key = app.add_key(member, json!({})).await;
    let (status, created) = platform(
        &app.client,
        reqwest::Method::POST,
        &create,
        &member_key,
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let task = created["data"]["task_id"].as_str().expect("id").to_owned();
    let done = wait_for_status(&app.client, &app.url(""), &task, &member_key, |d| {
        d["status"] != "processing"
    })
    .await;
    assert_eq!(
        (&done["status"], &done["credits_used"]),
        (&json!("completed"), &json!(0))
    );
    let usage = app.wait_for_usage(member, 1).await;
    assert_eq!(usage[0]["paid_by"], "membership");
    let (_, list) = platform(
        &app.client,
        reqwest::Method::GET,
        &app.url("/api/v1/creations?type=video"),
        &member_key,
        None,
    )
    .await;
    assert_eq!(list["data"]["items"][0]["paid_by"], "membership", "{list}");
    assert_eq!(app.balance_micros(member).await, 0);
    app.assert_books_balance(user).await;
    app.assert_books_balance(member).await;
    app.stop().await;
}

async fn a_finished_video_is_charged_only_once_tollgate_has_stored_it(b: Backend) {
    let app = TestApp::spawn_with(&b, fast_polls).await;
    let (fake, base) = start_fake(Plan {
        running_polls: 0,
        delivers: Some(5),
    })
    .await;
    // The first downloads fail: the task stays processing and its price stays held.
    fake.file_failures.store(3, Ordering::SeqCst);
    let admin = async |m, p: &str, body| {
        let (status, v) = app.admin(m, p, Some(body)).await;
        assert_eq!(status, 200, "{p}: {v}");
        v["data"].clone()
    };
    let (user, key) = provision_platform(admin, &base).await;
    let (status, created) = platform(
        &app.client,
        reqwest::Method::POST,
        &app.url("/api/v1/video/generate"),
        &key,
        Some(json!({"script": "山间云海", "duration": 5, "model_id": "clip"})),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let task = created["data"]["task_id"].as_str().expect("id").to_owned();
    let done = wait_for_status(&app.client, &app.url(""), &task, &key, |d| {
        d["status"] != "processing"
    })
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(fake.file_fetches.load(Ordering::SeqCst), 4);
    let url = done["video_url"].as_str().expect("url");
    assert_eq!(
        reqwest::get(url)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes")
            .as_ref(),
        FILE
    );
    assert_eq!(app.balance_micros(user).await, 1_500_000);
    let (_, list) = platform(
        &app.client,
        reqwest::Method::GET,
        &app.url("/api/v1/creations?type=video"),
        &key,
        None,
    )
    .await;
    assert_eq!(list["data"]["total"], 1);
    app.assert_books_balance(user).await;
    app.stop().await;
}

async fn a_platform_video_outlives_a_sigkill_and_is_kept_once_after_the_restart(b: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let (db_url, pg) = fresh_database(&b, &dir).await;
    let (fake, base) = start_fake(Plan {
        running_polls: 1000,
        delivers: Some(5),
    })
    .await;
    let env = [
        ("TOLLGATE__VIDEO__POLL_INTERVAL_MS", "50"),
        ("TOLLGATE__VIDEO__LEASE_MS", "500"),
        ("TOLLGATE__JOBS__LEASE_MS", "500"),
        ("TOLLGATE__JOBS__POLL_INTERVAL_MS", "50"),
    ];
    let server = Server::start(&db_url, &env).await;
    let (user, key) = provision_platform(
        async |m, p, body| server.admin(m, p, Some(body)).await,
        &base,
    )
    .await;
    let client = reqwest::Client::new();
    let (status, created) = platform(
        &client,
        reqwest::Method::POST,
        &format!("{}/api/v1/video/generate", server.base),
        &key,
        Some(json!({"script": "长镜头", "duration": 5, "model_id": "clip"})),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let task = created["data"]["task_id"].as_str().expect("id").to_owned();
    wait_for_status(&client, &server.base, &task, &key, |d| d["progress"] == 40).await;
    server.kill().await;

    // While it is down the provider finishes; the restarted gateway stores and charges it.
    fake.polls.store(1000, Ordering::SeqCst);
    let server = Server::start(&db_url, &env).await;
    let done = wait_for_status(&client, &server.base, &task, &key, |d| {
        d["status"] != "processing"
    })
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    let file = reqwest::get(done["video_url"].as_str().expect("url"))
        .await
        .expect("get");
    assert_eq!(file.bytes().await.expect("bytes").as_ref(), FILE);
    let user_now = server
        .admin(
            reqwest::Method::GET,
            &format!("/api/v1/admin/users/{user}"),
            None,
        )
        .await;
    assert_eq!(user_now["balance_micros"], 1_500_000, "charged once");
    let (_, list) = platform(
        &client,
        reqwest::Method::GET,
        &format!("{}/api/v1/creations?type=video", server.base),
        &key,
        None,
    )
    .await;
    assert_eq!(list["data"]["total"], 1);
    server.kill().await;
    let (ok, report) = ledger_verify_cli(&db_url).await;
    assert!(ok, "{report}");
    if let Some((url, name)) = pg {
        drop_pg_database(&url, &name).await;
    }
}

both_backends!(
    a_platform_video_is_stored_saved_and_charged_its_credits_cost,
    a_platform_video_that_fails_is_refunded_and_a_members_costs_nothing,
    a_finished_video_is_charged_only_once_tollgate_has_stored_it,
    a_platform_video_outlives_a_sigkill_and_is_kept_once_after_the_restart
);
