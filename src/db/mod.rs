//! All SQL. [`Db`] holds a concrete pool for SQLite or PostgreSQL; every query is written once
//! with `$N` placeholders and run on either. One file per table or aggregate.
//!
//! On SQLite, writes go through a single-connection pool so that writers queue in the pool
//! (async, FIFO) instead of spinning in SQLite's busy handler; reads use a separate pool.

pub mod audit;
pub mod billing;
pub mod catalog;
pub mod creation_publishing;
pub mod creations;
pub mod drafts;
pub mod files;
pub mod jobs;
pub mod keys;
pub mod publishing;
pub mod runs;
pub mod social;
pub mod social_auth;
pub mod users;
pub mod videos;
pub mod writing_tools;

use anyhow::Context;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlSafeStr, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

/// The system of record: embedded SQLite or PostgreSQL.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite {
        writer: SqlitePool,
        reader: SqlitePool,
    },
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the pool that may write.
macro_rules! write_pool {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite { writer: $p, .. } => $body,
            $crate::db::Db::Postgres($p) => $body,
        }
    };
}

/// Runs `$body` with `$p` bound to a pool for reads.
macro_rules! read_pool {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite { reader: $p, .. } => $body,
            $crate::db::Db::Postgres($p) => $body,
        }
    };
}

pub(crate) use read_pool;
pub(crate) use write_pool;

/// Which migration set a backend uses; the file names are the same in both folders.
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "accounts",
        include_str!("../../migrations/sqlite/0002_accounts.sql"),
        include_str!("../../migrations/postgres/0002_accounts.sql"),
    ),
    (
        3,
        "limits",
        include_str!("../../migrations/sqlite/0003_limits.sql"),
        include_str!("../../migrations/postgres/0003_limits.sql"),
    ),
    (
        4,
        "media",
        include_str!("../../migrations/sqlite/0004_media.sql"),
        include_str!("../../migrations/postgres/0004_media.sql"),
    ),
    (
        5,
        "runs",
        include_str!("../../migrations/sqlite/0005_runs.sql"),
        include_str!("../../migrations/postgres/0005_runs.sql"),
    ),
    (
        6,
        "studio",
        include_str!("../../migrations/sqlite/0006_studio.sql"),
        include_str!("../../migrations/postgres/0006_studio.sql"),
    ),
    (
        7,
        "files",
        include_str!("../../migrations/sqlite/0007_files.sql"),
        include_str!("../../migrations/postgres/0007_files.sql"),
    ),
    (
        8,
        "kept_videos",
        include_str!("../../migrations/sqlite/0008_kept_videos.sql"),
        include_str!("../../migrations/postgres/0008_kept_videos.sql"),
    ),
    (
        9,
        "social",
        include_str!("../../migrations/sqlite/0009_social.sql"),
        include_str!("../../migrations/postgres/0009_social.sql"),
    ),
    (
        10,
        "publishing",
        include_str!("../../migrations/sqlite/0010_publishing.sql"),
        include_str!("../../migrations/postgres/0010_publishing.sql"),
    ),
    (
        11,
        "media",
        include_str!("../../migrations/sqlite/0011_media.sql"),
        include_str!("../../migrations/postgres/0011_media.sql"),
    ),
    (
        12,
        "jobs",
        include_str!("../../migrations/sqlite/0012_jobs.sql"),
        include_str!("../../migrations/postgres/0012_jobs.sql"),
    ),
    (
        13,
        "creation_publishing",
        include_str!("../../migrations/sqlite/0013_creation_publishing.sql"),
        include_str!("../../migrations/postgres/0013_creation_publishing.sql"),
    ),
];

/// Whether a database error is a unique-constraint violation (portable across backends).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// The file a `sqlite:` URL names (`None` for other URLs and in-memory databases).
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    if !url.starts_with("sqlite:") {
        return None;
    }
    let file = SqliteConnectOptions::from_str(url)
        .ok()?
        .get_filename()
        .to_path_buf();
    let name = file.to_string_lossy();
    (!name.is_empty() && !name.contains(":memory:")).then_some(file)
}

impl Db {
    /// Connects to `url` (`sqlite://…` or `postgres://…`), creating a SQLite file and its
    /// folder if missing.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Db> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .with_context(|| format!("invalid SQLite URL {url}"))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // Settlement batches come in up to `billing::MAX_BATCH` sizes, each one
                // statement: keep them all prepared.
                .statement_cache_capacity(256)
                // Checkpoint every 4,000 pages (16 MB of WAL) rather than 1,000: the hot pages
                // (balances, the right edges of the usage indexes) are written back once per
                // checkpoint, not once per commit, so fewer checkpoints write fewer pages.
                .pragma("wal_autocheckpoint", "4000");
            let file = options.get_filename().to_path_buf();
            if let Some(parent) = file.parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            if sqlite_file(url).is_some() {
                create_private(&file)?;
            }
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .connect_with(options.clone())
                .await
                .with_context(|| format!("opening SQLite database {url}"))?;
            let reader = SqlitePoolOptions::new()
                .max_connections(max_connections.max(1))
                .connect_with(options)
                .await
                .with_context(|| format!("opening SQLite database {url}"))?;
            Ok(Db::Sqlite { writer, reader })
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .context("connecting to PostgreSQL")?;
            Ok(Db::Postgres(pool))
        } else {
            anyhow::bail!("unsupported database URL {url:?}: use sqlite://… or postgres://…")
        }
    }

    /// Applies the backend's migrations (safe to run from several instances at once on Postgres).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let sqlite = matches!(self, Db::Sqlite { .. });
        let migrations = MIGRATIONS
            .iter()
            .map(|&(version, name, lite, pg)| {
                let sql = if sqlite { lite } else { pg };
                Migration::new(
                    version,
                    name.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect();
        let migrator = Migrator::with_migrations(migrations);
        write_pool!(self, p => migrator.run(p).await).context("applying migrations")?;
        Ok(())
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        read_pool!(self, p => sqlx::query("SELECT 1").execute(p).await.map(|_| ()))
    }

    /// Closes every pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        match self {
            Db::Sqlite { writer, reader } => {
                reader.close().await;
                writer.close().await;
            }
            Db::Postgres(p) => p.close().await,
        }
    }
}

/// Creates `file` readable and writable by its owner only (0600), if it does not exist yet;
/// SQLite gives its `-wal` and `-shm` files the same mode as the database.
pub fn create_private(file: &std::path::Path) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(file) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", file.display())),
    }
}
