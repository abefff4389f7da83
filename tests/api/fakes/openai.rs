//! A fake upstream speaking OpenAI's chat completions API over real HTTP: JSON or SSE as the
//! request asks, scripted per test, counting calls, cancellations and bodies.

use super::serve_fake;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the fake upstream answers.
#[derive(Clone, Debug)]
pub enum Script {
    /// These exact bytes, with this status and content type.
    Raw {
        status: u16,
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// An SSE body given as whole events; the usage-only event (`"choices":[]`) is sent only
    /// when the request asked for it, as OpenAI does.
    Sse {
        events: Vec<String>,
        event_delay_ms: u64,
        stall_after: Option<usize>,
    },
    /// These SSE events, then the connection breaks (no end of the chunked body).
    SseThenReset { events: Vec<String> },
    /// A chat completion built from pieces of text, JSON or SSE as the request asks.
    Chat {
        pieces: Vec<String>,
        usage: Option<Value>,
        stall_after: Option<usize>,
    },
}

#[derive(Default)]
pub struct FakeState {
    pub calls: AtomicUsize,
    /// Streams whose connection was closed before the fake finished sending.
    pub cancelled: AtomicUsize,
    pub bodies: Mutex<Vec<Bytes>>,
    pub auth: Mutex<Vec<String>>,
    script: Mutex<Option<Script>>,
    headers_delay_ms: AtomicUsize,
    /// Requests waiting out the headers delay now, and the most there ever were at once.
    in_delay: AtomicUsize,
    pub max_in_delay: AtomicUsize,
}

/// A local server speaking OpenAI's chat completions API.
pub struct FakeUpstream {
    /// The upstream's `/v1` root.
    pub base_url: String,
    pub state: Arc<FakeState>,
}

/// Counts a stream as cancelled if it is dropped before its end.
struct DropGuard {
    state: Arc<FakeState>,
    finished: bool,
}

impl DropGuard {
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.state.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl FakeUpstream {
    pub async fn start(script: Script) -> FakeUpstream {
        let state = Arc::new(FakeState::default());
        *state.script.lock().expect("lock") = Some(script);
        let app = Router::new()
            .route("/v1/chat/completions", post(fake_chat))
            .route("/v1/completions", post(fake_chat))
            .route("/v1/embeddings", post(fake_chat))
            .route("/v1/images/generations", post(fake_chat))
            .route("/v1/messages", post(fake_chat))
            .with_state(Arc::clone(&state));
        FakeUpstream {
            base_url: serve_fake(app).await,
            state,
        }
    }

    pub fn set_script(&self, script: Script) {
        *self.state.script.lock().expect("lock") = Some(script);
    }

    pub fn set_headers_delay(&self, ms: usize) {
        self.state.headers_delay_ms.store(ms, Ordering::SeqCst);
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    pub fn cancelled(&self) -> usize {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    pub fn last_body(&self) -> Bytes {
        self.state
            .bodies
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("a request")
    }
}

/// The text of the fixture files.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

/// The events of an SSE fixture, each with its terminator.
pub fn fixture_events(name: &str) -> Vec<String> {
    let text = String::from_utf8(fixture(name)).expect("utf8");
    text.split_inclusive("\n\n").map(str::to_owned).collect()
}

fn sse_body(
    state: Arc<FakeState>,
    events: Vec<String>,
    delay_ms: u64,
    stall_after: Option<usize>,
) -> Body {
    let guard = DropGuard {
        state,
        finished: false,
    };
    let stream = futures_util::stream::unfold((guard, 0usize), move |(mut guard, i)| {
        let events = events.clone();
        async move {
            if stall_after == Some(i) {
                std::future::pending::<()>().await;
            }
            if i >= events.len() {
                guard.finish();
                return None;
            }
            if delay_ms > 0 && i > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            Some((
                Ok::<Bytes, std::convert::Infallible>(Bytes::from(events[i].clone())),
                (guard, i + 1),
            ))
        }
    });
    Body::from_stream(stream)
}

async fn fake_chat(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.calls.fetch_add(1, Ordering::SeqCst);
    if let Some(a) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        state.auth.lock().expect("lock").push(a.to_owned());
    }
    if let Some(a) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        let version = headers
            .get("anthropic-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        state
            .auth
            .lock()
            .expect("lock")
            .push(format!("x-api-key {a} version {version}"));
    }
    state.bodies.lock().expect("lock").push(body.clone());
    let delay = state.headers_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        // Dropped (counted as cancelled) if the caller hangs up while we wait.
        let mut guard = DropGuard {
            state: Arc::clone(&state),
            finished: false,
        };
        let now = state.in_delay.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_delay.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
        state.in_delay.fetch_sub(1, Ordering::SeqCst);
        guard.finish();
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let wants_usage = request["stream_options"]["include_usage"] == true;
    let model = request["model"].as_str().unwrap_or("unknown").to_owned();
    let script = state.script.lock().expect("lock").clone().expect("script");
    let sse = |body: Body| {
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    };
    match script {
        Script::Raw {
            status,
            content_type,
            body,
        } => Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        Script::Sse {
            events,
            event_delay_ms,
            stall_after,
        } => {
            let events: Vec<String> = events
                .into_iter()
                .filter(|e| wants_usage || !e.contains("\"choices\":[]"))
                .collect();
            sse(sse_body(
                Arc::clone(&state),
                events,
                event_delay_ms,
                stall_after,
            ))
        }
        Script::SseThenReset { events } => {
            let items: Vec<Result<Bytes, std::io::Error>> = events
                .into_iter()
                .map(|e| Ok(Bytes::from(e)))
                .chain(std::iter::once(Err(std::io::Error::other(
                    "connection reset",
                ))))
                .collect();
            // Each piece leaves on its own, so the events reach the gateway before the break.
            let paced = futures_util::stream::iter(items).then(|item| async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                item
            });
            sse(Body::from_stream(paced))
        }
        Script::Chat {
            pieces,
            usage,
            stall_after,
        } => {
            if request["stream"] == true {
                let mut events: Vec<String> = pieces
                    .iter()
                    .map(|p| {
                        let chunk = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
                                           "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}]});
                        format!("data: {chunk}\n\n")
                    })
                    .collect();
                let stop = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
                                  "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
                events.push(format!("data: {stop}\n\n"));
                if let (true, Some(u)) = (wants_usage, &usage) {
                    let chunk = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
                                       "choices": [], "usage": u});
                    events.push(format!("data: {chunk}\n\n"));
                }
                events.push("data: [DONE]\n\n".into());
                sse(sse_body(Arc::clone(&state), events, 0, stall_after))
            } else {
                let mut resp = json!({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
                                      "choices": [{"index": 0, "message": {"role": "assistant", "content": pieces.concat()},
                                                   "finish_reason": "stop"}]});
                if let Some(u) = usage {
                    resp["usage"] = u;
                }
                axum::Json(resp).into_response()
            }
        }
    }
}

/// A chat script with a fixed usage block.
pub fn chat_script(pieces: &[&str], prompt: i64, completion: i64, cached: i64) -> Script {
    Script::Chat {
        pieces: pieces.iter().map(|s| s.to_string()).collect(),
        usage: Some(json!({
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": 0}
        })),
        stall_after: None,
    }
}
