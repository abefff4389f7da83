//! Building and running the application: connect and migrate the database, load the catalog,
//! bind (port 0 works), serve until a shutdown signal, then drain: stop accepting, let open
//! streams finish within the grace period, cut the rest, and wait for every settlement.

use crate::cluster::Bus;
use crate::config::Config;
use crate::db::Db;
use crate::gateway::auth::KeyCache;
use crate::gateway::catalog::Catalog;
use crate::gateway::health::Health;
use crate::gateway::session::Sessions;
use crate::limits::Limiter;
use crate::limits::shared::Shared;
use crate::secrets::{Secret, Secrets};
use crate::state::{AppState, Inner};
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A built, bound application, ready to run.
pub struct Application {
    /// None for a worker (`tollgate worker`), which serves no HTTP.
    listener: Option<TcpListener>,
    state: AppState,
    /// For the change-notice subscription (when Redis is configured).
    redis: Option<redis::Client>,
}

impl Application {
    /// Connects, migrates, loads the catalog and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        Application::assemble(config, true).await
    }

    /// Like [`Application::build`] without a listener: it works jobs and serves nothing.
    /// Refused on SQLite, whose balances live in the serving process's memory.
    pub async fn build_worker(mut config: Config) -> anyhow::Result<Application> {
        if !config.database.url.starts_with("postgres") {
            anyhow::bail!(
                "tollgate worker needs PostgreSQL (database.url): on the embedded SQLite file, `tollgate serve` works the jobs itself"
            );
        }
        config.jobs.enabled = true;
        Application::assemble(config, false).await
    }

    async fn assemble(config: Config, listen: bool) -> anyhow::Result<Application> {
        let metrics = crate::metrics::install();
        let db = Db::connect(&config.database.url, config.database.max_connections).await?;
        db.migrate().await?;
        crate::studio::tools::seed(&db)
            .await
            .context("writing the studio's default tools")?;
        let secrets = Secrets::load(
            config.master_key.as_ref().map(Secret::expose),
            &config.secrets.master_key_file,
        )?;
        if config.master_key.is_none() && matches!(db, Db::Postgres(_)) {
            tracing::warn!(
                file = %config.secrets.master_key_file,
                "TOLLGATE_MASTER_KEY is not set: channel credentials are sealed with the key file; every instance must use the same key"
            );
        }
        let sealed = crate::db::catalog::seal_plain_credentials(&db, &secrets)
            .await
            .context("sealing channel credentials")?;
        if sealed > 0 {
            tracing::info!(
                channels = sealed,
                "sealed channel credentials stored in plain text"
            );
        }
        let book = crate::billing::book::Book::open(&db)
            .await
            .context("loading balances")?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.upstream.connect_timeout_ms))
            .pool_max_idle_per_host(config.upstream.pool_max_idle_per_host)
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            .context("building the HTTP client")?;
        let redis_timeout = Duration::from_millis(config.redis.timeout_ms);
        let (redis, limiter, bus) = if config.redis.url.is_empty() {
            let limiter = Limiter::new(None, config.limits.on_redis_error, redis_timeout);
            (None, limiter, Bus::new(None, &config.redis.prefix))
        } else {
            let (client, conn) = crate::cluster::connect(&config.redis.url, redis_timeout).await?;
            let shared = Shared::new(
                conn.clone(),
                &config.redis.prefix,
                config.limits.concurrency_lease_ms,
            );
            let limiter = Limiter::new(Some(shared), config.limits.on_redis_error, redis_timeout);
            (
                Some(client),
                limiter,
                Bus::new(Some(conn), &config.redis.prefix),
            )
        };
        let listener = if listen {
            let addr = config.listen_addr()?;
            let bound = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            Some(bound)
        } else {
            None
        };
        let state = AppState::new(Inner {
            keys: KeyCache::new(
                Duration::from_millis(config.auth.key_cache_ttl_ms),
                config.admin_key.as_ref().map(Secret::expose),
            ),
            sessions: {
                let secret = match &config.jwt_secret {
                    Some(s) => s.expose().as_bytes().to_vec(),
                    None => {
                        tracing::warn!(
                            "TOLLGATE_JWT_SECRET is not set: login tokens are signed with a random secret and end with this process"
                        );
                        rand::random::<[u8; 32]>().to_vec()
                    }
                };
                Sessions::new(
                    &secret,
                    Duration::from_millis(config.auth.access_token_ttl_ms),
                    Duration::from_millis(config.auth.refresh_token_ttl_ms),
                )
            },
            catalog: Catalog::default(),
            health: Health::new(
                config.upstream.breaker_failures,
                Duration::from_millis(config.upstream.breaker_cooldown_ms),
            ),
            limits: Arc::new(limiter),
            bus,
            book,
            cpu: crate::gateway::cpu::Cpu::new(config.server.cpu_threads),
            tasks: TaskTracker::new(),
            cut_streams: CancellationToken::new(),
            config,
            db,
            secrets,
            http,
            metrics,
            jobs: crate::jobs::Health::default(),
        });
        state
            .catalog
            .reload(&state.db, &state.secrets)
            .await
            .context("loading models and channels")?;
        Ok(Application {
            listener,
            state,
            redis,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The shared state (for tests and tools that run beside the server).
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then shuts down gracefully.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            state,
            redis,
        } = self;
        let config = &state.config;
        let stop_workers = CancellationToken::new();
        // Load the tokenizer now, not on the first request that needs a local count.
        tokio::task::spawn_blocking(|| crate::tokens::count_text("warm up"));
        // What a crashed instance left held is released before the first request is answered.
        if let Err(e) = crate::billing::reconcile::run_once(&state.db).await {
            tracing::error!(error = %e, "reconciler failed at start");
        }
        state.tasks.spawn(crate::billing::reconcile::run(
            state.db.clone(),
            Duration::from_millis(config.billing.reconcile_interval_ms),
            stop_workers.clone(),
        ));
        if let Ok(n) = crate::db::videos::count_open(&state.db).await {
            metrics::gauge!(crate::metrics::VIDEO_TASKS_OPEN).set(n as f64);
        }
        if config.jobs.enabled {
            state
                .tasks
                .spawn(crate::jobs::run(state.clone(), stop_workers.clone()));
        }
        state.tasks.spawn(crate::files::run_sweeper(
            state.db.clone(),
            stop_workers.clone(),
        ));
        state.tasks.spawn(crate::social::publish::run_recovery(
            state.clone(),
            stop_workers.clone(),
        ));
        state.tasks.spawn(refresh_catalog(
            state.clone(),
            Duration::from_millis(config.catalog.refresh_interval_ms),
            stop_workers.clone(),
        ));
        state.tasks.spawn(maintain_limits(
            state.clone(),
            Duration::from_millis((config.limits.concurrency_lease_ms / 3).max(100)),
            stop_workers.clone(),
        ));
        if let Some(client) = redis {
            let (state, stop) = (state.clone(), stop_workers.clone());
            state.clone().tasks.spawn(async move {
                crate::cluster::listen(&state.bus, client, stop, |change| state.apply(change)).await
            });
        }

        let run = match crate::db::runs::start(&state.db).await {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(error = %e, "could not record this run's start");
                None
            }
        };
        match listener {
            Some(listener) => {
                let app = crate::routes::router(state.clone());
                let limits = crate::serve::Limits::from_config(&config.server);
                let connections = crate::serve::start(listener, app, limits);
                shutdown.await;
                drain(&state, connections).await;
            }
            None => {
                tracing::info!("working jobs (no HTTP)");
                shutdown.await;
            }
        }
        state.cut_streams.cancel();
        stop_workers.cancel();
        state.tasks.close();
        state.tasks.wait().await;
        let unsettled = state.book.open_reservations();
        if let Some(run) = run
            && let Err(e) = crate::db::runs::stop(&state.db, run, unsettled).await
        {
            tracing::error!(error = %e, "could not record this run's clean stop");
        }
        state.db.close().await;
        if unsettled > 0 {
            tracing::error!(
                unsettled,
                "shutdown complete, but requests admitted by this run were never settled"
            );
        } else {
            tracing::info!("shutdown complete: every settlement written");
        }
        Ok(())
    }
}

/// The drain runs on every way out, one step after the other (nothing can race past it):
/// stop accepting, let requests finish within the grace period, then cut open streams (they
/// end and settle), close what is left.
async fn drain(state: &AppState, connections: crate::serve::Connections) {
    let grace = Duration::from_millis(state.config.server.shutdown_grace_ms);
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: no new connections, draining open requests"
    );
    connections.stop();
    if tokio::time::timeout(grace, connections.closed())
        .await
        .is_err()
    {
        tracing::warn!("grace period over: cutting open streams and closing connections");
        state.cut_streams.cancel();
        // Cut streams write their last event; a connection still not done (a half-sent
        // request, a client that reads nothing) is closed.
        if tokio::time::timeout(Duration::from_secs(2), connections.closed())
            .await
            .is_err()
        {
            connections.close_all();
            connections.closed().await;
        }
    }
}

/// Reloads the catalog periodically, so changes made on other instances arrive.
async fn refresh_catalog(state: AppState, interval: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if let Err(e) = state.catalog.reload(&state.db, &state.secrets).await {
            tracing::warn!(error = %e, "catalog refresh failed");
        }
    }
}

/// Renews this instance's shared concurrency leases and drops idle local counters.
async fn maintain_limits(state: AppState, interval: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        state.limits.maintain().await;
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
