//! Mastodon (any instance, by its URL): the app registered once per instance
//! (`POST /api/v1/apps`), OAuth 2.0 with PKCE S256 (`/oauth/authorize`, `/oauth/token`), who the
//! user is (`/api/v1/accounts/verify_credentials`), the instance's limits (`/api/v2/instance`),
//! and statuses (`POST /api/v1/statuses`) sent with an `Idempotency-Key` chosen before the call:
//! the instance answers a repeat within an hour with the status it already made, so a lost
//! answer is settled by sending the same request again. Attachments go up first
//! (`POST /api/v2/media`) and are waited for until processed.
//! Spec: <https://docs.joinmastodon.org/methods/statuses/#create>.

use crate::social::media::{self, UploadError};
use crate::social::oauth::{CALL_TIMEOUT, TokenError, Tokens};
use serde_json::{Value, json};
use std::time::Duration;

fn api(instance: &str, path: &str) -> String {
    format!("{}{path}", instance.trim_end_matches('/'))
}

async fn call(req: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
    let resp = req
        .timeout(CALL_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// Registers Tollgate's app on `instance`: `(client_id, client_secret)`.
pub async fn register_app(
    http: &reqwest::Client,
    instance: &str,
    client_name: &str,
    redirect_uri: &str,
    scopes: &str,
) -> Result<(String, String), String> {
    let body = json!({"client_name": client_name, "redirect_uris": redirect_uri, "scopes": scopes});
    let req = http
        .post(api(instance, "/api/v1/apps"))
        .header("content-type", "application/json")
        .body(body.to_string());
    let (status, v) = call(req).await?;
    match (status, v["client_id"].as_str(), v["client_secret"].as_str()) {
        (200, Some(id), Some(secret)) => Ok((id.to_owned(), secret.to_owned())),
        _ => Err(format!(
            "registering the app on {instance} answered {status}: {}",
            v["error"].as_str().unwrap_or("no client")
        )),
    }
}

/// The authorize URL on `instance` (PKCE S256).
pub fn authorize_url(
    instance: &str,
    client_id: &str,
    redirect_uri: &str,
    scopes: &str,
    state: &str,
    verifier: &str,
) -> String {
    let app = crate::config::OAuthApp {
        api_base: instance.to_owned(),
        authorize_url: api(instance, "/oauth/authorize"),
        token_url: api(instance, "/oauth/token"),
        client_id: client_id.to_owned(),
        client_secret: Default::default(),
        redirect_uri: redirect_uri.to_owned(),
        scopes: scopes.to_owned(),
        version: String::new(),
    };
    crate::social::oauth::authorize_url(&app, " ", state, Some(verifier))
}

/// Trades the code for a token (confidential client: id and secret in the form).
pub async fn exchange_code(
    http: &reqwest::Client,
    instance: &str,
    client: (&str, &str),
    redirect_uri: &str,
    code: &str,
    verifier: &str,
) -> Result<Tokens, TokenError> {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("client_id", client.0),
        ("client_secret", client.1),
        ("redirect_uri", redirect_uri),
        ("code_verifier", verifier),
    ];
    crate::social::oauth::token_request(http, &api(instance, "/oauth/token"), None, &form).await
}

/// The account a token belongs to.
#[derive(Debug, Clone)]
pub struct Me {
    pub id: String,
    pub acct: String,
    pub display_name: Option<String>,
    pub avatar: Option<String>,
}

/// `GET /api/v1/accounts/verify_credentials`.
pub async fn me(http: &reqwest::Client, instance: &str, token: &str) -> Result<Me, String> {
    let (status, v) = call(
        http.get(api(instance, "/api/v1/accounts/verify_credentials"))
            .bearer_auth(token),
    )
    .await?;
    match (status, v["id"].as_str(), v["username"].as_str()) {
        (200, Some(id), Some(username)) => Ok(Me {
            id: id.to_owned(),
            acct: v["acct"].as_str().unwrap_or(username).to_owned(),
            display_name: v["display_name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
            avatar: v["avatar"].as_str().map(str::to_owned),
        }),
        _ => Err(format!("verify_credentials answered {status}")),
    }
}

/// The most characters a status may have on `instance` (`/api/v2/instance`; 500 when it does
/// not say).
pub async fn max_characters(http: &reqwest::Client, instance: &str) -> i64 {
    match call(http.get(api(instance, "/api/v2/instance"))).await {
        Ok((200, v)) => v["configuration"]["statuses"]["max_characters"]
            .as_i64()
            .filter(|n| *n > 0)
            .unwrap_or(500),
        _ => 500,
    }
}

/// How one status create ended.
#[derive(Debug, Clone)]
pub enum Created {
    Posted {
        id: String,
        url: String,
    },
    Failed {
        code: &'static str,
        reason: String,
    },
    /// The token was refused: the account must be connected again (Mastodon tokens do not
    /// refresh).
    Unauthorized,
    Unknown(String),
}

/// Revokes a token at the instance (`POST /oauth/revoke`; best effort: disconnecting does
/// not wait on it).
pub async fn revoke(
    http: &reqwest::Client,
    instance: &str,
    client_id: &str,
    client_secret: &str,
    token: &str,
) {
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("client_id", client_id),
            ("client_secret", client_secret),
            ("token", token),
        ])
        .finish();
    let sent = call(
        http.post(api(instance, "/oauth/revoke"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form),
    )
    .await;
    if let Err(e) = sent {
        tracing::debug!(error = %e, "revoking a Mastodon token");
    }
}

/// A status to post.
#[derive(Debug, Clone, Copy)]
pub struct NewStatus<'a> {
    pub text: &'a str,
    pub in_reply_to: Option<&'a str>,
    pub language: Option<&'a str>,
    /// Attachments already processed by the instance.
    pub media_ids: &'a [String],
}

/// Uploads one attachment (`POST /api/v2/media`, the file streamed as multipart) and waits
/// until the instance has processed it (a 202 is polled at `GET /api/v1/media/:id`: 206 while
/// processing, 200 when ready): its id. An attachment is not a post.
pub async fn upload_media(
    http: &reqwest::Client,
    instance: &str,
    token: &str,
    file: &crate::db::files::FileMeta,
    data: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
) -> Result<String, UploadError> {
    let (ct, body) = media::multipart(&[], "file", &file.id, &file.content_type, data);
    let sent = http
        .post(api(instance, "/api/v2/media"))
        .bearer_auth(token)
        .header("content-type", ct)
        .body(body)
        .timeout(Duration::from_secs(300))
        .send()
        .await;
    let failed =
        |e: String| UploadError::Failed("PLATFORM_UNAVAILABLE", format!("{instance}: {e}"));
    let resp = sent.map_err(|e| failed(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| failed(e.to_string()))?;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let detail = |v: &Value| v["error"].as_str().unwrap_or("no detail").to_owned();
    let id = match (status, v["id"].as_str()) {
        (200 | 202, Some(id)) => id.to_owned(),
        (403, _) => return Err(UploadError::Unauthorized),
        _ => return Err(media::refused(status, instance, &detail(&v))),
    };
    if status == 200 {
        return Ok(id);
    }
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (status, v) = call(
            http.get(api(instance, &format!("/api/v1/media/{id}")))
                .bearer_auth(token),
        )
        .await
        .map_err(failed)?;
        match status {
            200 => return Ok(id),
            206 => continue,
            _ => return Err(media::refused(status, instance, &detail(&v))),
        }
    }
    Err(failed(format!("attachment {id} was still being processed")))
}

/// `POST /api/v1/statuses` under `Idempotency-Key: key`.
pub async fn create_status(
    http: &reqwest::Client,
    instance: &str,
    token: &str,
    key: &str,
    status: NewStatus<'_>,
    timeout: Duration,
) -> Created {
    let mut body = json!({"status": status.text, "visibility": "public"});
    if let Some(id) = status.in_reply_to {
        body["in_reply_to_id"] = json!(id);
    }
    if let Some(l) = status.language {
        body["language"] = json!(l);
    }
    if !status.media_ids.is_empty() {
        body["media_ids"] = json!(status.media_ids);
    }
    let sent = http
        .post(api(instance, "/api/v1/statuses"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(timeout)
        .send()
        .await;
    let (status, v) = match super::answer(sent, instance).await {
        super::Answer::Got(status, v) => (status, v),
        super::Answer::NotSent(reason) => {
            return Created::Failed {
                code: "PLATFORM_UNAVAILABLE",
                reason,
            };
        }
        super::Answer::Lost(why) => return Created::Unknown(why),
    };
    let error = v["error"].as_str().unwrap_or("no detail").to_owned();
    match status {
        200..=299 => match (v["id"].as_str(), v["url"].as_str().or(v["uri"].as_str())) {
            (Some(id), Some(url)) => Created::Posted {
                id: id.to_owned(),
                url: url.to_owned(),
            },
            _ => Created::Unknown(format!("{instance} answered {status} without the status")),
        },
        401 | 403 => Created::Unauthorized,
        429 => Created::Failed {
            code: "RATE_LIMITED",
            reason: super::limited(format!("{instance}'s rate limit: {error}"), &v),
        },
        400..=499 => Created::Failed {
            code: "INVALID_INPUT",
            reason: format!("{instance} refused the status ({status}): {error}"),
        },
        _ => Created::Unknown(format!("{instance} answered {status}: {error}")),
    }
}
