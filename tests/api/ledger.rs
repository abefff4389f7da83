//! `tollgate ledger verify`, run as the real binary against the app's database: it passes after
//! a mixed workload and fails, naming the problem, when a ledger row or a usage record is
//! tampered with.

use crate::both_backends;
use crate::helpers::*;
use futures_util::StreamExt;
use serde_json::json;
use std::time::Duration;
use tollgate::db::Db;

/// Changes exactly one row of the app's database, behind the app's back.
async fn tamper(db: &Db, sql: &'static str) {
    assert_eq!(sql_i64(db, sql).await, 1, "{sql}");
}

async fn ledger_verify_passes_after_a_mixed_workload_and_fails_when_a_row_is_tampered_with(
    b: Backend,
) {
    let s = setup(
        &b,
        chat_script(&["Hello", " there"], 20, 5, 4),
        Prices {
            input: "1",
            output: "2",
            cached: "0.5",
        },
        "1",
    )
    .await;
    let body = |stream: bool| json!({"model": "m1", "stream": stream, "max_tokens": 100, "messages": [{"role": "user", "content": "x"}]});
    for stream in [false, true, false, true] {
        let resp = s.app.chat(&s.key, body(stream)).send().await.expect("send");
        assert_eq!(resp.status(), 200);
        let _ = resp.bytes().await;
    }
    // A client that hangs up mid-stream.
    s.fake.set_script(Script::Chat {
        pieces: vec!["a".into(), " b".into(), " c".into()],
        usage: None,
        stall_after: Some(2),
    });
    let resp = s.app.chat(&s.key, body(true)).send().await.expect("send");
    let mut stream = resp.bytes_stream();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("first chunk");
    drop(stream);
    // An upstream failure (refunded) and an admin adjustment.
    s.fake.set_script(Script::Raw {
        status: 500,
        content_type: "application/json",
        body: b"{}".to_vec(),
    });
    let resp = s.app.chat(&s.key, body(false)).send().await.expect("send");
    assert_eq!(resp.status(), 502);
    s.app
        .admin_post(
            &format!("/api/v1/admin/users/{}/balance", s.user),
            json!({"delta": "-0.01", "reason": "test"}),
        )
        .await;
    s.app.wait_for_usage(s.user, 6).await;
    s.app.assert_books_balance(s.user).await;

    let (ok, out) = s.app.ledger_verify_cli().await;
    assert!(ok, "{out}");
    assert!(out.contains("ledger ok: 1 users"), "{out}");

    // One micro-credit off a charge: the balance and the request's debit no longer agree.
    tamper(
        &s.app.state.db,
        "UPDATE ledger_entries SET amount_micros = amount_micros - 1
                             WHERE id = (SELECT MAX(id) FROM ledger_entries WHERE kind = 'charge')",
    )
    .await;
    let (ok, out) = s.app.ledger_verify_cli().await;
    assert!(!ok, "verify must fail: {out}");
    assert!(out.contains(&format!("user {}: balance", s.user)), "{out}");
    assert!(out.contains("ledger debit(s)"), "{out}");
    assert!(out.contains("ledger verification FAILED"), "{out}");

    // Put it back: the books are right again.
    tamper(
        &s.app.state.db,
        "UPDATE ledger_entries SET amount_micros = amount_micros + 1
                             WHERE id = (SELECT MAX(id) FROM ledger_entries WHERE kind = 'charge')",
    )
    .await;
    let (ok, out) = s.app.ledger_verify_cli().await;
    assert!(ok, "{out}");

    // A usage record whose cost was edited no longer has its debit.
    tamper(
        &s.app.state.db,
        "UPDATE usage_records SET cost_micros = cost_micros + 5
                             WHERE id = (SELECT MIN(id) FROM usage_records)",
    )
    .await;
    let (ok, out) = s.app.ledger_verify_cli().await;
    assert!(!ok, "verify must fail: {out}");
    assert!(out.contains("usage record cost"), "{out}");
    s.app.stop().await;
}

both_backends!(ledger_verify_passes_after_a_mixed_workload_and_fails_when_a_row_is_tampered_with);

#[tokio::test]
async fn ledger_verify_refuses_a_database_that_does_not_exist() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}/missing.db", dir.path().display());
    let (ok, out) = ledger_verify_cli(&url).await;
    assert!(!ok);
    assert!(out.contains("no database at"), "{out}");
}
