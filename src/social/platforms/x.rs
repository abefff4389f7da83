//! X (Twitter) API v2: OAuth 2.0 Authorization Code with PKCE as a confidential client (HTTP
//! Basic on the token endpoint), rotating refresh tokens (`offline.access`), the user lookup
//! `GET /2/users/me`, revocation, posts (`POST /2/tweets`) and the chunked media upload.
//! Spec: <https://docs.x.com/fundamentals/authentication/oauth-2-0/user-access-token>.

use crate::config::OAuthApp;
use crate::social::media::{self, Kind, UploadError};
use crate::social::oauth::{self, TokenError, Tokens};
use serde_json::{Value, json};

/// The authorize URL (scopes space-separated, PKCE S256).
pub fn authorize_url(app: &OAuthApp, state: &str, verifier: &str) -> String {
    oauth::authorize_url(app, " ", state, Some(verifier))
}

fn basic(app: &OAuthApp) -> Option<(&str, &str)> {
    (!app.client_secret.is_empty()).then(|| (app.client_id.as_str(), app.client_secret.expose()))
}

/// Trades an authorization code for tokens.
pub async fn exchange_code(
    http: &reqwest::Client,
    app: &OAuthApp,
    code: &str,
    verifier: &str,
) -> Result<Tokens, TokenError> {
    let mut form = vec![
        ("code", code),
        ("grant_type", "authorization_code"),
        ("redirect_uri", app.redirect_uri.as_str()),
        ("code_verifier", verifier),
    ];
    if basic(app).is_none() {
        form.push(("client_id", app.client_id.as_str()));
    }
    oauth::token_request(http, &app.token_url, basic(app), &form).await
}

/// Trades a refresh token for new tokens (X rotates it: the old one is spent).
pub async fn refresh(
    http: &reqwest::Client,
    app: &OAuthApp,
    refresh_token: &str,
) -> Result<Tokens, TokenError> {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
    ];
    if basic(app).is_none() {
        form.push(("client_id", app.client_id.as_str()));
    }
    oauth::token_request(http, &app.token_url, basic(app), &form).await
}

/// Revokes a token (best effort: disconnecting does not wait on it).
pub async fn revoke(http: &reqwest::Client, app: &OAuthApp, token: &str) {
    let url = format!("{}/2/oauth2/revoke", app.api_base.trim_end_matches('/'));
    let mut form = vec![("token", token), ("token_type_hint", "refresh_token")];
    if basic(app).is_none() {
        form.push(("client_id", app.client_id.as_str()));
    }
    if let Err(e) = oauth::token_request(http, &url, basic(app), &form).await {
        tracing::debug!(error = %e, "revoking an X token");
    }
}

/// The user a token belongs to.
#[derive(Debug, Clone)]
pub struct Me {
    pub id: String,
    pub username: String,
    pub name: Option<String>,
    pub avatar_url: Option<String>,
}

/// `GET /2/users/me`.
pub async fn me(http: &reqwest::Client, app: &OAuthApp, access_token: &str) -> Result<Me, String> {
    let url = format!(
        "{}/2/users/me?user.fields=profile_image_url",
        app.api_base.trim_end_matches('/')
    );
    let resp = http
        .get(&url)
        .bearer_auth(access_token)
        .timeout(oauth::CALL_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let data = &v["data"];
    match (status, data["id"].as_str(), data["username"].as_str()) {
        (200, Some(id), Some(username)) => Ok(Me {
            id: id.to_owned(),
            username: username.to_owned(),
            name: data["name"].as_str().map(str::to_owned),
            avatar_url: data["profile_image_url"].as_str().map(str::to_owned),
        }),
        _ => Err(format!(
            "users/me answered {status}: {}",
            v["detail"]
                .as_str()
                .or(v["title"].as_str())
                .unwrap_or("no user")
        )),
    }
}

/// How one create call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The post exists: its id.
    Posted { id: String },
    /// It surely was not posted (refused before or by X): why, and the catalogue code.
    Failed { code: &'static str, reason: String },
    /// X refused the token (nothing was posted): refresh and try once more.
    Unauthorized,
    /// Sent, but the answer never came or says nothing sure (a timeout, a dropped connection,
    /// a 5xx): X has no idempotency key, so it is never sent again blindly.
    Unknown(String),
}

/// What a post says and where it goes.
#[derive(Debug, Clone, Default)]
pub struct NewPost<'a> {
    pub text: &'a str,
    pub reply_to: Option<&'a str>,
    pub quote: Option<&'a str>,
    pub media_ids: &'a [String],
}

/// `POST /2/tweets`.
pub async fn create_post(
    http: &reqwest::Client,
    app: &OAuthApp,
    access_token: &str,
    post: &NewPost<'_>,
    timeout: std::time::Duration,
) -> Created {
    // A post with media may have no text.
    let mut body = json!({});
    if !post.text.is_empty() || post.media_ids.is_empty() {
        body["text"] = json!(post.text);
    }
    if let Some(id) = post.reply_to {
        body["reply"] = json!({"in_reply_to_tweet_id": id});
    }
    if let Some(id) = post.quote {
        body["quote_tweet_id"] = json!(id);
    }
    if !post.media_ids.is_empty() {
        body["media"] = json!({"media_ids": post.media_ids});
    }
    let url = format!("{}/2/tweets", app.api_base.trim_end_matches('/'));
    let sent = http
        .post(&url)
        .bearer_auth(access_token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(timeout)
        .send()
        .await;
    let (status, v) = match super::answer(sent, "X").await {
        super::Answer::Got(status, v) => (status, v),
        super::Answer::NotSent(reason) => {
            return Created::Failed {
                code: "PLATFORM_UNAVAILABLE",
                reason,
            };
        }
        super::Answer::Lost(why) => return Created::Unknown(why),
    };
    let detail = || detail(&v);
    match status {
        200..=299 => match v["data"]["id"].as_str() {
            Some(id) => Created::Posted { id: id.to_owned() },
            None => Created::Unknown(format!("X answered {status} without a post id")),
        },
        401 => Created::Unauthorized,
        429 => Created::Failed {
            code: "RATE_LIMITED",
            reason: super::limited(format!("X's rate limit: {}", detail()), &v),
        },
        400..=499 => Created::Failed {
            code: if status == 403 {
                "FORBIDDEN"
            } else {
                "INVALID_INPUT"
            },
            reason: format!("X refused the post ({status}): {}", detail()),
        },
        _ => Created::Unknown(format!("X answered {status}: {}", detail())),
    }
}

/// Uploads one media file through X's chunked upload (`initialize`, one `append` per stored
/// chunk of at most 1 MiB, `finalize`), then waits while X processes it (`STATUS`, honouring
/// `check_after_secs`): its media id. An upload posts nothing, so every failure is definite.
pub async fn upload_media(
    http: &reqwest::Client,
    app: &OAuthApp,
    token: &str,
    file: &crate::db::files::FileMeta,
    mut data: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
) -> Result<String, UploadError> {
    use futures_util::StreamExt;
    let base = format!("{}/2/media/upload", app.api_base.trim_end_matches('/'));
    let category = match Kind::of(&file.content_type) {
        Some(Kind::Gif) => "tweet_gif",
        Some(Kind::Video) => "tweet_video",
        _ => "tweet_image",
    };
    let init = json!({"media_type": file.content_type, "total_bytes": file.size_bytes, "media_category": category});
    let req = http
        .post(format!("{base}/initialize"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(init.to_string());
    let (status, v) = media_call(req).await?;
    let id = match (status, v["data"]["id"].as_str()) {
        (200..=299, Some(id)) => id.to_owned(),
        _ => return Err(media::refused(status, "X", &detail(&v))),
    };
    let mut segment = 0usize;
    let mut pending = bytes::Bytes::new();
    loop {
        // Segments of at most 1 MiB, whatever size the store hands out.
        if pending.is_empty() {
            match data.next().await {
                Some(part) => {
                    pending =
                        part.map_err(|e| UploadError::Failed("INTERNAL_ERROR", e.to_string()))?;
                    continue;
                }
                None => break,
            }
        }
        let part = pending.split_to(pending.len().min(1 << 20));
        let index = segment.to_string();
        let one = futures_util::stream::once(async move { Ok(part) }).boxed();
        let (ct, body) = media::multipart(
            &[("segment_index", &index)],
            "media",
            "media",
            "application/octet-stream",
            one,
        );
        let req = http
            .post(format!("{base}/{id}/append"))
            .bearer_auth(token)
            .header("content-type", ct)
            .body(body);
        let (status, v) = media_call(req).await?;
        if !(200..=299).contains(&status) {
            return Err(media::refused(status, "X", &detail(&v)));
        }
        segment += 1;
    }
    let (status, v) = media_call(
        http.post(format!("{base}/{id}/finalize"))
            .bearer_auth(token),
    )
    .await?;
    if !(200..=299).contains(&status) {
        return Err(media::refused(status, "X", &detail(&v)));
    }
    let mut info = v["data"]["processing_info"].clone();
    for _ in 0..120 {
        match info["state"].as_str() {
            None | Some("succeeded") => return Ok(id),
            Some("failed") => {
                let why = info["error"]["message"].as_str().unwrap_or("no detail");
                return Err(UploadError::Failed(
                    "INVALID_INPUT",
                    format!("X could not process the media: {why}"),
                ));
            }
            Some(_) => {}
        }
        let wait = info["check_after_secs"].as_u64().unwrap_or(1).clamp(1, 10);
        tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
        let url = format!("{base}?command=STATUS&media_id={id}");
        let (status, v) = media_call(http.get(url).bearer_auth(token)).await?;
        if !(200..=299).contains(&status) {
            return Err(media::refused(status, "X", &detail(&v)));
        }
        info = v["data"]["processing_info"].clone();
    }
    Err(UploadError::Failed(
        "PLATFORM_UNAVAILABLE",
        format!("X was still processing media {id}"),
    ))
}

fn detail(v: &Value) -> String {
    v["detail"]
        .as_str()
        .or(v["title"].as_str())
        .or(v["errors"][0]["message"].as_str())
        .unwrap_or("no detail")
        .to_owned()
}

/// One media call: its status and JSON body; a transport failure is definite (nothing posted).
async fn media_call(req: reqwest::RequestBuilder) -> Result<(u16, Value), UploadError> {
    let resp = req
        .timeout(std::time::Duration::from_secs(120))
        .send()
        .await
        .map_err(|e| UploadError::Failed("PLATFORM_UNAVAILABLE", format!("X media upload: {e}")))?;
    let status = resp.status().as_u16();
    let body = resp
        .bytes()
        .await
        .map_err(|e| UploadError::Failed("PLATFORM_UNAVAILABLE", format!("X media upload: {e}")))?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// A post's public URL.
pub fn post_url(username: &str, id: &str) -> String {
    format!("https://x.com/{username}/status/{id}")
}
