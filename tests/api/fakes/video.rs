//! Fakes of video providers over real HTTP: a task-style API (`/tasks`, scripted by a [`Plan`])
//! and OpenAI's own Videos API (multipart create, video objects, content behind the key).

use super::serve_fake;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What the fake provider answers to status polls: `running` this many times, then the end.
#[derive(Clone)]
pub struct Plan {
    pub running_polls: usize,
    /// `Some(seconds)`: succeeds with a file of that length; `None`: fails.
    pub delivers: Option<i64>,
}

#[derive(Default)]
pub struct Fake {
    pub plan: Mutex<Option<Plan>>,
    pub created: AtomicUsize,
    pub polls: AtomicUsize,
    pub bodies: Mutex<Vec<Value>>,
    pub base: Mutex<String>,
    /// File downloads to answer 503 before serving the file.
    pub file_failures: AtomicUsize,
    pub file_fetches: AtomicUsize,
}

pub const FILE: &[u8] = b"\x00\x00\x00\x18ftypmp42 fake video bytes";

pub async fn create(State(f): State<Arc<Fake>>, Json(body): Json<Value>) -> Json<Value> {
    let n = f.created.fetch_add(1, Ordering::SeqCst) + 1;
    f.bodies.lock().expect("lock").push(body);
    Json(json!({"task_id": format!("t{n}"), "status": "queued"}))
}

pub async fn status(State(f): State<Arc<Fake>>, Path(id): Path<String>) -> Json<Value> {
    let polls = f.polls.fetch_add(1, Ordering::SeqCst);
    let plan = f.plan.lock().expect("lock").clone().expect("plan");
    if polls < plan.running_polls {
        return Json(json!({"task_id": id, "status": "running", "progress": 40}));
    }
    match plan.delivers {
        Some(seconds) => {
            let url = format!("{}/files/{id}.mp4", f.base.lock().expect("lock"));
            Json(
                json!({"task_id": id, "status": "succeeded", "video_url": url, "duration": seconds}),
            )
        }
        None => {
            Json(json!({"task_id": id, "status": "failed", "error": {"message": "content policy"}}))
        }
    }
}

pub async fn file(State(f): State<Arc<Fake>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    f.file_fetches.fetch_add(1, Ordering::SeqCst);
    let failing = f
        .file_failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    ([("content-type", "video/mp4")], FILE).into_response()
}

pub async fn start_fake(plan: Plan) -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake::default());
    *fake.plan.lock().expect("lock") = Some(plan);
    let app = Router::new()
        .route("/v1/tasks", post(create))
        .route("/v1/tasks/{id}", get(status))
        .route("/v1/files/{name}", get(file))
        .with_state(Arc::clone(&fake));
    let base = serve_fake(app).await;
    *fake.base.lock().expect("lock") = base.clone();
    (fake, base)
}

/// A fake of OpenAI's own Videos API: multipart create, video objects, authenticated content.
#[derive(Default)]
pub struct OpenAiVideos {
    pub forms: Mutex<Vec<Value>>,
    pub auth: Mutex<Vec<String>>,
    pub polls: AtomicUsize,
}

pub fn bearer(headers: &axum::http::HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

pub async fn openai_create(
    State(f): State<Arc<OpenAiVideos>>,
    headers: axum::http::HeaderMap,
    mut form: axum::extract::Multipart,
) -> Json<Value> {
    f.auth.lock().expect("lock").push(bearer(&headers));
    let mut fields = serde_json::Map::new();
    while let Some(field) = form.next_field().await.expect("field") {
        let name = field.name().unwrap_or_default().to_owned();
        fields.insert(name, json!(field.text().await.expect("text")));
    }
    f.forms.lock().expect("lock").push(Value::Object(fields));
    Json(
        json!({"id": "video_up1", "object": "video", "status": "queued", "progress": 0, "seconds": "8"}),
    )
}

pub async fn openai_status(
    State(f): State<Arc<OpenAiVideos>>,
    Path(id): Path<String>,
) -> Json<Value> {
    if f.polls.fetch_add(1, Ordering::SeqCst) == 0 {
        return Json(json!({"id": id, "object": "video", "status": "in_progress", "progress": 50}));
    }
    // Delivered shorter than asked (and reported as text, as OpenAI does).
    Json(
        json!({"id": id, "object": "video", "status": "completed", "progress": 100, "seconds": "4"}),
    )
}

pub async fn openai_content(headers: axum::http::HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    if bearer(&headers) != "Bearer sk-openai-video" {
        return axum::http::StatusCode::UNAUTHORIZED.into_response();
    }
    FILE.into_response()
}

pub async fn start_openai_videos() -> (Arc<OpenAiVideos>, String) {
    let fake = Arc::new(OpenAiVideos::default());
    let app = Router::new()
        .route("/v1/videos", post(openai_create))
        .route("/v1/videos/{id}", get(openai_status))
        .route("/v1/videos/{id}/content", get(openai_content))
        .with_state(Arc::clone(&fake));
    (fake, serve_fake(app).await)
}
