//! Fakes of third parties: local HTTP servers speaking their real wire protocols, counting what
//! they were sent. [`openai`]: OpenAI's chat completions (JSON and SSE); [`video`]: video
//! providers (a task-style API and OpenAI's Videos API).

pub mod bluesky;
pub mod linkedin;
pub mod mastodon;
pub mod openai;
pub mod threads;
pub mod video;
pub mod wechat;
pub mod x;

use axum::Router;

/// Serves a fake third party on a free local port; returns its `/v1` root.
pub async fn serve_fake(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}
