//! Threads (Meta Graph API): OAuth code → a short-lived token → a 60-day token
//! (`th_exchange_token`), refreshed ahead of its end (`th_refresh_token`); a post is a container
//! (`POST /{user}/threads`, harmless until published) then `POST /{user}/threads_publish`; the
//! container's id is stored before the publish call, so a lost answer is settled by reading the
//! container's status (`PUBLISHED`: out; `FINISHED`: safe to publish again). Media go by
//! public URL (Threads fetches them: Tollgate's signed file URLs), one `IMAGE` or `VIDEO`
//! container, or a `CAROUSEL` of item containers, each waited for until `FINISHED`.
//! Spec: <https://developers.facebook.com/docs/threads/posts>.

use crate::config::OAuthApp;
use crate::social::oauth::{self, CALL_TIMEOUT, TokenError, Tokens};
use serde_json::Value;
use std::time::Duration;

/// The Graph root without its version (`https://graph.threads.net`), where the token exchange
/// and refresh live.
fn root(app: &OAuthApp) -> String {
    let base = app.api_base.trim_end_matches('/');
    match base.rsplit_once('/') {
        Some((head, last))
            if last.starts_with('v')
                && last[1..].chars().all(|c| c.is_ascii_digit() || c == '.') =>
        {
            head.to_owned()
        }
        _ => base.to_owned(),
    }
}

/// `url` with `pairs` as its query.
fn with_query(url: &str, pairs: &[(&str, &str)]) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{url}?{query}")
}

fn api(app: &OAuthApp, path: &str) -> String {
    format!("{}{path}", app.api_base.trim_end_matches('/'))
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

fn graph_error(v: &Value, status: u16) -> String {
    v["error"]["message"]
        .as_str()
        .map_or_else(|| format!("status {status}"), str::to_owned)
}

/// The authorize URL (scopes comma-separated; Threads takes no PKCE).
pub fn authorize_url(app: &OAuthApp, state: &str) -> String {
    oauth::authorize_url(app, ",", state, None)
}

/// Code → short-lived token → long-lived (60-day) token.
pub async fn exchange_code(
    http: &reqwest::Client,
    app: &OAuthApp,
    code: &str,
) -> Result<Tokens, TokenError> {
    let form = [
        ("client_id", app.client_id.as_str()),
        ("client_secret", app.client_secret.expose()),
        ("grant_type", "authorization_code"),
        ("redirect_uri", app.redirect_uri.as_str()),
        ("code", code),
    ];
    let short = oauth::token_request(http, &app.token_url, None, &form).await?;
    let url = format!("{}/access_token", root(app));
    let url = with_query(
        &url,
        &[
            ("grant_type", "th_exchange_token"),
            ("client_secret", app.client_secret.expose()),
            ("access_token", short.access_token.as_str()),
        ],
    );
    long_lived(http.get(url)).await
}

async fn long_lived(req: reqwest::RequestBuilder) -> Result<Tokens, TokenError> {
    let (status, v) = call(req).await.map_err(TokenError::Unavailable)?;
    match (status, v["access_token"].as_str()) {
        (200, Some(token)) => Ok(Tokens {
            access_token: token.to_owned(),
            refresh_token: String::new(),
            expires_in_s: v["expires_in"].as_i64(),
            scope: None,
        }),
        (400..=499, _) => Err(TokenError::Refused {
            status,
            error: graph_error(&v, status),
        }),
        _ => Err(TokenError::Unavailable(graph_error(&v, status))),
    }
}

/// Refreshes a long-lived token (it must be at least a day old and not expired): a new 60 days.
pub async fn refresh(
    http: &reqwest::Client,
    app: &OAuthApp,
    token: &str,
) -> Result<Tokens, TokenError> {
    let url = format!("{}/refresh_access_token", root(app));
    let url = with_query(
        &url,
        &[("grant_type", "th_refresh_token"), ("access_token", token)],
    );
    long_lived(http.get(url)).await
}

/// The profile a token belongs to: `(id, username, picture)`.
pub async fn me(
    http: &reqwest::Client,
    app: &OAuthApp,
    token: &str,
) -> Result<(String, String, Option<String>), String> {
    let url = with_query(
        &api(app, "/me"),
        &[
            ("fields", "id,username,threads_profile_picture_url"),
            ("access_token", token),
        ],
    );
    let (status, v) = call(http.get(url)).await?;
    match (status, v["id"].as_str(), v["username"].as_str()) {
        (200, Some(id), Some(name)) => Ok((
            id.to_owned(),
            name.to_owned(),
            v["threads_profile_picture_url"].as_str().map(str::to_owned),
        )),
        _ => Err(format!("me answered {status}: {}", graph_error(&v, status))),
    }
}

/// How a step ended.
#[derive(Debug, Clone)]
pub enum Step {
    Done(String),
    Failed { code: &'static str, reason: String },
    Unauthorized,
    Unknown(String),
}

async fn id_step(sent: Result<reqwest::Response, reqwest::Error>) -> Step {
    let (status, v) = match super::answer(sent, "Threads").await {
        super::Answer::Got(status, v) => (status, v),
        super::Answer::NotSent(reason) => {
            return Step::Failed {
                code: "PLATFORM_UNAVAILABLE",
                reason,
            };
        }
        super::Answer::Lost(why) => return Step::Unknown(why),
    };
    match (status, v["id"].as_str()) {
        (200, Some(id)) => Step::Done(id.to_owned()),
        (401, _) => Step::Unauthorized,
        (400, _) if v["error"]["code"] == 190 => Step::Unauthorized,
        (429, _) => Step::Failed {
            code: "RATE_LIMITED",
            reason: super::limited(format!("Threads' limit: {}", graph_error(&v, status)), &v),
        },
        (400..=499, _) => Step::Failed {
            code: "INVALID_INPUT",
            reason: format!(
                "Threads refused the post ({status}): {}",
                graph_error(&v, status)
            ),
        },
        _ => Step::Unknown(format!(
            "Threads answered {status}: {}",
            graph_error(&v, status)
        )),
    }
}

/// What one container holds: text, an image or a video by public URL, a carousel of item
/// containers; a reply when `reply_to` is set.
#[derive(Debug, Clone, Copy, Default)]
pub struct Container<'a> {
    /// `TEXT`, `IMAGE`, `VIDEO` or `CAROUSEL`.
    pub media_type: &'a str,
    pub text: Option<&'a str>,
    pub image_url: Option<&'a str>,
    pub video_url: Option<&'a str>,
    pub carousel_item: bool,
    /// A carousel's item containers, comma-separated.
    pub children: Option<&'a str>,
    pub reply_to: Option<&'a str>,
    pub reply_control: Option<&'a str>,
}

/// Makes a container: its id. Nothing is public until it is published.
pub async fn create_container(
    http: &reqwest::Client,
    app: &OAuthApp,
    token: &str,
    user: &str,
    c: &Container<'_>,
) -> Step {
    let mut form = vec![("media_type", c.media_type), ("access_token", token)];
    let optional = [
        ("text", c.text),
        ("image_url", c.image_url),
        ("video_url", c.video_url),
        ("children", c.children),
        ("reply_to_id", c.reply_to),
        ("reply_control", c.reply_control),
    ];
    form.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    if c.carousel_item {
        form.push(("is_carousel_item", "true"));
    }
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&form)
        .finish();
    let sent = http
        .post(api(app, &format!("/{user}/threads")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .timeout(CALL_TIMEOUT)
        .send()
        .await;
    id_step(sent).await
}

/// Waits until Threads has fetched and processed a media container (`FINISHED`); a container
/// in `ERROR` or `EXPIRED` is a definite failure (nothing was posted).
pub async fn wait_ready(
    http: &reqwest::Client,
    app: &OAuthApp,
    token: &str,
    container: &str,
) -> Result<(), (&'static str, String)> {
    let mut last = String::new();
    for _ in 0..300 {
        match container_status(http, app, token, container).await {
            Ok((s, _)) if s == "FINISHED" => return Ok(()),
            Ok((s, _)) if s == "IN_PROGRESS" => last = s,
            Ok((s, _)) => {
                return Err((
                    "INVALID_INPUT",
                    format!("Threads could not take the media of container {container}: {s}"),
                ));
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err((
        "PLATFORM_UNAVAILABLE",
        format!("container {container} was not ready in time ({last})"),
    ))
}

/// Publishes a container: the post's media id.
pub async fn publish_container(
    http: &reqwest::Client,
    app: &OAuthApp,
    token: &str,
    user: &str,
    container: &str,
    timeout: Duration,
) -> Step {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("creation_id", container), ("access_token", token)])
        .finish();
    let sent = http
        .post(api(app, &format!("/{user}/threads_publish")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .timeout(timeout)
        .send()
        .await;
    id_step(sent).await
}

/// A container's status (`IN_PROGRESS`, `FINISHED`, `PUBLISHED`, `ERROR`, `EXPIRED`) and, once
/// published, the post's id when the Graph names it.
pub async fn container_status(
    http: &reqwest::Client,
    app: &OAuthApp,
    token: &str,
    container: &str,
) -> Result<(String, Option<String>), String> {
    let url = with_query(
        &api(app, &format!("/{container}")),
        &[
            ("fields", "status,error_message,media_id"),
            ("access_token", token),
        ],
    );
    let (status, v) = call(http.get(url)).await?;
    match (status, v["status"].as_str()) {
        (200, Some(s)) => Ok((s.to_owned(), v["media_id"].as_str().map(str::to_owned))),
        _ => Err(format!("the container's status answered {status}")),
    }
}

/// A post's public URL.
pub fn post_url(username: &str, id: &str) -> String {
    format!("https://www.threads.net/@{username}/post/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_graph_root_drops_its_version() {
        let app = |base: &str| OAuthApp {
            api_base: base.into(),
            authorize_url: String::new(),
            token_url: String::new(),
            client_id: String::new(),
            client_secret: Default::default(),
            redirect_uri: String::new(),
            scopes: String::new(),
            version: String::new(),
        };
        assert_eq!(
            root(&app("https://graph.threads.net/v1.0")),
            "https://graph.threads.net"
        );
        assert_eq!(
            root(&app("http://127.0.0.1:9/graph/v1.0/")),
            "http://127.0.0.1:9/graph"
        );
        assert_eq!(root(&app("http://127.0.0.1:9")), "http://127.0.0.1:9");
    }
}
