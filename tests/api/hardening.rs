//! Hardening: what a hostile client or a misbehaving network cannot do to the gateway. Slow and
//! idle clients are cut at the configured timeouts, connections are capped, a SIGTERM'd gateway
//! writes every settlement in flight (and stops within its grace), huge prompts and floods of
//! cut streams do not stall other requests, only JSON objects are requests, and small leaks
//! (file modes, credentials, echoed input, the metrics page) are closed.

use crate::both_backends;
use crate::helpers::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects to a test app's port.
async fn connect(app: &TestApp) -> TcpStream {
    let addr = app.base.strip_prefix("http://").expect("http");
    TcpStream::connect(addr).await.expect("connect")
}

/// Reads until the peer closes (or `limit` passes): what arrived, and when the close came.
async fn read_until_closed(tcp: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&seen).into_owned(), None),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&seen).into_owned(),
                    Some(started.elapsed()),
                );
            }
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

async fn slow_app(adjust: impl FnOnce(&mut tollgate::config::Config)) -> TestApp {
    TestApp::spawn_with(&Backend::Sqlite, adjust).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn headers_trickled_a_byte_at_a_time_are_cut_at_the_header_timeout() {
    let app = slow_app(|c| {
        c.server.header_read_timeout_ms = 600;
        c.server.idle_timeout_ms = 30_000;
    })
    .await;
    let mut tcp = connect(&app).await;
    let head = b"GET /healthz HTTP/1.1\r\nHost: tollgate\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let started = Instant::now();
    let mut closed_after = None;
    for byte in head {
        if tcp.write_all(&[*byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut probe = [0_u8; 64];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut probe)).await
        {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the trickling connection was closed");
    assert!(
        closed_after >= Duration::from_millis(550),
        "not before the timeout: {closed_after:?}"
    );
    assert!(
        closed_after < Duration::from_millis(2_000),
        "at the timeout: {closed_after:?}"
    );
    // Counted by reason (the recorder is shared by every test app in this process: at least ours).
    let cut = app
        .metric_where(
            "tollgate_connections_cut_total",
            "reason=\"header_timeout\"",
        )
        .await;
    assert!(cut.is_some_and(|n| n >= 1.0), "{cut:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_that_trickles_or_never_arrives_gets_408_at_the_body_timeout() {
    let app = slow_app(|c| c.server.body_read_timeout_ms = 700).await;
    let user = app.add_user(json!("1")).await;
    let key = app.add_key(user, json!({})).await;
    for trickle in [false, true] {
        let mut tcp = connect(&app).await;
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: tollgate\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\":"
        );
        tcp.write_all(head.as_bytes()).await.expect("head");
        let started = Instant::now();
        if trickle {
            // One byte every 100 ms: it would take 100 s.
            let mut tcp2 = tcp;
            let writer = tokio::spawn(async move {
                for _ in 0..20 {
                    if tcp2.write_all(b" ").await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tcp2
            });
            tokio::time::sleep(Duration::from_millis(2_200)).await;
            tcp = writer.await.expect("writer");
        }
        let (answer, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
        let took = started.elapsed();
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "trickle {trickle}: {answer}"
        );
        assert!(answer.contains("request_timeout"), "{answer}");
        assert!(closed.is_some(), "the connection is closed after the 408");
        if !trickle {
            assert!(
                took >= Duration::from_millis(650) && took < Duration::from_millis(2_500),
                "{took:?}"
            );
        }
    }
    // Nothing reached a balance.
    assert_eq!(app.balance_micros(user).await, 1_000_000);
    assert!(app.usage(user).await.is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_keep_alive_connections_are_closed_at_the_idle_timeout() {
    let app = slow_app(|c| c.server.idle_timeout_ms = 500).await;
    // One that answered a request and then sat idle, and one that never sent anything.
    let mut used = connect(&app).await;
    used.write_all(b"GET /healthz HTTP/1.1\r\nHost: tollgate\r\n\r\n")
        .await
        .expect("request");
    let mut silent = connect(&app).await;
    let (answer, closed) = read_until_closed(&mut used, Duration::from_secs(4)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let closed = closed.expect("the idle connection is closed");
    assert!(
        closed >= Duration::from_millis(450) && closed < Duration::from_millis(2_000),
        "{closed:?}"
    );
    let (nothing, closed) = read_until_closed(&mut silent, Duration::from_secs(4)).await;
    assert_eq!(nothing, "");
    assert!(
        closed.is_some(),
        "a connection that sends nothing is closed too"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_over_the_limit_is_answered_503_and_closed() {
    let app = slow_app(|c| c.server.max_connections = 3).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect(&app).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = connect(&app).await;
    let (answer, closed) = read_until_closed(&mut fourth, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(closed.is_some());
    // A slot freed is a slot taken again.
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut next = connect(&app).await;
    next.write_all(b"GET /healthz HTTP/1.1\r\nHost: tollgate\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let (answer, _) = read_until_closed(&mut next, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(open);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        app.metric("tollgate_connections_refused_total")
            .await
            .is_some_and(|n| n >= 1.0)
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_half_sent_request_does_not_hold_a_stopping_gateway_past_its_grace() {
    let app = slow_app(|c| {
        c.server.shutdown_grace_ms = 500;
        c.server.body_read_timeout_ms = 60_000;
        c.server.header_read_timeout_ms = 60_000;
    })
    .await;
    let mut body_half = connect(&app).await;
    body_half
        .write_all(b"POST /api/v1/admin/users HTTP/1.1\r\nHost: tollgate\r\nContent-Length: 500\r\n\r\n{\"email\"")
        .await
        .expect("half a body");
    let mut head_half = connect(&app).await;
    head_half
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: tol")
        .await
        .expect("half a head");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    app.stop().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(3_500),
        "the gateway stopped within its grace: {took:?}"
    );
}

/// A request that streams for about a second (10 pieces, 100 ms apart), then reports usage
/// of 10 prompt + 10 completion tokens (30 micro-credits at the prices below).
fn slow_stream() -> Script {
    let mut events: Vec<String> = (0..10)
        .map(|i| {
            format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" p{i}\"}}}}]}}\n\n"
            )
        })
        .collect();
    events.push(
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n".into(),
    );
    events.push(
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":10}}\n\n"
            .into(),
    );
    events.push("data: [DONE]\n\n".into());
    Script::Sse {
        events,
        event_delay_ms: 100,
        stall_after: None,
    }
}

async fn twenty_sigterms_with_settlements_in_flight_lose_none(b: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let (db_url, pg) = fresh_database(&b, &dir).await;
    let fake = FakeUpstream::start(slow_stream()).await;
    let mut key = String::new();
    let client = reqwest::Client::new();
    let mut admitted = 0_usize;
    for round in 0..20 {
        // Half the rounds let the streams finish within the grace, half cut them at it.
        let grace = if round % 2 == 0 { "5000" } else { "300" };
        let server =
            Server::start(&db_url, &[("TOLLGATE__SERVER__SHUTDOWN_GRACE_MS", grace)]).await;
        if round == 0 {
            server.admin(reqwest::Method::POST, "/api/v1/admin/channels", Some(json!({
                "name": "fake", "provider": "openai", "base_url": fake.base_url, "api_key": "k", "models": ["m1"], "model_map": {}}))).await;
            server.admin(reqwest::Method::POST, "/api/v1/admin/models", Some(json!({
                "model": "m1", "input_price": "1", "output_price": "2", "cached_input_price": "0"}))).await;
            let user = server
                .admin(
                    reqwest::Method::POST,
                    "/api/v1/admin/users",
                    Some(json!({"email": "term@example.com", "balance": "10"})),
                )
                .await["id"]
                .as_i64()
                .expect("id");
            key = server
                .admin(
                    reqwest::Method::POST,
                    &format!("/api/v1/admin/users/{user}/keys"),
                    Some(json!({})),
                )
                .await["key"]
                .as_str()
                .expect("key")
                .to_owned();
        }
        // Five streams, each admitted (its first event read) before the signal.
        let url = format!("{}/v1/chat/completions", server.base);
        let mut streams = Vec::new();
        for _ in 0..5 {
            let body = json!({"model": "m1", "stream": true, "max_tokens": 50, "messages": [{"role": "user", "content": "x"}]});
            let resp = client
                .post(&url)
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status(), 200);
            let mut bytes = resp.bytes_stream();
            use futures_util::StreamExt;
            let first = bytes.next().await.expect("first event").expect("bytes");
            assert!(!first.is_empty());
            streams.push(tokio::spawn(async move {
                while let Some(Ok(_)) = bytes.next().await {}
            }));
        }
        admitted += streams.len();
        assert!(
            server.terminate().await,
            "round {round}: tollgate exits cleanly"
        );
        for s in streams {
            let _ = s.await;
        }
        let (ok, out) = ledger_verify_cli(&db_url).await;
        assert!(ok, "round {round}: {out}");
        assert!(
            out.contains(&format!("{admitted} usage records")),
            "round {round}: every admitted request settled: {out}"
        );
        assert!(
            out.contains("0 run(s) without a recorded clean stop"),
            "round {round}: {out}"
        );
    }
    if let Some((url, name)) = pg {
        drop_pg_database(&url, &name).await;
    }
}

async fn a_run_that_shut_down_with_unsettled_requests_fails_ledger_verify(b: Backend) {
    let app = TestApp::spawn(&b).await;
    let (ok, out) = app.ledger_verify_cli().await;
    assert!(ok, "{out}");
    // This run, still going.
    assert!(
        out.contains("1 run(s) without a recorded clean stop"),
        "{out}"
    );
    sql_i64(
        &app.state.db,
        "UPDATE runs SET stopped_at_ms = 1, unsettled = 2",
    )
    .await;
    let (ok, out) = app.ledger_verify_cli().await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("shut down with 2 admitted request(s) never settled"),
        "{out}"
    );
    app.stop().await;
}

async fn a_json_array_is_not_a_request(b: Backend) {
    let s = Setup::provision(
        TestApp::spawn(&b).await,
        chat_script(&["hi"], 1, 1, 0),
        json!({}),
        Prices {
            input: "1",
            output: "2",
            cached: "0",
        },
        "1",
    )
    .await;
    let array = json!(["m1", [{"role": "user", "content": "hi"}]]);
    let resp = s
        .app
        .client
        .post(s.app.url("/v1/chat/completions"))
        .bearer_auth(&s.key)
        .json(&array)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        body["error"]["message"],
        "request body must be a JSON object"
    );
    // The platform surface refuses one as well.
    let (status, body) = s
        .app
        .admin(
            reqwest::Method::POST,
            "/api/v1/admin/users",
            Some(json!(["a@example.com", "5"])),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["message"], "the request body must be a JSON object");
    assert_eq!(s.fake.calls(), 0);
    assert!(s.app.usage(s.user).await.is_empty());
    assert_eq!(s.app.balance_micros(s.user).await, 1_000_000);
    s.app.stop().await;
}

both_backends!(
    twenty_sigterms_with_settlements_in_flight_lose_none,
    a_run_that_shut_down_with_unsettled_requests_fails_ledger_verify,
    a_json_array_is_not_a_request
);

/// How long `/healthz` took to answer (200).
async fn timed_healthz(client: &reqwest::Client, base: &str) -> Duration {
    let t = Instant::now();
    let r = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn huge_single_word_prompts_and_floods_of_cut_streams_do_not_stall_the_gateway() {
    // A long answer without usage, in 64 KiB events, that each client hangs up on: settling it
    // needs a local count of megabytes of text.
    let word = "abcdefghij".repeat(6_554);
    let events: Vec<String> = (0..40)
        .map(|_| {
            format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {"content": word}}]})
            )
        })
        .collect();
    let flood = FakeUpstream::start(Script::Sse {
        events,
        event_delay_ms: 5,
        stall_after: Some(40),
    })
    .await;
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let s = Setup::provision(
        app,
        chat_script(&["fine"], 5, 1, 0),
        json!({}),
        Prices {
            input: "1",
            output: "1",
            cached: "0",
        },
        "1000",
    )
    .await;
    s.app
        .add_channel(&flood.base_url, &["flood"], json!({}))
        .await;
    s.app
        .add_model("flood", json!("1"), json!("1"), json!("0"))
        .await;
    let broke = s.app.add_user(json!("0")).await;
    let broke_key = s.app.add_key(broke, json!({})).await;

    let base = s.app.base.clone();
    // A 5 MiB prompt of one word, from a user with nothing to spend (built before the clock runs).
    let prompt = "a".repeat(5 * 1024 * 1024);
    let huge = bytes::Bytes::from(
        json!({"model": "m1", "messages": [{"role": "user", "content": prompt}]}).to_string(),
    );
    let hostile = tokio::spawn({
        let (base, key, ok_key) = (base.clone(), broke_key.clone(), s.key.clone());
        async move {
            let client = reqwest::Client::new();
            let mut tasks = Vec::new();
            for _ in 0..16 {
                let (c, url, key, body) = (
                    client.clone(),
                    format!("{base}/v1/chat/completions"),
                    key.clone(),
                    huge.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let resp = c
                        .post(url)
                        .bearer_auth(key)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    assert_eq!(resp.map(|r| r.status().as_u16()).ok(), Some(402));
                }));
                // And streams that are cut after their first megabyte.
                let (client, base, key) = (client.clone(), base.clone(), ok_key.clone());
                tasks.push(tokio::spawn(async move {
                    let body = json!({"model": "flood", "stream": true, "max_tokens": 10_000_000, "messages": [{"role": "user", "content": "go"}]});
                    if let Ok(resp) = client.post(format!("{base}/v1/chat/completions")).bearer_auth(key).json(&body).send().await {
                        use futures_util::StreamExt;
                        let mut bytes = resp.bytes_stream();
                        let mut seen = 0;
                        while let Some(Ok(b)) = bytes.next().await {
                            seen += b.len();
                            if seen > 1 << 20 {
                                break;
                            }
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    });
    // Meanwhile: /healthz and an ordinary chat request, timed.
    let client = reqwest::Client::new();
    let mut health = Vec::new();
    let mut chats = Vec::new();
    let started = Instant::now();
    while !hostile.is_finished() {
        health.push(timed_healthz(&client, &base).await);
        let t = Instant::now();
        let r = s
            .app
            .chat(
                &s.key,
                json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .send()
            .await
            .expect("chat");
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("body");
        chats.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hostile_ms = started.elapsed().as_millis();
    hostile.await.expect("hostile clients");
    // The settlements of the cut streams (local counts of megabytes) are still running.
    for _ in 0..10 {
        health.push(timed_healthz(&client, &base).await);
    }
    assert!(chats.len() >= 5, "the hostile load lasted {hostile_ms} ms");
    health.sort();
    chats.sort();
    let p90 = |v: &[Duration]| v[v.len() * 9 / 10];
    eprintln!(
        "hostile load {hostile_ms} ms; healthz p50 {:?} p90 {:?} max {:?}; chat p50 {:?} p90 {:?} max {:?}",
        health[health.len() / 2],
        p90(&health),
        health.last(),
        chats[chats.len() / 2],
        p90(&chats),
        chats.last()
    );
    // Before the fix one such prompt held a worker for seconds.
    assert!(
        p90(&health) < Duration::from_millis(50),
        "healthz: {health:?}"
    );
    assert!(p90(&chats) < Duration::from_millis(50), "chat: {chats:?}");
    // The zero-balance user was refused without cost; the books balance.
    assert_eq!(s.app.balance_micros(broke).await, 0);
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

/// A Python with the official `openai` SDK: `TOLLGATE_TEST_PYTHON` (CI sets it, and then it
/// must work), else `python3` if it has the SDK; `None` (test skipped) otherwise.
fn python_with_sdk() -> Option<String> {
    let has_sdk = |python: &str| {
        std::process::Command::new(python)
            .args(["-c", "import openai"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    match std::env::var("TOLLGATE_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => {
            assert!(has_sdk(&p), "TOLLGATE_TEST_PYTHON={p} cannot import openai");
            Some(p)
        }
        _ => has_sdk("python3").then(|| "python3".to_owned()),
    }
}

/// Streams one chat completion with the official SDK: what it printed (the text, then the last
/// finish_reason), or its error output.
async fn sdk_stream(
    python: &str,
    base: &str,
    key: &str,
    max_tokens: Option<i64>,
) -> Result<String, String> {
    let script = r#"
import json, sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
extra = {"max_tokens": int(sys.argv[3])} if sys.argv[3] != "none" else {}
text, finish = [], None
for chunk in client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "x"}], stream=True, **extra):
    for choice in chunk.choices:
        text.append(choice.delta.content or "")
        finish = choice.finish_reason or finish
print(json.dumps({"text": "".join(text), "finish": finish}))
"#;
    let max = max_tokens.map_or("none".to_owned(), |n| n.to_string());
    let out = tokio::process::Command::new(python)
        .args(["-c", script, &format!("{base}/v1"), key, &max])
        .output()
        .await
        .expect("run python");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_official_sdk_reads_a_stream_with_bytes_between_events_that_are_not_sse() {
    let Some(python) = python_with_sdk() else {
        eprintln!("no Python with the openai SDK (set TOLLGATE_TEST_PYTHON): not run");
        return;
    };
    let chunk = |t: &str| {
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m1",
        "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]})
        )
    };
    let mut body: Vec<u8> = Vec::new();
    body.extend_from_slice(chunk("Hello").as_bytes());
    body.extend_from_slice(b"\xff\xfe\x00 random bytes\n\xc3\x28\n\n");
    body.extend_from_slice(
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\xff\"}}]}\n\n",
    );
    body.extend_from_slice(chunk(" there").as_bytes());
    body.extend_from_slice(b"garbage line\n");
    body.extend_from_slice(
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m1",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        )
        .as_bytes(),
    );
    body.extend_from_slice(b"data: [DONE]\n\n");
    let app = TestApp::spawn(&Backend::Sqlite).await;
    let s = Setup::provision(
        app,
        Script::Raw {
            status: 200,
            content_type: "text/event-stream",
            body,
        },
        json!({}),
        Prices {
            input: "1",
            output: "2",
            cached: "0",
        },
        "1",
    )
    .await;
    let out = sdk_stream(&python, &s.app.base, &s.key, None)
        .await
        .expect("the SDK reads the stream");
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json"),
        json!({"text": "Hello there", "finish": "stop"})
    );
    let usage = s.app.wait_for_usage(s.user, 1).await;
    assert_eq!(usage[0]["status"], "ok");
    assert!(
        s.app
            .metric("tollgate_sse_lines_dropped_total")
            .await
            .unwrap_or(0.0)
            >= 3.0
    );

    // A stream cut at its allowance reads like OpenAI's own length limit.
    let words: Vec<String> = (0..100).map(|_| chunk(" word")).collect();
    s.fake.set_script(Script::Sse {
        events: words,
        event_delay_ms: 0,
        stall_after: None,
    });
    let out = sdk_stream(&python, &s.app.base, &s.key, Some(4))
        .await
        .expect("the SDK reads the cut stream");
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json"),
        json!({"text": " word word word word", "finish": "length"})
    );
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_leaks_are_closed() {
    let app = TestApp::spawn_with(&Backend::Sqlite, |c| {
        c.metrics_token = Some("scrape-token-123".into())
    })
    .await;
    // The database files are the owner's alone.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let file = tollgate::db::sqlite_file(&app.db_url).expect("file");
        for f in [
            file.clone(),
            file.with_extension("lock"),
            std::path::PathBuf::from(format!("{}-wal", file.display())),
        ] {
            let mode = std::fs::metadata(&f).expect("exists").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", f.display());
        }
    }
    // A credential shows at most its last four characters.
    let data = app
        .admin_post(
            "/api/v1/admin/channels",
            json!({"name": "c", "provider": "openai", "base_url": "http://127.0.0.1:9/v1",
        "api_key": "sk-live-abcdefghijklmnop1234", "models": ["m1"], "model_map": {}}),
        )
        .await;
    assert_eq!(data["api_key"], "****1234");
    // An error echoes a few hundred characters of what was sent, not all of it.
    let user = app.add_user(json!("1")).await;
    let key = app.add_key(user, json!({})).await;
    let long = "m".repeat(100_000);
    let resp = app
        .chat(
            &key,
            json!({"model": long, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 404);
    let text = resp.text().await.expect("body");
    assert!(text.len() < 1_000, "{} bytes", text.len());
    // /metrics wants its token.
    for (token, status) in [
        (None, 401),
        (Some("wrong"), 401),
        (Some("scrape-token-123"), 200),
    ] {
        let mut req = app.client.get(app.url("/metrics"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("metrics");
        assert_eq!(resp.status(), status, "token {token:?}");
        if status == 200 {
            assert!(resp.text().await.expect("text").contains("tollgate_"));
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_written_to_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().expect("dir");
    let db_url = format!("sqlite://{}/tollgate.db", dir.path().display());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["migrate"])
        .env("TOLLGATE_DATABASE_URL", &db_url)
        .env("RUST_LOG", "info")
        .output()
        .await
        .expect("run tollgate migrate");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("migrations applied"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_a_request_logs_carries_its_request_id() {
    let dir = tempfile::tempdir().expect("dir");
    let db_url = format!("sqlite://{}/tollgate.db", dir.path().display());
    let server = Server::start(&db_url, &[]).await;
    // A channel nobody listens on: the upstream call fails, and the gateway says so in its log.
    server.admin(reqwest::Method::POST, "/api/v1/admin/channels", Some(json!({
        "name": "dead", "provider": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": "k", "models": ["m1"], "model_map": {}}))).await;
    server
        .admin(
            reqwest::Method::POST,
            "/api/v1/admin/models",
            Some(json!({
        "model": "m1", "input_price": "1", "output_price": "1"})),
        )
        .await;
    let user = server
        .admin(
            reqwest::Method::POST,
            "/api/v1/admin/users",
            Some(json!({"email": "log@example.com", "balance": "1"})),
        )
        .await["id"]
        .as_i64()
        .expect("id");
    let key = server
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/admin/users/{user}/keys"),
            Some(json!({})),
        )
        .await["key"]
        .as_str()
        .expect("key")
        .to_owned();
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth(&key)
        .json(&json!({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 502);
    let id = resp.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = server.log.lock().expect("log").clone();
    let failure = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "upstream call failed")
        .unwrap_or_else(|| panic!("the failure is logged: {lines:?}"));
    assert_eq!(failure["span"]["request_id"], json!(id), "{failure}");
    assert_eq!(failure["span"]["name"], "request");
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_body_that_stalls_is_cut_at_the_chunk_timeout_wherever_it_is_read_whole() {
    // A body that starts and then goes silent.
    let stalling = Script::Sse {
        events: vec!["{\"id\":".into(), "\"x\"}".into()],
        event_delay_ms: 0,
        stall_after: Some(1),
    };
    let app = TestApp::spawn_with(&Backend::Sqlite, |c| c.upstream.chunk_timeout_ms = 300).await;
    let fake = FakeUpstream::start(stalling).await;
    // Anthropic's answer is read whole to be translated.
    app.add_channel_of("anthropic", &fake.base_url, &["claude"], json!({}))
        .await;
    app.add_model("claude", json!("1"), json!("1"), json!("0"))
        .await;
    let channel = app.add_channel(&fake.base_url, &["m1"], json!({})).await;
    let user = app.add_user(json!("1")).await;
    let key = app.add_key(user, json!({})).await;
    let started = Instant::now();
    let resp = app
        .chat(
            &key,
            json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.expect("json");
    assert_cut_in_time(&body["error"]["message"], started);
    // So is the admin channel test's.
    let started = Instant::now();
    let (status, test) = app
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/admin/channels/{channel}/test"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{test}");
    assert_cut_in_time(&test["data"]["error"], started);
    assert_eq!(app.balance_micros(user).await, 1_000_000);
    app.stop().await;
}

/// The error says the body stalled at the 300 ms chunk timeout, and it came in time.
fn assert_cut_in_time(error: &Value, started: Instant) {
    let text = error.as_str().unwrap_or_default();
    assert!(text.contains("stalled for 300 ms"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
