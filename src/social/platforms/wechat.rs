//! WeChat Official Account (公众号) publishing API (`[social.wechat] api_base`, by default
//! `https://api.weixin.qq.com`): an access token from `POST /cgi-bin/stable_token`, images in
//! the article uploaded by `POST /cgi-bin/media/uploadimg` (their mmbiz URLs replace the
//! originals), the cover as permanent material (`POST /cgi-bin/material/add_material?type=image`),
//! the article saved by `POST /cgi-bin/draft/add`, published by `POST /cgi-bin/freepublish/submit`
//! (success only means the task was accepted) and followed with `POST /cgi-bin/freepublish/get`
//! until its URL or its failure. Every answer is HTTP 200; a failure is `{"errcode", "errmsg"}`.
//! Reference: <https://developers.weixin.qq.com/doc/offiaccount/en/Publish/Publish.html>.

use serde_json::{Value, json};
use std::time::Duration;

/// How long one call may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call did not work.
#[derive(Debug, Clone)]
pub enum WxError {
    /// WeChat answered an `errcode` (not 0) with its `errmsg`.
    Code(i64, String),
    /// WeChat could not be reached: nothing was done.
    NotSent(String),
    /// It went out and no answer came back: the outcome is unknown.
    Lost(String),
}

impl WxError {
    /// The access token is invalid or expired: fetch a new one and call again (once).
    pub fn stale_token(&self) -> bool {
        matches!(self, WxError::Code(40001 | 40014 | 42001, _))
    }

    /// Surely nothing was done and trying later may work (busy, a daily quota, not reached).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            WxError::NotSent(_) | WxError::Code(-1 | 45009 | 45011 | 45047 | 45064 | 45065, _)
        )
    }

    /// What the user reads.
    pub fn reason(&self) -> String {
        match self {
            WxError::Code(40164, m) => format!(
                "WeChat refused this server's IP (40164 {m}): add it to the IP whitelist in the Official Account console (基本配置 → IP白名单)"
            ),
            WxError::Code(48001, m) => format!(
                "this Official Account may not publish through the API (48001 {m}): an unverified or personal account can only save drafts; verify the account or publish the saved draft in the console"
            ),
            WxError::Code(code @ (40013 | 40125 | 41004), m) => {
                format!("the AppID or AppSecret is wrong ({code} {m})")
            }
            WxError::Code(45009, m) => {
                format!("the account's daily API quota is used up (45009 {m})")
            }
            WxError::Code(-1, m) => format!("WeChat is busy (-1 {m})"),
            WxError::Code(code, m) => format!("WeChat refused it ({code} {m})"),
            WxError::NotSent(m) => format!("WeChat could not be reached: {m}"),
            WxError::Lost(m) => format!("no answer from WeChat after sending: {m}"),
        }
    }
}

fn url(base: &str, path: &str, token: Option<&str>) -> String {
    let base = base.trim_end_matches('/');
    let join = if path.contains('?') { '&' } else { '?' };
    match token {
        Some(t) => format!("{base}{path}{join}access_token={t}"),
        None => format!("{base}{path}"),
    }
}

/// Reads an answer: its JSON when `errcode` is absent or 0.
async fn read(sent: Result<reqwest::Response, reqwest::Error>) -> Result<Value, WxError> {
    let v = match super::answer(sent, "WeChat").await {
        super::Answer::Got(status, v) if (200..300).contains(&status) => v,
        // WeChat answers every call with 200: anything else came from between us, and
        // whether the call was carried out is not known.
        super::Answer::Got(status, v) => {
            return Err(WxError::Lost(format!("HTTP {status}: {v}")));
        }
        super::Answer::NotSent(why) => return Err(WxError::NotSent(why)),
        super::Answer::Lost(why) => return Err(WxError::Lost(why)),
    };
    match v["errcode"].as_i64() {
        None | Some(0) => Ok(v),
        Some(code) => Err(WxError::Code(
            code,
            v["errmsg"].as_str().unwrap_or_default().to_owned(),
        )),
    }
}

async fn post_json(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Result<Value, WxError> {
    let sent = http
        .post(url(base, path, token))
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(TIMEOUT)
        .send()
        .await;
    read(sent).await
}

/// A token and its lifetime in seconds, from `stable_token` (the same token until it nears its
/// end, unless `force`).
pub async fn stable_token(
    http: &reqwest::Client,
    base: &str,
    app_id: &str,
    secret: &str,
    force: bool,
) -> Result<(String, i64), WxError> {
    let body = json!({"grant_type": "client_credential", "appid": app_id, "secret": secret,
                      "force_refresh": force});
    let v = post_json(http, base, "/cgi-bin/stable_token", None, body).await?;
    let token = v["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| WxError::Code(-1, "no access_token in the answer".into()))?;
    Ok((token.to_owned(), v["expires_in"].as_i64().unwrap_or(7200)))
}

async fn upload(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    token: &str,
    file: (&str, &str, Vec<u8>),
) -> Result<Value, WxError> {
    let (name, content_type, bytes) = file;
    let data = futures_util::stream::once(async move { Ok(bytes::Bytes::from(bytes)) });
    let (ct, body) = crate::social::media::multipart(
        &[],
        "media",
        name,
        content_type,
        futures_util::StreamExt::boxed(data),
    );
    let sent = http
        .post(url(base, path, Some(token)))
        .header("content-type", ct)
        .body(body)
        .timeout(TIMEOUT)
        .send()
        .await;
    read(sent).await
}

/// Uploads an image for an article's body: its URL at WeChat.
pub async fn upload_image(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    file: (&str, &str, Vec<u8>),
) -> Result<String, WxError> {
    let v = upload(http, base, "/cgi-bin/media/uploadimg", token, file).await?;
    v["url"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| WxError::Code(-1, "no url in the answer".into()))
}

/// Adds an image as permanent material (an article's cover): its media id.
pub async fn add_cover(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    file: (&str, &str, Vec<u8>),
) -> Result<String, WxError> {
    let path = "/cgi-bin/material/add_material?type=image";
    let v = upload(http, base, path, token, file).await?;
    v["media_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| WxError::Code(-1, "no media_id in the answer".into()))
}

/// One article of a draft.
#[derive(Debug, Clone)]
pub struct Article<'a> {
    pub title: &'a str,
    pub digest: &'a str,
    pub content: &'a str,
    pub thumb_media_id: &'a str,
}

/// Saves a draft of one article: its media id.
pub async fn add_draft(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    a: &Article<'_>,
) -> Result<String, WxError> {
    let body = json!({"articles": [{
        "title": a.title, "digest": a.digest, "content": a.content,
        "thumb_media_id": a.thumb_media_id, "need_open_comment": 0, "only_fans_can_comment": 0,
    }]});
    let v = post_json(http, base, "/cgi-bin/draft/add", Some(token), body).await?;
    v["media_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| WxError::Code(-1, "no media_id in the answer".into()))
}

/// Submits a saved draft for publishing: its publish id (the task was accepted, no more).
pub async fn submit(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    media_id: &str,
) -> Result<String, WxError> {
    let v = post_json(
        http,
        base,
        "/cgi-bin/freepublish/submit",
        Some(token),
        json!({"media_id": media_id}),
    )
    .await?;
    match &v["publish_id"] {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(WxError::Lost("the answer has no publish_id".into())),
    }
}

/// Where a publish task stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Publishing,
    Published { url: String, article_id: String },
    Failed(String),
}

/// What `publish_status` 2 to 6 mean.
fn failure(status: i64, fail_idx: &Value) -> String {
    let what = match status {
        2 => "the originality declaration failed (2)",
        3 => "publishing failed (3; WeChat gives no reason)",
        4 => "the platform's review rejected it (4)",
        5 => "it was deleted by the user after publishing (5)",
        6 => "it was banned by the system after publishing (6)",
        _ => "publishing ended with an unknown status",
    };
    match fail_idx.as_array().filter(|a| !a.is_empty()) {
        Some(idx) => format!("{what}; failed articles: {}", Value::Array(idx.clone())),
        None => what.to_owned(),
    }
}

/// Asks how publish task `publish_id` stands.
pub async fn publish_status(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    publish_id: &str,
) -> Result<Status, WxError> {
    let id: Value = publish_id
        .parse::<i64>()
        .map_or_else(|_| json!(publish_id), |n| json!(n));
    let v = post_json(
        http,
        base,
        "/cgi-bin/freepublish/get",
        Some(token),
        json!({"publish_id": id}),
    )
    .await?;
    Ok(match v["publish_status"].as_i64() {
        Some(0) => Status::Published {
            url: v["article_detail"]["item"][0]["article_url"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            article_id: v["article_id"].as_str().unwrap_or_default().to_owned(),
        },
        Some(1) | None => Status::Publishing,
        Some(n) => Status::Failed(failure(n, &v["fail_idx"])),
    })
}
