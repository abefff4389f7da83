//! The in-process door a platform feature calls (`gateway::chat::chat_as`): the same limits,
//! failover, reservation and settlement as `/v1/chat/completions`, at a flat or a metered price,
//! against a real fake upstream over HTTP.

use crate::both_backends;
use crate::helpers::*;
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;
use tollgate::billing::{Micros, Pricing, UsageStatus};
use tollgate::gateway::Reply;
use tollgate::gateway::auth::Caller;
use tollgate::gateway::chat::{FeatureCall, FeatureReply, chat_as};

fn caller_of(user: i64) -> Caller {
    Caller {
        key_id: None,
        user_id: Some(user),
        is_admin: false,
        models: None,
        limits: None,
        is_member: false,
    }
}

/// Runs one feature call for `user`.
async fn run(
    app: &TestApp,
    user: i64,
    pricing: Pricing,
    body: Value,
) -> Result<FeatureReply, tollgate::error::OpenAiError> {
    let caller = caller_of(user);
    let call = FeatureCall {
        caller: &caller,
        request_id: Arc::from(format!("feature-{}", rand_u64())),
        feature: "writing/generate",
        pricing,
        body: Bytes::from(body.to_string()),
        accept: None,
        paid_by: tollgate::billing::PaidBy::Credits,
    };
    chat_as(&app.state, call).await.0
}

/// Everything a reply carries: a whole body, or every event of a stream read to its end.
async fn drain(reply: Reply) -> String {
    match reply {
        Reply::Full { body, .. } => String::from_utf8_lossy(&body).into_owned(),
        Reply::Stream { mut events } => {
            let mut text = String::new();
            while let Some(e) = events.recv().await {
                text.push_str(&String::from_utf8_lossy(&e));
            }
            text
        }
    }
}

fn chat_body(stream: bool) -> Value {
    json!({"model": "m1", "stream": stream, "max_tokens": 100,
           "messages": [{"role": "user", "content": "write"}]})
}

async fn a_flat_priced_feature_is_charged_its_price_once_whatever_the_tokens(b: Backend) {
    // Token prices would charge 30 × 1 + 20 × 2 = 70 micros; the feature's price is 0.2 credits.
    let s = setup(
        &b,
        chat_script(&["Hello", " there"], 30, 20, 0),
        Prices {
            input: "1",
            output: "2",
            cached: "0",
        },
        "1",
    )
    .await;
    for stream in [false, true] {
        let answer = run(
            &s.app,
            s.user,
            Pricing::Flat(Micros(200_000)),
            chat_body(stream),
        )
        .await
        .expect("answer");
        let text = drain(answer.reply).await;
        assert!(text.contains("Hello"), "{text}");
        let charged = answer.settled.await.expect("settled");
        assert_eq!(charged.status, UsageStatus::Ok);
        assert_eq!(charged.charged, Micros(200_000));
        assert_eq!(charged.usage.completion_tokens, 20);
    }
    assert_eq!(s.app.balance_micros(s.user).await, 1_000_000 - 2 * 200_000);
    let usage = s.app.wait_for_usage(s.user, 2).await;
    assert!(
        usage
            .iter()
            .all(|u| u["endpoint"] == "writing/generate" && u["cost_micros"] == 200_000),
        "{usage:?}"
    );
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn a_metered_feature_pays_what_its_tokens_cost(b: Backend) {
    let s = setup(
        &b,
        chat_script(&["a", "b"], 30, 20, 0),
        Prices {
            input: "1",
            output: "2",
            cached: "0",
        },
        "1",
    )
    .await;
    let answer = run(&s.app, s.user, Pricing::Metered, chat_body(true))
        .await
        .expect("answer");
    let text = drain(answer.reply).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    // 30 input tokens at 1 credit per 1M and 20 output tokens at 2: 30 + 40 micros.
    assert_eq!(answer.settled.await.expect("settled").charged, Micros(70));
    assert_eq!(s.app.balance_micros(s.user).await, 1_000_000 - 70);
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn a_failed_feature_call_is_refunded_in_full(b: Backend) {
    let script = Script::Raw {
        status: 500,
        content_type: "application/json",
        body: br#"{"error":{"message":"boom"}}"#.to_vec(),
    };
    let s = setup(
        &b,
        script,
        Prices {
            input: "1",
            output: "1",
            cached: "0",
        },
        "1",
    )
    .await;
    let failed = run(
        &s.app,
        s.user,
        Pricing::Flat(Micros(200_000)),
        chat_body(false),
    )
    .await;
    assert!(matches!(
        failed,
        Err(tollgate::error::OpenAiError::Upstream { .. })
    ));
    assert_eq!(s.app.balance_micros(s.user).await, 1_000_000);
    let usage = s.app.wait_for_usage(s.user, 1).await;
    assert_eq!(usage[0]["status"], "upstream_error");
    assert_eq!(usage[0]["cost_micros"], 0);
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

async fn a_flat_price_above_the_balance_is_refused_before_the_upstream(b: Backend) {
    let s = setup(
        &b,
        chat_script(&["x"], 1, 1, 0),
        Prices {
            input: "1",
            output: "1",
            cached: "0",
        },
        "0.1",
    )
    .await;
    let refused = run(
        &s.app,
        s.user,
        Pricing::Flat(Micros(200_000)),
        chat_body(false),
    )
    .await;
    assert!(matches!(
        refused,
        Err(tollgate::error::OpenAiError::InsufficientBalance {
            needed: Micros(200_000),
            ..
        })
    ));
    assert_eq!(s.fake.calls(), 0);
    assert_eq!(s.app.balance_micros(s.user).await, 100_000);
    s.app.assert_books_balance(s.user).await;
    s.app.stop().await;
}

both_backends!(
    a_flat_priced_feature_is_charged_its_price_once_whatever_the_tokens,
    a_metered_feature_pays_what_its_tokens_cost,
    a_failed_feature_call_is_refunded_in_full,
    a_flat_price_above_the_balance_is_refused_before_the_upstream
);
