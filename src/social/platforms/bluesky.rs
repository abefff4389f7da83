//! Bluesky (AT Protocol XRPC on the user's PDS): `com.atproto.server.createSession` once with
//! the handle and an app password, then `refreshSession` with the rotating `refreshJwt` (never a
//! login per post: the login limits are strict); posts are `app.bsky.feed.post` records made
//! with `com.atproto.repo.createRecord` under a record key chosen before the call, so an
//! outcome lost in transit is settled by reading that key back (`getRecord`); images go up
//! first as blobs (`uploadBlob`) and are embedded (`app.bsky.embed.images`); a video goes
//! through the video service (`app.bsky.video.uploadVideo`) and is embedded as
//! `app.bsky.embed.video`.
//! Lexicons: <https://github.com/bluesky-social/atproto/tree/main/lexicons>.

use crate::social::media::{self, UploadError};
use crate::social::oauth::{CALL_TIMEOUT, TokenError, Tokens};
use crate::social::text;
use base64::Engine;
use serde_json::{Value, json};
use std::time::Duration;

/// A logged-in session.
#[derive(Debug, Clone)]
pub struct Session {
    pub access_jwt: String,
    pub refresh_jwt: String,
    pub handle: String,
    pub did: String,
}

impl Session {
    /// As stored tokens (the access token's lifetime read from its `exp`).
    pub fn tokens(&self) -> Tokens {
        Tokens {
            access_token: self.access_jwt.clone(),
            refresh_token: self.refresh_jwt.clone(),
            expires_in_s: jwt_exp(&self.access_jwt).map(|exp| exp - crate::clock::now_ms() / 1000),
            scope: None,
        }
    }
}

/// A JWT's `exp` claim (unix seconds), read without checking the signature (it is the PDS's
/// own token; only its lifetime is wanted).
pub fn jwt_exp(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?["exp"].as_i64()
}

fn xrpc(service: &str, method: &str) -> String {
    format!("{}/xrpc/{method}", service.trim_end_matches('/'))
}

/// An XRPC error body's `error` name and message.
fn error_of(v: &Value, status: u16) -> (String, String) {
    (
        v["error"].as_str().unwrap_or("Error").to_owned(),
        v["message"]
            .as_str()
            .map_or_else(|| format!("status {status}"), str::to_owned),
    )
}

fn session_of(v: &Value) -> Option<Session> {
    Some(Session {
        access_jwt: v["accessJwt"].as_str()?.to_owned(),
        refresh_jwt: v["refreshJwt"].as_str()?.to_owned(),
        handle: v["handle"].as_str()?.to_owned(),
        did: v["did"].as_str()?.to_owned(),
    })
}

async fn call(req: reqwest::RequestBuilder) -> Result<(u16, Value), reqwest::Error> {
    let resp = req.timeout(CALL_TIMEOUT).send().await?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// Why a login failed.
#[derive(Debug, Clone)]
pub enum LoginError {
    /// The handle or app password is wrong, or the account cannot log in: the user's to fix.
    Refused(String),
    Unavailable(String),
}

/// `com.atproto.server.createSession`.
pub async fn create_session(
    http: &reqwest::Client,
    service: &str,
    identifier: &str,
    password: &str,
) -> Result<Session, LoginError> {
    let body = json!({"identifier": identifier, "password": password});
    let req = http
        .post(xrpc(service, "com.atproto.server.createSession"))
        .header("content-type", "application/json")
        .body(body.to_string());
    let (status, v) = call(req)
        .await
        .map_err(|e| LoginError::Unavailable(e.to_string()))?;
    match status {
        200 => session_of(&v)
            .ok_or_else(|| LoginError::Unavailable("the session answer is incomplete".into())),
        400 | 401 => {
            let (error, message) = error_of(&v, status);
            let hint = if error == "AuthFactorTokenRequired" {
                " (the account has two-factor sign-in: use an app password)"
            } else {
                ""
            };
            Err(LoginError::Refused(format!("{error}: {message}{hint}")))
        }
        _ => Err(LoginError::Unavailable(format!(
            "createSession answered {status}"
        ))),
    }
}

/// `com.atproto.server.refreshSession` (the refresh token rotates).
pub async fn refresh_session(
    http: &reqwest::Client,
    service: &str,
    refresh_jwt: &str,
) -> Result<Tokens, TokenError> {
    let req = http
        .post(xrpc(service, "com.atproto.server.refreshSession"))
        .bearer_auth(refresh_jwt);
    let (status, v) = call(req)
        .await
        .map_err(|e| TokenError::Unavailable(e.to_string()))?;
    match status {
        200 => session_of(&v)
            .map(|s| s.tokens())
            .ok_or_else(|| TokenError::Unavailable("the refresh answer is incomplete".into())),
        400 | 401 => {
            let (error, message) = error_of(&v, status);
            Err(TokenError::Refused {
                status,
                error: format!("{error}: {message}"),
            })
        }
        _ => Err(TokenError::Unavailable(format!(
            "refreshSession answered {status}"
        ))),
    }
}

/// A record key: a TID (13 characters of sortable base32 of the microsecond time and a random
/// clock id), chosen before the record is created.
pub fn new_tid() -> String {
    const ALPHABET: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";
    let micros = (crate::clock::now_ms().max(0) as u64) * 1000 + rand::random::<u64>() % 1000;
    let n = ((micros & ((1 << 53) - 1)) << 10) | (rand::random::<u64>() & 0x3FF);
    (0..13)
        .rev()
        .map(|k| ALPHABET[((n >> (k * 5)) & 31) as usize] as char)
        .collect()
}

/// A strong reference: a record's URI and CID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref {
    pub uri: String,
    pub cid: String,
}

/// Ends a session at the PDS (`com.atproto.server.deleteSession` with its refresh token; best
/// effort: disconnecting does not wait on it).
pub async fn delete_session(http: &reqwest::Client, service: &str, refresh_jwt: &str) {
    let sent = call(
        http.post(xrpc(service, "com.atproto.server.deleteSession"))
            .bearer_auth(refresh_jwt),
    )
    .await;
    if let Err(e) = sent {
        tracing::debug!(error = %e, "ending a Bluesky session");
    }
}

/// `com.atproto.repo.uploadBlob` of one image: the blob reference a record embeds (unused
/// blobs are dropped by the PDS after a while, so an upload posts nothing).
pub async fn upload_blob(
    http: &reqwest::Client,
    service: &str,
    access: &str,
    content_type: &str,
    data: Vec<u8>,
) -> Result<Value, UploadError> {
    let sent = call(
        http.post(xrpc(service, "com.atproto.repo.uploadBlob"))
            .bearer_auth(access)
            .header("content-type", content_type)
            .body(data),
    )
    .await;
    let (status, v) = sent.map_err(|e| {
        UploadError::Failed("PLATFORM_UNAVAILABLE", format!("Bluesky uploadBlob: {e}"))
    })?;
    let (error, message) = error_of(&v, status);
    match status {
        200 if v["blob"].is_object() => Ok(v["blob"].clone()),
        400 if error == "ExpiredToken" || error == "InvalidToken" => Err(UploadError::Unauthorized),
        _ => Err(media::refused(
            status,
            "Bluesky",
            &format!("{error}: {message}"),
        )),
    }
}

/// Uploads a video through Bluesky's video service: a service token from the PDS
/// (`getServiceAuth`, for `uploadBlob` at the PDS's `did:web`), `app.bsky.video.uploadVideo`
/// with the bytes streamed, then `getJobStatus` until the job is done: the video's blob to
/// embed. A video is not a post.
pub async fn upload_video(
    http: &reqwest::Client,
    service: &str,
    video_service: &str,
    access: &str,
    did: &str,
    file: &crate::db::files::FileMeta,
    data: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
) -> Result<Value, UploadError> {
    let unavailable =
        |e: String| UploadError::Failed("PLATFORM_UNAVAILABLE", format!("Bluesky video: {e}"));
    let host = url::Url::parse(service)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .ok_or_else(|| unavailable(format!("{service} has no host")))?;
    let exp = (crate::clock::now_ms() / 1000 + 1800).to_string();
    let auth_url = with_query(
        &xrpc(service, "com.atproto.server.getServiceAuth"),
        &[
            ("aud", &format!("did:web:{host}")),
            ("lxm", "com.atproto.repo.uploadBlob"),
            ("exp", &exp),
        ],
    );
    let (status, v) = call(http.get(auth_url).bearer_auth(access))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let (error, message) = error_of(&v, status);
    let service_token = match (status, v["token"].as_str()) {
        (200, Some(t)) => t.to_owned(),
        (400, _) if error == "ExpiredToken" || error == "InvalidToken" => {
            return Err(UploadError::Unauthorized);
        }
        _ => {
            return Err(media::refused(
                status,
                "Bluesky",
                &format!("{error}: {message}"),
            ));
        }
    };
    let upload_url = with_query(
        &xrpc(video_service, "app.bsky.video.uploadVideo"),
        &[("did", did), ("name", &format!("{}.mp4", file.id))],
    );
    let resp = http
        .post(upload_url)
        .bearer_auth(&service_token)
        .header("content-type", &file.content_type)
        .header("content-length", file.size_bytes.to_string())
        .body(reqwest::Body::wrap_stream(data))
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| unavailable(e.to_string()))?;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // A video the service already has answers 409 with its job.
    let job = v["jobStatus"]["jobId"].as_str().or(v["jobId"].as_str());
    let Some(job) = job
        .filter(|_| status == 200 || status == 409)
        .map(str::to_owned)
    else {
        let (error, message) = error_of(&v, status);
        return Err(media::refused(
            status,
            "Bluesky's video service",
            &format!("{error}: {message}"),
        ));
    };
    for _ in 0..600 {
        let url = with_query(
            &xrpc(video_service, "app.bsky.video.getJobStatus"),
            &[("jobId", &job)],
        );
        let (status, v) = call(http.get(url).bearer_auth(access))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let s = &v["jobStatus"];
        match (status, s["state"].as_str()) {
            (200, Some("JOB_STATE_COMPLETED")) if s["blob"].is_object() => {
                return Ok(s["blob"].clone());
            }
            (200, Some("JOB_STATE_FAILED")) => {
                let why = s["message"]
                    .as_str()
                    .or(s["error"].as_str())
                    .unwrap_or("no detail");
                return Err(UploadError::Failed(
                    "INVALID_INPUT",
                    format!("Bluesky could not process the video: {why}"),
                ));
            }
            (200, _) => {}
            _ => {
                return Err(media::refused(
                    status,
                    "Bluesky's video service",
                    "getJobStatus",
                ));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(unavailable(format!("job {job} was still processing")))
}

fn with_query(url: &str, pairs: &[(&str, &str)]) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{url}?{query}")
}

/// An `app.bsky.feed.post` record: text with link facets (UTF-8 byte offsets), languages, the
/// thread's root and parent when it is a reply, and its media (blob references) embedded: a
/// video blob as `app.bsky.embed.video`, images as `app.bsky.embed.images`.
pub fn post_record(
    text_: &str,
    langs: &[String],
    reply: Option<(&Ref, &Ref)>,
    blobs: &[Value],
    created_at: &str,
) -> Value {
    let facets: Vec<Value> = text::find_urls(text_)
        .iter()
        .map(|u| {
            let link = &text_[u.start..u.end];
            let uri = if link.to_ascii_lowercase().starts_with("http") {
                link.to_owned()
            } else {
                format!("https://{link}")
            };
            json!({"index": {"byteStart": u.start, "byteEnd": u.end},
                   "features": [{"$type": "app.bsky.richtext.facet#link", "uri": uri}]})
        })
        .collect();
    let mut record = json!({
        "$type": "app.bsky.feed.post",
        "text": text_,
        "createdAt": created_at,
        "langs": langs,
    });
    if !facets.is_empty() {
        record["facets"] = Value::Array(facets);
    }
    if let Some((root, parent)) = reply {
        record["reply"] = json!({"root": {"uri": root.uri, "cid": root.cid},
                                 "parent": {"uri": parent.uri, "cid": parent.cid}});
    }
    match blobs {
        [] => {}
        [video]
            if video["mimeType"]
                .as_str()
                .is_some_and(|t| t.starts_with("video/")) =>
        {
            record["embed"] = json!({"$type": "app.bsky.embed.video", "video": video, "alt": ""});
        }
        images => {
            let images: Vec<Value> = images
                .iter()
                .map(|blob| json!({"image": blob, "alt": ""}))
                .collect();
            record["embed"] = json!({"$type": "app.bsky.embed.images", "images": images});
        }
    }
    record
}

/// How one createRecord ended.
#[derive(Debug, Clone)]
pub enum Created {
    Posted(Ref),
    Failed {
        code: &'static str,
        reason: String,
    },
    /// The access token expired or was refused (nothing was written): refresh and try again.
    Unauthorized,
    Unknown(String),
}

/// `com.atproto.repo.createRecord` of a post under record key `rkey`.
pub async fn create_post(
    http: &reqwest::Client,
    service: &str,
    access: &str,
    did: &str,
    rkey: &str,
    record: &Value,
    timeout: Duration,
) -> Created {
    let body =
        json!({"repo": did, "collection": "app.bsky.feed.post", "rkey": rkey, "record": record});
    let sent = http
        .post(xrpc(service, "com.atproto.repo.createRecord"))
        .bearer_auth(access)
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(timeout)
        .send()
        .await;
    let (status, v) = match super::answer(sent, "Bluesky").await {
        super::Answer::Got(status, v) => (status, v),
        super::Answer::NotSent(reason) => {
            return Created::Failed {
                code: "PLATFORM_UNAVAILABLE",
                reason,
            };
        }
        super::Answer::Lost(why) => return Created::Unknown(why),
    };
    let (error, message) = error_of(&v, status);
    match status {
        200 => match (v["uri"].as_str(), v["cid"].as_str()) {
            (Some(uri), Some(cid)) => Created::Posted(Ref {
                uri: uri.to_owned(),
                cid: cid.to_owned(),
            }),
            _ => Created::Unknown("Bluesky answered 200 without the record's uri and cid".into()),
        },
        401 => Created::Unauthorized,
        400 if error == "ExpiredToken" || error == "InvalidToken" => Created::Unauthorized,
        429 => Created::Failed {
            code: "RATE_LIMITED",
            reason: super::limited(format!("Bluesky's rate limit: {message}"), &v),
        },
        400..=499 => Created::Failed {
            code: "INVALID_INPUT",
            reason: format!("Bluesky refused the post ({error}): {message}"),
        },
        _ => Created::Unknown(format!("Bluesky answered {status} ({error})")),
    }
}

/// `com.atproto.repo.getRecord` of the post under `rkey`: `Ok(None)` when there is none.
pub async fn get_post(
    http: &reqwest::Client,
    service: &str,
    access: &str,
    did: &str,
    rkey: &str,
) -> Result<Option<Ref>, String> {
    let url = format!(
        "{}?repo={did}&collection=app.bsky.feed.post&rkey={rkey}",
        xrpc(service, "com.atproto.repo.getRecord")
    );
    let (status, v) = call(http.get(url).bearer_auth(access))
        .await
        .map_err(|e| e.to_string())?;
    match (status, v["uri"].as_str(), v["cid"].as_str()) {
        (200, Some(uri), Some(cid)) => Ok(Some(Ref {
            uri: uri.to_owned(),
            cid: cid.to_owned(),
        })),
        (400, _, _) if v["error"] == "RecordNotFound" => Ok(None),
        _ => Err(format!("getRecord answered {status}")),
    }
}

/// A post's public URL (`at://did/app.bsky.feed.post/rkey` → the web page).
pub fn post_url(handle: &str, uri: &str) -> String {
    let rkey = uri.rsplit('/').next().unwrap_or_default();
    format!("https://bsky.app/profile/{handle}/post/{rkey}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tids_are_13_sortable_base32_characters() {
        let a = new_tid();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_tid();
        assert_eq!(a.len(), 13);
        assert!(
            a.chars()
                .all(|c| "234567abcdefghijklmnopqrstuvwxyz".contains(c))
        );
        assert!(b > a, "{a} {b}");
    }

    #[test]
    fn links_get_facets_at_utf8_byte_offsets() {
        let r = post_record(
            "看 https://example.com 吧",
            &["zh".into()],
            None,
            &[],
            "2026-01-01T00:00:00Z",
        );
        let f = &r["facets"][0];
        assert_eq!(f["index"]["byteStart"], 4);
        assert_eq!(f["index"]["byteEnd"], 4 + 19);
        assert_eq!(f["features"][0]["uri"], "https://example.com");
        let tid = "3kabc".to_owned();
        let root = Ref {
            uri: format!("at://did:plc:x/app.bsky.feed.post/{tid}"),
            cid: "c1".into(),
        };
        let blob =
            json!({"$type": "blob", "ref": {"$link": "bafk"}, "mimeType": "image/png", "size": 3});
        let reply = post_record(
            "re",
            &[],
            Some((&root, &root)),
            std::slice::from_ref(&blob),
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(reply["reply"]["parent"]["cid"], "c1");
        assert_eq!(reply["embed"]["$type"], "app.bsky.embed.images");
        assert_eq!(reply["embed"]["images"][0]["image"], blob);
        assert_eq!(reply["embed"]["images"][0]["alt"], "");
        assert_eq!(
            post_url("me.bsky.social", &root.uri),
            "https://bsky.app/profile/me.bsky.social/post/3kabc"
        );
    }

    #[test]
    fn a_jwt_exp_is_read() {
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"exp":1800000000}"#);
        assert_eq!(jwt_exp(&format!("h.{payload}.s")), Some(1_800_000_000));
        assert_eq!(jwt_exp("nope"), None);
    }
}
