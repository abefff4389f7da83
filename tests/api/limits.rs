//! Rate limits on one instance (in-process counters on SQLite; Redis counters in the Postgres
//! variant): requests, tokens and concurrency per key, user and model, the `x-ratelimit-*`
//! headers, 429s in OpenAI's shape, the platform API's route classes and plans, and what happens
//! when Redis goes away (fail open, fail closed).

use crate::both_backends;
use crate::helpers::*;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Sends a request; its status.
async fn status_of(req: reqwest::RequestBuilder) -> u16 {
    req.send().await.expect("send").status().as_u16()
}

fn body(max_tokens: i64) -> Value {
    json!({"model": "m1", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]})
}

/// 1 credit per 1M tokens in and out: a request with usage 10 + 5 costs 15 micro-credits.
async fn limited_setup(b: &Backend, adjust: impl FnOnce(&mut tollgate::config::Config)) -> Setup {
    let app = TestApp::spawn_with(b, adjust).await;
    Setup::provision(
        app,
        chat_script(&["ok"], 10, 5, 0),
        json!({}),
        Prices {
            input: "1",
            output: "1",
            cached: "1",
        },
        "100",
    )
    .await
}

async fn set_key_limits(app: &TestApp, key_id: i64, limits: Value) {
    let (status, body) = app
        .admin(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/keys/{key_id}"),
            Some(limits),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn only_key_id(app: &TestApp, user: i64) -> i64 {
    let (_, keys) = app
        .admin(
            reqwest::Method::GET,
            &format!("/api/v1/admin/users/{user}/keys"),
            None,
        )
        .await;
    keys["data"][0]["id"].as_i64().expect("key id")
}

async fn requests_per_window_are_counted_per_key_with_openai_headers(b: Backend) {
    let s = limited_setup(&b, |_| {}).await;
    let key_id = only_key_id(&s.app, s.user).await;
    set_key_limits(&s.app, key_id, json!({"rpm": 5})).await;
    for i in 0..5 {
        let r = s.app.chat(&s.key, body(10)).send().await.expect("send");
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some("5"));
        assert_eq!(
            header(&r, "x-ratelimit-remaining-requests"),
            Some((4 - i).to_string().as_str())
        );
        let reset = header(&r, "x-ratelimit-reset-requests").expect("reset");
        assert!(reset.ends_with('s'), "{reset}");
        assert_eq!(header(&r, "x-ratelimit-limit-tokens"), Some("10000000"));
        assert!(header(&r, "x-ratelimit-remaining-tokens").is_some());
        assert!(header(&r, "x-ratelimit-reset-tokens").is_some());
    }
    let r = s.app.chat(&s.key, body(10)).send().await.expect("send");
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some("0"));
    let retry_s: u64 = header(&r, "retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    let retry_ms: u64 = header(&r, "retry-after-ms")
        .expect("retry-after-ms")
        .parse()
        .expect("ms");
    assert!(
        (1..=60).contains(&retry_s) && retry_ms <= 60_000 && retry_ms > 50_000,
        "{retry_s} {retry_ms}"
    );
    let err: Value = r.json().await.expect("json");
    assert_eq!(err["error"]["type"], "requests");
    assert_eq!(err["error"]["code"], "rate_limit_exceeded");
    assert!(
        err["error"]["message"]
            .as_str()
            .expect("message")
            .contains("limit 5")
    );
    // Refused requests reach no upstream and cost nothing.
    assert_eq!(s.fake.calls(), 5);
    assert_eq!(s.app.balance_micros(s.user).await, 100_000_000 - 5 * 15);
    // Model listing counts too, and carries the same headers.
    let r = s
        .app
        .client
        .get(s.app.url("/v1/models"))
        .bearer_auth(&s.key)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 429);
    // Another key of the same user has its own counter.
    let other = s.app.add_key(s.user, json!({})).await;
    let r = s
        .app
        .client
        .get(s.app.url("/v1/models"))
        .bearer_auth(&other)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some("10000"));
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), Some("9999"));
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn the_window_slides_and_retry_after_is_when_a_request_fits(b: Backend) {
    let s = limited_setup(&b, |c| c.limits.window_ms = 1500).await;
    let key_id = only_key_id(&s.app, s.user).await;
    set_key_limits(&s.app, key_id, json!({"rpm": 3})).await;
    for _ in 0..3 {
        assert_eq!(status_of(s.app.chat(&s.key, body(10))).await, 200);
    }
    let r = s.app.chat(&s.key, body(10)).send().await.expect("send");
    assert_eq!(r.status(), 429);
    let wait: u64 = header(&r, "retry-after-ms")
        .expect("retry-after-ms")
        .parse()
        .expect("ms");
    assert!(wait <= 1500, "{wait}");
    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
    assert_eq!(status_of(s.app.chat(&s.key, body(10))).await, 200);
    s.app.stop().await;
}

async fn tokens_are_reserved_by_estimate_and_corrected_to_usage(b: Backend) {
    let s = limited_setup(&b, |_| {}).await;
    let key_id = only_key_id(&s.app, s.user).await;
    // Each request may use its prompt (a few tokens) + 400: two fit in 1000, a third does not.
    set_key_limits(&s.app, key_id, json!({"tpm": 1000})).await;
    let r = s.app.chat(&s.key, body(400)).send().await.expect("send");
    assert_eq!(r.status(), 200);
    let left: u64 = header(&r, "x-ratelimit-remaining-tokens")
        .expect("tokens")
        .parse()
        .expect("n");
    assert!(
        (580..600).contains(&left),
        "the estimate is taken at admission: {left}"
    );
    // Settled at 15 tokens of actual usage, the first request now holds only 15.
    let r = s.app.chat(&s.key, body(400)).send().await.expect("send");
    assert_eq!(r.status(), 200);
    let left: u64 = header(&r, "x-ratelimit-remaining-tokens")
        .expect("tokens")
        .parse()
        .expect("n");
    assert!(
        (570..=585).contains(&left),
        "first request corrected to 15 tokens: {left}"
    );
    let r = s.app.chat(&s.key, body(400)).send().await.expect("send");
    assert_eq!(
        r.status(),
        200,
        "fits only because earlier estimates were corrected"
    );
    // After settlement, three requests hold 45 tokens; 960 more cannot fit, 900 can.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = s.app.chat(&s.key, body(960)).send().await.expect("send");
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").is_some());
    let err: Value = r.json().await.expect("json");
    assert_eq!(err["error"]["type"], "tokens");
    assert_eq!(err["error"]["code"], "rate_limit_exceeded");
    assert_eq!(status_of(s.app.chat(&s.key, body(900))).await, 200);
    // Larger than the whole limit: waiting cannot help, and SDKs are told not to retry.
    let r = s.app.chat(&s.key, body(5000)).send().await.expect("send");
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-should-retry"), Some("false"));
    assert!(header(&r, "retry-after").is_none());
    let err: Value = r.json().await.expect("json");
    assert_eq!(err["error"]["type"], "tokens");
    assert!(
        err["error"]["message"]
            .as_str()
            .expect("message")
            .contains("too large")
    );
    assert_eq!(s.app.balance_micros(s.user).await, 100_000_000 - 4 * 15);
    s.app.stop().await;
}

async fn concurrency_caps_hold_and_slots_come_back(b: Backend) {
    let s = limited_setup(&b, |_| {}).await;
    let key_id = only_key_id(&s.app, s.user).await;
    set_key_limits(&s.app, key_id, json!({"max_concurrency": 2})).await;
    s.fake.set_headers_delay(400);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let req = s.app.chat(&s.key, body(10));
        tasks.push(tokio::spawn(async move {
            req.send().await.expect("send").status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("task"));
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 200, 429, 429, 429, 429]);
    assert_eq!(s.fake.state.max_in_delay.load(Ordering::SeqCst), 2);
    // The slots were given back when the requests ended (streams included).
    s.fake.set_headers_delay(0);
    let mut stream = body(10);
    stream["stream"] = json!(true);
    for _ in 0..3 {
        let r = s
            .app
            .chat(&s.key, stream.clone())
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("body");
    }
    s.app.stop().await;
}

async fn user_and_model_limits_apply_across_keys(b: Backend) {
    let s = limited_setup(&b, |c| c.limits.user_rpm = 4).await;
    let second = s.app.add_key(s.user, json!({"rpm": 100})).await;
    for key in [&s.key, &second, &s.key, &second] {
        assert_eq!(status_of(s.app.chat(key, body(10))).await, 200);
    }
    let r = s.app.chat(&second, body(10)).send().await.expect("send");
    assert_eq!(r.status(), 429, "the user's limit covers all their keys");
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some("4"));

    // A per-model limit applies per key on that model.
    let other_user = s.app.add_user(json!("10")).await;
    let key = s.app.add_key(other_user, json!({})).await;
    let (_, models) = s
        .app
        .admin(reqwest::Method::GET, "/api/v1/admin/models", None)
        .await;
    let model_id = models["data"][0]["id"].as_i64().expect("model id");
    let (status, m) = s
        .app
        .admin(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/models/{model_id}"),
            Some(json!({"rpm": 2})),
        )
        .await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["data"]["rpm"], 2);
    for _ in 0..2 {
        assert_eq!(status_of(s.app.chat(&key, body(10))).await, 200);
    }
    let r = s.app.chat(&key, body(10)).send().await.expect("send");
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some("2"));
    s.app.stop().await;
}

async fn limit_fields_are_validated_and_shown(b: Backend) {
    let app = TestApp::spawn(&b).await;
    let user = app.add_user(json!("1")).await;
    let (status, k) = app
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/admin/users/{user}/keys"),
            Some(json!({"rpm": 60, "tpm": 1000, "max_concurrency": 3, "plan": "pro"})),
        )
        .await;
    assert_eq!(status, 200, "{k}");
    assert_eq!(
        (
            k["data"]["rpm"].clone(),
            k["data"]["tpm"].clone(),
            k["data"]["max_concurrency"].clone()
        ),
        (json!(60), json!(1000), json!(3))
    );
    assert_eq!(k["data"]["plan"], "pro");
    let id = k["data"]["id"].as_i64().expect("id");
    for (body, field) in [
        (json!({"rpm": 0}), "rpm"),
        (json!({"tpm": -5}), "tpm"),
        (json!({"max_concurrency": "x"}), "max_concurrency"),
        (json!({"plan": "gold"}), "plan"),
        (json!({"plan": "custom"}), "plan_per_hour"),
        (
            json!({"plan": "free", "plan_per_hour": 10}),
            "plan_per_hour",
        ),
    ] {
        let (status, err) = app
            .admin(
                reqwest::Method::PATCH,
                &format!("/api/v1/admin/keys/{id}"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 400, "{body} → {err}");
        assert!(
            err["message"].as_str().expect("message").contains(field),
            "{err}"
        );
    }
    let (status, k) = app
        .admin(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/keys/{id}"),
            Some(json!({"rpm": null, "plan": "custom", "plan_per_hour": 5000})),
        )
        .await;
    assert_eq!(status, 200, "{k}");
    assert_eq!(k["data"]["rpm"], Value::Null);
    assert_eq!(k["data"]["tpm"], 1000);
    assert_eq!(
        (
            k["data"]["plan"].clone(),
            k["data"]["plan_per_hour"].clone()
        ),
        (json!("custom"), json!(5000))
    );
    app.stop().await;
}

async fn platform_routes_are_limited_by_class_and_plan(b: Backend) {
    let app = TestApp::spawn_with(&b, |c| c.limits.query_per_minute = 3).await;
    // Authentication routes: 10 a minute per client address.
    for i in 0..10 {
        let r = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .json(&json!({"username": "nobody", "password": "wrong-password"}))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 401, "attempt {i}");
        assert_eq!(header(&r, "x-ratelimit-limit"), Some("10"));
        assert_eq!(
            header(&r, "x-ratelimit-remaining"),
            Some((9 - i).to_string().as_str())
        );
        let reset: u64 = header(&r, "x-ratelimit-reset")
            .expect("reset")
            .parse()
            .expect("unix seconds");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_secs();
        assert!(reset > now && reset <= now + 61, "{reset} vs {now}");
    }
    let r = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"username": "nobody", "password": "wrong-password"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").is_some());
    let err: Value = r.json().await.expect("json");
    assert_eq!(
        (
            err["success"].clone(),
            err["code"].clone(),
            err["error"].clone()
        ),
        (json!(false), json!(429), json!("RATE_LIMITED"))
    );

    // Query routes, per user (config lowered to 3 a minute here).
    let user = app.add_user(json!("1")).await;
    let key = app.add_key(user, json!({})).await;
    for i in 0..3 {
        let r = app
            .client
            .get(app.url("/api/v1/credit/balance"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "x-ratelimit-remaining"),
            Some((2 - i).to_string().as_str())
        );
    }
    let r = app
        .client
        .get(app.url("/api/v1/usage"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 429);

    // A key on a custom plan of 2 an hour: the plan is the tighter limit.
    let planned = app
        .add_key(
            app.add_user(json!("1")).await,
            json!({"plan": "custom", "plan_per_hour": 2}),
        )
        .await;
    for _ in 0..2 {
        let r = app
            .client
            .get(app.url("/api/v1/credit/balance"))
            .bearer_auth(&planned)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
    }
    let r = app
        .client
        .get(app.url("/api/v1/credit/balance"))
        .bearer_auth(&planned)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-ratelimit-limit"), Some("2"));
    let retry: u64 = header(&r, "retry-after")
        .expect("retry")
        .parse()
        .expect("s");
    assert!(
        retry > 3000,
        "an hourly limit frees its first slot in about an hour: {retry}"
    );
    // The OpenAI surface of a plan key is not counted against the plan.
    let r = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth(&planned)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);

    // Admin calls are never limited by class.
    for _ in 0..15 {
        let (status, _) = app
            .admin(reqwest::Method::GET, "/api/v1/admin/users", None)
            .await;
        assert_eq!(status, 200);
    }
    app.stop().await;
}

async fn memberships_are_set_by_admins(b: Backend) {
    let app = TestApp::spawn(&b).await;
    let user = app.add_user(json!("1")).await;
    assert_eq!(app.user(user).await["is_member"], false);
    let (status, u) = app
        .admin(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/users/{user}"),
            Some(
                json!({"membership_type": "monthly", "membership_end_date": "2099-02-22T10:00:00"}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{u}");
    assert_eq!(
        (
            u["data"]["is_member"].clone(),
            u["data"]["membership_type"].clone()
        ),
        (json!(true), json!("monthly"))
    );
    let (status, err) = app
        .admin(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/users/{user}"),
            Some(json!({"membership_type": "monthly"})),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    let (status, u) = app
        .admin(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/users/{user}"),
            Some(json!({"membership_type": null})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(u["data"]["is_member"], false);
    app.stop().await;
}

both_backends!(
    requests_per_window_are_counted_per_key_with_openai_headers,
    the_window_slides_and_retry_after_is_when_a_request_fits,
    tokens_are_reserved_by_estimate_and_corrected_to_usage,
    concurrency_caps_hold_and_slots_come_back,
    user_and_model_limits_apply_across_keys,
    limit_fields_are_validated_and_shown,
    platform_routes_are_limited_by_class_and_plan,
    memberships_are_set_by_admins
);

/// A TCP relay to Redis that can be cut (as if Redis went away) and restored.
struct RedisRelay {
    addr: String,
    up: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl RedisRelay {
    async fn start(target: &str) -> RedisRelay {
        let target = target
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (up2, conns2) = (Arc::clone(&up), Arc::clone(&conns));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                conns2.lock().expect("lock").push(task.abort_handle());
            }
        });
        RedisRelay { addr, up, conns }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().expect("lock").drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Redis goes away mid-run: `open` falls back to this instance's counters, `closed` refuses
/// with 503; both recover when Redis is back.
async fn redis_outage(mode: &str) {
    let (Some(pg), Some(redis)) = (Backend::postgres(), redis_url()) else {
        eprintln!("TEST_DATABASE_URL and TEST_REDIS_URL are needed: not run");
        return;
    };
    let relay = RedisRelay::start(&redis).await;
    let mode = mode.to_owned();
    let relay_url = relay.url();
    let app = TestApp::spawn_with(&pg, |c| {
        c.redis.url = relay_url;
        c.redis.timeout_ms = 200;
        c.limits.on_redis_error = if mode == "open" {
            tollgate::config::FailMode::Open
        } else {
            tollgate::config::FailMode::Closed
        };
    })
    .await;
    let s = Setup::provision(
        app,
        chat_script(&["ok"], 10, 5, 0),
        json!({}),
        Prices {
            input: "1",
            output: "1",
            cached: "1",
        },
        "100",
    )
    .await;
    let key_id = only_key_id(&s.app, s.user).await;
    set_key_limits(&s.app, key_id, json!({"rpm": 3})).await;
    for _ in 0..2 {
        assert_eq!(status_of(s.app.chat(&s.key, body(10))).await, 200);
    }
    relay.cut();
    let errors_before = s
        .app
        .metric("tollgate_rate_limiter_redis_errors_total")
        .await
        .unwrap_or(0.0);
    if mode == "open" {
        // The local counters know nothing of the two requests Redis counted: three more fit.
        for _ in 0..3 {
            let r = s.app.chat(&s.key, body(10)).send().await.expect("send");
            assert_eq!(r.status(), 200);
            assert_eq!(header(&r, "x-ratelimit-limit-requests"), Some("3"));
        }
        let r = s.app.chat(&s.key, body(10)).send().await.expect("send");
        assert_eq!(r.status(), 429, "the local limiter still limits");
    } else {
        let r = s.app.chat(&s.key, body(10)).send().await.expect("send");
        assert_eq!(r.status(), 503);
        assert_eq!(header(&r, "retry-after"), Some("1"));
        let err: Value = r.json().await.expect("json");
        assert_eq!(err["error"]["code"], "rate_limiter_unavailable");
        assert_eq!(s.fake.calls(), 2, "a refused request reaches no upstream");
    }
    let errors_after = s
        .app
        .metric("tollgate_rate_limiter_redis_errors_total")
        .await
        .unwrap_or(0.0);
    assert!(errors_after > errors_before);
    relay.restore();
    // Redis is back: its counter (2 of 3 used) decides again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.app.chat(&s.key, body(10)).send().await.expect("send");
        let status = r.status().as_u16();
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Redis never came back: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status_of(s.app.chat(&s.key, body(10))).await, 429);
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_fail_open_falls_back_to_local_counters() {
    redis_outage("open").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_fail_closed_refuses_with_503() {
    redis_outage("closed").await;
}
