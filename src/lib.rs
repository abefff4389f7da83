//! Tollgate: an OpenAI-compatible AI proxy and metering gateway.
//!
//! The request path (hot path), in order:
//! 0. `serve` — the connection loop: connection limit, header/body/idle timeouts.
//! 1. `routes` — HTTP only: request id, route metrics, extractors, response shapes.
//! 2. `gateway::auth` — hash the presented key, look it up in the in-memory key cache.
//! 3. `limits` — requests, tokens and concurrency per key, user and model (in process, or in Redis).
//! 4. `gateway::catalog` — model name → price and upstream channels (in-memory snapshot).
//! 5. `db::billing::reserve` — atomically hold the most the request can cost (402 if it does not fit).
//! 6. `gateway::chat` + `provider` — call the upstream, forward SSE events as they arrive.
//! 7. `billing::settle` — charge actual usage (provider or local count), release the rest,
//!    append the ledger row and usage record; runs in a tracked task, so disconnects still settle.
#![forbid(unsafe_code)]

pub mod billing;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod db;
pub mod error;
pub mod gateway;
pub mod limits;
pub mod metrics;
pub mod provider;
pub mod routes;
pub mod secrets;
pub mod serve;
pub mod startup;
pub mod state;
pub mod tokens;
