//! Crash safety: the real `tollgate` binary is killed with SIGKILL under streaming load and
//! started again on the same database. Every request whose answer completed before the kill is
//! charged exactly once, no reservation outlives its expiry, no balance goes below zero, and
//! `tollgate ledger verify` passes.

use crate::both_backends;
use crate::helpers::*;
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest request the crashed gateway allowed, and the grace a reservation outlives it by:
/// a reservation expires 5 s after its request started (generous: a loaded CI machine can
/// delay a stream by a second or more).
const MAX_REQUEST_MS: &str = "4000";
const GRACE_MS: &str = "1000";
const CRASH_ENV: &[(&str, &str)] = &[
    ("TOLLGATE__UPSTREAM__MAX_REQUEST_MS", MAX_REQUEST_MS),
    ("TOLLGATE__BILLING__RESERVATION_GRACE_MS", GRACE_MS),
    ("TOLLGATE__BILLING__RECONCILE_INTERVAL_MS", "200"),
];

/// What one client saw: the request id (once headers arrived) and whether the answer completed.
struct Seen {
    request_id: Option<String>,
    completed: bool,
}

async fn stream_once(client: reqwest::Client, url: String, key: String) -> Seen {
    let body = json!({"model": "m1", "stream": true, "max_tokens": 50, "messages": [{"role": "user", "content": "x"}]});
    let Ok(resp) = client.post(url).bearer_auth(key).json(&body).send().await else {
        return Seen {
            request_id: None,
            completed: false,
        };
    };
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let completed = match resp.bytes().await {
        Ok(b) => b.ends_with(b"data: [DONE]\n\n"),
        Err(_) => false,
    };
    Seen {
        request_id,
        completed,
    }
}

async fn sigkill_under_streaming_load_loses_no_told_charge_and_holds_nothing_past_expiry(
    b: Backend,
) {
    let dir = tempfile::tempdir().expect("dir");
    let (db_url, pg) = fresh_database(&b, &dir).await;
    // Each stream: 8 pieces 100 ms apart, then usage 10 prompt + 10 completion = 30 micros.
    let mut events: Vec<String> = (0..8)
        .map(|i| {
            format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"p{i}\"}}}}]}}\n\n"
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
    let fake = FakeUpstream::start(Script::Sse {
        events,
        event_delay_ms: 100,
        stall_after: None,
    })
    .await;

    let server = Server::start(&db_url, CRASH_ENV).await;
    server.admin(reqwest::Method::POST, "/api/v1/admin/channels", Some(json!({
        "name": "fake", "provider": "openai", "base_url": fake.base_url, "api_key": "k", "models": ["m1"], "model_map": {}}))).await;
    server
        .admin(
            reqwest::Method::POST,
            "/api/v1/admin/models",
            Some(json!({
        "model": "m1", "input_price": "1", "output_price": "2", "cached_input_price": "0"})),
        )
        .await;
    let user = server
        .admin(
            reqwest::Method::POST,
            "/api/v1/admin/users",
            Some(json!({"email": "crash@example.com", "balance": "1"})),
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

    // Start a stream every 25 ms (each takes about a second); kill the server once five
    // have completed, with dozens still streaming.
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", server.base);
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    while done.load(Ordering::SeqCst) < 5 && started.elapsed() < Duration::from_secs(30) {
        let (client, url, key, done) =
            (client.clone(), url.clone(), key.clone(), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let seen = stream_once(client, url, key).await;
            if seen.completed {
                done.fetch_add(1, Ordering::SeqCst);
            }
            seen
        }));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    server.kill().await;
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.expect("task"));
    }
    let completed: HashSet<String> = seen
        .iter()
        .filter(|s| s.completed)
        .filter_map(|s| s.request_id.clone())
        .collect();
    let cut = seen
        .iter()
        .filter(|s| !s.completed && s.request_id.is_some())
        .count();
    assert!(
        !completed.is_empty(),
        "some streams completed before the kill ({} started, {cut} cut)",
        seen.len()
    );
    assert!(cut > 0, "some streams were in flight at the kill");

    let server = Server::start(&db_url, CRASH_ENV).await;
    if let Some((url, name)) = &pg {
        // What was in flight is still held: its reservations have not expired yet.
        let pool = sqlx::PgPool::connect(&with_database(url, name))
            .await
            .expect("connect");
        let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM reservations")
            .fetch_one(&pool)
            .await
            .expect("count");
        pool.close().await;
        assert!(
            held > 0,
            "reservations of the cut requests are held until they expire"
        );
    }
    // The reconciler releases the crashed instance's reservations once they expire (on
    // SQLite the in-memory book died with the process, so nothing is held at all).
    let deadline = Instant::now() + Duration::from_secs(15);
    let reserved = loop {
        let u = server
            .admin(
                reqwest::Method::GET,
                &format!("/api/v1/admin/users/{user}"),
                None,
            )
            .await;
        let reserved = u["reserved_micros"].as_i64().expect("reserved");
        if reserved == 0 || Instant::now() > deadline {
            break reserved;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        reserved, 0,
        "reservations must be released after their expiry"
    );

    let usage = server
        .admin(
            reqwest::Method::GET,
            &format!("/api/v1/admin/users/{user}/usage?page_size=100"),
            None,
        )
        .await;
    let records = usage["items"].as_array().expect("items");
    let charged: HashSet<String> = records
        .iter()
        .filter(|r| r["cost_micros"] == 30)
        .map(|r| r["request_id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(
        charged.len(),
        records.len(),
        "every record is a full charge: {records:?}"
    );
    for id in &completed {
        assert!(
            charged.contains(id),
            "completed request {id} was not charged"
        );
    }
    let balance = server
        .admin(
            reqwest::Method::GET,
            &format!("/api/v1/admin/users/{user}"),
            None,
        )
        .await["balance_micros"]
        .as_i64()
        .expect("balance");
    assert_eq!(balance, 1_000_000 - 30 * charged.len() as i64);
    assert!(balance >= 0);

    // The restarted gateway serves and bills normally.
    let after = stream_once(
        client.clone(),
        format!("{}/v1/chat/completions", server.base),
        key.clone(),
    )
    .await;
    assert!(after.completed);
    let (ok, out) = ledger_verify_cli(&db_url).await;
    assert!(ok, "{out}");
    server.kill().await;
    let (ok, out) = ledger_verify_cli(&db_url).await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("{} usage records", charged.len() + 1)),
        "{out}"
    );
    if let Some((url, name)) = pg {
        drop_pg_database(&url, &name).await;
    }
}

both_backends!(sigkill_under_streaming_load_loses_no_told_charge_and_holds_nothing_past_expiry);
