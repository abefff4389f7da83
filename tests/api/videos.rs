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
