//! Load benchmark: the same workload straight against a local fake upstream and through
//! Tollgate (auth, rate limits, reservation, metering, settlement and metrics all on, SQLite
//! backend), in one run, so the machine's noise hits both alike. Prints added latency (p50,
//! p99) and the throughput ratio for: non-streaming at concurrency 1 and 50, and a 20-chunk
//! stream.
//!
//! Run: `cargo bench --bench load` (set `BENCH_SCALE=0.2` for a quick pass).

use axum::Router;
use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::config::Config;
use tollgate::startup::Application;

const ADMIN: &str = "bench-admin-key-0123456789";

async fn fake_chat(body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = request["model"].as_str().unwrap_or("m").to_owned();
    let usage = json!({"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32});
    if request["stream"] == true {
        let mut out = String::new();
        for i in 0..20 {
            let chunk = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": model,
                               "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}, "finish_reason": null}]});
            out.push_str(&format!("data: {chunk}\n\n"));
        }
        if request["stream_options"]["include_usage"] == true {
            let chunk = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": model,
                               "choices": [], "usage": usage});
            out.push_str(&format!("data: {chunk}\n\n"));
        }
        out.push_str("data: [DONE]\n\n");
        // The whole event stream in one write: Tollgate still splits it and forwards it event by
        // event, and the direct path is not slowed by per-frame TCP delays of the fake itself.
        let frames: Vec<Result<Bytes, std::convert::Infallible>> = vec![Ok(Bytes::from(out))];
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(futures_util::stream::iter(frames)))
            .unwrap_or_else(|_| ().into_response());
    }
    axum::Json(json!({"id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": model,
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, how can I help?"},
                                   "finish_reason": "stop"}],
                      "usage": usage}))
    .into_response()
}

struct Stats {
    p50_us: f64,
    p99_us: f64,
    rps: f64,
}

/// Sends `total` requests with `concurrency` workers; returns latency percentiles and rate.
async fn run(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
    total: usize,
    concurrency: usize,
) -> Stats {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, key, body, next) = (
            client.clone(),
            url.to_owned(),
            key.to_owned(),
            body.to_string(),
            Arc::clone(&next),
        );
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let t = Instant::now();
                let resp = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("request");
                assert!(resp.status().is_success(), "status {}", resp.status());
                let _ = resp.bytes().await.expect("body");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all: Vec<Duration> = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    let elapsed = started.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6;
    Stats {
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        rps: all.len() as f64 / elapsed.as_secs_f64(),
    }
}

async fn admin(client: &reqwest::Client, base: &str, path: &str, body: Value) -> Value {
    let resp: Value = client
        .post(format!("{base}{path}"))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    resp["data"].clone()
}

#[tokio::main]
async fn main() {
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let n = |base: usize| ((base as f64 * scale) as usize).max(50);

    let fake = Router::new().route("/v1/chat/completions", post(fake_chat));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let fake_addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, fake).await });

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::load_from(None, Vec::<(String, String)>::new()).expect("config");
    config.server.listen = "127.0.0.1:0".into();
    config.database.url = format!("sqlite://{}/bench.db", dir.path().display());
    config.admin_key = Some(ADMIN.into());
    config.master_key = Some("bench-master-key-0123456789abcdefghij".into());
    let app = Application::build(config).await.expect("app");
    let gw = format!("http://{}", app.local_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stop_rx.await;
    }));

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let upstream = format!("http://{fake_addr}/v1");
    admin(
        &client,
        &gw,
        "/api/v1/admin/channels",
        json!({"name": "fake", "provider": "openai", "base_url": upstream,
        "api_key": "x", "models": ["m1"], "model_map": {"m1": "upstream-m1"}}),
    )
    .await;
    admin(
        &client,
        &gw,
        "/api/v1/admin/models",
        json!({"model": "m1", "input_price": 0.15, "output_price": 0.6}),
    )
    .await;
    let user = admin(
        &client,
        &gw,
        "/api/v1/admin/users",
        json!({"email": "bench@example.com", "balance": 1000000}),
    )
    .await;
    let key = admin(
        &client,
        &gw,
        &format!("/api/v1/admin/users/{}/keys", user["id"]),
        // Limits stay on (every request is checked and counted) but high enough not to refuse.
        json!({"name": "bench", "rpm": 1_000_000_000_i64, "tpm": 1_000_000_000_000_i64}),
    )
    .await;
    let key = key["key"].as_str().expect("key").to_owned();

    let messages = json!([{"role": "user", "content": "Say hello in one short sentence, please."}]);
    let plain = json!({"model": "m1", "messages": messages, "max_tokens": 64});
    let stream = json!({"model": "m1", "messages": messages, "max_tokens": 64, "stream": true});
    let direct_url = format!("{upstream}/chat/completions");
    let gw_url = format!("{gw}/v1/chat/completions");

    println!("Tollgate load benchmark (scale {scale}); latencies in microseconds");
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>7}",
        "scenario",
        "direct p50",
        "gw p50",
        "direct p99",
        "gw p99",
        "+p50 µs",
        "+p99 µs",
        "rps gw/direct"
    );
    for (name, body, total, conc) in [
        ("non-streaming, concurrency 1", &plain, n(2000), 1),
        ("non-streaming, concurrency 50", &plain, n(10000), 50),
        ("20-chunk stream, concurrency 1", &stream, n(1000), 1),
        ("20-chunk stream, concurrency 50", &stream, n(5000), 50),
    ] {
        // Warm both paths, then measure direct and through the gateway back to back.
        run(&client, &direct_url, "x", body, 100, conc.min(10)).await;
        run(&client, &gw_url, &key, body, 100, conc.min(10)).await;
        let direct = run(&client, &direct_url, "x", body, total, conc).await;
        let via = run(&client, &gw_url, &key, body, total, conc).await;
        println!(
            "{:<34} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>9.0} {:>9.0} {:>7.2}",
            name,
            direct.p50_us,
            via.p50_us,
            direct.p99_us,
            via.p99_us,
            via.p50_us - direct.p50_us,
            via.p99_us - direct.p99_us,
            via.rps / direct.rps,
        );
        println!(
            "{:<34} direct {:.0} req/s, through Tollgate {:.0} req/s",
            "", direct.rps, via.rps
        );
    }
    let balance: Value = client
        .get(format!("{gw}/api/v1/admin/users/{}", user["id"]))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("user")
        .json()
        .await
        .expect("json");
    // The user started with 1 000 000 credits = 10^12 micro-credits.
    println!(
        "charged in total: {} micro-credits",
        1_000_000_000_000_i64 - balance["data"]["balance_micros"].as_i64().unwrap_or(0)
    );
    // Where the time went, from the gateway's own histograms (mean over the whole run).
    let metrics = client
        .get(format!("{gw}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "tollgate_gateway_overhead_seconds",
        "tollgate_upstream_duration_seconds",
        "tollgate_http_request_duration_seconds",
    ] {
        let total = |suffix: &str| -> f64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(&format!("{name}{suffix}")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let (sum, count) = (total("_sum"), total("_count"));
        if count > 0.0 {
            println!(
                "mean {name}: {:.0} µs over {count} observations",
                sum / count * 1e6
            );
        }
    }
    let _ = stop_tx.send(());
    server.await.expect("server").expect("shutdown");
}
