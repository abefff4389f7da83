//! Publishing (seed 000): social sets and drafts over HTTP with the `xai-key` header, in seed
//! 000's own bodies; X's weighted counts and each platform's validity on every draft.

use crate::both_backends;
use crate::helpers::*;
use serde_json::{Value, json};

/// A request with seed 000's `xai-key` header: (status, body).
async fn xai(
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

fn x_app(c: &mut tollgate::config::Config, base: &str) {
    c.social.x.api_base = base.to_owned();
    c.social.x.authorize_url = format!("{base}/i/oauth2/authorize");
    c.social.x.token_url = format!("{base}/2/oauth2/token");
    c.social.x.client_id = CLIENT_ID.to_owned();
    c.social.x.client_secret = tollgate::secrets::Secret::from(CLIENT_SECRET);
    c.social.x.redirect_uri = X_CALLBACK.to_owned();
}

async fn x_setup(b: &Backend) -> (TestApp, Arc<FakeX>) {
    let (fake, base) = start_fake_x().await;
    fake.registered
        .lock()
        .expect("lock")
        .push(X_CALLBACK.to_owned());
    let app = TestApp::spawn_with(b, |c| x_app(c, &base)).await;
    (app, fake)
}

/// The user's browser: opens the authorize URL, and follows X's redirect to the callback (on the
/// test server). The callback's answer.
async fn approve(app: &TestApp, auth_url: &str) -> (u16, Value, String) {
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
        .get(app.url(&format!("/api/v1/twitter/callback?{query}")))
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

async fn connect_x(app: &TestApp, key: &str, body: Value) -> (String, String) {
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
