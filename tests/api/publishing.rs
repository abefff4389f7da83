//! Publishing (seed 000): social sets and drafts over HTTP with the `xai-key` header, in seed
//! 000's own bodies; X's weighted counts and each platform's validity on every draft.

use crate::both_backends;
use crate::helpers::*;
use serde_json::{Value, json};

/// A request with seed 000's `xai-key` header: (status, body).
pub(crate) async fn xai(
    app: &TestApp,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app
        .client
        .request(method, app.url(path))
        .header("xai-key", key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn user(app: &TestApp) -> String {
    let id = app.add_user(json!("100")).await;
    app.add_key(id, json!({})).await
}

async fn social_sets_are_created_renamed_listed_and_deleted(b: Backend) {
    let app = TestApp::spawn(&b).await;
    let key = user(&app).await;
    use reqwest::Method as M;
    let (status, created) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/social-sets",
        Some(json!({"name": "我的 Social Set"})),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["success"], true);
    let id = created["socialSet"]["id"].as_str().expect("id").to_owned();
    assert_eq!(created["socialSet"]["accounts"], json!([]));
    let (status, renamed) = xai(
        &app,
        &key,
        M::PUT,
        &format!("/api/v1/social-sets/{id}"),
        Some(json!({"name": "品牌矩阵"})),
    )
    .await;
    assert_eq!(status, 200, "{renamed}");
    let (_, list) = xai(&app, &key, M::GET, "/api/v1/social-sets", None).await;
    assert_eq!(
        list["socialSets"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    assert_eq!(list["socialSets"][0]["name"], "品牌矩阵");
    // Only connected accounts of the user's may join; errors are seed 000's shape.
    let (status, e) = xai(
        &app,
        &key,
        M::POST,
        &format!("/api/v1/social-sets/{id}/accounts"),
        Some(json!({"accountId": "nope"})),
    )
    .await;
    assert_eq!(
        (status, e["success"].clone(), e["error"].clone()),
        (400, json!(false), json!("INVALID_INPUT")),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("accountId"),
        "{e}"
    );
    let (status, e) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/social-sets",
        Some(json!({"name": " "})),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    // Another user sees none of it.
    let other = user(&app).await;
    let (_, theirs) = xai(&app, &other, M::GET, "/api/v1/social-sets", None).await;
    assert_eq!(theirs["socialSets"], json!([]));
    let (status, e) = xai(
        &app,
        &other,
        M::DELETE,
        &format!("/api/v1/social-sets/{id}"),
        None,
    )
    .await;
    assert_eq!((status, e["error"].clone()), (404, json!("NOT_FOUND")));
    let (status, _) = xai(
        &app,
        &key,
        M::DELETE,
        &format!("/api/v1/social-sets/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, list) = xai(&app, &key, M::GET, "/api/v1/social-sets", None).await;
    assert_eq!(list["socialSets"], json!([]));
    let (status, _) = xai(&app, "sk-not-a-key", M::GET, "/api/v1/social-sets", None).await;
    assert_eq!(status, 401);
    app.stop().await;
}

async fn drafts_count_each_item_the_way_each_platform_does(b: Backend) {
    let app = TestApp::spawn(&b).await;
    let key = user(&app).await;
    use reqwest::Method as M;
    let (_, set) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/social-sets",
        Some(json!({"name": "s"})),
    )
    .await;
    let set_id = set["socialSet"]["id"].as_str().expect("id").to_owned();
    // A CJK + URL thread, counted by each platform.
    let head = "<p>来自 API 的问候!</p>";
    let second = "<p>详情见 https://example.com/a/very/long/path?with=query 👨‍👩‍👧</p>";
    let long = format!("<p>{}</p>", "长".repeat(141));
    let body = json!({
        "title": "我的草稿",
        "tweets": [{"content": head}, {"content": second}, {"content": long}],
        "socialSetId": set_id,
        "scheduledFor": "2026-01-15T10:00:00Z",
    });
    let (status, created) = xai(&app, &key, M::POST, "/api/v1/twitter/drafts", Some(body)).await;
    assert_eq!(status, 200, "{created}");
    let draft = &created["draft"];
    assert_eq!(
        (draft["title"].clone(), draft["status"].clone()),
        (json!("我的草稿"), json!("draft"))
    );
    assert_eq!(draft["scheduledFor"], "2026-01-15T10:00:00Z");
    assert_eq!(draft["socialSetId"], json!(set_id));
    let tweets = draft["tweets"].as_array().expect("tweets");
    assert_eq!(tweets[0]["content"], head);
    assert_eq!(tweets[0]["plainText"], "来自 API 的问候!");
    // 来自 (4) + space + API (3) + space + 的问候 (6) + ! = 16.
    assert_eq!(
        (
            tweets[0]["characterCount"].clone(),
            tweets[0]["isValid"].clone(),
            tweets[0]["position"].clone()
        ),
        (json!(16), json!(true), json!(0))
    );
    // 详情见 (6) + space + URL (23) + space + one family emoji (2) = 33.
    assert_eq!(tweets[1]["characterCount"], 33);
    assert_eq!(
        (
            tweets[2]["characterCount"].clone(),
            tweets[2]["isValid"].clone()
        ),
        (json!(282), json!(false))
    );
    assert_eq!(draft["isValid"], false);
    // No accounts chosen: every platform's view; 141 CJK characters fit all but X.
    let validity = &draft["platformValidity"];
    assert_eq!(validity["twitter"]["isValid"], false);
    assert_eq!(validity["twitter"]["limit"], 280);
    for p in ["bluesky", "mastodon", "threads", "linkedin"] {
        assert_eq!(validity[p]["isValid"], true, "{p}: {validity}");
    }
    assert_eq!(validity["bluesky"]["characterCount"], 141);
    assert_eq!(
        validity["bluesky"]["items"][1]["characterCount"],
        3 + 1 + 47 + 1 + 1
    );
    assert_eq!(
        validity["threads"]["items"][1]["characterCount"],
        3 + 1 + 47 + 1 + 18
    );
    assert_eq!(
        validity["mastodon"]["items"][1]["characterCount"],
        3 + 1 + 23 + 1 + 5
    );
    assert_eq!(validity["linkedin"]["limit"], 3000);

    // Edit: the long item goes, ids of kept items stay, HTML is sanitised.
    let id = draft["id"].as_str().expect("id").to_owned();
    let first_item = tweets[0]["id"].clone();
    let (status, updated) = xai(&app, &key, M::PUT, &format!("/api/v1/twitter/drafts/{id}"), Some(json!({
        "tweets": [{"id": first_item, "content": head}, {"content": "<p onclick=\"x()\">二<script>alert(1)</script></p>"}],
        "scheduledFor": null,
    }))).await;
    assert_eq!(status, 200, "{updated}");
    let d = &updated["draft"];
    assert_eq!(d["tweets"][0]["id"], first_item);
    assert_eq!(d["tweets"][1]["content"], "<p>二</p>");
    assert_eq!(
        (d["isValid"].clone(), d["scheduledFor"].clone()),
        (json!(true), Value::Null)
    );
    assert_eq!(d["title"], "我的草稿");

    // Lists: all, by set; a second user sees none; read and delete.
    let (_, other_set) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/twitter/drafts",
        Some(json!({"title": "b", "tweets": [{"content": "hi"}]})),
    )
    .await;
    assert_eq!(other_set["draft"]["socialSetId"], Value::Null);
    let (_, all) = xai(&app, &key, M::GET, "/api/v1/twitter/drafts", None).await;
    assert_eq!(all["drafts"].as_array().map(Vec::len), Some(2));
    let (_, in_set) = xai(
        &app,
        &key,
        M::GET,
        &format!("/api/v1/twitter/drafts?socialSetId={set_id}"),
        None,
    )
    .await;
    assert_eq!(in_set["drafts"].as_array().map(Vec::len), Some(1));
    assert_eq!(in_set["drafts"][0]["id"], json!(id));
    let stranger = user(&app).await;
    let (status, _) = xai(
        &app,
        &stranger,
        M::GET,
        &format!("/api/v1/twitter/drafts/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (_, theirs) = xai(&app, &stranger, M::GET, "/api/v1/twitter/drafts", None).await;
    assert_eq!(theirs["drafts"], json!([]));

    // Bad input is named, and nothing is written.
    for (body, want) in [
        (json!({"tweets": [{"content": "x"}]}), "title"),
        (json!({"title": "t"}), "tweets"),
        (json!({"title": "t", "tweets": []}), "tweets"),
        (
            json!({"title": "t", "tweets": [{"content": "x"}], "scheduledFor": "2026-01-15T10:00:00"}),
            "scheduledFor",
        ),
        (
            json!({"title": "t", "tweets": [{"content": "x"}], "socialSetId": "nope"}),
            "socialSetId",
        ),
        (
            json!({"title": "t", "tweets": [{"content": "x"}], "selectedAccountIds": ["nope"]}),
            "selectedAccountIds",
        ),
        (
            json!({"title": "t", "tweets": [{"content": "x", "media": ["f_0000"]}]}),
            "media",
        ),
        (
            json!({"title": "t", "tweets": [{"content": "x"}], "status": "sent"}),
            "status",
        ),
    ] {
        let (status, e) = xai(
            &app,
            &key,
            M::POST,
            "/api/v1/twitter/drafts",
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (status, e["error"].clone()),
            (400, json!("INVALID_INPUT")),
            "{body}: {e}"
        );
        assert!(
            e["message"].as_str().unwrap_or_default().contains(want),
            "{body}: {e}"
        );
    }
    let (_, all) = xai(&app, &key, M::GET, "/api/v1/twitter/drafts", None).await;
    assert_eq!(all["drafts"].as_array().map(Vec::len), Some(2));
    let (status, _) = xai(
        &app,
        &key,
        M::DELETE,
        &format!("/api/v1/twitter/drafts/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, e) = xai(
        &app,
        &key,
        M::GET,
        &format!("/api/v1/twitter/drafts/{id}"),
        None,
    )
    .await;
    assert_eq!((status, e["error"].clone()), (404, json!("NOT_FOUND")));
    app.stop().await;
}

both_backends!(
    social_sets_are_created_renamed_listed_and_deleted,
    drafts_count_each_item_the_way_each_platform_does
);

use crate::fakes::x::{CLIENT_ID, CLIENT_SECRET, FakeX, start_fake_x};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The callback registered with the fake X app (the gateway's as a user would configure it; the
/// test's "browser" replays the redirect to the test server's own address).
const X_CALLBACK: &str = "http://127.0.0.1:8000/api/v1/twitter/callback";

pub(crate) fn x_app(c: &mut tollgate::config::Config, base: &str) {
    c.social.x.api_base = base.to_owned();
    c.social.x.authorize_url = format!("{base}/i/oauth2/authorize");
    c.social.x.token_url = format!("{base}/2/oauth2/token");
    c.social.x.client_id = CLIENT_ID.to_owned();
    c.social.x.client_secret = tollgate::secrets::Secret::from(CLIENT_SECRET);
    c.social.x.redirect_uri = X_CALLBACK.to_owned();
}

pub(crate) async fn x_setup(b: &Backend) -> (TestApp, Arc<FakeX>) {
    x_setup_with(b, |_| {}).await
}

/// [`x_setup`] with more configuration.
pub(crate) async fn x_setup_with(
    b: &Backend,
    more: impl FnOnce(&mut tollgate::config::Config),
) -> (TestApp, Arc<FakeX>) {
    let (fake, base) = start_fake_x().await;
    fake.registered
        .lock()
        .expect("lock")
        .push(X_CALLBACK.to_owned());
    let app = TestApp::spawn_with(b, |c| {
        x_app(c, &base);
        // These scenarios publish faster than a person: the per-minute class would stop them.
        c.limits.other_per_minute = 1_000_000;
        c.limits.query_per_minute = 1_000_000;
        more(c);
    })
    .await;
    (app, fake)
}

/// The user's browser: opens the authorize URL, and follows X's redirect to the callback (on the
/// test server). The callback's answer.
pub(crate) async fn approve(app: &TestApp, auth_url: &str) -> (u16, Value, String) {
    approve_at(&app.base, auth_url).await
}

/// [`approve`] against a gateway at `base`.
pub(crate) async fn approve_at(base: &str, auth_url: &str) -> (u16, Value, String) {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let resp = browser.get(auth_url).send().await.expect("authorize");
    assert_eq!(resp.status(), 303, "X redirects back");
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let query = location.split_once('?').expect("query").1.to_owned();
    let resp = browser
        .get(format!("{base}/api/v1/twitter/callback?{query}"))
        .send()
        .await
        .expect("callback");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null), query)
}

async fn status_of(app: &TestApp, key: &str, session: &str) -> Value {
    let (status, v) = xai(
        app,
        key,
        reqwest::Method::GET,
        &format!("/api/v2/channels/accounts/auth/twitter/status/{session}"),
        None,
    )
    .await;
    assert_eq!((status, v["code"].clone()), (200, json!(0)), "{v}");
    v["data"].clone()
}

pub(crate) async fn connect_x(app: &TestApp, key: &str, body: Value) -> (String, String) {
    let (status, started) = xai(
        app,
        key,
        reqwest::Method::POST,
        "/api/v1/twitter/auth",
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{started}");
    let (status, done, _) = approve(app, started["authUrl"].as_str().expect("url")).await;
    assert_eq!(status, 200, "{done}");
    (
        done["accountUuid"].as_str().expect("account").to_owned(),
        started["sessionId"].as_str().expect("session").to_owned(),
    )
}

async fn an_x_account_connects_through_pkce_and_a_polled_session(b: Backend) {
    let (app, fake) = x_setup(&b).await;
    let key = user(&app).await;
    use reqwest::Method as M;
    let (status, started) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/twitter/auth",
        Some(json!({"mode": "create_new", "followOnX": false})),
    )
    .await;
    assert_eq!(status, 200, "{started}");
    let auth_url = started["authUrl"].as_str().expect("authUrl").to_owned();
    let session = started["sessionId"].as_str().expect("sessionId").to_owned();
    let parsed = url::Url::parse(&auth_url).expect("url");
    let q: std::collections::HashMap<String, String> = parsed.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["redirect_uri"], X_CALLBACK);
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43);
    assert!(
        q["scope"].split(' ').any(|s| s == "offline.access"),
        "{auth_url}"
    );
    assert!(q["scope"].contains("tweet.write") && q["scope"].contains("users.read"));
    let pending = status_of(&app, &key, &session).await;
    assert_eq!(
        (
            pending["status"].clone(),
            pending["requiresSelection"].clone()
        ),
        (json!("pending"), json!(false))
    );
    assert!(pending["expiresAt"].is_string());

    let (status, done, query) = approve(&app, &auth_url).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["success"], true);
    let account = done["accountUuid"]
        .as_str()
        .expect("accountUuid")
        .to_owned();
    let completed = status_of(&app, &key, &session).await;
    assert_eq!(completed["status"], "completed", "{completed}");
    assert_eq!(completed["accountId"], json!(account));
    assert_eq!(completed["accounts"][0]["platform"], "twitter");
    assert_eq!(completed["accounts"][0]["platformUid"], "2244994945");
    assert_eq!(completed["accounts"][0]["account"], "tollgate_dev");
    // create_new: a set of its own.
    let (_, sets) = xai(&app, &key, M::GET, "/api/v1/social-sets", None).await;
    assert_eq!(sets["socialSets"][0]["id"], done["socialSetId"]);
    assert_eq!(sets["socialSets"][0]["name"], "@tollgate_dev");
    assert_eq!(
        sets["socialSets"][0]["accounts"][0]["accountId"],
        json!(account)
    );
    // The state is single-use; an unknown one is refused; the session is the user's alone.
    let replay = app
        .client
        .get(app.url(&format!("/api/v1/twitter/callback?{query}")))
        .send()
        .await
        .expect("replay");
    assert_eq!(replay.status(), 400);
    let e: Value = replay.json().await.expect("json");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already used"),
        "{e}"
    );
    let unknown = app
        .client
        .get(app.url("/api/v1/twitter/callback?code=c&state=forged"))
        .send()
        .await
        .expect("forged");
    assert_eq!(unknown.status(), 400);
    let other = user(&app).await;
    let (status, _) = xai(
        &app,
        &other,
        M::GET,
        &format!("/api/v2/channels/accounts/auth/twitter/status/{session}"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    // Tokens are sealed at rest.
    let sealed = sql_i64(&app.state.db, "SELECT COUNT(*) FROM social_accounts WHERE access_token LIKE 'enc:v1:%' AND refresh_token LIKE 'enc:v1:%'").await;
    let plain = sql_i64(&app.state.db, "SELECT COUNT(*) FROM social_accounts WHERE access_token LIKE '%xat-%' OR refresh_token LIKE '%xrt-%'").await;
    assert_eq!((sealed, plain), (1, 0));
    // Listed, renamed; connecting the same X user again keeps one account.
    let (_, listed) = xai(&app, &key, M::GET, "/api/v1/social/accounts", None).await;
    assert_eq!(listed["accounts"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["accounts"][0]["status"], "active");
    let (status, renamed) = xai(
        &app,
        &key,
        M::PATCH,
        &format!("/api/v1/social/accounts/{account}"),
        Some(json!({"name": "品牌号"})),
    )
    .await;
    assert_eq!(
        (status, renamed["account"]["displayName"].clone()),
        (200, json!("品牌号"))
    );
    let (again, _) = connect_x(&app, &key, json!({})).await;
    assert_eq!(again, account);
    assert_eq!(fake.token_calls.load(Ordering::SeqCst), 2);
    // Disconnecting revokes at X and forgets the tokens.
    let (status, _) = xai(
        &app,
        &key,
        M::DELETE,
        &format!("/api/v1/social/accounts/{account}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(fake.revocations.load(Ordering::SeqCst), 1);
    let (_, listed) = xai(&app, &key, M::GET, "/api/v1/social/accounts", None).await;
    assert_eq!(listed["accounts"], json!([]));
    app.stop().await;
}

async fn connection_sessions_expire_and_need_a_configured_app(b: Backend) {
    let (fake, base) = start_fake_x().await;
    fake.registered
        .lock()
        .expect("lock")
        .push(X_CALLBACK.to_owned());
    let app = TestApp::spawn_with(&b, |c| {
        x_app(c, &base);
        c.social.auth_session_ttl_ms = 300;
    })
    .await;
    let key = user(&app).await;
    use reqwest::Method as M;
    let (_, started) = xai(&app, &key, M::POST, "/api/v1/twitter/auth", Some(json!({}))).await;
    let session = started["sessionId"].as_str().expect("session").to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let expired = status_of(&app, &key, &session).await;
    assert_eq!(
        (expired["status"].clone(), expired["errorCode"].clone()),
        (json!("failed"), json!(2)),
        "{expired}"
    );
    let (status, e, _) = approve(&app, started["authUrl"].as_str().expect("url")).await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{e}"
    );
    let (status, e) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/twitter/auth",
        Some(json!({"socialSetId": "nope"})),
    )
    .await;
    assert_eq!(
        (status, e["error"].clone()),
        (400, json!("INVALID_INPUT")),
        "{e}"
    );
    let (status, e) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/twitter/auth",
        Some(json!({"mode": "sideways"})),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    app.stop().await;

    // No client id, or a localhost callback: OAUTH_NOT_CONFIGURED, and no session.
    let bare = TestApp::spawn(&b).await;
    let key = user(&bare).await;
    let (status, e) = xai(
        &bare,
        &key,
        M::POST,
        "/api/v1/twitter/auth",
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (status, e["error"].clone(), e["success"].clone()),
        (503, json!("OAUTH_NOT_CONFIGURED"), json!(false)),
        "{e}"
    );
    bare.stop().await;
    let local = TestApp::spawn_with(&b, |c| {
        x_app(c, &base);
        c.social.x.redirect_uri = "http://localhost:8000/api/v1/twitter/callback".into();
    })
    .await;
    let key = user(&local).await;
    let (status, e) = xai(
        &local,
        &key,
        M::POST,
        "/api/v1/twitter/auth",
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (status, e["error"].clone()),
        (503, json!("OAUTH_NOT_CONFIGURED")),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("127.0.0.1"),
        "{e}"
    );
    local.stop().await;
}

async fn fifty_callers_on_an_expiring_x_token_cause_one_refresh(b: Backend) {
    let (app, fake) = x_setup(&b).await;
    // Tokens that live a minute: inside the refresh-ahead window from the start.
    fake.access_ttl_s.store(60, Ordering::SeqCst);
    let key = user(&app).await;
    let (account, _) = connect_x(&app, &key, json!({})).await;
    fake.expire_access_tokens();
    fake.access_ttl_s.store(7200, Ordering::SeqCst);
    let calls = (0..50).map(|_| tollgate::social::tokens::access_token(&app.state, &account, None));
    let tokens = futures_util::future::join_all(calls).await;
    let tokens: Vec<String> = tokens.into_iter().map(|t| t.expect("a token")).collect();
    assert_eq!(
        fake.refresh_calls.load(Ordering::SeqCst),
        1,
        "one refresh for fifty callers"
    );
    assert!(tokens.iter().all(|t| *t == tokens[0]));
    // The new token works at X, and the rotated refresh token was kept: a forced refresh (the
    // platform refused the token) uses it once more.
    let forced = tollgate::social::tokens::access_token(&app.state, &account, Some(&tokens[0]))
        .await
        .expect("refreshed");
    assert_ne!(forced, tokens[0]);
    assert_eq!(fake.refresh_calls.load(Ordering::SeqCst), 2);
    // Revoked at X: TOKEN_EXPIRED, and the account needs connecting again.
    fake.revoke_all();
    let e = tollgate::social::tokens::access_token(&app.state, &account, Some(&forced))
        .await
        .expect_err("revoked");
    assert!(
        matches!(e, tollgate::error::ApiError::TokenExpired(_)),
        "{e:?}"
    );
    let (_, listed) = xai(
        &app,
        &key,
        reqwest::Method::GET,
        "/api/v1/social/accounts",
        None,
    )
    .await;
    assert_eq!(listed["accounts"][0]["status"], "needs_reauth");
    app.stop().await;
}

async fn two_instances_refreshing_one_account_call_x_once(b: Backend) {
    if !matches!(b, Backend::Postgres(_)) {
        return; // one SQLite file serves one process
    }
    let (fake, base) = start_fake_x().await;
    fake.registered
        .lock()
        .expect("lock")
        .push(X_CALLBACK.to_owned());
    fake.access_ttl_s.store(60, Ordering::SeqCst);
    let app = TestApp::spawn_with(&b, |c| x_app(c, &base)).await;
    let shared = app.db_url.clone();
    let second = TestApp::spawn_with(&b, |c| {
        x_app(c, &base);
        c.database.url = shared;
    })
    .await;
    let key = user(&app).await;
    let (account, _) = connect_x(&app, &key, json!({})).await;
    fake.access_ttl_s.store(7200, Ordering::SeqCst);
    let calls = (0..40).map(|k| {
        let state = if k % 2 == 0 {
            &app.state
        } else {
            &second.state
        };
        tollgate::social::tokens::access_token(state, &account, None)
    });
    let tokens: Vec<String> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|t| t.expect("a token"))
        .collect();
    assert_eq!(
        fake.refresh_calls.load(Ordering::SeqCst),
        1,
        "one refresh across both instances"
    );
    assert!(tokens.iter().all(|t| *t == tokens[0]));
    second.stop().await;
    app.stop().await;
}

both_backends!(
    two_instances_refreshing_one_account_call_x_once,
    an_x_account_connects_through_pkce_and_a_polled_session,
    connection_sessions_expire_and_need_a_configured_app,
    fifty_callers_on_an_expiring_x_token_cause_one_refresh
);

use crate::fakes::x::Fault;

/// A user with `balance` credits, a key, an X account connected and a draft of `items`.
pub(crate) async fn x_user(app: &TestApp, balance: &str) -> (i64, String, String) {
    let id = app.add_user(json!(balance)).await;
    let key = app.add_key(id, json!({})).await;
    let (account, _) = connect_x(app, &key, json!({})).await;
    (id, key, account)
}

pub(crate) async fn draft(app: &TestApp, key: &str, items: &[&str]) -> String {
    let tweets: Vec<Value> = items
        .iter()
        .map(|t| json!({"content": format!("<p>{t}</p>")}))
        .collect();
    let (status, d) = xai(
        app,
        key,
        reqwest::Method::POST,
        "/api/v1/twitter/drafts",
        Some(json!({"title": "t", "tweets": tweets})),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    d["draft"]["id"].as_str().expect("id").to_owned()
}

async fn publish(
    app: &TestApp,
    key: &str,
    draft: &str,
    account: &str,
    idempotency: Option<&str>,
) -> (u16, Value) {
    let mut req = app
        .client
        .post(app.url("/api/v1/twitter/publish"))
        .header("xai-key", key)
        .json(&json!({"draftId": draft, "accountIds": [account]}));
    if let Some(k) = idempotency {
        req = req.header("idempotency-key", k);
    }
    let resp = req.send().await.expect("publish");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn a_cjk_thread_goes_out_as_a_reply_chain_charged_once_and_never_twice(b: Backend) {
    let (app, fake) = x_setup(&b).await;
    let (user, key, account) = x_user(&app, "100").await;
    let items = [
        "第一条：来自 API 的问候！",
        "第二条 详情见 https://example.com/a",
        "第三条 完",
    ];
    let d = draft(&app, &key, &items).await;
    let (status, body) = publish(&app, &key, &d, &account, Some("k-1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["success"].clone(), body["summary"].clone()),
        (
            json!(true),
            json!({"total": 1, "succeeded": 1, "failed": 0, "unconfirmed": 0})
        )
    );
    let r = &body["results"][0];
    assert_eq!(
        (
            r["status"].clone(),
            r["published"].clone(),
            r["total"].clone()
        ),
        (json!("published"), json!(3), json!(3))
    );
    let ids: Vec<String> = r["data"]["tweetIds"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect();
    assert_eq!(
        r["data"]["url"],
        format!("https://x.com/tollgate_dev/status/{}", ids[0])
    );
    {
        let tweets = fake.tweets.lock().expect("lock");
        assert_eq!(tweets.len(), 3);
        assert_eq!(tweets[0].text, items[0]);
        assert_eq!(tweets[0].reply_to, None);
        assert_eq!(tweets[1].reply_to.as_deref(), Some(ids[0].as_str()));
        assert_eq!(tweets[2].reply_to.as_deref(), Some(ids[1].as_str()));
    }
    assert_eq!(app.balance_micros(user).await, 90_000_000);
    let usage = app.wait_for_usage(user, 1).await;
    assert_eq!(
        (
            usage[0]["endpoint"].clone(),
            usage[0]["model"].clone(),
            usage[0]["cost_micros"].clone(),
            usage[0]["units"].clone()
        ),
        (
            json!("publish"),
            json!("twitter"),
            json!(10_000_000),
            json!(3)
        )
    );
    let latency = usage[0]["latency_ms"].as_i64().expect("latency");
    assert!((0..60_000).contains(&latency), "latency {latency} ms");
    // The same key: the first answer again, nothing sent; another body under it: refused.
    let resp = app
        .client
        .post(app.url("/api/v1/twitter/publish"))
        .header("xai-key", &key)
        .header("idempotency-key", "k-1")
        .json(&json!({"draftId": d, "accountIds": [account]}))
        .send()
        .await
        .expect("retry");
    assert_eq!(
        resp.headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let replay: Value = resp.json().await.expect("json");
    assert_eq!(replay, body);
    let (status, e) = publish(
        &app,
        &key,
        &draft(&app, &key, &["另一条"]).await,
        &account,
        Some("k-1"),
    )
    .await;
    assert_eq!(
        (status, e["error"].clone()),
        (409, json!("CONFLICT")),
        "{e}"
    );
    // Publishing the same draft again without a key: it is already out; nothing sent or charged.
    let (status, again) = publish(&app, &key, &d, &account, None).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (
            again["results"][0]["status"].clone(),
            again["results"][0]["creditsCharged"].clone()
        ),
        (json!("published"), json!(0))
    );
    assert_eq!(fake.tweets.lock().expect("lock").len(), 3);
    assert_eq!(app.balance_micros(user).await, 90_000_000);
    app.assert_books_balance(user).await;
    app.stop().await;
}

pub(crate) fn faults(fake: &FakeX, list: &[Option<Fault>]) {
    let mut f = fake.faults.lock().expect("lock");
    f.clear();
    f.extend(list.iter().copied());
}

pub(crate) fn tweet_texts(fake: &FakeX) -> Vec<String> {
    fake.tweets
        .lock()
        .expect("lock")
        .iter()
        .map(|t| t.text.clone())
        .collect()
}

async fn a_thread_that_fails_midway_is_refunded_and_continues_where_it_stopped(b: Backend) {
    let (app, fake) = x_setup(&b).await;
    let (user, key, account) = x_user(&app, "100").await;
    let d = draft(&app, &key, &["一", "二", "三"]).await;
    faults(&fake, &[None, None, Some(Fault::RateLimited)]);
    let (status, body) = publish(&app, &key, &d, &account, None).await;
    assert_eq!(status, 200, "{body}");
    let r = &body["results"][0];
    assert_eq!(
        (
            r["status"].clone(),
            r["published"].clone(),
            r["total"].clone(),
            r["failedAt"].clone()
        ),
        (json!("failed"), json!(2), json!(3), json!(2)),
        "{r}"
    );
    assert_eq!(r["error"]["code"], "RATE_LIMITED");
    assert_eq!(body["summary"]["failed"], 1);
    assert_eq!(app.balance_micros(user).await, 100_000_000, "refunded");
    // Again: only the third goes out, replying to the second; charged once.
    let (_, body) = publish(&app, &key, &d, &account, None).await;
    let r = &body["results"][0];
    assert_eq!(
        (r["status"].clone(), r["published"].clone()),
        (json!("published"), json!(3)),
        "{r}"
    );
    let tweets = fake.tweets.lock().expect("lock").clone();
    assert_eq!(
        tweets.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(),
        ["一", "二", "三"]
    );
    assert_eq!(tweets[2].reply_to.as_deref(), Some(tweets[1].id.as_str()));
    assert_eq!(app.balance_micros(user).await, 90_000_000);
    app.assert_books_balance(user).await;
    app.stop().await;
}

async fn a_post_whose_answer_is_lost_is_held_unconfirmed_and_never_sent_twice(b: Backend) {
    let (app, fake) = x_setup(&b).await;
    let (user, key, account) = x_user(&app, "100").await;
    use reqwest::Method as M;
    let d = draft(&app, &key, &["头条", "次条"]).await;
    // X makes the first post, then the connection drops.
    faults(&fake, &[Some(Fault::DropAfterCommit)]);
    let (_, body) = publish(&app, &key, &d, &account, None).await;
    let r = &body["results"][0];
    assert_eq!(
        (
            r["status"].clone(),
            r["failedAt"].clone(),
            r["published"].clone()
        ),
        (json!("unconfirmed"), json!(0), json!(0)),
        "{r}"
    );
    let target = r["targetId"].as_str().expect("target").to_owned();
    assert_eq!(
        app.balance_micros(user).await,
        90_000_000,
        "held while unconfirmed"
    );
    // Publishing again is refused before anything is sent.
    let (_, again) = publish(&app, &key, &d, &account, None).await;
    assert_eq!(
        again["results"][0]["error"]["code"], "UNCONFIRMED",
        "{again}"
    );
    assert_eq!(tweet_texts(&fake), ["头条"]);
    // The user checks X: it is there. The thread is not all out: refunded, and the next publish
    // continues with the second post, replying to the first.
    let posted = fake.tweets.lock().expect("lock")[0].id.clone();
    let (status, resolved) = xai(
        &app,
        &key,
        M::POST,
        &format!("/api/v1/publish/targets/{target}/resolve"),
        Some(json!({"posted": true, "postId": posted})),
    )
    .await;
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(
        (
            resolved["result"]["status"].clone(),
            resolved["result"]["published"].clone()
        ),
        (json!("failed"), json!(1))
    );
    assert_eq!(app.balance_micros(user).await, 100_000_000);
    let (status, _) = xai(
        &app,
        &key,
        M::POST,
        &format!("/api/v1/publish/targets/{target}/resolve"),
        Some(json!({"posted": true})),
    )
    .await;
    assert_eq!(status, 409, "resolved once");
    let (_, body) = publish(&app, &key, &d, &account, None).await;
    assert_eq!(body["results"][0]["status"], "published", "{body}");
    let tweets = fake.tweets.lock().expect("lock").clone();
    assert_eq!(tweets.len(), 2);
    assert_eq!(tweets[1].reply_to.as_deref(), Some(posted.as_str()));
    assert_eq!(app.balance_micros(user).await, 90_000_000);
    // X answers 503 without posting: unconfirmed; the user finds nothing, so it is refunded and
    // sent again.
    let d2 = draft(&app, &key, &["单条"]).await;
    faults(&fake, &[Some(Fault::ErrorBeforeCommit)]);
    let (_, body) = publish(&app, &key, &d2, &account, None).await;
    let target = body["results"][0]["targetId"]
        .as_str()
        .expect("target")
        .to_owned();
    assert_eq!(body["results"][0]["status"], "unconfirmed");
    let (_, resolved) = xai(
        &app,
        &key,
        M::POST,
        &format!("/api/v1/publish/targets/{target}/resolve"),
        Some(json!({"posted": false})),
    )
    .await;
    assert_eq!(resolved["result"]["status"], "failed");
    assert_eq!(app.balance_micros(user).await, 90_000_000);
    let (_, body) = publish(&app, &key, &d2, &account, None).await;
    assert_eq!(body["results"][0]["status"], "published");
    assert_eq!(
        tweet_texts(&fake).iter().filter(|t| *t == "单条").count(),
        1
    );
    assert_eq!(app.balance_micros(user).await, 80_000_000);
    app.assert_books_balance(user).await;
    app.stop().await;
}

async fn publishing_refuses_what_it_cannot_do_before_sending(b: Backend) {
    let (app, fake) = x_setup(&b).await;
    let (poor, poor_key, poor_account) = x_user(&app, "5").await;
    let d = draft(&app, &poor_key, &["要钱的"]).await;
    let (status, e) = publish(&app, &poor_key, &d, &poor_account, None).await;
    assert_eq!(
        (status, e["error"].clone(), e["success"].clone()),
        (402, json!("INSUFFICIENT_CREDITS"), json!(false)),
        "{e}"
    );
    assert_eq!(app.balance_micros(poor).await, 5_000_000);
    let (user, key, account) = x_user(&app, "100").await;
    use reqwest::Method as M;
    // Over X's 280: refused, nothing sent or held.
    let long = "长".repeat(141);
    let d = draft(&app, &key, &[long.as_str()]).await;
    let (_, body) = publish(&app, &key, &d, &account, None).await;
    assert_eq!(
        body["results"][0]["error"]["code"], "INVALID_INPUT",
        "{body}"
    );
    // Quote posts: X's self-serve tiers refuse them; the answer names it and charges nothing.
    let (status, e) = xai(&app, &key, M::POST, "/api/v1/twitter/quote", Some(json!({"content": "很有见地！", "quoteTweetId": "1800000000000000001", "accountId": account}))).await;
    assert_eq!(
        (status, e["error"].clone()),
        (403, json!("FORBIDDEN")),
        "{e}"
    );
    assert!(
        e["message"].as_str().unwrap_or_default().contains("quote"),
        "{e}"
    );
    fake.quotes_allowed.store(true, Ordering::SeqCst);
    let (status, q) = xai(&app, &key, M::POST, "/api/v1/twitter/quote", Some(json!({"content": "很有见地！", "quoteTweetId": "1800000000000000001", "accountId": account}))).await;
    assert_eq!(
        (status, q["success"].clone(), q["message"].clone()),
        (200, json!(true), json!("引用发布成功")),
        "{q}"
    );
    assert!(
        q["url"]
            .as_str()
            .unwrap_or_default()
            .starts_with("https://x.com/tollgate_dev/status/")
    );
    assert_eq!(
        fake.tweets
            .lock()
            .expect("lock")
            .last()
            .and_then(|t| t.quote.clone())
            .as_deref(),
        Some("1800000000000000001")
    );
    for (path, body, want) in [
        ("/api/v1/twitter/publish", json!({}), "draftId"),
        (
            "/api/v1/twitter/publish",
            json!({"draftId": d, "accountIds": ["nope"]}),
            "accountIds",
        ),
        (
            "/api/v1/twitter/publish",
            json!({"draftId": "nope"}),
            "draft",
        ),
        (
            "/api/v1/twitter/quote",
            json!({"content": "x", "quoteTweetId": "abc", "accountId": account}),
            "quoteTweetId",
        ),
        (
            "/api/v1/publish/multi-platform",
            json!({"draftId": d}),
            "targetAccounts",
        ),
        (
            "/api/v1/publish/multi-platform",
            json!({"draftId": d, "targetAccounts": [{"accountId": account, "platform": "bluesky"}]}),
            "platform",
        ),
    ] {
        let (status, e) = xai(&app, &key, M::POST, path, Some(body.clone())).await;
        assert!(
            status == 400 || status == 404,
            "{path} {body}: {status} {e}"
        );
        assert!(
            e["message"].as_str().unwrap_or_default().contains(want),
            "{path} {body}: {e}"
        );
    }
    assert_eq!(
        app.balance_micros(user).await,
        90_000_000,
        "only the quote was charged"
    );
    app.assert_books_balance(user).await;
    app.assert_books_balance(poor).await;
    app.stop().await;
}

async fn fifty_parallel_publishes_on_an_expired_x_token_refresh_once_and_all_succeed(b: Backend) {
    let (app, fake) = x_setup(&b).await;
    fake.access_ttl_s.store(60, Ordering::SeqCst);
    let (user, key, account) = x_user(&app, "1000").await;
    fake.access_ttl_s.store(7200, Ordering::SeqCst);
    fake.expire_access_tokens();
    let mut drafts = Vec::new();
    for k in 0..50 {
        drafts.push(draft(&app, &key, &[format!("并发第{k}条").as_str()]).await);
    }
    let runs = drafts
        .iter()
        .map(|d| publish(&app, &key, d, &account, None));
    let results = futures_util::future::join_all(runs).await;
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["results"][0]["status"], "published", "{body}");
    }
    assert_eq!(fake.refresh_calls.load(Ordering::SeqCst), 1);
    assert_eq!(fake.tweets.lock().expect("lock").len(), 50);
    assert_eq!(app.balance_micros(user).await, 500_000_000);
    app.assert_books_balance(user).await;
    app.stop().await;
}

/// A small deterministic generator for the fault run.
pub(crate) struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

async fn a_thousand_publishes_under_random_faults_post_nothing_twice_and_charge_exactly(
    b: Backend,
) {
    let (app, fake) = x_setup(&b).await;
    let (user, key, account) = x_user(&app, "100000").await;
    use reqwest::Method as M;
    let mut rng = Lcg(0x5eed_u64 ^ rand_u64());
    let mut drafts: Vec<(String, Vec<String>)> = Vec::new();
    for d in 0..120 {
        let n = 1 + rng.next(4) as usize;
        let items: Vec<String> = (0..n)
            .map(|k| format!("草稿{d}第{k}条 https://example.com/{d}/{k}"))
            .collect();
        let refs: Vec<&str> = items.iter().map(String::as_str).collect();
        drafts.push((draft(&app, &key, &refs).await, items));
    }
    let all = [
        Fault::DropAfterCommit,
        Fault::ErrorAfterCommit,
        Fault::ErrorBeforeCommit,
        Fault::RateLimited,
    ];
    let mut publishes = 0;
    let mut resolved = 0;
    while publishes < 1000 {
        let (d, _) = &drafts[rng.next(drafts.len() as u64) as usize];
        let plan: Vec<Option<Fault>> = (0..4)
            .map(|_| (rng.next(4) == 0).then(|| all[rng.next(4) as usize]))
            .collect();
        faults(&fake, &plan);
        let (status, body) = publish(&app, &key, d, &account, None).await;
        assert_eq!(status, 200, "{body}");
        publishes += 1;
        let r = &body["results"][0];
        if r["status"] == "unconfirmed" {
            // The user looks at X: the post of the unknown outcome is there or not.
            let target = r["targetId"].as_str().expect("target");
            let position = r["failedAt"].as_u64().expect("failedAt") as usize;
            let text = &drafts.iter().find(|(id, _)| id == d).expect("draft").1[position];
            let found = fake
                .tweets
                .lock()
                .expect("lock")
                .iter()
                .find(|t| &t.text == text)
                .map(|t| t.id.clone());
            let body = match &found {
                Some(id) => json!({"posted": true, "postId": id}),
                None => json!({"posted": false}),
            };
            let (status, e) = xai(
                &app,
                &key,
                M::POST,
                &format!("/api/v1/publish/targets/{target}/resolve"),
                Some(body),
            )
            .await;
            assert_eq!(status, 200, "{e}");
            resolved += 1;
        }
    }
    // Finish every draft without faults.
    faults(&fake, &[]);
    for (d, _) in &drafts {
        let (_, body) = publish(&app, &key, d, &account, None).await;
        assert_eq!(body["results"][0]["status"], "published", "{body}");
    }
    let tweets = fake.tweets.lock().expect("lock").clone();
    let mut texts: Vec<&str> = tweets.iter().map(|t| t.text.as_str()).collect();
    let total_items: usize = drafts.iter().map(|(_, items)| items.len()).sum();
    texts.sort_unstable();
    texts.dedup();
    assert_eq!(texts.len(), tweets.len(), "no post is on X twice");
    assert_eq!(tweets.len(), total_items, "every post is on X once");
    for (_, items) in &drafts {
        for k in 1..items.len() {
            let this = tweets.iter().find(|t| t.text == items[k]).expect("posted");
            let parent = tweets
                .iter()
                .find(|t| t.text == items[k - 1])
                .expect("posted");
            assert_eq!(
                this.reply_to.as_deref(),
                Some(parent.id.as_str()),
                "chained"
            );
        }
    }
    // Charged exactly once per draft: 10 credits each.
    assert_eq!(
        app.balance_micros(user).await,
        100_000_000_000 - drafts.len() as i64 * 10_000_000
    );
    assert!(resolved > 0, "the run met unknown outcomes");
    app.assert_books_balance(user).await;
    let (ok, report) = app.ledger_verify_cli().await;
    assert!(ok, "{report}");
    app.stop().await;
}

/// A request to a gateway process at `base` with `key`.
async fn at(
    base: &str,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .header("xai-key", key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn a_publish_cut_by_a_sigkill_is_recovered_as_unconfirmed_and_resolved_once(b: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let (db_url, pg) = fresh_database(&b, &dir).await;
    let (fake, base) = start_fake_x().await;
    fake.registered
        .lock()
        .expect("lock")
        .push(X_CALLBACK.to_owned());
    let (authorize, token) = (
        format!("{base}/i/oauth2/authorize"),
        format!("{base}/2/oauth2/token"),
    );
    let env = [
        ("TOLLGATE__SOCIAL__X__API_BASE", base.as_str()),
        ("TOLLGATE__SOCIAL__X__AUTHORIZE_URL", authorize.as_str()),
        ("TOLLGATE__SOCIAL__X__TOKEN_URL", token.as_str()),
        ("TOLLGATE__SOCIAL__X__CLIENT_ID", CLIENT_ID),
        ("TOLLGATE__SOCIAL__X__CLIENT_SECRET", CLIENT_SECRET),
        ("TOLLGATE__SOCIAL__X__REDIRECT_URI", X_CALLBACK),
        ("TOLLGATE__PUBLISHING__STALLED_AFTER_MS", "300"),
        ("TOLLGATE__PUBLISHING__RECOVERY_INTERVAL_MS", "200"),
        ("TOLLGATE__LIMITS__QUERY_PER_MINUTE", "100000"),
    ];
    let server = Server::start(&db_url, &env).await;
    let user = server
        .admin(
            reqwest::Method::POST,
            "/api/v1/admin/users",
            Some(json!({"email": format!("p{:x}@example.com", rand_u64()), "balance": "100"})),
        )
        .await;
    let user = user["id"].as_i64().expect("user");
    let key = server
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/admin/users/{user}/keys"),
            Some(json!({})),
        )
        .await;
    let key = key["key"].as_str().expect("key").to_owned();
    use reqwest::Method as M;
    let (_, started) = at(
        &server.base,
        &key,
        M::POST,
        "/api/v1/twitter/auth",
        Some(json!({})),
    )
    .await;
    let (status, done, _) =
        approve_at(&server.base, started["authUrl"].as_str().expect("url")).await;
    assert_eq!(status, 200, "{done}");
    let account = done["accountUuid"].as_str().expect("account").to_owned();
    let (_, d) = at(
        &server.base,
        &key,
        M::POST,
        "/api/v1/twitter/drafts",
        Some(json!({"title": "t", "tweets": [{"content": "断电之前"}]})),
    )
    .await;
    let draft = d["draft"]["id"].as_str().expect("draft").to_owned();
    // X is slow to answer; the gateway dies while it waits.
    faults(&fake, &[Some(Fault::Hang)]);
    let cut = {
        let (base, key, draft, account) = (
            server.base.clone(),
            key.clone(),
            draft.clone(),
            account.clone(),
        );
        tokio::spawn(async move {
            // Cut off with the gateway: no answer comes.
            let body = json!({"draftId": draft, "accountIds": [account]});
            reqwest::Client::new()
                .post(format!("{base}/api/v1/twitter/publish"))
                .header("xai-key", key)
                .json(&body)
                .send()
                .await
                .is_ok()
        })
    };
    for _ in 0..500 {
        if fake.create_calls.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        fake.create_calls.load(Ordering::SeqCst),
        1,
        "the post was sent"
    );
    server.kill().await;
    let _ = cut.await;
    // Restarted, recovery finds the publish cut mid-call: unconfirmed, its price still held.
    let server = Server::start(&db_url, &env).await;
    let mut listed = Value::Null;
    for _ in 0..300 {
        let (_, l) = at(
            &server.base,
            &key,
            M::GET,
            &format!("/api/v1/publish/targets?draftId={draft}"),
            None,
        )
        .await;
        if l["targets"][0]["status"] == "unconfirmed" {
            listed = l;
            break;
        }
        listed = l;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let t = &listed["targets"][0];
    assert_eq!(
        (
            t["status"].clone(),
            t["creditsHeld"].clone(),
            t["failedAt"].clone()
        ),
        (json!("unconfirmed"), json!(10), json!(0)),
        "{listed}"
    );
    let user_now = server
        .admin(M::GET, &format!("/api/v1/admin/users/{user}"), None)
        .await;
    assert_eq!(user_now["balance_micros"], 90_000_000);
    // The user looks at X and answers truthfully; settled once.
    let posted = fake
        .tweets
        .lock()
        .expect("lock")
        .first()
        .map(|t| t.id.clone());
    let target = t["targetId"].as_str().expect("target").to_owned();
    let body = match &posted {
        Some(id) => json!({"posted": true, "postId": id}),
        None => json!({"posted": false}),
    };
    let (status, resolved) = at(
        &server.base,
        &key,
        M::POST,
        &format!("/api/v1/publish/targets/{target}/resolve"),
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{resolved}");
    let (_, again) = at(
        &server.base,
        &key,
        M::POST,
        "/api/v1/twitter/publish",
        Some(json!({"draftId": draft, "accountIds": [account]})),
    )
    .await;
    assert_eq!(again["results"][0]["status"], "published", "{again}");
    assert_eq!(
        fake.tweets
            .lock()
            .expect("lock")
            .iter()
            .filter(|t| t.text == "断电之前")
            .count(),
        1
    );
    let user_now = server
        .admin(M::GET, &format!("/api/v1/admin/users/{user}"), None)
        .await;
    assert_eq!(user_now["balance_micros"], 90_000_000, "charged once");
    server.kill().await;
    let (ok, report) = ledger_verify_cli(&db_url).await;
    assert!(ok, "{report}");
    if let Some((url, name)) = pg {
        drop_pg_database(&url, &name).await;
    }
}

async fn a_client_that_hangs_up_gets_the_stored_answer_when_it_retries_with_its_key(b: Backend) {
    let (app, fake) = x_setup(&b).await;
    let (user, key, account) = x_user(&app, "100").await;
    let d = draft(&app, &key, &["挂断重试"]).await;
    faults(&fake, &[Some(Fault::Slow)]);
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .expect("client");
    let cut = impatient
        .post(app.url("/api/v1/twitter/publish"))
        .header("xai-key", &key)
        .header("idempotency-key", "hang-up-1")
        .json(&json!({"draftId": d, "accountIds": [account]}))
        .send()
        .await;
    assert!(cut.is_err(), "the client gave up");
    // The publish runs to its end without the client; the retry gets its answer.
    let mut answer = Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (status, body) = publish(&app, &key, &d, &account, Some("hang-up-1")).await;
        if status == 200 {
            answer = body;
            break;
        }
        assert_eq!(status, 409, "{body}");
    }
    assert_eq!(answer["results"][0]["status"], "published", "{answer}");
    assert_eq!(tweet_texts(&fake), ["挂断重试"]);
    assert_eq!(app.balance_micros(user).await, 90_000_000);
    app.assert_books_balance(user).await;
    app.stop().await;
}

both_backends!(
    a_client_that_hangs_up_gets_the_stored_answer_when_it_retries_with_its_key,
    a_publish_cut_by_a_sigkill_is_recovered_as_unconfirmed_and_resolved_once,
    a_cjk_thread_goes_out_as_a_reply_chain_charged_once_and_never_twice,
    a_thread_that_fails_midway_is_refunded_and_continues_where_it_stopped,
    a_post_whose_answer_is_lost_is_held_unconfirmed_and_never_sent_twice,
    publishing_refuses_what_it_cannot_do_before_sending,
    fifty_parallel_publishes_on_an_expired_x_token_refresh_once_and_all_succeed,
    a_thousand_publishes_under_random_faults_post_nothing_twice_and_charge_exactly
);

use crate::fakes::bluesky::{APP_PASSWORD, DID, FakeBluesky, HANDLE, start_fake_bluesky};

/// An app with a fake X and a fake Bluesky PDS (the default service).
async fn both_setup(b: &Backend) -> (TestApp, Arc<FakeX>, Arc<FakeBluesky>) {
    let (x, x_base) = start_fake_x().await;
    x.registered
        .lock()
        .expect("lock")
        .push(X_CALLBACK.to_owned());
    let (bsky, bsky_base) = start_fake_bluesky().await;
    let app = TestApp::spawn_with(b, |c| {
        x_app(c, &x_base);
        c.social.bluesky.default_service = bsky_base.clone();
        c.limits.other_per_minute = 1_000_000;
        c.limits.query_per_minute = 1_000_000;
    })
    .await;
    (app, x, bsky)
}

async fn connect_bluesky(app: &TestApp, key: &str) -> String {
    let (status, done) = xai(
        app,
        key,
        reqwest::Method::POST,
        "/api/v1/bluesky/auth",
        Some(json!({"handle": HANDLE, "appPassword": APP_PASSWORD})),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    done["accountUuid"].as_str().expect("account").to_owned()
}

async fn multi(app: &TestApp, key: &str, draft: &str, targets: &[(&str, &str)]) -> Value {
    let targets: Vec<Value> = targets
        .iter()
        .map(|(a, p)| json!({"accountId": a, "platform": p}))
        .collect();
    let (status, body) = xai(
        app,
        key,
        reqwest::Method::POST,
        "/api/v1/publish/multi-platform",
        Some(json!({"draftId": draft, "targetAccounts": targets})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn a_bluesky_account_logs_in_once_and_a_thread_goes_to_x_and_bluesky(b: Backend) {
    let (app, x, bsky) = both_setup(&b).await;
    let (user, key, x_account) = x_user(&app, "100").await;
    use reqwest::Method as M;
    // A wrong app password: refused, and the session says so.
    let (status, e) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/bluesky/auth",
        Some(json!({"handle": HANDLE, "appPassword": "wrong"})),
    )
    .await;
    assert_eq!(
        (status, e["error"].clone()),
        (401, json!("UNAUTHORIZED")),
        "{e}"
    );
    let (status, done) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/bluesky/auth",
        Some(json!({"handle": HANDLE, "appPassword": APP_PASSWORD})),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    let account = done["accountUuid"].as_str().expect("account").to_owned();
    let session = done["sessionId"].as_str().expect("session");
    let (_, polled) = xai(
        &app,
        &key,
        M::GET,
        &format!("/api/v2/channels/accounts/auth/bluesky/status/{session}"),
        None,
    )
    .await;
    assert_eq!(polled["data"]["status"], "completed", "{polled}");
    assert_eq!(polled["data"]["accounts"][0]["platformUid"], DID);
    assert_eq!(polled["data"]["accounts"][0]["account"], HANDLE);
    // A CJK + URL thread to X and Bluesky at once.
    let items = ["你好 Bluesky 和 X！", "详情见 https://example.com/zh", "完"];
    let d = draft(&app, &key, &items).await;
    let body = multi(
        &app,
        &key,
        &d,
        &[(&x_account, "twitter"), (&account, "bluesky")],
    )
    .await;
    assert_eq!(
        body["summary"],
        json!({"total": 2, "succeeded": 2, "failed": 0, "unconfirmed": 0}),
        "{body}"
    );
    let sky = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["platform"] == "bluesky")
        .expect("bluesky")
        .clone();
    assert!(
        sky["data"]["uri"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&format!("at://{DID}/app.bsky.feed.post/")),
        "{sky}"
    );
    let records = bsky.records.lock().expect("lock").clone();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].value["text"], items[0]);
    assert_eq!(records[0].value["langs"], json!(["zh"]));
    assert!(records[0].value["reply"].is_null());
    for k in 1..3 {
        assert_eq!(
            records[k].value["reply"]["root"]["uri"],
            json!(records[0].uri)
        );
        assert_eq!(
            records[k].value["reply"]["parent"]["cid"],
            json!(records[k - 1].cid)
        );
    }
    let facet = &records[1].value["facets"][0];
    assert_eq!(facet["features"][0]["uri"], "https://example.com/zh");
    assert_eq!(facet["index"]["byteStart"], "详情见 ".len());
    assert_eq!(x.tweets.lock().expect("lock").len(), 3);
    assert_eq!(
        app.balance_micros(user).await,
        80_000_000,
        "10 per platform"
    );
    // An expired session token is refreshed (once), never logged in again.
    bsky.expire_access_tokens();
    let d2 = draft(&app, &key, &["再来一条"]).await;
    let body = multi(&app, &key, &d2, &[(&account, "bluesky")]).await;
    assert_eq!(body["results"][0]["status"], "published", "{body}");
    assert_eq!(bsky.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(
        bsky.logins.load(Ordering::SeqCst),
        2,
        "the wrong password and the one login"
    );
    // Seed 000's own route.
    let (status, own) = xai(&app, &key, M::POST, "/api/v1/bluesky/publish", Some(json!({"accountUuid": account, "type": "thread", "texts": ["one", "two"], "langs": ["en"]}))).await;
    assert_eq!(
        (status, own["summary"]["succeeded"].clone()),
        (200, json!(1)),
        "{own}"
    );
    let (status, e) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/bluesky/publish",
        Some(json!({"accountUuid": account, "type": "single"})),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(app.balance_micros(user).await, 60_000_000);
    app.assert_books_balance(user).await;
    app.stop().await;
}

async fn a_lost_bluesky_answer_is_settled_by_reading_its_record_key_back(b: Backend) {
    let (app, _x, bsky) = both_setup(&b).await;
    let user = app.add_user(json!("100")).await;
    let key = app.add_key(user, json!({})).await;
    let account = connect_bluesky(&app, &key).await;
    let d = draft(&app, &key, &["一", "二"]).await;
    // The PDS writes the first record and the connection drops: read back, published.
    bsky.faults
        .lock()
        .expect("lock")
        .extend([Some(Fault::DropAfterCommit)]);
    let body = multi(&app, &key, &d, &[(&account, "bluesky")]).await;
    assert_eq!(body["results"][0]["status"], "published", "{body}");
    assert_eq!(
        bsky.records.lock().expect("lock").len(),
        2,
        "nothing written twice"
    );
    // A 500 before writing: read back, not there: failed and refunded; the next publish sends it.
    let d2 = draft(&app, &key, &["三"]).await;
    bsky.faults
        .lock()
        .expect("lock")
        .extend([Some(Fault::ErrorBeforeCommit)]);
    let body = multi(&app, &key, &d2, &[(&account, "bluesky")]).await;
    assert_eq!(body["results"][0]["status"], "failed", "{body}");
    assert_eq!(app.balance_micros(user).await, 90_000_000);
    let body = multi(&app, &key, &d2, &[(&account, "bluesky")]).await;
    assert_eq!(body["results"][0]["status"], "published", "{body}");
    let texts: Vec<Value> = bsky
        .records
        .lock()
        .expect("lock")
        .iter()
        .map(|r| r.value["text"].clone())
        .collect();
    assert_eq!(texts, [json!("一"), json!("二"), json!("三")]);
    assert_eq!(app.balance_micros(user).await, 80_000_000);
    app.assert_books_balance(user).await;
    app.stop().await;
}

async fn six_hundred_publishes_to_x_and_bluesky_under_random_faults_stay_exact(b: Backend) {
    let (app, x, bsky) = both_setup(&b).await;
    let (user, key, x_account) = x_user(&app, "100000").await;
    let sky_account = connect_bluesky(&app, &key).await;
    use reqwest::Method as M;
    let mut rng = Lcg(0xb105 ^ rand_u64());
    let mut drafts: Vec<(String, Vec<String>)> = Vec::new();
    for d in 0..80 {
        let n = 1 + rng.next(3) as usize;
        let items: Vec<String> = (0..n)
            .map(|k| format!("混合{d}之{k} https://example.com/m/{d}/{k}"))
            .collect();
        let refs: Vec<&str> = items.iter().map(String::as_str).collect();
        drafts.push((draft(&app, &key, &refs).await, items));
    }
    let all = [
        Fault::DropAfterCommit,
        Fault::ErrorAfterCommit,
        Fault::ErrorBeforeCommit,
        Fault::RateLimited,
    ];
    let targets = [
        (x_account.as_str(), "twitter"),
        (sky_account.as_str(), "bluesky"),
    ];
    for _ in 0..600 {
        let (d, items) = &drafts[rng.next(drafts.len() as u64) as usize];
        for queue in [&x.faults, &bsky.faults] {
            let plan: Vec<Option<Fault>> = (0..3)
                .map(|_| (rng.next(4) == 0).then(|| all[rng.next(4) as usize]))
                .collect();
            let mut q = queue.lock().expect("lock");
            q.clear();
            q.extend(plan);
        }
        let body = multi(&app, &key, d, &targets).await;
        for r in body["results"].as_array().expect("results") {
            if r["status"] != "unconfirmed" {
                continue;
            }
            let text = &items[r["failedAt"].as_u64().expect("failedAt") as usize];
            let found = match r["platform"].as_str() {
                Some("twitter") => x
                    .tweets
                    .lock()
                    .expect("lock")
                    .iter()
                    .find(|t| &t.text == text)
                    .map(|t| t.id.clone()),
                _ => bsky
                    .records
                    .lock()
                    .expect("lock")
                    .iter()
                    .find(|t| t.value["text"] == json!(text))
                    .map(|t| t.uri.clone()),
            };
            let answer = match &found {
                Some(id) => json!({"posted": true, "postId": id}),
                None => json!({"posted": false}),
            };
            let target = r["targetId"].as_str().expect("target");
            let (status, e) = xai(
                &app,
                &key,
                M::POST,
                &format!("/api/v1/publish/targets/{target}/resolve"),
                Some(answer),
            )
            .await;
            assert_eq!(status, 200, "{e}");
        }
    }
    x.faults.lock().expect("lock").clear();
    bsky.faults.lock().expect("lock").clear();
    for (d, _) in &drafts {
        let body = multi(&app, &key, d, &targets).await;
        assert_eq!(body["summary"]["succeeded"], 2, "{body}");
    }
    let total_items: usize = drafts.iter().map(|(_, items)| items.len()).sum();
    let tweets = x.tweets.lock().expect("lock").clone();
    let records = bsky.records.lock().expect("lock").clone();
    let mut tweet_texts: Vec<&str> = tweets.iter().map(|t| t.text.as_str()).collect();
    let mut record_texts: Vec<&str> = records
        .iter()
        .map(|r| r.value["text"].as_str().unwrap_or_default())
        .collect();
    tweet_texts.sort_unstable();
    tweet_texts.dedup();
    record_texts.sort_unstable();
    record_texts.dedup();
    assert_eq!(
        (tweets.len(), tweet_texts.len()),
        (total_items, total_items),
        "every post on X once"
    );
    assert_eq!(
        (records.len(), record_texts.len()),
        (total_items, total_items),
        "every post on Bluesky once"
    );
    for (_, items) in &drafts {
        let on_sky = |t: &String| {
            records
                .iter()
                .find(|r| r.value["text"] == json!(t))
                .expect("on Bluesky")
        };
        for k in 1..items.len() {
            assert_eq!(
                on_sky(&items[k]).value["reply"]["parent"]["uri"],
                json!(on_sky(&items[k - 1]).uri)
            );
            assert_eq!(
                on_sky(&items[k]).value["reply"]["root"]["uri"],
                json!(on_sky(&items[0]).uri)
            );
        }
    }
    assert_eq!(
        app.balance_micros(user).await,
        100_000_000_000 - drafts.len() as i64 * 20_000_000
    );
    app.assert_books_balance(user).await;
    let (ok, report) = app.ledger_verify_cli().await;
    assert!(ok, "{report}");
    app.stop().await;
}

both_backends!(
    six_hundred_publishes_to_x_and_bluesky_under_random_faults_stay_exact,
    a_bluesky_account_logs_in_once_and_a_thread_goes_to_x_and_bluesky,
    a_lost_bluesky_answer_is_settled_by_reading_its_record_key_back
);

use crate::fakes::mastodon::{FakeMastodon, start_fake_mastodon};

const MASTODON_CALLBACK: &str = "http://127.0.0.1:8000/api/v1/mastodon/callback";

async fn mastodon_setup(b: &Backend) -> (TestApp, Arc<FakeMastodon>, String) {
    let (fake, base) = start_fake_mastodon().await;
    let app = TestApp::spawn_with(b, |c| {
        c.social.mastodon.redirect_uri = MASTODON_CALLBACK.to_owned();
        c.limits.other_per_minute = 1_000_000;
        c.limits.query_per_minute = 1_000_000;
    })
    .await;
    (app, fake, base)
}

/// Connects the Mastodon account on `instance` through the browser flow.
async fn connect_mastodon(app: &TestApp, key: &str, instance: &str) -> (String, String) {
    let (status, started) = xai(
        app,
        key,
        reqwest::Method::POST,
        "/api/v1/mastodon/auth",
        Some(json!({"instance": instance})),
    )
    .await;
    assert_eq!(status, 200, "{started}");
    let auth_url = started["authUrl"].as_str().expect("authUrl");
    assert!(
        auth_url.starts_with(&format!("{instance}/oauth/authorize?")),
        "{auth_url}"
    );
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let resp = browser.get(auth_url).send().await.expect("authorize");
    assert!(resp.status().is_redirection(), "{}", resp.status());
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let query = location.split_once('?').expect("query").1.to_owned();
    let resp = browser
        .get(app.url(&format!("/api/v1/mastodon/callback?{query}")))
        .send()
        .await
        .expect("callback");
    assert_eq!(resp.status(), 200);
    let done: Value = resp.json().await.expect("json");
    (
        done["accountUuid"].as_str().expect("account").to_owned(),
        started["sessionId"].as_str().expect("session").to_owned(),
    )
}

async fn a_mastodon_thread_keeps_the_instances_limit_and_dedupes_by_idempotency_key(b: Backend) {
    let (app, fake, instance) = mastodon_setup(&b).await;
    let user = app.add_user(json!("100")).await;
    let key = app.add_key(user, json!({})).await;
    use reqwest::Method as M;
    let (account, session) = connect_mastodon(&app, &key, &instance).await;
    let (_, polled) = xai(
        &app,
        &key,
        M::GET,
        &format!("/api/v2/channels/accounts/auth/mastodon/status/{session}"),
        None,
    )
    .await;
    assert_eq!(
        (
            polled["data"]["status"].clone(),
            polled["data"]["accounts"][0]["account"].clone()
        ),
        (json!("completed"), json!("carol")),
        "{polled}"
    );
    // A second connection on the same instance reuses the registered app.
    connect_mastodon(&app, &key, &instance).await;
    assert_eq!(fake.registrations.load(Ordering::SeqCst), 1);
    // 600 characters: over X's and Threads' limits, within this instance's 1,000.
    let long = "长".repeat(600);
    let (_, d) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/twitter/drafts",
        Some(json!({"title": "t",
        "tweets": [{"content": long}, {"content": "第二条"}], "selectedAccountIds": [account]})),
    )
    .await;
    assert_eq!(
        d["draft"]["platformValidity"]["mastodon"],
        json!({"characterCount": 600, "limit": 1000, "isValid": true,
        "items": [{"characterCount": 600, "isValid": true}, {"characterCount": 3, "isValid": true}]}),
        "{d}"
    );
    let draft_id = d["draft"]["id"].as_str().expect("id").to_owned();
    // The instance makes the first status and the connection drops; the same Idempotency-Key
    // is sent again and answered with the status already made.
    fake.faults.lock().expect("lock").extend([
        Some(Fault::DropAfterCommit),
        None,
        Some(Fault::ErrorBeforeCommit),
    ]);
    let body = multi(&app, &key, &draft_id, &[(&account, "mastodon")]).await;
    let r = &body["results"][0];
    assert_eq!(
        (r["status"].clone(), r["published"].clone()),
        (json!("published"), json!(2)),
        "{r}"
    );
    let statuses = fake.statuses.lock().expect("lock").clone();
    assert_eq!(statuses.len(), 2, "each status made once");
    assert_eq!(
        statuses[1].in_reply_to.as_deref(),
        Some(statuses[0].id.as_str())
    );
    assert_eq!(
        r["data"]["url"],
        format!("{instance}/@carol/{}", statuses[0].id)
    );
    assert_eq!(app.balance_micros(user).await, 90_000_000);
    // Seed 000's own route; a revoked token: TOKEN_EXPIRED, refunded, reconnect needed.
    let (status, own) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/mastodon/publish",
        Some(json!({"accountUuid": account, "type": "single", "text": "你好 Mastodon!"})),
    )
    .await;
    assert_eq!(
        (status, own["summary"]["succeeded"].clone()),
        (200, json!(1)),
        "{own}"
    );
    fake.revoke_all();
    let (_, own) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/mastodon/publish",
        Some(json!({"accountUuid": account, "type": "single", "text": "不会发出"})),
    )
    .await;
    assert_eq!(own["results"][0]["error"]["code"], "TOKEN_EXPIRED", "{own}");
    assert_eq!(app.balance_micros(user).await, 80_000_000);
    let (status, e) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/mastodon/auth",
        Some(json!({"instance": "not a url at all"})),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    app.assert_books_balance(user).await;
    app.stop().await;
}

both_backends!(a_mastodon_thread_keeps_the_instances_limit_and_dedupes_by_idempotency_key);

const THREADS_CALLBACK: &str = "http://127.0.0.1:8000/api/v1/threads/callback";

async fn a_threads_thread_goes_out_container_by_container_and_a_lost_publish_is_read_back(
    b: Backend,
) {
    use crate::fakes::threads as th;
    let (fake, base) = th::start_fake_threads().await;
    // Three days left on the 60-day token: inside the week-ahead window, so refreshed first.
    fake.long_ttl_s.store(3 * 86_400, Ordering::SeqCst);
    let app = TestApp::spawn_with(&b, |c| {
        c.social.threads.api_base = format!("{base}/v1.0");
        c.social.threads.authorize_url = format!("{base}/oauth/authorize");
        c.social.threads.token_url = format!("{base}/oauth/access_token");
        c.social.threads.client_id = th::CLIENT_ID.to_owned();
        c.social.threads.client_secret = tollgate::secrets::Secret::from(th::CLIENT_SECRET);
        c.social.threads.redirect_uri = THREADS_CALLBACK.to_owned();
        c.limits.other_per_minute = 1_000_000;
    })
    .await;
    let user = app.add_user(json!("100")).await;
    let key = app.add_key(user, json!({})).await;
    use reqwest::Method as M;
    let (status, started) = xai(&app, &key, M::POST, "/api/v1/threads/auth", Some(json!({}))).await;
    assert_eq!(status, 200, "{started}");
    let auth_url = started["authUrl"].as_str().expect("authUrl");
    assert!(
        auth_url.contains("scope=threads_basic%2Cthreads_content_publish"),
        "{auth_url}"
    );
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let resp = browser.get(auth_url).send().await.expect("authorize");
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let query = location.split_once('?').expect("query").1.to_owned();
    let done: Value = browser
        .get(app.url(&format!("/api/v1/threads/callback?{query}")))
        .send()
        .await
        .expect("callback")
        .json()
        .await
        .expect("json");
    assert_eq!(done["success"], true, "{done}");
    let account = done["accountUuid"].as_str().expect("account").to_owned();
    // A refresh gives a new 60 days.
    fake.long_ttl_s.store(5_183_944, Ordering::SeqCst);
    let d = draft(&app, &key, &["第一条 Threads", "第二条"]).await;
    // The publish of the second post is answered by a dropped connection after it went out.
    fake.faults
        .lock()
        .expect("lock")
        .extend([None, Some(Fault::DropAfterCommit)]);
    let (status, body) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/threads/publish",
        Some(json!({"accountId": account, "draftId": d, "replyControl": "mentioned_only"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r = &body["results"][0];
    assert_eq!(
        (r["status"].clone(), r["published"].clone()),
        (json!("published"), json!(2)),
        "{r}"
    );
    let containers = fake.containers.lock().expect("lock").clone();
    assert_eq!(containers.len(), 2, "one container per post");
    assert_eq!(
        (containers[0].text.as_str(), containers[1].text.as_str()),
        ("第一条 Threads", "第二条")
    );
    assert!(containers.iter().all(|c| c.status == "PUBLISHED"));
    assert_eq!(containers[1].reply_to, containers[0].media_id);
    assert_eq!(
        containers[0].reply_control.as_deref(),
        Some("mentioned_only")
    );
    assert_eq!(
        fake.publishes.load(Ordering::SeqCst),
        2,
        "the lost answer was read back, not published again"
    );
    assert_eq!(
        fake.refreshes.load(Ordering::SeqCst),
        1,
        "refreshed ahead of its end, once"
    );
    assert_eq!(app.balance_micros(user).await, 90_000_000);
    let (status, e) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/threads/publish",
        Some(json!({"accountId": account, "text": "x", "replyControl": "nobody"})),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    app.assert_books_balance(user).await;
    app.stop().await;
}

both_backends!(a_threads_thread_goes_out_container_by_container_and_a_lost_publish_is_read_back);

const LINKEDIN_CALLBACK: &str = "http://127.0.0.1:8000/api/v1/linkedin/callback";

/// A gateway whose LinkedIn app is the fake's, and a user (100 credits) with a key.
async fn linkedin_setup(
    b: &Backend,
) -> (
    TestApp,
    Arc<crate::fakes::linkedin::FakeLinkedIn>,
    i64,
    String,
) {
    use crate::fakes::linkedin as li;
    let (fake, base) = li::start_fake_linkedin().await;
    let app = TestApp::spawn_with(b, |c| {
        c.social.linkedin.api_base = base.clone();
        c.social.linkedin.authorize_url = format!("{base}/oauth/v2/authorization");
        c.social.linkedin.token_url = format!("{base}/oauth/v2/accessToken");
        c.social.linkedin.client_id = li::CLIENT_ID.to_owned();
        c.social.linkedin.client_secret = tollgate::secrets::Secret::from(li::CLIENT_SECRET);
        c.social.linkedin.redirect_uri = LINKEDIN_CALLBACK.to_owned();
        c.social.linkedin.version = li::VERSION.to_owned();
        c.limits.other_per_minute = 1_000_000;
    })
    .await;
    let user = app.add_user(json!("100")).await;
    let key = app.add_key(user, json!({})).await;
    (app, fake, user, key)
}

/// Starts a LinkedIn connection and follows the browser through LinkedIn back to the
/// callback: the start's answer and the callback's.
async fn linkedin_connect(app: &TestApp, key: &str) -> (Value, Value) {
    let (status, started) = xai(
        app,
        key,
        reqwest::Method::POST,
        "/api/v1/linkedin/auth",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200, "{started}");
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let resp = browser
        .get(started["authUrl"].as_str().expect("url"))
        .send()
        .await
        .expect("authorize");
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let query = location.split_once('?').expect("query").1.to_owned();
    let done: Value = browser
        .get(app.url(&format!("/api/v1/linkedin/callback?{query}")))
        .send()
        .await
        .expect("callback")
        .json()
        .await
        .expect("json");
    (started, done)
}

async fn a_linkedin_post_is_escaped_versioned_and_unconfirmed_when_its_answer_is_lost(b: Backend) {
    let (app, fake, user, key) = linkedin_setup(&b).await;
    use reqwest::Method as M;
    let (_, done) = linkedin_connect(&app, &key).await;
    let account = done["accountUuid"].as_str().expect("account").to_owned();
    // Reserved characters survive (escaped); a draft's items become one post.
    let d = draft(&app, &key, &["Launch (beta) #rust @team", "第二段 [详情]"]).await;
    let (status, body) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/linkedin/publish",
        Some(json!({"accountId": account, "draftId": d, "visibility": "CONNECTIONS"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r = &body["results"][0];
    assert_eq!(r["status"], "published", "{r}");
    let posts = fake.posts.lock().expect("lock").clone();
    assert_eq!(posts.len(), 1);
    assert_eq!(
        posts[0].text, "Launch (beta) #rust @team\n\n第二段 [详情]",
        "nothing cut off"
    );
    assert_eq!(
        (posts[0].author.as_str(), posts[0].visibility.as_str()),
        ("urn:li:person:782bbtaQ", "CONNECTIONS")
    );
    assert_eq!(
        r["data"]["url"],
        format!("https://www.linkedin.com/feed/update/{}", posts[0].urn)
    );
    // No idempotency key at LinkedIn: a dropped answer is unconfirmed, held, and not sent again.
    fake.faults
        .lock()
        .expect("lock")
        .extend([Some(Fault::DropAfterCommit)]);
    let (_, body) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/linkedin/publish",
        Some(json!({"accountId": account, "text": "只发一次"})),
    )
    .await;
    let r = &body["results"][0];
    assert_eq!(r["status"], "unconfirmed", "{body}");
    assert_eq!(
        app.balance_micros(user).await,
        80_000_000,
        "held while unconfirmed"
    );
    let urn = fake.posts.lock().expect("lock")[1].urn.clone();
    let target = r["targetId"].as_str().expect("target");
    let (status, resolved) = xai(
        &app,
        &key,
        M::POST,
        &format!("/api/v1/publish/targets/{target}/resolve"),
        Some(json!({"posted": true, "postId": urn})),
    )
    .await;
    assert_eq!(
        (status, resolved["result"]["status"].clone()),
        (200, json!("published")),
        "{resolved}"
    );
    assert_eq!(app.balance_micros(user).await, 80_000_000, "charged once");
    assert_eq!(fake.posts.lock().expect("lock").len(), 2);
    let (status, e) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/linkedin/publish",
        Some(json!({"accountId": account, "text": "x", "visibility": "EVERYONE"})),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    app.assert_books_balance(user).await;
    app.stop().await;
}

async fn a_linkedin_member_who_runs_pages_chooses_which_to_connect_and_posts_as_one(b: Backend) {
    let (app, fake, user, key) = linkedin_setup(&b).await;
    use reqwest::Method as M;
    fake.pages.lock().expect("lock").extend([
        (
            2414183,
            "Tollgate Labs".to_owned(),
            "tollgate-labs".to_owned(),
        ),
        (
            5550001,
            "Side Project".to_owned(),
            "side-project".to_owned(),
        ),
    ]);
    let (started, done) = linkedin_connect(&app, &key).await;
    let session = started["sessionId"].as_str().expect("session").to_owned();
    // The member and both pages are offered; nothing is connected yet.
    assert_eq!(
        (done["success"].clone(), done["requiresSelection"].clone()),
        (json!(true), json!(true)),
        "{done}"
    );
    let offered: Vec<&str> = done["selectableAccounts"]
        .as_array()
        .expect("selectable")
        .iter()
        .filter_map(|a| a["platformUid"].as_str())
        .collect();
    assert_eq!(
        offered,
        [
            "782bbtaQ",
            "urn:li:organization:2414183",
            "urn:li:organization:5550001"
        ]
    );
    let status_path = format!("/api/v2/channels/accounts/auth/linkedin/status/{session}");
    let (_, polled) = xai(&app, &key, M::GET, &status_path, None).await;
    assert_eq!(
        (
            polled["data"]["status"].clone(),
            polled["data"]["requiresSelection"].clone()
        ),
        (json!("pending"), json!(true)),
        "{polled}"
    );
    assert_eq!(
        polled["data"]["selectableAccounts"][1]["parentPlatformUid"],
        "782bbtaQ"
    );
    let select_path = format!("/api/v2/channels/accounts/auth/linkedin/select/{session}");
    // A uid that was not offered, or another user's session, is refused.
    let (status, e) = xai(
        &app,
        &key,
        M::POST,
        &select_path,
        Some(json!({"platformUids": ["urn:li:organization:999"]})),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    let other = app.add_user(json!("1")).await;
    let other_key = app.add_key(other, json!({})).await;
    let (status, _) = xai(
        &app,
        &other_key,
        M::POST,
        &select_path,
        Some(json!({"platformUids": ["782bbtaQ"]})),
    )
    .await;
    assert_eq!(status, 404);
    // The first page only.
    let (status, chosen) = xai(
        &app,
        &key,
        M::POST,
        &select_path,
        Some(json!({"platformUids": ["urn:li:organization:2414183"]})),
    )
    .await;
    assert_eq!(status, 200, "{chosen}");
    let data = &chosen["data"];
    assert_eq!(
        (data["status"].clone(), data["requiresSelection"].clone()),
        (json!("completed"), json!(false)),
        "{chosen}"
    );
    assert_eq!(data["accounts"][0]["displayName"], "Tollgate Labs");
    let page = data["accountId"].as_str().expect("account").to_owned();
    // A session is selected for once.
    let (status, _) = xai(
        &app,
        &key,
        M::POST,
        &select_path,
        Some(json!({"platformUids": ["782bbtaQ"]})),
    )
    .await;
    assert_eq!(status, 409);
    // The page posts as the organisation.
    let (status, body) = xai(
        &app,
        &key,
        M::POST,
        "/api/v1/linkedin/publish",
        Some(json!({"accountId": page, "text": "Hello from the page"})),
    )
    .await;
    assert_eq!(
        (status, body["results"][0]["status"].clone()),
        (200, json!("published")),
        "{body}"
    );
    let posts = fake.posts.lock().expect("lock").clone();
    assert_eq!(posts[0].author, "urn:li:organization:2414183");
    assert_eq!(app.balance_micros(user).await, 90_000_000);
    app.assert_books_balance(user).await;
    app.stop().await;
}

both_backends!(
    a_linkedin_post_is_escaped_versioned_and_unconfirmed_when_its_answer_is_lost,
    a_linkedin_member_who_runs_pages_chooses_which_to_connect_and_posts_as_one
);
