//! LinkedIn (versioned REST, `LinkedIn-Version: YYYYMM`): OAuth 2.0 code flow (client id and
//! secret in the form), the member from `/v2/userinfo` (`sub` → `urn:li:person:{sub}`), and
//! posts through `POST /rest/posts` (201, the post's URN in `x-restli-id`). Its "little" text
//! format truncates silently at an unescaped reserved character, so the commentary is escaped.
//! LinkedIn has no idempotency key: a lost answer is reported as unconfirmed. Images go up
//! first (`/rest/images?action=initializeUpload`, then one `PUT`) and are named by URN.
//! Spec: <https://learn.microsoft.com/linkedin/marketing/community-management/shares/posts-api>.

use crate::config::OAuthApp;
use crate::social::media::{self, UploadError};
use crate::social::oauth::{self, CALL_TIMEOUT, TokenError, Tokens};
use serde_json::{Value, json};
use std::time::Duration;

/// The authorize URL (scopes space-separated; no PKCE).
pub fn authorize_url(app: &OAuthApp, state: &str) -> String {
    oauth::authorize_url(app, " ", state, None)
}

/// Trades the code for a (60-day) token.
pub async fn exchange_code(
    http: &reqwest::Client,
    app: &OAuthApp,
    code: &str,
) -> Result<Tokens, TokenError> {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", app.redirect_uri.as_str()),
        ("client_id", app.client_id.as_str()),
        ("client_secret", app.client_secret.expose()),
    ];
    oauth::token_request(http, &app.token_url, None, &form).await
}

/// Refreshes a token (only apps LinkedIn approved get refresh tokens).
pub async fn refresh(
    http: &reqwest::Client,
    app: &OAuthApp,
    refresh_token: &str,
) -> Result<Tokens, TokenError> {
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", app.client_id.as_str()),
        ("client_secret", app.client_secret.expose()),
    ];
    oauth::token_request(http, &app.token_url, None, &form).await
}

/// The member a token belongs to: `(sub, name, picture)`.
pub async fn me(
    http: &reqwest::Client,
    app: &OAuthApp,
    token: &str,
) -> Result<(String, String, Option<String>), String> {
    let url = format!("{}/v2/userinfo", app.api_base.trim_end_matches('/'));
    let resp = http
        .get(url)
        .bearer_auth(token)
        .timeout(CALL_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match (status, v["sub"].as_str()) {
        (200, Some(sub)) => Ok((
            sub.to_owned(),
            v["name"].as_str().unwrap_or(sub).to_owned(),
            v["picture"].as_str().map(str::to_owned),
        )),
        _ => Err(format!("userinfo answered {status}")),
    }
}

/// Text in LinkedIn's "little" format: its reserved characters escaped with a backslash.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if "\\|{}@[]()<>#*_~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// How one create ended.
#[derive(Debug, Clone)]
pub enum Created {
    Posted { urn: String },
    Failed { code: &'static str, reason: String },
    Unauthorized,
    Unknown(String),
}

/// A versioned REST call: `POST {api_base}{path}` with the version and Rest.li headers.
fn rest(
    http: &reqwest::Client,
    app: &OAuthApp,
    token: &str,
    path: &str,
    body: &Value,
) -> reqwest::RequestBuilder {
    http.post(format!("{}{path}", app.api_base.trim_end_matches('/')))
        .bearer_auth(token)
        .header("linkedin-version", &app.version)
        .header("x-restli-protocol-version", "2.0.0")
        .header("content-type", "application/json")
        .body(body.to_string())
}

/// Uploads one image owned by the member `person`: `initializeUpload`, then the bytes in one
/// `PUT` to the upload URL LinkedIn gives (streamed): the image's URN. An image is not a post.
pub async fn upload_image(
    http: &reqwest::Client,
    app: &OAuthApp,
    token: &str,
    person: &str,
    file: &crate::db::files::FileMeta,
    data: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
) -> Result<String, UploadError> {
    let init = json!({"initializeUploadRequest": {"owner": format!("urn:li:person:{person}")}});
    let failed =
        |e: String| UploadError::Failed("PLATFORM_UNAVAILABLE", format!("LinkedIn images: {e}"));
    let resp = rest(
        http,
        app,
        token,
        "/rest/images?action=initializeUpload",
        &init,
    )
    .timeout(CALL_TIMEOUT)
    .send()
    .await
    .map_err(|e| failed(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| failed(e.to_string()))?;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (upload_url, urn) = match (
        status,
        v["value"]["uploadUrl"].as_str(),
        v["value"]["image"].as_str(),
    ) {
        (200..=299, Some(u), Some(i)) => (u.to_owned(), i.to_owned()),
        _ => {
            let message = v["message"].as_str().unwrap_or("no detail");
            return Err(media::refused(status, "LinkedIn", message));
        }
    };
    let resp = http
        .put(&upload_url)
        .bearer_auth(token)
        .header("content-type", &file.content_type)
        .header("content-length", file.size_bytes.to_string())
        .body(reqwest::Body::wrap_stream(data))
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let status = resp.status().as_u16();
    if !(200..=299).contains(&status) {
        return Err(media::refused(
            status,
            "LinkedIn",
            "the image upload was refused",
        ));
    }
    Ok(urn)
}

/// `POST /rest/posts` as the member `person` (its `sub`), with `images` (URNs) as its media.
#[allow(clippy::too_many_arguments)]
pub async fn create_post(
    http: &reqwest::Client,
    app: &OAuthApp,
    token: &str,
    person: &str,
    text: &str,
    visibility: &str,
    images: &[String],
    timeout: Duration,
) -> Created {
    let mut body = json!({
        "author": format!("urn:li:person:{person}"),
        "commentary": escape(text),
        "visibility": visibility,
        "distribution": {"feedDistribution": "MAIN_FEED", "targetEntities": [], "thirdPartyDistributionChannels": []},
        "lifecycleState": "PUBLISHED",
        "isReshareDisabledByAuthor": false,
    });
    match images {
        [] => {}
        [one] => body["content"] = json!({"media": {"id": one}}),
        many => {
            let images: Vec<Value> = many.iter().map(|id| json!({"id": id})).collect();
            body["content"] = json!({"multiImage": {"images": images}});
        }
    }
    let sent = rest(http, app, token, "/rest/posts", &body)
        .timeout(timeout)
        .send()
        .await;
    let urn = sent
        .as_ref()
        .ok()
        .and_then(|r| r.headers().get("x-restli-id"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, v) = match super::answer(sent, "LinkedIn").await {
        super::Answer::Got(status, v) => (status, v),
        super::Answer::NotSent(reason) => {
            return Created::Failed {
                code: "PLATFORM_UNAVAILABLE",
                reason,
            };
        }
        super::Answer::Lost(why) => return Created::Unknown(why),
    };
    let message = v["message"].as_str().unwrap_or("no detail").to_owned();
    match (status, urn) {
        (200..=299, Some(urn)) => Created::Posted { urn },
        (200..=299, None) => {
            Created::Unknown(format!("LinkedIn answered {status} without the post's id"))
        }
        (401, _) => Created::Unauthorized,
        (429, _) => Created::Failed {
            code: "RATE_LIMITED",
            reason: format!("LinkedIn's rate limit: {message}"),
        },
        (400..=499, _) => Created::Failed {
            code: if status == 403 {
                "FORBIDDEN"
            } else {
                "INVALID_INPUT"
            },
            reason: format!("LinkedIn refused the post ({status}): {message}"),
        },
        _ => Created::Unknown(format!("LinkedIn answered {status}: {message}")),
    }
}

/// A post's public URL.
pub fn post_url(urn: &str) -> String {
    format!("https://www.linkedin.com/feed/update/{urn}")
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn little_text_reserved_characters_are_escaped() {
        assert_eq!(escape("Hi (all) #rust @me"), "Hi \\(all\\) \\#rust \\@me");
        assert_eq!(
            escape("a_b*c~d|e{f}g[h]<i>\\"),
            "a\\_b\\*c\\~d\\|e\\{f\\}g\\[h\\]\\<i\\>\\\\"
        );
        assert_eq!(escape("你好 LinkedIn!"), "你好 LinkedIn!");
    }
}
