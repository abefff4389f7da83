//! The real Tollgate app on port 0 in this process, and what tests ask of it: admin calls,
//! balances, usage, the books, metrics, the database.

use super::*;
use serde_json::{Value, json};
use std::time::Duration;
use tollgate::config::Config;
use tollgate::db::Db;
use tollgate::startup::Application;
use tollgate::state::AppState;

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

/// A model's token prices in credits per one million tokens, as the admin API takes them.
#[derive(Clone, Copy, Debug)]
pub struct Prices {
    pub input: &'static str,
    pub output: &'static str,
    pub cached: &'static str,
}

/// A gateway with one fake channel serving `model` (mapped to `upstream`), priced per 1M tokens.
pub struct Setup {
    pub app: TestApp,
    pub fake: FakeUpstream,
    pub user: i64,
    pub key: String,
}

pub async fn setup(backend: &Backend, script: Script, prices: Prices, balance: &str) -> Setup {
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
        prices: Prices,
        balance: &str,
    ) -> Setup {
        let fake = FakeUpstream::start(script).await;
        app.add_channel(&fake.base_url, &["m1"], model_map).await;
        let price = |p: &str| Value::String(p.into());
        let (input, output, cached) = (
            price(prices.input),
            price(prices.output),
            price(prices.cached),
        );
        app.add_model("m1", input, output, cached).await;
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
