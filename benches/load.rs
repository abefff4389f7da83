//! Load benchmark: the same workload straight against a fake upstream and through Tollgate
//! (auth, rate limits, reservation, metering, settlement, usage records and metrics all on), in
//! one run, so the machine's noise hits both alike. Three processes: this load generator, the
//! fake upstream (this binary again, `BENCH_ROLE=fake`) and the real `tollgate serve` binary, so
//! the gateway's own CPU time and memory are read from `/proc`.
//!
//! For each workload (non-streaming and a 20-chunk stream, at 1 and 50 connections): added
//! latency (p50, p99; for streams also to the first byte), the throughput ratio to direct, and
//! the gateway's CPU (user + system) per request. Memory: the gateway's RSS idle, at its peak
//! under load, held by `BENCH_SLOW_STREAMS` open slow streams, and how soon it comes back after
//! the load ends, round after round (`BENCH_ROUNDS`).
//!
//! Run: `cargo bench --bench load`. Knobs: `BENCH_SCALE=0.2` (a quick pass),
//! `BENCH_ROUNDS=3`, `BENCH_SLOW_STREAMS=9000` (default 5000 × scale; 0 skips), `BENCH_DATABASE_URL=postgres://…`
//! and `BENCH_REDIS_URL=redis://…` (the PostgreSQL + Redis mode: a fresh database is created and
//! dropped), `BENCH_GATEWAY_BIN=path` (measure another build of `tollgate`, e.g. an older
//! commit's), `BENCH_GUARD=benches/baseline.json` (fail when CPU per request is more than 50 %
//! above the baseline kept there for this build profile and backend).

use axum::Router;
use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const ADMIN: &str = "bench-admin-key-0123456789";
const MASTER: &str = "bench-master-key-0123456789abcdefghij";
/// Seconds a slow stream stays open (one chunk a second).
const SLOW_SECONDS: u64 = 10;

// ---------------------------------------------------------------------------------------------
// The fake upstream (its own process).

async fn fake_chat(body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = request["model"].as_str().unwrap_or("m").to_owned();
    let usage = json!({"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32});
    let chunk = |i: usize| {
        let chunk = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": model,
                           "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}, "finish_reason": null}]});
        format!("data: {chunk}\n\n")
    };
    let usage_chunk = || {
        let chunk = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": model,
                           "choices": [], "usage": usage});
        format!("data: {chunk}\n\n")
    };
    let sse = |body: Body| {
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap_or_else(|_| ().into_response())
    };
    if model == "upstream-slow" {
        // One chunk a second: a stream a client keeps open for a while.
        let mut events: Vec<String> = (0..SLOW_SECONDS as usize).map(chunk).collect();
        events.push(usage_chunk());
        events.push("data: [DONE]\n\n".to_owned());
        let stream =
            futures_util::stream::iter(events.into_iter().enumerate()).then(|(i, e)| async move {
                if i > 0 && i < SLOW_SECONDS as usize {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok::<Bytes, std::convert::Infallible>(Bytes::from(e))
            });
        return sse(Body::from_stream(stream));
    }
    if request["stream"] == true {
        let mut out: String = (0..20).map(chunk).collect();
        if request["stream_options"]["include_usage"] == true {
            out.push_str(&usage_chunk());
        }
        out.push_str("data: [DONE]\n\n");
        // The whole event stream in one write: Tollgate still splits it and forwards it event by
        // event, and the direct path is not slowed by per-frame TCP delays of the fake itself.
        return sse(Body::from(out));
    }
    axum::Json(json!({"id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": model,
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, how can I help?"},
                                   "finish_reason": "stop"}],
                      "usage": usage}))
    .into_response()
}

async fn run_fake() {
    let app = Router::new().route("/v1/chat/completions", post(fake_chat));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    println!("listening {}", listener.local_addr().expect("addr"));
    axum::serve(listener, app).await.expect("fake upstream");
}

// ---------------------------------------------------------------------------------------------
// Processes and what /proc says about them.

/// `program`, ended when the bench ends.
fn command(program: &str) -> Command {
    let mut c = Command::new(program);
    c.kill_on_drop(true);
    c
}

/// Reads stdout lines until `find` returns something; keeps draining the rest.
async fn wait_for_line(child: &mut Child, find: impl Fn(&str) -> Option<String>) -> String {
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("line") {
            if let Some(v) = find(&line) {
                return v;
            }
        }
        panic!("process exited before it listened");
    })
    .await
    .expect("listening in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    found
}

/// User + system CPU time of `pid`, in microseconds.
fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let tck = clock_ticks();
    (ticks(11) + ticks(12)) / tck * 1e6
}

/// Clock ticks per second (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A field of `/proc/<pid>/status` in MB (`VmRSS`, `VmHWM`).
fn mem_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

// ---------------------------------------------------------------------------------------------
// Load.

struct Stats {
    p50_us: f64,
    p99_us: f64,
    /// Median time to the first body byte.
    ttfb_p50_us: f64,
    rps: f64,
    requests: usize,
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
                let mut body = resp.bytes_stream();
                let mut first = None;
                while let Some(chunk) = body.next().await {
                    chunk.expect("body");
                    first.get_or_insert_with(|| t.elapsed());
                }
                lat.push((t.elapsed(), first.unwrap_or_else(|| t.elapsed())));
            }
            lat
        }));
    }
    let mut all: Vec<(Duration, Duration)> = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    let elapsed = started.elapsed();
    let mut total_lat: Vec<Duration> = all.iter().map(|l| l.0).collect();
    let mut first: Vec<Duration> = all.iter().map(|l| l.1).collect();
    total_lat.sort();
    first.sort();
    let pct = |v: &[Duration], p: f64| {
        v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6
    };
    Stats {
        p50_us: pct(&total_lat, 0.50),
        p99_us: pct(&total_lat, 0.99),
        ttfb_p50_us: pct(&first, 0.50),
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        requests: all.len(),
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
    assert_eq!(resp["success"], true, "{path}: {resp}");
    resp["data"].clone()
}

/// Opens `n` slow streams at once and holds them until each has its first event: the gateway's
/// RSS then, and the streams' tasks (read to the end in the background).
async fn open_slow_streams(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    n: usize,
    pid: u32,
) -> (f64, Vec<tokio::task::JoinHandle<bool>>) {
    let body = json!({"model": "slow", "stream": true, "max_tokens": 64,
                      "messages": [{"role": "user", "content": "slowly"}]})
    .to_string();
    let opened = Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (client, url, key, body, opened) = (
            client.clone(),
            url.to_owned(),
            key.to_owned(),
            body.clone(),
            Arc::clone(&opened),
        );
        tasks.push(tokio::spawn(async move {
            let Ok(resp) = client
                .post(&url)
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
            else {
                opened.add_permits(1);
                return false;
            };
            let ok = resp.status().is_success();
            let mut events = resp.bytes_stream();
            let mut first = true;
            while let Some(chunk) = events.next().await {
                if chunk.is_err() {
                    break;
                }
                if std::mem::take(&mut first) {
                    opened.add_permits(1);
                }
            }
            if first {
                opened.add_permits(1);
            }
            ok
        }));
    }
    let all = opened.acquire_many(n as u32);
    let _ = tokio::time::timeout(Duration::from_secs(120), all).await;
    (mem_mb(pid, "VmRSS:"), tasks)
}

/// Waits (up to 30 s) for the gateway's RSS to come back within 20 % of `idle`: the seconds it
/// took, or `None`.
async fn recovery(pid: u32, idle: f64) -> (Option<f64>, f64) {
    let started = Instant::now();
    loop {
        let rss = mem_mb(pid, "VmRSS:");
        if rss <= idle * 1.2 {
            return (Some(started.elapsed().as_secs_f64()), rss);
        }
        if started.elapsed() > Duration::from_secs(30) {
            return (None, rss);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() {
    if std::env::var("BENCH_ROLE").as_deref() == Ok("fake") {
        return run_fake().await;
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let scale: f64 = env("BENCH_SCALE")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let rounds: usize = env("BENCH_ROUNDS")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let slow_streams: usize = env("BENCH_SLOW_STREAMS")
        .and_then(|s| s.parse().ok())
        .unwrap_or((5_000.0 * scale) as usize);
    let n = |base: usize| ((base as f64 * scale) as usize).max(50);

    // The fake upstream, in its own process.
    let me = std::env::current_exe().expect("own path");
    let mut fake = command(&me.to_string_lossy());
    fake.env("BENCH_ROLE", "fake").stdout(Stdio::piped());
    let mut fake = fake.spawn().expect("start the fake upstream");
    let fake_addr = wait_for_line(&mut fake, |l| {
        l.strip_prefix("listening ").map(str::to_owned)
    })
    .await;

    // The database: a SQLite file, or a fresh PostgreSQL database (and a Redis prefix).
    let dir = tempfile::tempdir().expect("tempdir");
    let run_id = format!("{:08x}", rand::random::<u32>());
    let (db_url, pg) = match env("BENCH_DATABASE_URL") {
        Some(server) => {
            let name = format!("bench_{run_id}");
            let admin_pool = sqlx::PgPool::connect(&server).await.expect("postgres");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&admin_pool)
                .await
                .expect("create database");
            let url = match server.rsplit_once('/') {
                Some((root, _)) => format!("{root}/{name}"),
                None => server.clone(),
            };
            (url, Some((admin_pool, name)))
        }
        None => (format!("sqlite://{}/bench.db", dir.path().display()), None),
    };
    let backend = if pg.is_some() { "postgres" } else { "sqlite" };

    let gateway_bin =
        env("BENCH_GATEWAY_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_tollgate").to_owned());
    let mut gw = command(&gateway_bin);
    gw.args(["serve", "--listen", "127.0.0.1:0"])
        .env("TOLLGATE_DATABASE_URL", &db_url)
        .env("TOLLGATE_ADMIN_KEY", ADMIN)
        .env("TOLLGATE_MASTER_KEY", MASTER)
        .env("TOLLGATE__LOG__FORMAT", "json")
        .env("RUST_LOG", "warn,tollgate=info")
        .stdout(Stdio::piped());
    if let Some(redis) = env("BENCH_REDIS_URL") {
        gw.env("TOLLGATE_REDIS_URL", redis)
            .env("TOLLGATE__REDIS__PREFIX", format!("bench-{run_id}"));
    }
    let mut gateway = gw.spawn().expect("start tollgate");
    let gw_addr = wait_for_line(&mut gateway, |l| {
        let entry: Value = serde_json::from_str(l).ok()?;
        (entry["fields"]["message"] == "tollgate listening")
            .then(|| entry["fields"]["addr"].as_str().map(str::to_owned))
            .flatten()
    })
    .await;
    let pid = gateway.id().expect("gateway pid");
    let gw = format!("http://{gw_addr}");

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let upstream = format!("http://{fake_addr}/v1");
    admin(&client, &gw, "/api/v1/admin/channels",
        json!({"name": "fake", "provider": "openai", "base_url": upstream,
               "api_key": "x", "models": ["m1", "slow"], "model_map": {"m1": "upstream-m1", "slow": "upstream-slow"}}),
    )
    .await;
    for model in ["m1", "slow"] {
        admin(
            &client,
            &gw,
            "/api/v1/admin/models",
            json!({"model": model, "input_price": 0.15, "output_price": 0.6}),
        )
        .await;
    }
    let user = admin(
        &client,
        &gw,
        "/api/v1/admin/users",
        json!({"email": format!("bench-{run_id}@example.com"), "balance": 1000000}),
    )
    .await;
    let key = admin(
        &client,
        &gw,
        &format!("/api/v1/admin/users/{}/keys", user["id"]),
        // Limits stay on (every request is checked and counted) but high enough not to refuse.
        json!({"name": "bench", "rpm": 1_000_000_000_i64, "tpm": 1_000_000_000_000_i64,
               "max_concurrency": 1_000_000}),
    )
    .await;
    let key = key["key"].as_str().expect("key").to_owned();

    let messages = json!([{"role": "user", "content": "Say hello in one short sentence, please."}]);
    let plain = json!({"model": "m1", "messages": messages, "max_tokens": 64});
    let stream = json!({"model": "m1", "messages": messages, "max_tokens": 64, "stream": true});
    let direct_url = format!("{upstream}/chat/completions");
    let gw_url = format!("{gw}/v1/chat/completions");

    // Idle: after provisioning and one warm-up pass.
    run(&client, &gw_url, &key, &plain, 200, 10).await;
    run(&client, &gw_url, &key, &stream, 200, 10).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = mem_mb(pid, "VmRSS:");
    let profile = if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    };
    println!(
        "Tollgate load benchmark: {backend}, {profile} build, scale {scale}, {rounds} round(s); latencies in µs, CPU in µs per request"
    );
    println!("gateway idle RSS: {idle:.1} MB");
    println!(
        "{:<32} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9}",
        "scenario", "dir p50", "gw p50", "+p50", "+p99", "+ttfb", "rps gw", "ratio", "cpu/req"
    );
    let mut cpu_per_request: Vec<(String, f64)> = Vec::new();
    let mut peak_load = 0.0_f64;
    for round in 1..=rounds {
        for (name, body, total, conc) in [
            ("non-streaming, 1 connection", &plain, n(2000), 1),
            ("non-streaming, 50 connections", &plain, n(10000), 50),
            ("20-chunk stream, 1 connection", &stream, n(1000), 1),
            ("20-chunk stream, 50 connections", &stream, n(5000), 50),
        ] {
            // Warm both paths, then measure direct and through the gateway back to back.
            run(&client, &direct_url, "x", body, 100, conc.min(10)).await;
            run(&client, &gw_url, &key, body, 100, conc.min(10)).await;
            let direct = run(&client, &direct_url, "x", body, total, conc).await;
            let cpu_before = cpu_us(pid);
            let via = run(&client, &gw_url, &key, body, total, conc).await;
            let cpu = (cpu_us(pid) - cpu_before) / via.requests as f64;
            if conc > 1 {
                peak_load = peak_load.max(mem_mb(pid, "VmRSS:"));
            }
            println!(
                "{:<32} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>7.3} {:>9.1}",
                name,
                direct.p50_us,
                via.p50_us,
                via.p50_us - direct.p50_us,
                via.p99_us - direct.p99_us,
                via.ttfb_p50_us - direct.ttfb_p50_us,
                via.rps,
                via.rps / direct.rps,
                cpu,
            );
            cpu_per_request.push((format!("{name} (round {round})"), cpu));
        }
        let (back, rss) = recovery(pid, idle).await;
        println!(
            "round {round}: RSS at the end of the load {peak_load:.1} MB; {}",
            match back {
                Some(s) => format!("back within 20 % of idle after {s:.1} s ({rss:.1} MB)"),
                None => format!("NOT back within 20 % of idle after 30 s ({rss:.1} MB)"),
            }
        );
    }
    if slow_streams > 0 {
        let (rss, tasks) = open_slow_streams(&client, &gw_url, &key, slow_streams, pid).await;
        println!(
            "{slow_streams} open slow streams: gateway RSS {rss:.1} MB ({:.1} MB per 1,000 above idle)",
            (rss - idle) / slow_streams as f64 * 1000.0
        );
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap_or(false));
        }
        let (back, after) = recovery(pid, idle).await;
        println!(
            "  {ok} of {slow_streams} answered 200; afterwards {}",
            match back {
                Some(s) => format!("back within 20 % of idle after {s:.1} s ({after:.1} MB)"),
                None => format!("NOT back within 20 % of idle after 30 s ({after:.1} MB)"),
            }
        );
    }
    println!(
        "gateway peak RSS over the run (VmHWM): {:.1} MB",
        mem_mb(pid, "VmHWM:")
    );

    // The guard: CPU per request against the baseline kept for this profile and backend.
    let median = |prefix: &str| {
        let mut v: Vec<f64> = cpu_per_request
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, c)| *c)
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let measured = json!({
        "non_streaming_cpu_us": median("non-streaming, 50"),
        "stream_cpu_us": median("20-chunk stream, 50"),
    });
    println!(
        "BENCH_RESULT {}",
        json!({"profile": profile, "backend": backend, "cpu": measured})
    );
    let mut failed = false;
    if let Some(path) = env("BENCH_GUARD") {
        let text = std::fs::read_to_string(&path).expect("baseline file");
        let baseline: Value = serde_json::from_str(&text).expect("baseline JSON");
        let base = &baseline[profile][backend];
        for field in ["non_streaming_cpu_us", "stream_cpu_us"] {
            let (now, then) = (
                measured[field].as_f64().unwrap_or(0.0),
                base[field].as_f64(),
            );
            match then {
                Some(then) if now > then * 1.5 => {
                    println!(
                        "REGRESSION: {field} {now:.1} µs is more than 50 % above the baseline {then:.1} µs"
                    );
                    failed = true;
                }
                Some(then) => println!("guard: {field} {now:.1} µs (baseline {then:.1} µs): ok"),
                None => println!("guard: no baseline for {profile}/{backend}/{field} in {path}"),
            }
        }
    }

    let _ = gateway.start_kill();
    let _ = gateway.wait().await;
    drop(fake);
    if let Some((pool, name)) = pg {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&pool)
        .await;
    }
    if failed {
        std::process::exit(1);
    }
}
