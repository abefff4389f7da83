//! The scheduling scenario, shared by `benches/schedule.rs` (full size) and a test in
//! `tests/api/schedule.rs` (small, in CI): `posts` posts, each its own draft, scheduled through
//! the HTTP API (spread uniformly, no jitter, so every post is due within `window_ms`), on `instances` real `tollgate serve`
//! processes sharing one fresh PostgreSQL database, publishing to a fake X that records when
//! each post arrived. Halfway through the window one instance is SIGKILLed. The report: how
//! late each post reached X after its effective time (p50, p99, max), how many reached it
//! twice, how many never did (and were not reported `unconfirmed`), and whether the money adds
//! up (each user charged 10 credits per post out, `tollgate ledger verify` clean).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const ADMIN: &str = "sched-admin-key-0123456789";
const MASTER: &str = "sched-master-key-0123456789abcdefghij";
/// Posts per account (each account works one post at a time).
const POSTS_PER_ACCOUNT: usize = 25;
/// Users (each with its accounts).
const USERS: usize = 10;

pub struct Params {
    pub posts: usize,
    pub window_ms: i64,
    pub instances: usize,
    /// SIGKILL one instance halfway through the window.
    pub kill: bool,
    /// A PostgreSQL server URL (a fresh database is made on it and dropped after).
    pub database_url: String,
    pub bin: String,
    /// Extra environment for every instance (`TOLLGATE__JOBS__LEASE_MS`, …).
    pub env: Vec<(String, String)>,
    /// How long the fake X takes to answer a post (after it is made): the longer, the more
    /// posts are in flight on the instance when it is killed.
    pub platform_ms: u64,
}

#[derive(Debug)]
pub struct Report {
    pub posts: usize,
    pub out: usize,
    pub duplicates: usize,
    pub lost: usize,
    pub unconfirmed: usize,
    /// Posts claimed by the killed instance and published by another after its lease ran out.
    pub resumed: usize,
    /// Milliseconds from each post's effective time to its arrival at X, sorted.
    pub lateness_ms: Vec<i64>,
    pub money_ok: bool,
    pub ledger_ok: bool,
    pub ledger_output: String,
}

impl Report {
    pub fn quantile(&self, q: f64) -> i64 {
        if self.lateness_ms.is_empty() {
            return 0;
        }
        let k = ((self.lateness_ms.len() as f64 - 1.0) * q).round() as usize;
        self.lateness_ms[k]
    }

    pub fn max(&self) -> i64 {
        self.lateness_ms.last().copied().unwrap_or(0)
    }

    pub fn line(&self) -> String {
        format!(
            "{} posts: {} out, {} duplicates, {} lost, {} unconfirmed (cut by the SIGKILL mid-call), {} resumed by another instance; lateness p50 {} ms, p99 {} ms, max {} ms; money {}, ledger verify {}",
            self.posts,
            self.out,
            self.duplicates,
            self.lost,
            self.unconfirmed,
            self.resumed,
            self.quantile(0.5),
            self.quantile(0.99),
            self.max(),
            if self.money_ok { "exact" } else { "WRONG" },
            if self.ledger_ok { "clean" } else { "NOT CLEAN" },
        )
    }
}

/// The fake X: posts by text, with the instants they arrived.
#[derive(Default)]
struct Fake {
    arrived: Mutex<HashMap<String, Vec<i64>>>,
    next: Mutex<u64>,
    latency_ms: u64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn tweet(State(fake): State<Arc<Fake>>, body: Bytes) -> impl IntoResponse {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = v["text"].as_str().unwrap_or_default().to_owned();
    let at = now_ms();
    let id = {
        let mut n = fake.next.lock().expect("lock");
        *n += 1;
        *n
    };
    // Made, then answered a while later (a SIGKILL in between leaves it unconfirmed).
    fake.arrived
        .lock()
        .expect("lock")
        .entry(text.clone())
        .or_default()
        .push(at);
    tokio::time::sleep(Duration::from_millis(fake.latency_ms)).await;
    (
        axum::http::StatusCode::CREATED,
        axum::Json(json!({"data": {"id": format!("{}", 1_000_000 + id), "text": text}})),
    )
}

fn with_database(url: &str, db: &str) -> String {
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

async fn start(bin: &str, db_url: &str, x_base: &str, env: &[(String, String)]) -> (Child, String) {
    let mut c = Command::new(bin);
    c.args(["serve", "--listen", "127.0.0.1:0"])
        .env("TOLLGATE_DATABASE_URL", db_url)
        .env("TOLLGATE_ADMIN_KEY", ADMIN)
        .env("TOLLGATE_MASTER_KEY", MASTER)
        .env("TOLLGATE__LOG__FORMAT", "json")
        .env("TOLLGATE__SOCIAL__X__API_BASE", x_base)
        .env("TOLLGATE__LIMITS__OTHER_PER_MINUTE", "100000000")
        .env("TOLLGATE__LIMITS__QUERY_PER_MINUTE", "100000000")
        .env("TOLLGATE__DATABASE__MAX_CONNECTIONS", "20")
        .env("RUST_LOG", "info");
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start tollgate");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
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
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, format!("http://{addr}"))
}

async fn call(req: reqwest::RequestBuilder) -> Value {
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{status}: {v}");
    v
}

/// Runs the scenario.
pub async fn run(p: Params) -> Report {
    // The fake X.
    let fake = Arc::new(Fake {
        latency_ms: p.platform_ms,
        ..Fake::default()
    });
    let app = Router::new()
        .route("/2/tweets", post(tweet))
        .with_state(Arc::clone(&fake));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let x_base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    // A fresh database.
    let name = format!("tollgate_sched_{:016x}", rand::random::<u64>());
    let admin = sqlx::PgPool::connect(&p.database_url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create database");
    let db_url = with_database(&p.database_url, &name);

    // The instances (the first migrates).
    let mut children = Vec::new();
    for _ in 0..p.instances.max(1) {
        children.push(start(&p.bin, &db_url, &x_base, &p.env).await);
    }
    let bases: Vec<String> = children.iter().map(|(_, b)| b.clone()).collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");

    // Users with keys, accounts (tokens sealed as a connection leaves them).
    let db = tollgate::db::Db::connect(&db_url, 4).await.expect("db");
    let secrets = tollgate::secrets::Secrets::load(Some(MASTER), "unused.key").expect("secrets");
    let accounts_needed = p.posts.div_ceil(POSTS_PER_ACCOUNT).max(1);
    let mut users: Vec<(i64, String, Vec<String>)> = Vec::new();
    for u in 0..USERS.min(accounts_needed) {
        let created = call(
            http.post(format!("{}/api/v1/admin/users", bases[0]))
                .bearer_auth(ADMIN)
                .json(&json!({"email": format!("sched{u}@example.com"), "balance": "1000000"})),
        )
        .await;
        let id = created["data"]["id"].as_i64().expect("user id");
        let key = call(
            http.post(format!("{}/api/v1/admin/users/{id}/keys", bases[0]))
                .bearer_auth(ADMIN)
                .json(&json!({"name": "sched"})),
        )
        .await["data"]["key"]
            .as_str()
            .expect("key")
            .to_owned();
        users.push((id, key, Vec::new()));
    }
    for a in 0..accounts_needed {
        let user = &mut users[a % USERS.min(accounts_needed)];
        let token = secrets.seal(tollgate::secrets::Purpose::SocialToken, &format!("tok-{a}"));
        let uid = format!("{}", 5_000 + a);
        let username = format!("sched{a}");
        let account_id = format!("acc-sched-{a}");
        tollgate::db::social::upsert_account(
            &db,
            &account_id,
            &tollgate::db::social::Connected {
                user_id: user.0,
                platform: "twitter",
                platform_uid: &uid,
                username: &username,
                display_name: None,
                avatar_url: None,
                instance: None,
                char_limit: None,
                access_token: &token,
                refresh_token: &token,
                token_expires_at_ms: Some(now_ms() + 86_400_000),
            },
        )
        .await
        .expect("account");
        user.2.push(account_id);
    }

    // Drafts and schedules, due in the window after the setup's margin.
    let margin = 20_000 + p.posts as i64 * 8;
    let t0 = now_ms() + margin;
    let mut queued: Vec<(String, String)> = Vec::new(); // (text, queue id)
    let work: Vec<_> = (0..p.posts)
        .map(|i| {
            let account_no = i % accounts_needed;
            let user = &users[account_no % USERS.min(accounts_needed)];
            let account = user.2[account_no / USERS.min(accounts_needed)].clone();
            let key = user.1.clone();
            let base = bases[i % bases.len()].clone();
            let at = t0 + (rand::random::<u64>() % p.window_ms.max(1) as u64) as i64;
            (i, key, account, base, at)
        })
        .collect();
    let mut stream = futures_util::stream::iter(work.into_iter().map(|(i, key, account, base, at)| {
        let http = http.clone();
        async move {
            let text = format!("scheduled post {i}");
            let d = call(
                http.post(format!("{base}/api/v1/twitter/drafts"))
                    .header("xai-key", &key)
                    .json(&json!({"title": format!("post {i}"), "tweets": [{"content": text}]})),
            )
            .await;
            let draft = d["draft"]["id"].as_str().expect("draft").to_owned();
            let when = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000_000)
                .expect("time")
                .format(&time::format_description::well_known::Rfc3339)
                .expect("format");
            let s = call(
                http.post(format!("{base}/api/v1/twitter/schedule"))
                    .header("xai-key", &key)
                    .json(&json!({"draftId": draft, "scheduledFor": when, "applyJitter": false,
                                  "targetAccounts": [{"accountId": account, "platform": "twitter"}]})),
            )
            .await;
            (text, s["queueIds"][0].as_str().expect("queue id").to_owned())
        }
    }))
    .buffer_unordered(16);
    use futures_util::StreamExt;
    while let Some(q) = stream.next().await {
        queued.push(q);
    }
    drop(stream);
    let scheduled_by = now_ms();
    assert!(
        scheduled_by < t0,
        "scheduling took longer than its margin ({} ms over)",
        scheduled_by - t0
    );

    // Halfway through the window, one instance dies.
    let end = t0 + p.window_ms;
    if p.kill && children.len() > 1 {
        let at = t0 + p.window_ms / 2;
        tokio::time::sleep(Duration::from_millis((at - now_ms()).max(0) as u64)).await;
        let (mut victim, _) = children.remove(1);
        let _ = victim.start_kill();
        let _ = victim.wait().await;
    }

    // Until every job ended (or long past the window).
    let pg = match &db {
        tollgate::db::Db::Postgres(pool) => pool.clone(),
        _ => unreachable!("the scenario runs on PostgreSQL"),
    };
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE kind = 'publish' AND state IN ('pending', 'running')",
        )
        .fetch_one(&pg)
        .await
        .expect("count");
        if open == 0 || now_ms() > end + 120_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // What reached X, against each job's effective time.
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT id, state, effective_at_ms FROM jobs WHERE kind = 'publish'")
            .fetch_all(&pg)
            .await
            .expect("jobs");
    let resumed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM jobs WHERE kind = 'publish' AND state = 'succeeded' AND attempts > 1",
    )
    .fetch_one(&pg)
    .await
    .expect("resumed");
    let jobs: HashMap<String, (String, i64)> =
        rows.into_iter().map(|(id, s, e)| (id, (s, e))).collect();
    let arrived = fake.arrived.lock().expect("lock").clone();
    let (mut out, mut duplicates, mut lost, mut unconfirmed) = (0, 0, 0, 0);
    let mut lateness = Vec::new();
    for (text, queue) in &queued {
        let (state, effective) = jobs.get(queue).cloned().unwrap_or_default();
        match arrived.get(text) {
            Some(times) => {
                out += 1;
                duplicates += times.len() - 1;
                lateness.push(times[0] - effective);
                if state == "unconfirmed" {
                    unconfirmed += 1;
                }
            }
            None if state == "unconfirmed" => unconfirmed += 1,
            None => lost += 1,
        }
    }
    lateness.sort_unstable();

    // Money: 10 credits per post out whose job knows it (unconfirmed ones stay held).
    let mut money_ok = true;
    for (id, _, _) in &users {
        let balance: i64 = sqlx::query_scalar("SELECT balance_micros FROM users WHERE id = $1")
            .bind(id)
            .fetch_one(&pg)
            .await
            .expect("balance");
        let held: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE user_id = $1 AND kind = 'publish' AND state IN ('succeeded', 'unconfirmed')",
        )
        .bind(id)
        .fetch_one(&pg)
        .await
        .expect("count");
        money_ok &= balance == 1_000_000_000_000 - held * 10_000_000;
    }
    let verify = Command::new(&p.bin)
        .args(["ledger", "verify"])
        .env("TOLLGATE_DATABASE_URL", &db_url)
        .output()
        .await
        .expect("ledger verify");
    let ledger_output = String::from_utf8_lossy(&verify.stdout).into_owned();

    for (mut child, _) in children {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    db.close().await;
    pg.close().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
    admin.close().await;
    Report {
        posts: p.posts,
        out,
        duplicates,
        lost,
        unconfirmed,
        resumed: resumed as usize,
        lateness_ms: lateness,
        money_ok,
        ledger_ok: verify.status.success(),
        ledger_output,
    }
}
