//! Scheduling (seed 000, "排程发布") on the jobs table: a draft scheduled to accounts is
//! published at its effective time (jitter drawn once, stored and shown), exactly once, its
//! price held from scheduling to the end; cancelled (a compare-and-set racing the worker), it
//! is never published and the hold comes back; a time without an offset is refused.

use crate::both_backends;
use crate::fakes::x::Fault;
use crate::helpers::*;
use crate::publishing::{draft, faults, tweet_texts, x_setup_with, x_user, xai};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const CREDIT: i64 = 1_000_000;

fn iso_in(ms_from_now: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(ms_from_now);
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

fn ms_of(v: &Value) -> i64 {
    let t = time::OffsetDateTime::parse(
        v.as_str().expect("a time"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc 3339");
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The user's schedules (`?status=all` when `all`).
async fn schedules(app: &TestApp, key: &str, all: bool) -> Vec<Value> {
    let path = if all {
        "/api/v1/twitter/schedule?status=all"
    } else {
        "/api/v1/twitter/schedule"
    };
    let (status, v) = xai(app, key, Method::GET, path, None).await;
    assert_eq!(status, 200, "{v}");
    v["schedules"].as_array().expect("schedules").clone()
}

/// Waits until schedule `id` is no longer pending or running; its last listing.
async fn ended(app: &TestApp, key: &str, id: &str) -> Value {
    for _ in 0..400 {
        let all = schedules(app, key, true).await;
        let s = all.iter().find(|s| s["id"] == id).expect("listed").clone();
        if s["status"] != "pending" && s["status"] != "running" {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("schedule {id} did not end");
}

async fn schedule(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    xai(
        app,
        key,
        Method::POST,
        "/api/v1/twitter/schedule",
        Some(body),
    )
    .await
}

async fn jobs_app(b: &Backend) -> (TestApp, std::sync::Arc<crate::fakes::x::FakeX>) {
    x_setup_with(b, |c| {
        c.jobs.poll_interval_ms = 50;
        c.jobs.retry_base_ms = 300;
        c.jobs.max_attempts = 3;
    })
    .await
}

async fn a_scheduled_draft_goes_out_once_at_its_time_held_then_charged(b: Backend) {
    let (app, fake) = jobs_app(&b).await;
    let (user, key, account) = x_user(&app, "100").await;
    let d = draft(&app, &key, &["scheduled one", "scheduled two"]).await;
    let target = json!([{"accountId": account, "platform": "twitter"}]);

    // Refused before anything is held: no offset, not a time, in the past, a bad priority.
    for (at, why) in [
        (json!("2026-01-15T10:00:00"), "offset"),
        (json!("tomorrow"), "offset"),
        (json!(iso_in(-3_600_000)), "past"),
    ] {
        let (status, v) = schedule(
            &app,
            &key,
            json!({"draftId": d, "scheduledFor": at, "targetAccounts": target}),
        )
        .await;
        assert_eq!(
            (status, v["error"].clone()),
            (400, json!("INVALID_INPUT")),
            "{v}"
        );
        assert!(v["message"].as_str().expect("message").contains(why), "{v}");
    }
    let (status, v) = schedule(
        &app,
        &key,
        json!({"draftId": d, "scheduledFor": iso_in(1000), "priority": "high"}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(app.balance_micros(user).await, 100 * CREDIT);

    // In 1.5 s, without jitter, by the older single-account fields.
    let at = iso_in(1500);
    let (status, v) = schedule(
        &app,
        &key,
        json!({"draftId": d, "scheduledFor": at, "accountUuid": account, "platform": "twitter", "applyJitter": false}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["message"], "草稿排程成功");
    assert_eq!(v["accountCount"], 1);
    let queue = v["queueIds"][0].as_str().expect("queue id").to_owned();
    assert_eq!(ms_of(&v["scheduledFor"]), ms_of(&json!(at)));
    assert_eq!(
        app.balance_micros(user).await,
        90 * CREDIT,
        "the price is held"
    );
    let listed = schedules(&app, &key, false).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let s = &listed[0];
    assert_eq!(
        (
            s["id"].clone(),
            s["draftId"].clone(),
            s["draftTitle"].clone(),
            s["status"].clone(),
            s["attempts"].clone(),
            s["platform"].clone(),
            s["accountUuid"].clone(),
            s["priority"].clone()
        ),
        (
            json!(queue),
            json!(d),
            json!("t"),
            json!("pending"),
            json!(0),
            json!("twitter"),
            json!(account),
            json!(0)
        )
    );
    assert_eq!(ms_of(&s["effectiveAt"]), ms_of(&s["scheduledFor"]));
    assert!(tweet_texts(&fake).is_empty(), "nothing before its time");
    let done = ended(&app, &key, &queue).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 1);
    assert_eq!(
        tweet_texts(&fake),
        vec!["scheduled one".to_owned(), "scheduled two".to_owned()]
    );
    let started = tollgate::db::jobs::get(&app.state.db, &queue)
        .await
        .expect("job")
        .expect("exists");
    let late = started.started_at_ms.expect("started") - started.effective_at_ms;
    assert!(
        (0..3000).contains(&late),
        "started {late} ms after its time"
    );
    assert_eq!(app.balance_micros(user).await, 90 * CREDIT, "charged once");
    // Nothing is pending any more; the DELETE says so.
    let (status, v) = xai(
        &app,
        &key,
        Method::DELETE,
        &format!("/api/v1/twitter/schedule?draftId={d}"),
        None,
    )
    .await;
    assert_eq!(
        (status, v["error"].clone()),
        (404, json!("NOT_FOUND")),
        "{v}"
    );

    // With jitter, in ten minutes: drawn once within ±3 min, shown the same each time.
    let d2 = draft(&app, &key, &["later"]).await;
    let at = iso_in(600_000);
    let (status, v) = schedule(
        &app,
        &key,
        json!({"draftId": d2, "scheduledFor": at, "targetAccounts": target, "priority": 5}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let effective = ms_of(&v["schedules"][0]["effectiveAt"]);
    let asked = ms_of(&json!(at));
    assert!((effective - asked).abs() <= 180_000, "jitter within ±3 min");
    for _ in 0..3 {
        let listed = schedules(&app, &key, false).await;
        assert_eq!(ms_of(&listed[0]["effectiveAt"]), effective, "drawn once");
        assert_eq!(listed[0]["priority"], 5);
    }
    assert_eq!(app.balance_micros(user).await, 80 * CREDIT);
    let (status, v) = xai(
        &app,
        &key,
        Method::DELETE,
        &format!("/api/v1/twitter/schedule?draftId={d2}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["message"], "排程已成功取消");
    assert_eq!(app.balance_micros(user).await, 90 * CREDIT, "released");
    assert!(schedules(&app, &key, false).await.is_empty());
    let all = schedules(&app, &key, true).await;
    let cancelled = all.iter().find(|s| s["draftId"] == d2).expect("listed");
    assert_eq!(cancelled["status"], "cancelled");

    // A 429 posts nothing: tried again (the price still held), out once.
    faults(&fake, &[Some(Fault::RateLimited)]);
    let d3 = draft(&app, &key, &["after a rate limit"]).await;
    let (status, v) = schedule(
        &app,
        &key,
        json!({"draftId": d3, "scheduledFor": iso_in(0), "targetAccounts": target, "applyJitter": false}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let queue = v["queueIds"][0].as_str().expect("queue").to_owned();
    let done = ended(&app, &key, &queue).await;
    assert_eq!(
        (done["status"].clone(), done["attempts"].clone()),
        (json!("succeeded"), json!(2)),
        "{done}"
    );
    assert!(
        done["lastError"]
            .as_str()
            .expect("the retry's reason")
            .contains("rate limit")
    );
    let sent: Vec<String> = tweet_texts(&fake)
        .into_iter()
        .filter(|t| t == "after a rate limit")
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(app.balance_micros(user).await, 80 * CREDIT);

    // Always 429: tried max_attempts times, then failed with the reason and refunded.
    faults(&fake, &[Some(Fault::RateLimited); 3]);
    let d4 = draft(&app, &key, &["never allowed"]).await;
    let (_, v) = schedule(
        &app,
        &key,
        json!({"draftId": d4, "scheduledFor": iso_in(0), "targetAccounts": target, "applyJitter": false}),
    )
    .await;
    let queue = v["queueIds"][0].as_str().expect("queue").to_owned();
    let done = ended(&app, &key, &queue).await;
    assert_eq!(
        (done["status"].clone(), done["attempts"].clone()),
        (json!("failed"), json!(3)),
        "{done}"
    );
    assert!(
        done["lastError"]
            .as_str()
            .expect("why")
            .contains("RATE_LIMITED")
    );
    assert_eq!(app.balance_micros(user).await, 80 * CREDIT, "refunded");

    // An edit before its time changes what goes out; deleting the draft cancels it.
    let d5 = draft(&app, &key, &["before the edit"]).await;
    let (_, v) = schedule(
        &app,
        &key,
        json!({"draftId": d5, "scheduledFor": iso_in(1500), "targetAccounts": target, "applyJitter": false}),
    )
    .await;
    let queue = v["queueIds"][0].as_str().expect("queue").to_owned();
    let (status, v) = xai(
        &app,
        &key,
        Method::PUT,
        &format!("/api/v1/twitter/drafts/{d5}"),
        Some(json!({"tweets": [{"content": "<p>after the edit</p>"}]})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let d6 = draft(&app, &key, &["deleted before its time"]).await;
    let (_, v) = schedule(
        &app,
        &key,
        json!({"draftId": d6, "scheduledFor": iso_in(600_000), "targetAccounts": target}),
    )
    .await;
    let deleted_queue = v["queueIds"][0].as_str().expect("queue").to_owned();
    assert_eq!(app.balance_micros(user).await, 60 * CREDIT);
    let (status, _) = xai(
        &app,
        &key,
        Method::DELETE,
        &format!("/api/v1/twitter/drafts/{d6}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        ended(&app, &key, &deleted_queue).await["status"],
        "cancelled"
    );
    assert_eq!(ended(&app, &key, &queue).await["status"], "succeeded");
    let texts = tweet_texts(&fake);
    assert!(texts.contains(&"after the edit".to_owned()), "{texts:?}");
    assert!(
        !texts
            .iter()
            .any(|t| t == "before the edit" || t.starts_with("deleted"))
    );
    assert_eq!(app.balance_micros(user).await, 70 * CREDIT);
    app.assert_books_balance(user).await;
    let (ok, out) = app.ledger_verify_cli().await;
    assert!(ok, "{out}");
    app.stop().await;
}

/// A cancel racing the worker either wins (never published, refunded) or answers 409 with the
/// published URL; never both, never neither.
async fn a_cancel_racing_the_worker_wins_or_answers_409_with_the_url(b: Backend) {
    let (app, fake) = jobs_app(&b).await;
    let (user, key, account) = x_user(&app, "1000").await;
    let target = json!([{"accountId": account, "platform": "twitter"}]);
    let rounds = 30i64;
    let (mut won, mut lost) = (0i64, 0i64);
    for k in 0..rounds {
        let text = format!("race {k}");
        let d = draft(&app, &key, &[&text]).await;
        let (status, v) = schedule(
            &app,
            &key,
            json!({"draftId": d, "scheduledFor": iso_in(0), "targetAccounts": target, "applyJitter": false}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        tokio::time::sleep(Duration::from_millis((k as u64 % 6) * 15)).await;
        let (status, v) = xai(
            &app,
            &key,
            Method::DELETE,
            &format!("/api/v1/twitter/schedule?draftId={d}"),
            None,
        )
        .await;
        let posted = tweet_texts(&fake).iter().filter(|t| **t == text).count();
        match status {
            200 => {
                won += 1;
                assert_eq!(posted, 0, "cancelled yet published: {v}");
            }
            409 => {
                lost += 1;
                assert_eq!(posted, 1, "{v}");
                assert!(v["url"].as_str().expect("url").contains("/status/"), "{v}");
            }
            // Out before the cancel looked: nothing was pending any more.
            404 => {
                lost += 1;
                assert_eq!(posted, 1, "{v}");
            }
            other => panic!("cancel answered {other}: {v}"),
        }
    }
    assert_eq!(won + lost, rounds);
    // Every tweet once; every published one charged, every cancelled one refunded.
    let texts = tweet_texts(&fake);
    let mut unique = texts.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), texts.len(), "nothing twice");
    assert_eq!(texts.len(), lost as usize);
    assert_eq!(app.balance_micros(user).await, (1000 - 10 * lost) * CREDIT);
    app.assert_books_balance(user).await;
    app.stop().await;
}

both_backends!(
    a_scheduled_draft_goes_out_once_at_its_time_held_then_charged,
    a_cancel_racing_the_worker_wins_or_answers_409_with_the_url
);

#[path = "../../benches/common/scheduling.rs"]
mod scheduling;

/// The scheduling benchmark at a small size: three real instances on PostgreSQL, one
/// SIGKILLed halfway, every post out once and on time, the money exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_publish_on_time_exactly_once_across_a_sigkill() {
    let Some(Backend::Postgres(url)) = Backend::postgres() else {
        eprintln!(
            "TEST_DATABASE_URL is not set: the three-instance scheduling run needs PostgreSQL"
        );
        return;
    };
    let report = scheduling::run(scheduling::Params {
        posts: 300,
        window_ms: 20_000,
        instances: 3,
        kill: true,
        database_url: url,
        bin: env!("CARGO_BIN_EXE_tollgate").to_owned(),
        env: vec![("TOLLGATE__JOBS__LEASE_MS".into(), "3000".into())],
        // Slow enough that some posts are in flight on the instance when it dies.
        platform_ms: 400,
    })
    .await;
    eprintln!("{}", report.line());
    assert_eq!(report.duplicates, 0, "{}", report.line());
    assert_eq!(report.lost, 0, "{}", report.line());
    assert!(
        report.money_ok && report.ledger_ok,
        "{}\n{}",
        report.line(),
        report.ledger_output
    );
    assert!(report.quantile(0.99) <= 5_000, "{}", report.line());
}

/// `/readyz` fails while this instance cannot claim jobs and recovers with it; a job that
/// cannot start (its account busy) shows in `tollgate_jobs_overdue`.
async fn readiness_follows_the_job_worker_and_overdue_jobs_are_counted(b: Backend) {
    let app = TestApp::spawn_with(&b, |c| {
        c.jobs.poll_interval_ms = 50;
        c.jobs.overdue_after_ms = 1_000;
    })
    .await;
    let ready = || async {
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .expect("readyz")
            .status()
            .as_u16()
    };
    assert_eq!(ready().await, 200);
    // An account with a job running on a live lease, and another of its jobs due a minute ago.
    let now = tollgate::clock::now_ms();
    sql_i64(
        &app.state.db,
        "INSERT INTO jobs (id, kind, subject, queue_key, priority, scheduled_for_ms, effective_at_ms, run_at_ms, state,
                           max_attempts, lease_owner, created_at_ms, updated_at_ms)
         VALUES ('job_busy', 'publish', 'pub_none', 'acct', 0, 0, 0, 9999999999999, 'running', 1, 'elsewhere', 0, 0)",
    )
    .await;
    let due = tollgate::db::jobs::NewJob {
        id: "job_waiting",
        kind: "publish",
        subject: "pub_none_2",
        user_id: None,
        queue_key: Some("acct"),
        priority: 0,
        scheduled_for_ms: now - 60_000,
        effective_at_ms: now - 60_000,
        max_attempts: 1,
        payload: "{}",
    };
    tollgate::db::jobs::insert(&app.state.db, &due)
        .await
        .expect("insert");
    let mut overdue = None;
    for _ in 0..100 {
        overdue = app.metric("tollgate_jobs_overdue").await;
        if overdue == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(overdue, Some(1.0), "the waiting job is overdue");
    let waiting = tollgate::db::jobs::get(&app.state.db, "job_waiting")
        .await
        .expect("job")
        .expect("exists");
    assert_eq!(waiting.state, "pending", "one job per account at a time");
    // The table gone from under the worker: not ready until it is back.
    sql_i64(&app.state.db, "ALTER TABLE jobs RENAME TO jobs_away").await;
    let mut status = 200;
    for _ in 0..100 {
        status = ready().await;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status, 503,
        "an instance that cannot claim jobs is not ready"
    );
    sql_i64(&app.state.db, "ALTER TABLE jobs_away RENAME TO jobs").await;
    for _ in 0..100 {
        status = ready().await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("r")
        .text()
        .await
        .expect("t");
    assert_eq!(status, 200, "ready again: {body}");
    app.stop().await;
}

/// `tollgate worker` works jobs without serving HTTP (PostgreSQL); on SQLite it says why not.
async fn a_worker_process_publishes_what_a_server_without_jobs_scheduled(b: Backend) {
    let Backend::Postgres(_) = b else {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("worker")
            .env("TOLLGATE_DATABASE_URL", "sqlite://data/never.db")
            .output()
            .await
            .expect("run worker");
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("needs PostgreSQL"), "{text}");
        return;
    };
    let (app, fake) = x_setup_with(&b, |c| c.jobs.enabled = false).await;
    let (user, key, account) = x_user(&app, "100").await;
    let d = draft(&app, &key, &["from the worker"]).await;
    let (status, v) = schedule(
        &app,
        &key,
        json!({"draftId": d, "scheduledFor": iso_in(0), "applyJitter": false,
               "targetAccounts": [{"accountId": account, "platform": "twitter"}]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(tweet_texts(&fake).is_empty(), "the server works no jobs");
    let x_base = app.state.config.social.x.api_base.clone();
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("worker")
        .env("TOLLGATE_DATABASE_URL", &app.db_url)
        .env("TOLLGATE_MASTER_KEY", MASTER_KEY)
        .env("TOLLGATE__SOCIAL__X__API_BASE", &x_base)
        .env("TOLLGATE__JOBS__POLL_INTERVAL_MS", "50")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start worker");
    let queue = v["queueIds"][0].as_str().expect("queue").to_owned();
    assert_eq!(ended(&app, &key, &queue).await["status"], "succeeded");
    assert_eq!(tweet_texts(&fake), vec!["from the worker".to_owned()]);
    let _ = worker.start_kill();
    let _ = worker.wait().await;
    assert_eq!(app.balance_micros(user).await, 90 * CREDIT);
    app.stop().await;
}

both_backends!(
    readiness_follows_the_job_worker_and_overdue_jobs_are_counted,
    a_worker_process_publishes_what_a_server_without_jobs_scheduled
);

/// A balance that covers one account of two schedules neither: all holds or none.
async fn a_balance_short_for_every_account_schedules_nothing(b: Backend) {
    let (app, fake) = jobs_app(&b).await;
    let (user, key, first) = x_user(&app, "15").await;
    *fake.user.lock().expect("lock") = ("99887766".into(), "second_account".into());
    let (second, _) = crate::publishing::connect_x(&app, &key, json!({})).await;
    assert_ne!(first, second);
    let d = draft(&app, &key, &["not for both"]).await;
    let (status, v) = schedule(
        &app,
        &key,
        json!({"draftId": d, "scheduledFor": iso_in(0), "applyJitter": false, "targetAccounts": [
            {"accountId": first, "platform": "twitter"}, {"accountId": second, "platform": "twitter"}]}),
    )
    .await;
    assert_eq!(
        (status, v["error"].clone()),
        (402, json!("INSUFFICIENT_CREDITS")),
        "{v}"
    );
    assert_eq!(app.balance_micros(user).await, 15 * CREDIT, "nothing held");
    assert!(
        schedules(&app, &key, true).await.is_empty(),
        "nothing scheduled"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(tweet_texts(&fake).is_empty());
    app.assert_books_balance(user).await;
    app.stop().await;
}

both_backends!(a_balance_short_for_every_account_schedules_nothing);
