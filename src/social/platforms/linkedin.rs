//! LinkedIn (versioned REST, `LinkedIn-Version: YYYYMM`): OAuth 2.0 code flow (client id and
//! secret in the form), the member from `/v2/userinfo` (`sub` → `urn:li:person:{sub}`), and
//! posts through `POST /rest/posts` (201, the post's URN in `x-restli-id`). Its "little" text
//! format truncates silently at an unescaped reserved character, so the commentary is escaped.
//! LinkedIn has no idempotency key: a lost answer is reported as unconfirmed. A member who
//! administers pages (`organizationAcls`) chooses which of them, and whether themself, to
//! connect; a page's account posts as `urn:li:organization:…`. Images go up
//! first (`/rest/images?action=initializeUpload`, then one `PUT`), videos in the parts LinkedIn
//! names (each `PUT`, its ETag kept, then `finalizeUpload`), and are named by URN.
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

/// The URN an account posts as: its stored id when it is one (an organisation page,
/// `urn:li:organization:…`), else the member's `urn:li:person:{sub}`.
pub fn author_urn(uid: &str) -> String {
    if uid.starts_with("urn:li:") {
        uid.to_owned()
    } else {
        format!("urn:li:person:{uid}")
    }
}

/// A page the member administers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    pub urn: String,
    pub name: String,
    pub vanity: Option<String>,
}

/// A versioned REST read: `GET {api_base}{path}` with the version and Rest.li headers.
async fn rest_get(
    http: &reqwest::Client,
    app: &OAuthApp,
    token: &str,
    path: &str,
) -> Result<(u16, Value), String> {
    let resp = http
        .get(format!("{}{path}", app.api_base.trim_end_matches('/')))
        .bearer_auth(token)
        .header("linkedin-version", &app.version)
        .header("x-restli-protocol-version", "2.0.0")
        .timeout(CALL_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// The pages the member administers (`organizationAcls` by role assignee, approved
/// administrators), each with its name. A token without the organisation scopes (LinkedIn
/// answers 403) has none.
pub async fn organizations(
    http: &reqwest::Client,
    app: &OAuthApp,
    token: &str,
) -> Result<Vec<Organization>, String> {
    let path = "/rest/organizationAcls?q=roleAssignee&role=ADMINISTRATOR&state=APPROVED";
    let (status, v) = rest_get(http, app, token, path).await?;
    match status {
        200 => {}
        401 | 403 => return Ok(Vec::new()),
        _ => return Err(format!("organizationAcls answered {status}")),
    }
    let mut out = Vec::new();
    for element in v["elements"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some(urn) = element["organization"].as_str() else {
            continue;
        };
        let Some(id) = urn.strip_prefix("urn:li:organization:") else {
            continue;
        };
        let (status, org) =
            rest_get(http, app, token, &format!("/rest/organizations/{id}")).await?;
        if status != 200 {
            return Err(format!("organization {id} answered {status}"));
        }
        out.push(Organization {
            urn: urn.to_owned(),
            name: org["localizedName"].as_str().unwrap_or(id).to_owned(),
            vanity: org["vanityName"].as_str().map(str::to_owned),
        });
    }
    Ok(out)
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

/// One media call (a transport failure is definite: an upload posts nothing): its status,
/// headers and JSON body.
async fn media_call(
    req: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<(u16, reqwest::header::HeaderMap, Value), UploadError> {
    let failed = |e: reqwest::Error| {
        UploadError::Failed("PLATFORM_UNAVAILABLE", format!("LinkedIn media: {e}"))
    };
    let resp = req.timeout(timeout).send().await.map_err(failed)?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.map_err(failed)?;
    Ok((
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    ))
}

fn refused(status: u16, v: &Value) -> UploadError {
    media::refused(
        status,
        "LinkedIn",
        v["message"].as_str().unwrap_or("no detail"),
    )
}

/// A stored file's bytes `first..=last`, streamed.
pub type Part = futures_util::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>;

/// Uploads one image owned by `person` (the account's id): `initializeUpload`, then the bytes
/// in one `PUT` to the upload URL LinkedIn gives (streamed): the image's URN. An image is not a
/// post.
pub async fn upload_image(
    http: &reqwest::Client,
    app: &OAuthApp,
    token: &str,
    person: &str,
    file: &crate::db::files::FileMeta,
    data: Part,
) -> Result<String, UploadError> {
    let init = json!({"initializeUploadRequest": {"owner": author_urn(person)}});
    let path = "/rest/images?action=initializeUpload";
    let (status, _, v) = media_call(rest(http, app, token, path, &init), CALL_TIMEOUT).await?;
    let (Some(upload_url), Some(urn)) = (
        v["value"]["uploadUrl"].as_str(),
        v["value"]["image"].as_str(),
    ) else {
        return Err(refused(status, &v));
    };
    let put = http
        .put(upload_url)
        .bearer_auth(token)
        .header("content-type", &file.content_type)
        .header("content-length", file.size_bytes.to_string())
        .body(reqwest::Body::wrap_stream(data));
    let (status, _, v) = media_call(put, Duration::from_secs(300)).await?;
    if !(200..=299).contains(&status) {
        return Err(refused(status, &v));
    }
    Ok(urn.to_owned())
}

/// Uploads one video owned by `person`: `initializeUpload` with its size, each part `PUT` to
/// its own URL (`read(first, last)` streams those bytes) with its `ETag` kept,
/// `finalizeUpload` with the ETags in order, then waits until LinkedIn has processed it
/// (`AVAILABLE`): the video's URN.
pub async fn upload_video(
    http: &reqwest::Client,
    app: &OAuthApp,
    token: &str,
    person: &str,
    file: &crate::db::files::FileMeta,
    read: impl Fn(u64, u64) -> Part,
) -> Result<String, UploadError> {
    let init = json!({"initializeUploadRequest": {"owner": author_urn(person),
        "fileSizeBytes": file.size_bytes, "uploadCaptions": false, "uploadThumbnail": false}});
    let path = "/rest/videos?action=initializeUpload";
    let (status, _, v) = media_call(rest(http, app, token, path, &init), CALL_TIMEOUT).await?;
    let (Some(urn), Some(parts)) = (
        v["value"]["video"].as_str(),
        v["value"]["uploadInstructions"].as_array(),
    ) else {
        return Err(refused(status, &v));
    };
    let mut etags = Vec::with_capacity(parts.len());
    for part in parts {
        let (Some(url), Some(first), Some(last)) = (
            part["uploadUrl"].as_str(),
            part["firstByte"].as_u64(),
            part["lastByte"].as_u64(),
        ) else {
            return Err(UploadError::Failed(
                "PLATFORM_UNAVAILABLE",
                format!("LinkedIn gave an upload instruction without its range: {part}"),
            ));
        };
        let put = http
            .put(url)
            .bearer_auth(token)
            .header("content-type", "application/octet-stream")
            .header("content-length", (last + 1 - first).to_string())
            .body(reqwest::Body::wrap_stream(read(first, last)));
        let (status, headers, v) = media_call(put, Duration::from_secs(300)).await?;
        let etag = headers.get("etag").and_then(|e| e.to_str().ok());
        match (status, etag) {
            (200..=299, Some(etag)) => etags.push(etag.to_owned()),
            _ => return Err(refused(status, &v)),
        }
    }
    let fin = json!({"finalizeUploadRequest": {"video": urn, "uploadToken": v["value"]["uploadToken"].as_str().unwrap_or_default(), "uploadedPartIds": etags}});
    let path = "/rest/videos?action=finalizeUpload";
    let (status, _, v) = media_call(rest(http, app, token, path, &fin), CALL_TIMEOUT).await?;
    if !(200..=299).contains(&status) {
        return Err(refused(status, &v));
    }
    let encoded: String = url::form_urlencoded::byte_serialize(urn.as_bytes()).collect();
    for _ in 0..300 {
        let (status, v) = rest_get(http, app, token, &format!("/rest/videos/{encoded}"))
            .await
            .map_err(|e| UploadError::Failed("PLATFORM_UNAVAILABLE", e))?;
        match (status, v["status"].as_str()) {
            (200, Some("AVAILABLE")) => return Ok(urn.to_owned()),
            // Some member tokens may write videos but not read them back: finalized is all
            // that can be known.
            (401 | 403, _) => return Ok(urn.to_owned()),
            (200, Some("PROCESSING" | "WAITING_UPLOAD")) => {}
            (200, Some(other)) => {
                return Err(UploadError::Failed(
                    "INVALID_INPUT",
                    format!("LinkedIn could not process the video: {other}"),
                ));
            }
            _ => return Err(refused(status, &v)),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(UploadError::Failed(
        "PLATFORM_UNAVAILABLE",
        format!("LinkedIn was still processing video {urn}"),
    ))
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
        "author": author_urn(person),
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
            reason: super::limited(format!("LinkedIn's rate limit: {message}"), &v),
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
