//! Video tasks at a provider: create a task, poll its status, fetch the result. Two wire formats,
//! on the channel's base URL.
//!
//! The `video` provider, a task-style API as most video vendors and aggregators offer one:
//!
//! - `POST {base}/tasks` `{"model", "prompt", "duration", "aspect_ratio", "size"}` →
//!   `{"task_id"}` (also read: `id`, `data.task_id`)
//! - `GET {base}/tasks/{task_id}` → `{"status", "progress", "video_url", "duration", "error"}`
//!   where `status` is `queued`/`pending`, `running`/`processing`/`in_progress`,
//!   `succeeded`/`completed`/`success` or `failed`/`error`/`cancelled`/`expired` (also read
//!   inside `data`, and `output.video_url`)
//! - `GET {video_url}` → the file
//!
//! The `openai` provider, OpenAI's own Videos API (Sora), as its SDK speaks it:
//!
//! - `POST {base}/videos`, a multipart form `model`, `prompt`, `seconds` (text), `size` → a
//!   video object (`id`, `status` queued/in_progress/completed/failed, `progress`)
//! - `GET {base}/videos/{id}` → the video object (`seconds`, `error.message`)
//! - `GET {base}/videos/{id}/content` → the file (with the channel's credential)
//!
//! The `demo` provider answers the same questions locally: its tasks finish at once.

use super::{Channel, Provider, UpstreamError, UpstreamResponse};
use serde_json::{Value, json};
use std::time::Duration;

/// What a task is doing, as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    Queued,
    Running {
        progress: i64,
    },
    /// Finished: where the file is and how many seconds it has (if the provider says).
    Succeeded {
        url: Option<String>,
        seconds: Option<i64>,
    },
    Failed {
        error: String,
    },
}

/// What a task is created from.
pub struct NewTask<'a> {
    pub model: &'a str,
    pub prompt: &'a str,
    pub seconds: i64,
    pub size: Option<&'a str>,
    pub aspect_ratio: Option<&'a str>,
}

fn request(
    http: &reqwest::Client,
    channel: &Channel,
    method: reqwest::Method,
    url: String,
) -> reqwest::RequestBuilder {
    let mut r = http.request(method, url);
    if !channel.api_key.is_empty() {
        r = r.bearer_auth(channel.api_key.expose());
    }
    r
}

/// Where `channel`'s tasks live (`/tasks` or OpenAI's `/videos`), or one of them.
fn task_url(channel: &Channel, task_id: Option<&str>) -> String {
    let collection = match channel.provider {
        Provider::OpenAi => "videos",
        _ => "tasks",
    };
    match task_id {
        Some(id) => format!("{}/{collection}/{id}", channel.base_url),
        None => format!("{}/{collection}", channel.base_url),
    }
}

/// OpenAI's `size` for an aspect ratio, when only that is given.
fn openai_size(t: &NewTask<'_>) -> Option<&'static str> {
    match t.aspect_ratio? {
        "16:9" => Some("1280x720"),
        "9:16" => Some("720x1280"),
        _ => None,
    }
}

/// The body of a create call for `provider`, with its content type: JSON for task APIs, a
/// multipart form for OpenAI's.
pub fn create_body(provider: Provider, t: &NewTask<'_>) -> (String, Vec<u8>) {
    if provider == Provider::OpenAi {
        let seconds = t.seconds.to_string();
        let size = t.size.or_else(|| openai_size(t));
        let fields = [
            ("model", Some(t.model)),
            ("prompt", Some(t.prompt)),
            ("seconds", Some(seconds.as_str())),
            ("size", size),
        ];
        let boundary = format!("tollgate-{:032x}", rand::random::<u128>());
        let mut body = String::new();
        for (name, value) in fields {
            if let Some(value) = value {
                body.push_str(&format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                ));
            }
        }
        body.push_str(&format!("--{boundary}--\r\n"));
        return (
            format!("multipart/form-data; boundary={boundary}"),
            body.into_bytes(),
        );
    }
    let mut body = json!({"model": t.model, "prompt": t.prompt, "duration": t.seconds});
    if let Some(a) = t.aspect_ratio {
        body["aspect_ratio"] = json!(a);
    }
    if let Some(s) = t.size {
        body["size"] = json!(s);
    }
    ("application/json".into(), body.to_string().into_bytes())
}

/// Sends a create call (`body` from [`create_body`]).
pub async fn create(
    http: &reqwest::Client,
    channel: &Channel,
    (content_type, body): (String, Vec<u8>),
    timeout: Duration,
) -> Result<UpstreamResponse, UpstreamError> {
    let r = request(
        http,
        channel,
        reqwest::Method::POST,
        task_url(channel, None),
    )
    .header(reqwest::header::CONTENT_TYPE, content_type)
    .body(body);
    Ok(UpstreamResponse::from_reqwest(
        super::send(r, timeout).await?,
    ))
}

/// The provider's task id in a create answer.
pub fn task_id(answer: &Value) -> Option<String> {
    [
        &answer["task_id"],
        &answer["id"],
        &answer["data"]["task_id"],
        &answer["data"]["id"],
    ]
    .into_iter()
    .find_map(|v| match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// Reads a status answer.
pub fn parse_state(answer: &Value) -> Result<TaskState, String> {
    let a = if answer["data"].is_object() {
        &answer["data"]
    } else {
        answer
    };
    let status = a["status"]
        .as_str()
        .or_else(|| a["task_status"].as_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let progress = a["progress"].as_i64().unwrap_or(0).clamp(0, 100);
    match status.as_str() {
        "queued" | "pending" | "submitted" => Ok(TaskState::Queued),
        "running" | "processing" | "in_progress" => Ok(TaskState::Running { progress }),
        "succeeded" | "completed" | "success" | "succeed" => Ok(TaskState::Succeeded {
            url: [&a["video_url"], &a["url"], &a["output"]["video_url"]]
                .into_iter()
                .find_map(|v| v.as_str().map(str::to_owned)),
            // OpenAI reports `seconds` as text ("8").
            seconds: [&a["duration"], &a["seconds"]].into_iter().find_map(|v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            }),
        }),
        "failed" | "error" | "cancelled" | "canceled" | "expired" => Ok(TaskState::Failed {
            error: a["error"]["message"]
                .as_str()
                .or_else(|| a["error"].as_str())
                .or_else(|| a["message"].as_str())
                .unwrap_or("the provider reported the task failed")
                .to_owned(),
        }),
        other => Err(format!("unknown task status {other:?}")),
    }
}

/// Asks the provider how a task is doing; [`read_state`] reads the answer.
pub async fn poll(
    http: &reqwest::Client,
    channel: &Channel,
    task_id: &str,
    timeout: Duration,
) -> Result<UpstreamResponse, UpstreamError> {
    let r = request(
        http,
        channel,
        reqwest::Method::GET,
        task_url(channel, Some(task_id)),
    );
    Ok(UpstreamResponse::from_reqwest(
        super::send(r, timeout).await?,
    ))
}

/// Reads a status answer (`status`, `body`) about the provider's task `task_id`. `Err` is a
/// failure to learn (retried later), not a failed task.
pub fn read_state(
    channel: &Channel,
    task_id: &str,
    status: u16,
    body: &[u8],
) -> Result<TaskState, String> {
    if status == 404 {
        return Ok(TaskState::Failed {
            error: "the provider does not know this task".into(),
        });
    }
    if !(200..300).contains(&status) {
        return Err(format!("status call answered {status}"));
    }
    let answer: Value =
        serde_json::from_slice(body).map_err(|e| format!("status answer is not JSON: {e}"))?;
    match parse_state(&answer)? {
        // OpenAI serves a finished video's file at a path of its own.
        TaskState::Succeeded { url: None, seconds } if channel.provider == Provider::OpenAi => {
            Ok(TaskState::Succeeded {
                url: Some(format!("{}/content", task_url(channel, Some(task_id)))),
                seconds,
            })
        }
        state => Ok(state),
    }
}

/// Starts downloading a finished task's file. The provider's own host gets the channel's
/// credential (`channel`, when it still exists); a CDN link does not need it.
pub async fn fetch(
    http: &reqwest::Client,
    channel: Option<&Channel>,
    url: &str,
    timeout: Duration,
) -> Result<UpstreamResponse, UpstreamError> {
    let mut r = http.get(url);
    if let Some(c) = channel
        && !c.api_key.is_empty()
        && url.starts_with(&c.base_url)
    {
        r = r.bearer_auth(c.api_key.expose());
    }
    Ok(UpstreamResponse::from_reqwest(
        super::send(r, timeout).await?,
    ))
}

/// The answer for a finished task whose provider named no file.
pub fn no_file() -> UpstreamResponse {
    let body = json!({"error": {"message": "the provider reported no file for this video",
        "type": "upstream_error", "code": "no_video_file", "param": null}});
    UpstreamResponse::json(404, body.to_string().into_bytes())
}

/// The demo provider's file: a few bytes standing in for an MP4.
pub const DEMO_VIDEO: &[u8] =
    b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isomTollgate demo video";
