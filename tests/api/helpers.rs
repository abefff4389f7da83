//! Test harness: the real Tollgate app on port 0 (SQLite in a temp dir, or a fresh PostgreSQL
//! database when `TEST_DATABASE_URL` is set), and a fake upstream that speaks OpenAI's JSON and
//! SSE over real HTTP and counts what it was sent.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tollgate::config::Config;
use tollgate::db::Db;
use tollgate::startup::Application;
use tollgate::state::AppState;

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
/// The master key test gateways seal channel credentials with.
pub const MASTER_KEY: &str = "test-master-key-0123456789abcdefghijkl";

/// Which database a test runs on.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    /// PostgreSQL, when `TEST_DATABASE_URL` is set.
    pub fn postgres() -> Option<Backend> {
        std::env::var("TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .map(Backend::Postgres)
    }
}

/// Runs a test body on SQLite and, when `TEST_DATABASE_URL` is set, on Postgres, as two tests.
#[macro_export]
macro_rules! on_both_backends {
    ($(async fn $name:ident($b:ident: Backend) $body:block)*) => {
        $(
            async fn $name($b: $crate::helpers::Backend) $body

            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    match $crate::helpers::Backend::postgres() {
                        Some(b) => super::$name(b).await,
                        None => eprintln!("TEST_DATABASE_URL is not set: Postgres variant not run"),
                    }
                }
            }
        )*
    };
}

/// `TEST_REDIS_URL`, when set.
pub fn redis_url() -> Option<String> {
    std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A database for a test that runs the real binary: a SQLite file in `dir`, or a fresh Postgres
/// database (whose server URL and name are returned, to drop it afterwards).
pub async fn fresh_database(
    b: &Backend,
    dir: &tempfile::TempDir,
) -> (String, Option<(String, String)>) {
    match b {
        Backend::Sqlite => (
            format!("sqlite://{}/tollgate.db", dir.path().display()),
            None,
        ),
        Backend::Postgres(url) => {
            let (db_url, name) = create_pg_database(url).await;
            (db_url, Some((url.clone(), name)))
        }
    }
}

/// Replaces the database name in a Postgres URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let base = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Creates a fresh database on the server of `url`: (its URL, its name).
pub async fn create_pg_database(url: &str) -> (String, String) {
    let name = format!("tollgate_test_{:016x}", rand_u64());
    let admin = sqlx::PgPool::connect(url)
        .await
        .expect("connect to TEST_DATABASE_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create test database");
    admin.close().await;
    (with_database(url, &name), name)
}

/// Drops a database made by [`create_pg_database`].
pub async fn drop_pg_database(url: &str, name: &str) {
    if let Ok(admin) = sqlx::PgPool::connect(url).await {
        let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
        admin.close().await;
    }
}

/// A running Tollgate.
pub struct TestApp {
    pub base: String,
    /// The database this app serves (for `tollgate ledger verify`).
    pub db_url: String,
    pub client: reqwest::Client,
    pub state: AppState,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl TestApp {
    pub async fn spawn(backend: &Backend) -> TestApp {
        TestApp::spawn_with(backend, |_| {}).await
    }

    /// Starts the app with the test defaults, adjusted by `adjust`.
    pub async fn spawn_with(backend: &Backend, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let mut config =
            Config::load_from(None, Vec::<(String, String)>::new()).expect("default config");
        config.server.listen = "127.0.0.1:0".into();
        config.admin_key = Some(ADMIN_KEY.into());
        config.master_key = Some(MASTER_KEY.into());
        config.upstream.first_byte_timeout_ms = 5_000;
        config.upstream.chunk_timeout_ms = 5_000;
        config.server.shutdown_grace_ms = 5_000;
        let mut dir = None;
        let mut pg = None;
        match backend {
            Backend::Sqlite => {
                let d = tempfile::tempdir().expect("temp dir");
                config.database.url = format!("sqlite://{}/tollgate.db", d.path().display());
                dir = Some(d);
            }
            Backend::Postgres(url) => {
                let (db_url, name) = create_pg_database(url).await;
                config.database.url = db_url;
                // The Postgres variant is the multi-instance setup: counters and change notices
                // in Redis too, under a prefix of this test's own.
                if let Some(redis) = redis_url() {
                    config.redis.url = redis;
                    config.redis.prefix = format!("test-{name}");
                    // A loaded test machine must not trip the outage path by accident.
                    config.redis.timeout_ms = 2000;
                }
                pg = Some((url.clone(), name));
            }
        }
        adjust(&mut config);
        let db_url = config.database.url.clone();
        let app = Application::build(config).await.expect("build app");
        let addr = app.local_addr();
        let state = app.state();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        TestApp {
            base: format!("http://{addr}"),
            db_url,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(300)
                .build()
                .expect("client"),
            state,
            shutdown: Some(tx),
            server: Some(server),
            _dir: dir,
            pg,
        }
    }

    /// Graceful shutdown: waits for every settlement, then drops a Postgres test database.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server result");
        }
        if let Some((url, name)) = self.pg.take() {
            drop_pg_database(&url, &name).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// An admin call; returns (HTTP status, body).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(ADMIN_KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("admin request");
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// An admin POST that must succeed; returns `data`.
    pub async fn admin_post(&self, path: &str, body: Value) -> Value {
        let (status, resp) = self.admin(reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(status, 200, "POST {path}: {resp}");
        assert_eq!(resp["code"], 200);
        resp["data"].clone()
    }

    pub async fn add_channel(&self, base_url: &str, models: &[&str], model_map: Value) -> i64 {
        self.add_channel_of("openai", base_url, models, model_map)
            .await
    }

    /// A channel of `provider` type.
    pub async fn add_channel_of(
        &self,
        provider: &str,
        base_url: &str,
        models: &[&str],
        model_map: Value,
    ) -> i64 {
        let data = self
            .admin_post(
                "/api/v1/admin/channels",
                json!({"name": format!("fake-{provider}-{:x}", rand_u64() % 0xffff), "provider": provider,
                       "base_url": base_url, "api_key": "upstream-secret",
                       "models": models, "model_map": model_map, "priority": 0, "weight": 1}),
            )
            .await;
        data["id"].as_i64().expect("channel id")
    }

    /// Prices as JSON numbers or strings, credits per 1M tokens.
    pub async fn add_model(&self, model: &str, input: Value, output: Value, cached: Value) -> i64 {
        let data = self
            .admin_post(
                "/api/v1/admin/models",
                json!({"model": model, "input_price": input, "output_price": output, "cached_input_price": cached}),
            )
            .await;
        data["id"].as_i64().expect("model id")
    }

    pub async fn add_user(&self, balance: Value) -> i64 {
        let email = format!("user{:x}@example.com", rand_u64());
        let data = self
            .admin_post(
                "/api/v1/admin/users",
                json!({"email": email, "balance": balance}),
            )
            .await;
        data["id"].as_i64().expect("user id")
    }

    pub async fn add_key(&self, user_id: i64, extra: Value) -> String {
        let mut body = json!({"name": "test key"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let data = self
            .admin_post(&format!("/api/v1/admin/users/{user_id}/keys"), body)
            .await;
        data["key"].as_str().expect("key").to_owned()
    }

    pub async fn user(&self, id: i64) -> Value {
        let (status, body) = self
            .admin(
                reqwest::Method::GET,
                &format!("/api/v1/admin/users/{id}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["data"].clone()
    }

    pub async fn balance_micros(&self, id: i64) -> i64 {
        self.user(id).await["balance_micros"]
            .as_i64()
            .expect("balance_micros")
    }

    /// Every usage record of a user (oldest first).
    pub async fn usage(&self, user_id: i64) -> Vec<Value> {
        let mut all = Vec::new();
        for page in 1.. {
            let (status, body) = self
                .admin(
                    reqwest::Method::GET,
                    &format!("/api/v1/admin/users/{user_id}/usage?page={page}&page_size=100"),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{body}");
            let items = body["data"]["items"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let done = items.len() < 100;
            all.extend(items);
            if done {
                break;
            }
        }
        all.reverse();
        all
    }

    /// Waits until the user has `n` usage records (settlement after a disconnect is async),
    /// then reads them all.
    pub async fn wait_for_usage(&self, user_id: i64, n: usize) -> Vec<Value> {
        for _ in 0..400 {
            let (_, body) = self
                .admin(
                    reqwest::Method::GET,
                    &format!("/api/v1/admin/users/{user_id}/usage?page_size=1"),
                    None,
                )
                .await;
            if body["data"]["total"].as_u64().unwrap_or(0) >= n as u64 {
                return self.usage(user_id).await;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("usage records for user {user_id} never reached {n}");
    }

    /// Asserts the money invariants for a user: ledger sum = balance, nothing reserved, no
    /// reservation rows left, balance not negative.
    pub async fn assert_books_balance(&self, user_id: i64) {
        let user = self.user(user_id).await;
        let balance = user["balance_micros"].as_i64().expect("balance");
        let ledger = tollgate::db::users::ledger_sum(&self.state.db, user_id)
            .await
            .expect("ledger sum");
        assert_eq!(ledger, balance, "ledger sum must equal the balance");
        assert!(balance >= 0, "balance went below zero: {balance}");
        assert_eq!(user["reserved_micros"], 0, "reservations left: {user}");
        let usage = self.usage(user_id).await;
        let charged: i64 = usage
            .iter()
            .map(|u| u["cost_micros"].as_i64().expect("cost"))
            .sum();
        let debits: i64 = {
            let (_, rows) = tollgate::db::users::ledger(&self.state.db, user_id, 100_000, 0)
                .await
                .expect("ledger");
            rows.iter()
                .filter(|r| r.kind == "charge")
                .map(|r| -r.amount_micros)
                .sum()
        };
        assert_eq!(charged, debits, "usage costs must equal ledger debits");
        let report = tollgate::billing::verify::verify(&self.state.db)
            .await
            .expect("ledger verify");
        assert!(report.is_ok(), "ledger verify: {:#?}", report.problems);
        assert_eq!(
            self.metric("tollgate_settlement_failures_total").await,
            Some(0.0),
            "no settlement may fail"
        );
    }

    /// A metric's value from `/metrics` (the sum over its label sets), if it is exported.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        self.metric_where(name, "").await
    }

    /// The sum of a metric's samples whose labels contain `label` (e.g. `reason="idle"`).
    pub async fn metric_where(&self, name: &str, label: &str) -> Option<f64> {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        metric_value_where(&text, name, label)
    }

    /// Runs `tollgate ledger verify` on this app's database: (success, what it printed).
    pub async fn ledger_verify_cli(&self) -> (bool, String) {
        ledger_verify_cli(&self.db_url).await
    }

    pub fn chat(&self, key: &str, body: Value) -> reqwest::RequestBuilder {
        self.client
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&body)
    }
}

/// The sum of a metric's samples whose labels contain `label` (all of them for "").
pub fn metric_value_where(text: &str, name: &str, label: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) || !rest.contains(label) {
            continue;
        }
        let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        *found.get_or_insert(0.0) += value;
    }
    found
}

/// Runs `tollgate ledger verify` against `db_url`: (success, stdout and stderr).
pub async fn ledger_verify_cli(db_url: &str) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["ledger", "verify"])
        .env("TOLLGATE_DATABASE_URL", db_url)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run tollgate ledger verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// What the fake upstream answers.
#[derive(Clone, Debug)]
pub enum Script {
    /// These exact bytes, with this status and content type.
    Raw {
        status: u16,
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// An SSE body given as whole events; the usage-only event (`"choices":[]`) is sent only
    /// when the request asked for it, as OpenAI does.
    Sse {
        events: Vec<String>,
        event_delay_ms: u64,
        stall_after: Option<usize>,
    },
    /// These SSE events, then the connection breaks (no end of the chunked body).
    SseThenReset { events: Vec<String> },
    /// A chat completion built from pieces of text, JSON or SSE as the request asks.
    Chat {
        pieces: Vec<String>,
        usage: Option<Value>,
        stall_after: Option<usize>,
    },
}

#[derive(Default)]
pub struct FakeState {
    pub calls: AtomicUsize,
    /// Streams whose connection was closed before the fake finished sending.
    pub cancelled: AtomicUsize,
    pub bodies: Mutex<Vec<Bytes>>,
    pub auth: Mutex<Vec<String>>,
    script: Mutex<Option<Script>>,
    headers_delay_ms: AtomicUsize,
    /// Requests waiting out the headers delay now, and the most there ever were at once.
    in_delay: AtomicUsize,
    pub max_in_delay: AtomicUsize,
}

/// A local server speaking OpenAI's chat completions API.
pub struct FakeUpstream {
    /// The upstream's `/v1` root.
    pub base_url: String,
    pub state: Arc<FakeState>,
}

/// Counts a stream as cancelled if it is dropped before its end.
struct DropGuard {
    state: Arc<FakeState>,
    finished: bool,
}

impl DropGuard {
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.state.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Serves a fake third party on a free local port; returns its `/v1` root.
pub async fn serve_fake(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

impl FakeUpstream {
    pub async fn start(script: Script) -> FakeUpstream {
        let state = Arc::new(FakeState::default());
        *state.script.lock().expect("lock") = Some(script);
        let app = Router::new()
            .route("/v1/chat/completions", post(fake_chat))
            .route("/v1/completions", post(fake_chat))
            .route("/v1/embeddings", post(fake_chat))
            .route("/v1/images/generations", post(fake_chat))
            .route("/v1/messages", post(fake_chat))
            .with_state(Arc::clone(&state));
        FakeUpstream {
            base_url: serve_fake(app).await,
            state,
        }
    }

    pub fn set_script(&self, script: Script) {
        *self.state.script.lock().expect("lock") = Some(script);
    }

    pub fn set_headers_delay(&self, ms: usize) {
        self.state.headers_delay_ms.store(ms, Ordering::SeqCst);
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    pub fn cancelled(&self) -> usize {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    pub fn last_body(&self) -> Bytes {
        self.state
            .bodies
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("a request")
    }
}

/// The text of the fixture files.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

/// The events of an SSE fixture, each with its terminator.
pub fn fixture_events(name: &str) -> Vec<String> {
    let text = String::from_utf8(fixture(name)).expect("utf8");
    text.split_inclusive("\n\n").map(str::to_owned).collect()
}

fn sse_body(
    state: Arc<FakeState>,
    events: Vec<String>,
    delay_ms: u64,
    stall_after: Option<usize>,
) -> Body {
    let guard = DropGuard {
        state,
        finished: false,
    };
    let stream = futures_util::stream::unfold((guard, 0usize), move |(mut guard, i)| {
        let events = events.clone();
        async move {
            if stall_after == Some(i) {
                std::future::pending::<()>().await;
            }
            if i >= events.len() {
                guard.finish();
                return None;
            }
            if delay_ms > 0 && i > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            Some((
                Ok::<Bytes, std::convert::Infallible>(Bytes::from(events[i].clone())),
                (guard, i + 1),
            ))
        }
    });
    Body::from_stream(stream)
}

async fn fake_chat(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.calls.fetch_add(1, Ordering::SeqCst);
    if let Some(a) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        state.auth.lock().expect("lock").push(a.to_owned());
    }
    if let Some(a) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        let version = headers
            .get("anthropic-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        state
            .auth
            .lock()
            .expect("lock")
            .push(format!("x-api-key {a} version {version}"));
    }
    state.bodies.lock().expect("lock").push(body.clone());
    let delay = state.headers_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        // Dropped (counted as cancelled) if the caller hangs up while we wait.
        let mut guard = DropGuard {
            state: Arc::clone(&state),
            finished: false,
        };
        let now = state.in_delay.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_delay.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
        state.in_delay.fetch_sub(1, Ordering::SeqCst);
        guard.finish();
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let wants_usage = request["stream_options"]["include_usage"] == true;
    let model = request["model"].as_str().unwrap_or("unknown").to_owned();
    let script = state.script.lock().expect("lock").clone().expect("script");
    let sse = |body: Body| {
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    };
    match script {
        Script::Raw {
            status,
            content_type,
            body,
        } => Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        Script::Sse {
            events,
            event_delay_ms,
            stall_after,
        } => {
            let events: Vec<String> = events
                .into_iter()
                .filter(|e| wants_usage || !e.contains("\"choices\":[]"))
                .collect();
            sse(sse_body(
                Arc::clone(&state),
                events,
                event_delay_ms,
                stall_after,
            ))
        }
        Script::SseThenReset { events } => {
            let items: Vec<Result<Bytes, std::io::Error>> = events
                .into_iter()
                .map(|e| Ok(Bytes::from(e)))
                .chain(std::iter::once(Err(std::io::Error::other(
                    "connection reset",
                ))))
                .collect();
            // Each piece leaves on its own, so the events reach the gateway before the break.
            let paced = futures_util::stream::iter(items).then(|item| async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                item
            });
            sse(Body::from_stream(paced))
        }
        Script::Chat {
            pieces,
            usage,
            stall_after,
        } => {
            if request["stream"] == true {
                let mut events: Vec<String> = pieces
                    .iter()
                    .map(|p| {
                        let chunk = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
                                           "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}]});
                        format!("data: {chunk}\n\n")
                    })
                    .collect();
                let stop = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
                                  "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
                events.push(format!("data: {stop}\n\n"));
                if let (true, Some(u)) = (wants_usage, &usage) {
                    let chunk = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
                                       "choices": [], "usage": u});
                    events.push(format!("data: {chunk}\n\n"));
                }
                events.push("data: [DONE]\n\n".into());
                sse(sse_body(Arc::clone(&state), events, 0, stall_after))
            } else {
                let mut resp = json!({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
                                      "choices": [{"index": 0, "message": {"role": "assistant", "content": pieces.concat()},
                                                   "finish_reason": "stop"}]});
                if let Some(u) = usage {
                    resp["usage"] = u;
                }
                axum::Json(resp).into_response()
            }
        }
    }
}

/// A chat script with a fixed usage block.
pub fn chat_script(pieces: &[&str], prompt: i64, completion: i64, cached: i64) -> Script {
    Script::Chat {
        pieces: pieces.iter().map(|s| s.to_string()).collect(),
        usage: Some(json!({
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": 0}
        })),
        stall_after: None,
    }
}

/// A gateway with one fake channel serving `model` (mapped to `upstream`), priced per 1M tokens.
pub struct Setup {
    pub app: TestApp,
    pub fake: FakeUpstream,
    pub user: i64,
    pub key: String,
}

pub async fn setup(
    backend: &Backend,
    script: Script,
    prices: (&str, &str, &str),
    balance: &str,
) -> Setup {
    let app = TestApp::spawn(backend).await;
    Setup::provision(app, script, json!({"m1": "upstream-m1"}), prices, balance).await
}

impl Setup {
    /// On a running `app`: a fake upstream playing `script` as a channel serving `m1` (with
    /// `model_map`), `m1` priced per 1M tokens, and a user with `balance` credits and a key.
    pub async fn provision(
        app: TestApp,
        script: Script,
        model_map: Value,
        prices: (&str, &str, &str),
        balance: &str,
    ) -> Setup {
        let fake = FakeUpstream::start(script).await;
        app.add_channel(&fake.base_url, &["m1"], model_map).await;
        let price = |p: &str| Value::String(p.into());
        app.add_model("m1", price(prices.0), price(prices.1), price(prices.2))
            .await;
        let user = app.add_user(Value::String(balance.into())).await;
        let key = app.add_key(user, json!({})).await;
        Setup {
            app,
            fake,
            user,
            key,
        }
    }
}

/// Runs one statement on the app's database and returns a count it selects, or the rows changed.
pub async fn sql_i64(db: &Db, sql: &'static str) -> i64 {
    let result = if sql.starts_with("SELECT") {
        match db {
            Db::Sqlite { writer, .. } => sqlx::query_scalar(sql).fetch_one(writer).await,
            Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        }
    } else {
        match db {
            Db::Sqlite { writer, .. } => sqlx::query(sql)
                .execute(writer)
                .await
                .map(|r| r.rows_affected() as i64),
            Db::Postgres(pool) => sqlx::query(sql)
                .execute(pool)
                .await
                .map(|r| r.rows_affected() as i64),
        }
    };
    result.expect(sql)
}

/// Runs one `SELECT` of a text value on the app's database.
pub async fn sql_text(db: &Db, sql: &str) -> String {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    let result = match db {
        Db::Sqlite { writer, .. } => sqlx::query_scalar(sql).fetch_one(writer).await,
        Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
    };
    result.expect("select text")
}

/// A `tollgate serve` process.
pub struct Server {
    child: Child,
    pub base: String,
    /// Every line it has logged (JSON) since it listened.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts the binary on `db_url` with extra environment variables, once it listens.
    pub async fn start(db_url: &str, env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        child
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("TOLLGATE_DATABASE_URL", db_url)
            .env("TOLLGATE_ADMIN_KEY", ADMIN_KEY)
            .env("TOLLGATE_MASTER_KEY", MASTER_KEY)
            .env("TOLLGATE__LOG__FORMAT", "json")
            .env("RUST_LOG", "info");
        for (k, v) in env {
            child.env(k, v);
        }
        let mut child = child
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start tollgate");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("log line") {
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if entry["fields"]["message"] == "tollgate listening" {
                    return entry["fields"]["addr"].as_str().expect("addr").to_owned();
                }
            }
            panic!("tollgate exited before listening");
        })
        .await
        .expect("tollgate listening in time");
        // Keep reading the log so the process never blocks on a full pipe.
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().expect("log").push(line);
            }
        });
        Server {
            child,
            base: format!("http://{addr}"),
            log,
        }
    }

    /// SIGTERM, then waits for the process to exit: whether it exited successfully.
    pub async fn terminate(mut self) -> bool {
        let pid = self.child.id().expect("pid").to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill -TERM");
        assert!(sent.success(), "SIGTERM sent");
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("tollgate exits after SIGTERM")
            .expect("wait");
        status.success()
    }

    /// SIGKILL: no shutdown, no settlement of what is in flight.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("kill");
        let _ = self.child.wait().await;
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("admin request");
        assert_eq!(resp.status(), 200, "{path}");
        resp.json::<Value>().await.expect("json")["data"].clone()
    }
}
