//! Which database a test runs on: SQLite always, PostgreSQL (and Redis) when `TEST_DATABASE_URL`
//! (and `TEST_REDIS_URL`) are set; the macro that runs a test on both.

use super::rand_u64;

/// Which database a test runs on.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    /// PostgreSQL, when `TEST_DATABASE_URL` is set.
    pub fn postgres() -> Option<Backend> {
        std::env::var("TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .map(Backend::Postgres)
    }
}

/// Runs each named `async fn name(b: Backend)` on SQLite and, when `TEST_DATABASE_URL` is set,
/// on Postgres, as two tests (`name::sqlite`, `name::postgres`): one line per file lists them.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    match $crate::helpers::Backend::postgres() {
                        Some(b) => super::$name(b).await,
                        None => eprintln!("TEST_DATABASE_URL is not set: Postgres variant not run"),
                    }
                }
            }
        )*
    };
}

/// `TEST_REDIS_URL`, when set.
pub fn redis_url() -> Option<String> {
    std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A database for a test that runs the real binary: a SQLite file in `dir`, or a fresh Postgres
/// database (whose server URL and name are returned, to drop it afterwards).
pub async fn fresh_database(
    b: &Backend,
    dir: &tempfile::TempDir,
) -> (String, Option<(String, String)>) {
    match b {
        Backend::Sqlite => (
            format!("sqlite://{}/tollgate.db", dir.path().display()),
            None,
        ),
        Backend::Postgres(url) => {
            let (db_url, name) = create_pg_database(url).await;
            (db_url, Some((url.clone(), name)))
        }
    }
}

/// Replaces the database name in a Postgres URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let base = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// Creates a fresh database on the server of `url`: (its URL, its name).
pub async fn create_pg_database(url: &str) -> (String, String) {
    let name = format!("tollgate_test_{:016x}", rand_u64());
    let admin = sqlx::PgPool::connect(url)
        .await
        .expect("connect to TEST_DATABASE_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create test database");
    admin.close().await;
    (with_database(url, &name), name)
}

/// Drops a database made by [`create_pg_database`].
pub async fn drop_pg_database(url: &str, name: &str) {
    if let Ok(admin) = sqlx::PgPool::connect(url).await {
        let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
        admin.close().await;
    }
}
