//! Three `tollgate serve` processes on one PostgreSQL database and one Redis, driven through a
//! round-robin client: one rate limit across all three, concurrency caps across all three,
//! admin changes made on one instance visible on the others within a second (the key cache TTL
//! and catalog refresh are set to a minute here, so only the pub/sub notices can do it), and a
//! shared balance that is never overspent. Runs when `TEST_DATABASE_URL` and `TEST_REDIS_URL`
//! are set.

use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The rate window of these tests (a short one, so several windows fit in a test).
const WINDOW_MS: u64 = 3000;

struct Cluster {
    servers: Vec<Server>,
    next: AtomicUsize,
    fake: FakeUpstream,
    client: reqwest::Client,
    db: (String, String, String),
}

impl Cluster {
    async fn start() -> Option<Cluster> {
        let (Some(Backend::Postgres(pg)), Some(redis)) = (Backend::postgres(), redis_url()) else {
            eprintln!("TEST_DATABASE_URL and TEST_REDIS_URL are needed: not run");
            return None;
        };
        let (db_url, name) = create_pg_database(&pg).await;
        let prefix = format!("test-{name}");
        let window = WINDOW_MS.to_string();
        let env = [
            ("TOLLGATE_REDIS_URL", redis.as_str()),
            ("TOLLGATE__REDIS__PREFIX", prefix.as_str()),
            ("TOLLGATE__REDIS__TIMEOUT_MS", "2000"),
            ("TOLLGATE__LIMITS__WINDOW_MS", window.as_str()),
            ("TOLLGATE__AUTH__KEY_CACHE_TTL_MS", "60000"),
            ("TOLLGATE__CATALOG__REFRESH_INTERVAL_MS", "60000"),
        ];
        let mut servers = Vec::new();
        for _ in 0..3 {
            servers.push(Server::start(&db_url, &env).await);
        }
        let fake = FakeUpstream::start(chat_script(&["ok"], 10, 5, 0)).await;
        let cluster = Cluster {
            servers,
            next: AtomicUsize::new(0),
            fake,
            client: reqwest::Client::new(),
            db: (pg, name, db_url),
        };
        let first = &cluster.servers[0];
        first
            .admin(
                Method::POST,
                "/api/v1/admin/channels",
                Some(
                    json!({"name": "fake", "provider": "openai", "base_url": cluster.fake.base_url,
                            "api_key": "k", "models": ["m1"]}),
                ),
            )
            .await;
        // Input free, output 1 micro-credit per token: a request with max_tokens 5 reserves
        // exactly what it costs (5 output tokens = 5 micro-credits).
        first
            .admin(
                Method::POST,
                "/api/v1/admin/models",
                Some(json!({"model": "m1", "input_price": "0", "output_price": "1"})),
            )
            .await;
        Some(cluster)
    }

    async fn add_user(&self, balance: &str) -> i64 {
        let email = format!("u{:x}@example.com", rand_u64());
        self.servers[0]
            .admin(
                Method::POST,
                "/api/v1/admin/users",
                Some(json!({"email": email, "balance": balance})),
            )
            .await["id"]
            .as_i64()
            .expect("user id")
    }

    async fn add_key(&self, user: i64, body: Value) -> (i64, String) {
        let k = self.servers[0]
            .admin(
                Method::POST,
                &format!("/api/v1/admin/users/{user}/keys"),
                Some(body),
            )
            .await;
        (
            k["id"].as_i64().expect("key id"),
            k["key"].as_str().expect("key").to_owned(),
        )
    }

    /// The next instance, round robin.
    fn pick(&self) -> &Server {
        let i = self.next.fetch_add(1, Ordering::SeqCst) % self.servers.len();
        &self.servers[i]
    }

    fn chat_on(&self, server: &Server, key: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/v1/chat/completions", server.base))
            .bearer_auth(key)
            .json(&json!({"model": "m1", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
    }

    async fn stop(self) {
        for s in self.servers {
            s.kill().await;
        }
        let (pg, name, db_url) = self.db;
        let (ok, out) = ledger_verify_cli(&db_url).await;
        assert!(ok, "{out}");
        drop_pg_database(&pg, &name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_rate_limit_holds_across_three_instances() {
    let Some(c) = Cluster::start().await else {
        return;
    };
    let c = Arc::new(c);
    let user = c.add_user("1000").await;
    let limit = 50_u64;
    let (_, key) = c.add_key(user, json!({"rpm": limit})).await;
    // Eight clients, well above the limit, for two and a half windows.
    let started = Instant::now();
    let run_for = Duration::from_millis(WINDOW_MS * 5 / 2);
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (c, key) = (Arc::clone(&c), key.clone());
        workers.push(tokio::spawn(async move {
            let mut admitted = Vec::new();
            let mut refused = 0_u64;
            while started.elapsed() < run_for {
                let server = c.pick();
                let sent = started.elapsed();
                let r = c.chat_on(server, &key).send().await.expect("send");
                match r.status().as_u16() {
                    200 => {
                        assert!(r.headers().contains_key("x-ratelimit-remaining-requests"));
                        // The decision fell between sending and the answer.
                        admitted.push((sent, started.elapsed()));
                    }
                    429 => {
                        let retry = r
                            .headers()
                            .get("retry-after-ms")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok());
                        assert!(retry.is_some_and(|ms| ms <= WINDOW_MS), "{retry:?}");
                        assert_eq!(
                            r.headers()
                                .get("x-ratelimit-remaining-requests")
                                .and_then(|v| v.to_str().ok()),
                            Some("0")
                        );
                        refused += 1;
                    }
                    other => panic!("unexpected status {other}"),
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            (admitted, refused)
        }));
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    for w in workers {
        let (a, r) = w.await.expect("worker");
        admitted.extend(a);
        refused += r;
    }
    admitted.sort();
    // Under load above the limit, the first window (from the first admission) admits the limit
    // and the next window admits it again as the first window's entries slide out: the admitted
    // rate is the limit. Each decision is known only to lie between a request's sending and its
    // answer (tens of ms apart on a loaded machine), so a window holds at most the limit of the
    // admissions surely decided inside it, and at least the limit of those possibly inside it.
    let tolerance = (limit / 100).max(1);
    let total = admitted.len() as u64;
    let first = admitted[0].0;
    let window = Duration::from_millis(WINDOW_MS);
    let counts = |k: u32| {
        let (start, end) = (first + window * k, first + window * (k + 1));
        let surely = admitted
            .iter()
            .filter(|(sent, answered)| *sent >= start && *answered < end)
            .count() as u64;
        let possibly = admitted
            .iter()
            .filter(|(sent, answered)| *answered >= start && *sent < end)
            .count() as u64;
        (surely, possibly)
    };
    let (w1, w2) = (counts(0), counts(1));
    eprintln!(
        "three instances, limit {limit} per {WINDOW_MS} ms: admitted {w1:?} (surely, possibly) in the first window, {w2:?} in the second, {total} in all; refused {refused}"
    );
    for (name, (surely, possibly)) in [("first", w1), ("second", w2)] {
        assert!(
            surely <= limit + tolerance,
            "{name} window: {surely} surely admitted in it, limit {limit}"
        );
        assert!(
            possibly + tolerance >= limit,
            "{name} window: only {possibly} admitted, limit {limit}"
        );
    }
    assert!(total <= 3 * limit + tolerance, "{total} in 2.5 windows");
    assert!(
        refused > total,
        "the load was above the limit: {refused} refused"
    );
    // No span of a window (less the client-side lead) held more than the limit.
    let span = window - Duration::from_millis(200);
    let sent: Vec<Duration> = admitted.iter().map(|(sent, _)| *sent).collect();
    for (i, t) in sent.iter().enumerate() {
        let n = sent[i..].iter().take_while(|u| **u - *t < span).count() as u64;
        assert!(
            n <= limit + tolerance,
            "{n} admitted within {span:?} from {t:?}"
        );
    }
    assert_eq!(c.fake.calls() as u64, total);
    Arc::into_inner(c).expect("one owner").stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_caps_and_the_balance_hold_across_three_instances() {
    let Some(c) = Cluster::start().await else {
        return;
    };
    let c = Arc::new(c);
    // Concurrency: three in flight across all instances, however the requests are spread.
    let user = c.add_user("1000").await;
    let (_, key) = c.add_key(user, json!({"max_concurrency": 3})).await;
    // Held long enough that all fifteen arrive while the first three are in flight, even on a
    // loaded machine.
    c.fake.set_headers_delay(3000);
    let statuses = burst(&c, &key, 15).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        12,
        "{statuses:?}"
    );
    assert_eq!(c.fake.state.max_in_delay.load(Ordering::SeqCst), 3);
    c.fake.set_headers_delay(0);

    // Balance: 20 requests' worth (5 micro-credits each), 60 at once through all three.
    let poor = c.add_user("0.0001").await;
    let (_, key) = c.add_key(poor, json!({})).await;
    let statuses = burst(&c, &key, 60).await;
    assert!(
        statuses.iter().all(|s| [200, 402].contains(s)),
        "{statuses:?}"
    );
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 20, "exactly the balance's worth was admitted");
    let u = c.servers[2]
        .admin(Method::GET, &format!("/api/v1/admin/users/{poor}"), None)
        .await;
    assert_eq!(u["balance_micros"], 0);
    assert_eq!(u["reserved_micros"], 0);
    Arc::into_inner(c).expect("one owner").stop().await;
}

/// `n` chat requests at once, spread round robin; their statuses, sorted.
async fn burst(c: &Arc<Cluster>, key: &str, n: usize) -> Vec<u16> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (c, key) = (Arc::clone(c), key.to_owned());
        tasks.push(tokio::spawn(async move {
            let server = c.pick();
            let r = c.chat_on(server, &key).send().await.expect("send");
            r.status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("task"));
    }
    statuses.sort_unstable();
    statuses
}

/// Polls `probe` until it returns true; the time it took.
async fn time_until(mut probe: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !probe().await {
        assert!(started.elapsed() < Duration::from_secs(5), "never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_changes_on_one_instance_reach_the_others_within_a_second() {
    let Some(c) = Cluster::start().await else {
        return;
    };
    let user = c.add_user("1000").await;
    let (key_id, key) = c.add_key(user, json!({})).await;
    let (one, three) = (&c.servers[0], &c.servers[2]);
    // Instance 3 has the key cached (the cache would trust it for a minute).
    assert_eq!(
        c.chat_on(three, &key).send().await.expect("send").status(),
        200
    );
    one.admin(
        Method::DELETE,
        &format!("/api/v1/admin/keys/{key_id}"),
        None,
    )
    .await;
    let took =
        time_until(async || c.chat_on(three, &key).send().await.expect("send").status() == 401)
            .await;
    assert!(took < Duration::from_secs(1), "key disable took {took:?}");

    // A user disabled on instance 1 is refused by instance 2.
    let two = &c.servers[1];
    let (_, key) = c.add_key(user, json!({})).await;
    assert_eq!(
        c.chat_on(two, &key).send().await.expect("send").status(),
        200
    );
    one.admin(
        Method::PATCH,
        &format!("/api/v1/admin/users/{user}"),
        Some(json!({"status": "disabled"})),
    )
    .await;
    let took =
        time_until(async || c.chat_on(two, &key).send().await.expect("send").status() == 403).await;
    assert!(took < Duration::from_secs(1), "user disable took {took:?}");

    // A price change on instance 1 is what instance 3 charges.
    let models = one.admin(Method::GET, "/api/v1/admin/models", None).await;
    let model_id = models[0]["id"].as_i64().expect("model id");
    one.admin(
        Method::PATCH,
        &format!("/api/v1/admin/models/{model_id}"),
        Some(json!({"output_price": "7"})),
    )
    .await;
    let took = time_until(async || {
        let m: Value = c
            .client
            .get(format!("{}/v1/models/m1", three.base))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        m["pricing"]["output"].as_u64() == Some(7)
    })
    .await;
    assert!(took < Duration::from_secs(1), "price change took {took:?}");

    // A channel disabled on instance 1 stops serving on instance 2.
    let channels = one.admin(Method::GET, "/api/v1/admin/channels", None).await;
    let channel_id = channels[0]["id"].as_i64().expect("channel id");
    let fresh = c.add_user("10").await;
    let (_, key) = c.add_key(fresh, json!({})).await;
    assert_eq!(
        c.chat_on(two, &key).send().await.expect("send").status(),
        200
    );
    one.admin(
        Method::DELETE,
        &format!("/api/v1/admin/channels/{channel_id}"),
        None,
    )
    .await;
    let took =
        time_until(async || c.chat_on(two, &key).send().await.expect("send").status() == 404).await;
    assert!(
        took < Duration::from_secs(1),
        "channel change took {took:?}"
    );
    c.stop().await;
}
