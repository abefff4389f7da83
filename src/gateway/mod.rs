//! The proxy pipeline: auth → route → reserve → upstream → settle. No axum types in its
//! signatures; routes turn a [`Reply`] into an HTTP response.

pub mod auth;
pub mod catalog;
pub mod chat;
pub mod cpu;
pub mod failover;
pub mod health;
pub mod images;
pub mod meter;
pub mod request;
pub mod session;
pub mod sse;
pub mod throttle;
pub mod videos;

use bytes::Bytes;
use tokio::sync::mpsc;

/// What the pipeline answers a client with.
pub enum Reply {
    /// A complete body with the upstream's status and content type.
    Full {
        status: u16,
        content_type: Option<String>,
        body: Bytes,
    },
    /// A server-sent event stream, fed by the request's task.
    Stream { events: mpsc::Receiver<Bytes> },
}
