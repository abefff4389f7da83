//! Tollgate: an OpenAI-compatible AI proxy and metering gateway.
//!
//! The request path (hot path), in order:
//! 1. `routes` — HTTP only: request id, route metrics, extractors, response shapes.
//! 2. `gateway::auth` — hash the presented key, look it up in the in-memory key cache.
//! 3. `gateway::catalog` — model name → price and upstream channels (in-memory snapshot).
//! 4. `db::billing::reserve` — atomically hold the most the request can cost (402 if it does not fit).
//! 5. `gateway::chat` + `provider` — call the upstream, forward SSE events as they arrive.
//! 6. `billing::settle` — charge actual usage (provider or local count), release the rest,
//!    append the ledger row and usage record; runs in a tracked task, so disconnects still settle.
#![forbid(unsafe_code)]

pub mod billing;
pub mod config;
pub mod db;
pub mod error;
pub mod gateway;
pub mod metrics;
pub mod provider;
pub mod routes;
pub mod startup;
pub mod state;
