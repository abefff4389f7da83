//! Tollgate: an OpenAI-compatible AI proxy and metering gateway.
//!
//! The request path (hot path), in the order it runs:
//! 0. `serve` — the connection loop: connection limit, header/body/idle timeouts.
//! 1. `routes` — HTTP only: request id and its span (`routes::track`), route metrics,
//!    extractors (`routes::extract`: auth, body), response shapes (OpenAI's or the platform
//!    envelope, `error`).
//! 2. `gateway::auth` — hash the presented key, look it up in the in-memory key cache.
//! 3. `gateway::chat::complete` (or `images`, `videos`) — parse the body (`gateway::request`;
//!    a very large one on the CPU pool, `gateway::cpu`), bound its prompt in bytes (`tokens`).
//! 4. `gateway::meter::route` — who pays; model name → price and channels from the in-memory
//!    `gateway::catalog`.
//! 5. `gateway::throttle` + `limits` — requests, tokens and concurrency per key, user and model
//!    (in process, or one script call in Redis).
//! 6. `gateway::meter::reserve` → `billing::book` — atomically hold the most the request can
//!    cost (402 if it does not fit), priced by `billing::pricing`.
//! 7. The request's task (on the task tracker, in the request's span): `gateway::failover` tries
//!    channels in order through `provider::call` (the one provider dispatch), breakers in
//!    `gateway::health`; `gateway::chat::stream` forwards SSE as it arrives, metered by
//!    `gateway::sse`.
//! 8. `billing::settle` — the usage record (`gateway::meter::Payer::record`) and the charge of
//!    what the ending costs (`gateway::chat::ending`), written before the last byte goes out;
//!    disconnects still settle.
//!
//! A platform feature runs a chat completion through the same door in process:
//! `gateway::chat::chat_as` with a flat or metered `billing::Pricing` — the studio's writing
//! tools do (`studio::generate`, behind `routes::writing`).
//! Deferred work (scheduled publishes, video polls) is a row in one jobs table, worked by
//! `jobs` on every instance.
//! Around the path: `startup` (build, run, drain), `cluster` (change notices through Redis),
//! `db` (SQL for SQLite and PostgreSQL), `metrics`, `secrets`, `config`, `clock`.
#![forbid(unsafe_code)]

pub mod billing;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod db;
pub mod error;
pub mod files;
pub mod gateway;
pub mod jobs;
pub mod limits;
pub mod memo;
pub mod metrics;
pub mod provider;
pub mod routes;
pub mod secrets;
pub mod serve;
pub mod social;
pub mod startup;
pub mod state;
pub mod studio;
pub mod tokens;
