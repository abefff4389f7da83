//! [`AppState`]: everything a request needs, cheap to clone (one `Arc`).

use crate::billing::book::Book;
use crate::cluster::{Bus, Change};
use crate::config::Config;
use crate::db::Db;
use crate::gateway::auth::KeyCache;
use crate::gateway::catalog::Catalog;
use crate::gateway::health::Health;
use crate::gateway::session::Sessions;
use crate::limits::Limiter;
use crate::secrets::Secrets;
use metrics_exporter_prometheus::PrometheusHandle;
use std::ops::Deref;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared application state.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub db: Db,
    /// Opens and seals upstream credentials stored in the database.
    pub secrets: Secrets,
    /// The one pooled HTTP client for every upstream.
    pub http: reqwest::Client,
    pub keys: KeyCache,
    /// Login tokens and password hashing (platform accounts).
    pub sessions: Sessions,
    /// Where balance reservations are held (memory on SQLite, rows on PostgreSQL).
    pub book: Book,
    pub catalog: Catalog,
    /// Circuit breakers and recent errors of the upstream channels, on this instance.
    pub health: Health,
    /// Rate-limit counters (in this process, or shared through Redis).
    pub limits: Arc<Limiter>,
    /// Change notices to the other instances (through Redis, when configured).
    pub bus: Bus,
    /// CPU-heavy work (local token counts, very large bodies), off the async workers.
    pub cpu: crate::gateway::cpu::Cpu,
    /// Settlement and stream tasks; shutdown waits for all of them.
    pub tasks: TaskTracker,
    /// Cancelled when the shutdown grace period is over: open streams end and settle.
    pub cut_streams: CancellationToken,
    pub metrics: PrometheusHandle,
    /// The job worker's health on this instance (what `/readyz` reads), and its wake-up.
    pub jobs: crate::jobs::Health,
}

impl AppState {
    pub fn new(inner: Inner) -> AppState {
        AppState(Arc::new(inner))
    }

    /// Applies a change on this instance: drops the cached keys, or reloads the catalog.
    pub async fn apply(&self, change: Change) -> Result<(), sqlx::Error> {
        match change {
            Change::Keys => {
                self.keys.invalidate_all();
                Ok(())
            }
            Change::Catalog => self.catalog.reload(&self.db, &self.secrets).await,
        }
    }

    /// Applies a change here, then tells the other instances.
    pub async fn announce(&self, change: Change) -> Result<(), sqlx::Error> {
        self.apply(change).await?;
        self.bus.publish(change).await;
        Ok(())
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
