//! Typed configuration, layered: the built-in `config/default.toml`, then an optional file,
//! then `TOLLGATE__SECTION__KEY` environment variables (nested sections too:
//! `TOLLGATE__SOCIAL__X__CLIENT_ID`), and `TOLLGATE_DATABASE_URL`.
//! Unknown keys are errors; [`Config::validate`] runs at start.

use crate::billing::Micros;
use crate::secrets::Secret;
use anyhow::{Context, bail};
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// The defaults, compiled in so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub upstream: UpstreamConfig,
    pub auth: AuthConfig,
    pub billing: BillingConfig,
    pub catalog: CatalogConfig,
    pub redis: RedisConfig,
    pub limits: LimitsConfig,
    pub video: VideoConfig,
    pub social: SocialConfig,
    pub publishing: PublishingConfig,
    pub jobs: JobsConfig,
    pub secrets: SecretsConfig,
    pub log: LogConfig,
    /// The bootstrap admin credential (from `TOLLGATE_ADMIN_KEY`, never from a file).
    #[serde(skip)]
    pub admin_key: Option<Secret>,
    /// The secret login tokens are signed with (from `TOLLGATE_JWT_SECRET`, never from a file).
    #[serde(skip)]
    pub jwt_secret: Option<Secret>,
    /// The key upstream credentials are sealed with (from `TOLLGATE_MASTER_KEY`, never from a
    /// file; without it, `secrets.master_key_file`).
    #[serde(skip)]
    pub master_key: Option<Secret>,
    /// The bearer token `/metrics` requires, if any (from `TOLLGATE_METRICS_TOKEN`).
    #[serde(skip)]
    pub metrics_token: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    pub master_key_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub shutdown_grace_ms: u64,
    pub max_body_bytes: usize,
    /// A request head must be complete this long after its first byte arrived.
    pub header_read_timeout_ms: u64,
    /// A request body must be complete this long after its head.
    pub body_read_timeout_ms: u64,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout_ms: u64,
    /// Open connections at most; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Threads for CPU-heavy work (local token counts, very large bodies); 0: half the cores.
    pub cpu_threads: usize,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub connect_timeout_ms: u64,
    pub first_byte_timeout_ms: u64,
    pub chunk_timeout_ms: u64,
    pub max_request_ms: u64,
    pub max_response_bytes: usize,
    pub pool_max_idle_per_host: usize,
    /// Failures in a row that open a channel's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker keeps its channel out before one probe request is let through.
    pub breaker_cooldown_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoConfig {
    /// How often an unfinished task's provider is asked for its status.
    pub poll_interval_ms: u64,
    /// A task not finished this long after submission fails and is refunded.
    pub task_timeout_ms: u64,
    /// How long a submission may take to reach a provider: a task without a provider id this
    /// long after submission was cut off (its instance died) and is refunded by its poll job.
    pub lease_ms: u64,
}

/// Connecting social accounts: each OAuth platform's app and endpoints (the real services by
/// default; tests point them at local fakes).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocialConfig {
    /// How long a connection's auth session (and its `state`) stays open.
    pub auth_session_ttl_ms: u64,
    /// Refresh an access token this long before it expires.
    pub refresh_ahead_ms: u64,
    pub x: OAuthApp,
    pub threads: OAuthApp,
    pub linkedin: OAuthApp,
    pub mastodon: MastodonConfig,
    pub bluesky: BlueskyConfig,
    pub wechat: WechatConfig,
}

/// WeChat Official Accounts (publishing creations): each user binds their own AppID and
/// AppSecret; this is where the API is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatConfig {
    pub api_base: String,
    /// How often a submitted article is asked after (`freepublish/get`).
    pub poll_interval_ms: u64,
}

/// One platform's OAuth app. Without a `client_id` its connect route answers
/// `OAUTH_NOT_CONFIGURED`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthApp {
    pub api_base: String,
    pub authorize_url: String,
    pub token_url: String,
    #[serde(deserialize_with = "text")]
    pub client_id: String,
    #[serde(default, deserialize_with = "secret_from_string")]
    pub client_secret: Secret,
    /// The callback registered with the platform; it must match exactly.
    pub redirect_uri: String,
    /// Space-separated scopes asked for.
    pub scopes: String,
    /// LinkedIn's `LinkedIn-Version` header (`YYYYMM`); unused elsewhere.
    #[serde(default, deserialize_with = "text")]
    pub version: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MastodonConfig {
    /// The name the app is registered under on each instance.
    pub client_name: String,
    /// Tollgate's Mastodon callback (`…/api/v1/mastodon/callback`).
    pub redirect_uri: String,
    pub scopes: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlueskyConfig {
    /// The PDS a handle logs in at when the user names none.
    pub default_service: String,
    /// Bluesky's video service (uploads and their processing jobs).
    pub video_service: String,
}

/// The job worker (scheduled publishes, video polls): every instance works jobs unless
/// `enabled` is off; `tollgate worker` works them without serving HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    pub enabled: bool,
    /// How long a claim lasts (renewed every third of it while the job runs): after a crash,
    /// the dead instance's running jobs are taken again this long after its last renewal.
    pub lease_ms: u64,
    /// How often an idle worker looks for due jobs (it sleeps less when one is due sooner).
    pub poll_interval_ms: u64,
    /// Tries of a job whose failures are sure to have done nothing (a publish refused with 429,
    /// a platform that could not be reached) before it fails for good.
    pub max_attempts: u64,
    /// The first retry's delay; each further one doubles it (a `Retry-After` is honoured).
    pub retry_base_ms: u64,
    /// Jobs one instance runs at once.
    pub concurrency: usize,
    /// A job still not started this long after it was due counts as overdue
    /// (`tollgate_jobs_overdue`).
    pub overdue_after_ms: u64,
}

/// What one publish costs per platform, in credits (seed 000: 10 each).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishingConfig {
    /// A publish still sending after this long is taken to have lost its process: recovery
    /// makes it unconfirmed (a post was sent) or refunds it (none was).
    pub stalled_after_ms: u64,
    /// How often recovery looks.
    pub recovery_interval_ms: u64,
    /// Tollgate's public address (`https://gw.example.com`), for platforms that fetch media
    /// from a URL (Threads); empty: such media are refused before anything is sent.
    #[serde(default)]
    pub public_url: String,
    /// Whether media URLs given to the per-platform routes may point at private addresses
    /// (loopback, private networks); off, so a client cannot make Tollgate fetch inside.
    #[serde(default)]
    pub fetch_private_media_urls: bool,
    #[serde(deserialize_with = "credits")]
    pub price_x: Micros,
    #[serde(deserialize_with = "credits")]
    pub price_bluesky: Micros,
    #[serde(deserialize_with = "credits")]
    pub price_mastodon: Micros,
    #[serde(deserialize_with = "credits")]
    pub price_threads: Micros,
    #[serde(deserialize_with = "credits")]
    pub price_linkedin: Micros,
    /// A creation published to a WeChat Official Account.
    #[serde(deserialize_with = "credits")]
    pub price_wechat: Micros,
}

/// A non-negative credits amount written as a number (`10`, `2.5`) or a string (`"2.5"`), read
/// exactly.
fn credits<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Micros, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Whole(i64),
        Decimal(f64),
        Text(String),
    }
    let parsed = match Raw::deserialize(d)? {
        Raw::Whole(n) => n.checked_mul(1_000_000).map(Micros),
        Raw::Decimal(f) => Micros::parse_decimal(&f.to_string()).ok(),
        Raw::Text(s) => Micros::parse_decimal(s.trim()).ok(),
    };
    parsed.filter(|m| m.0 >= 0).ok_or_else(|| {
        serde::de::Error::custom("expected a non-negative amount of credits, like 10 or \"2.5\"")
    })
}

/// A string that may arrive as a number (an environment value like a numeric client id).
fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Whole(i64),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Text(s) => s,
        Raw::Whole(n) => n.to_string(),
    })
}

fn secret_from_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    text(d).map(Secret::from)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub key_cache_ttl_ms: u64,
    pub access_token_ttl_ms: u64,
    pub refresh_token_ttl_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingConfig {
    pub default_max_output_tokens: i64,
    /// Bytes of text one local token count reads at most (the rest is extrapolated).
    pub max_count_bytes: usize,
    pub reservation_grace_ms: u64,
    pub reconcile_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    pub refresh_interval_ms: u64,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    pub prefix: String,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub window_ms: u64,
    pub key_rpm: u64,
    pub key_tpm: u64,
    pub key_max_concurrency: u64,
    pub user_rpm: u64,
    pub user_tpm: u64,
    pub user_max_concurrency: u64,
    pub on_redis_error: FailMode,
    pub concurrency_lease_ms: u64,
    pub auth_per_minute: u64,
    pub generation_per_hour: u64,
    pub query_per_minute: u64,
    pub other_per_minute: u64,
    pub plan_free_per_hour: u64,
    pub plan_pro_per_hour: u64,
    pub trust_forwarded_for: bool,
}

/// What the limiter does while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// This instance's own counters decide.
    Open,
    /// Requests are refused (503).
    Closed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub filter: String,
    pub format: String,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// A URL without its password (`postgres://user:***@host/db`), for logs and `Debug`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            let user = user.split(':').next().unwrap_or_default();
            format!("{}://{user}:***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Sets `table[path...] = value`, creating tables on the way.
fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> anyhow::Result<()> {
    let (last, parents) = path.split_last().context("empty key")?;
    let mut current = table;
    for part in parents {
        current = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("{part} is not a section"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

/// Reads an environment value as a TOML scalar (`8000`, `true`, `"x"`), else as a plain string.
fn env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => match t.remove("v") {
            Some(v) if !v.is_table() => v,
            _ => toml::Value::String(raw.to_owned()),
        },
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

/// Merges `overlay` into `base`, table by table.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (k, v) in overlay {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (if given), then the process environment.
    pub fn load(file: Option<&std::path::Path>) -> anyhow::Result<Config> {
        Config::load_from(file, std::env::vars())
    }

    /// Like [`Config::load`] with an explicit environment (for tests).
    pub fn load_from(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut table: toml::Table = DEFAULT_TOML.parse().context("built-in default.toml")?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            let overlay: toml::Table = text
                .parse()
                .with_context(|| format!("parsing config file {}", path.display()))?;
            merge(&mut table, overlay);
        }
        let mut admin_key = None;
        let mut jwt_secret = None;
        let mut master_key = None;
        let mut metrics_token = None;
        let mut database_url = None;
        let mut redis_url = None;
        for (name, value) in env {
            if let Some(rest) = name.strip_prefix("TOLLGATE__") {
                let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
                if path.len() < 2 || path.iter().any(String::is_empty) {
                    bail!(
                        "environment variable {name} must look like TOLLGATE__SECTION__KEY (or TOLLGATE__SECTION__SUBSECTION__KEY)"
                    );
                }
                set_path(&mut table, &path, env_value(&value))
                    .with_context(|| format!("applying {name}"))?;
            } else if name == "TOLLGATE_ADMIN_KEY" && !value.is_empty() {
                admin_key = Some(Secret::from(value));
            } else if name == "TOLLGATE_JWT_SECRET" && !value.is_empty() {
                jwt_secret = Some(Secret::from(value));
            } else if name == "TOLLGATE_MASTER_KEY" && !value.is_empty() {
                master_key = Some(Secret::from(value));
            } else if name == "TOLLGATE_METRICS_TOKEN" && !value.is_empty() {
                metrics_token = Some(Secret::from(value));
            } else if name == "TOLLGATE_DATABASE_URL" && !value.is_empty() {
                database_url = Some(value);
            } else if name == "TOLLGATE_REDIS_URL" && !value.is_empty() {
                redis_url = Some(value);
            }
        }
        if let Some(url) = database_url {
            set_path(
                &mut table,
                &["database".into(), "url".into()],
                toml::Value::String(url),
            )?;
        }
        if let Some(url) = redis_url {
            set_path(
                &mut table,
                &["redis".into(), "url".into()],
                toml::Value::String(url),
            )?;
        }
        let mut config: Config = toml::Value::Table(table)
            .try_into()
            .context("invalid configuration")?;
        config.admin_key = admin_key;
        config.jwt_secret = jwt_secret;
        config.master_key = master_key;
        config.metrics_token = metrics_token;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.listen_addr()?;
        if self.database.url.is_empty() {
            bail!("database.url is empty");
        }
        if self.billing.default_max_output_tokens <= 0 {
            bail!("billing.default_max_output_tokens must be positive");
        }
        for (name, v) in [
            (
                "upstream.connect_timeout_ms",
                self.upstream.connect_timeout_ms,
            ),
            (
                "upstream.first_byte_timeout_ms",
                self.upstream.first_byte_timeout_ms,
            ),
            ("upstream.chunk_timeout_ms", self.upstream.chunk_timeout_ms),
            ("upstream.max_request_ms", self.upstream.max_request_ms),
            (
                "billing.reconcile_interval_ms",
                self.billing.reconcile_interval_ms,
            ),
            (
                "catalog.refresh_interval_ms",
                self.catalog.refresh_interval_ms,
            ),
            ("redis.timeout_ms", self.redis.timeout_ms),
            ("limits.window_ms", self.limits.window_ms),
            (
                "upstream.breaker_cooldown_ms",
                self.upstream.breaker_cooldown_ms,
            ),
            ("video.poll_interval_ms", self.video.poll_interval_ms),
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            (
                "server.body_read_timeout_ms",
                self.server.body_read_timeout_ms,
            ),
            ("server.idle_timeout_ms", self.server.idle_timeout_ms),
            ("server.max_connections", self.server.max_connections as u64),
            (
                "billing.max_count_bytes",
                self.billing.max_count_bytes as u64,
            ),
            ("video.task_timeout_ms", self.video.task_timeout_ms),
            ("video.lease_ms", self.video.lease_ms),
            ("jobs.lease_ms", self.jobs.lease_ms),
            ("jobs.poll_interval_ms", self.jobs.poll_interval_ms),
            ("jobs.max_attempts", self.jobs.max_attempts),
            ("jobs.concurrency", self.jobs.concurrency as u64),
            ("jobs.overdue_after_ms", self.jobs.overdue_after_ms),
            (
                "limits.concurrency_lease_ms",
                self.limits.concurrency_lease_ms,
            ),
        ] {
            if v == 0 {
                bail!("{name} must be greater than zero");
            }
        }
        let redis_scheme = ["redis://", "rediss://"]
            .iter()
            .any(|p| self.redis.url.starts_with(p));
        if !self.redis.url.is_empty() && !redis_scheme {
            bail!("redis.url must start with redis:// or rediss://");
        }
        if self.redis.prefix.is_empty() || self.redis.prefix.contains(char::is_whitespace) {
            bail!("redis.prefix must be a non-empty word");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!("log.format must be \"text\" or \"json\"");
        }
        if let Some(k) = &self.admin_key
            && k.len() < 16
        {
            bail!("TOLLGATE_ADMIN_KEY must be at least 16 characters");
        }
        if let Some(k) = &self.jwt_secret
            && k.len() < 32
        {
            bail!("TOLLGATE_JWT_SECRET must be at least 32 characters");
        }
        if let Some(k) = &self.master_key
            && k.len() < 32
        {
            bail!("TOLLGATE_MASTER_KEY must be at least 32 characters");
        }
        if self.master_key.is_none() && self.secrets.master_key_file.is_empty() {
            bail!("secrets.master_key_file is empty and TOLLGATE_MASTER_KEY is not set");
        }
        if self.auth.access_token_ttl_ms < 1000 || self.auth.refresh_token_ttl_ms < 1000 {
            bail!("auth.access_token_ttl_ms and auth.refresh_token_ttl_ms must be at least 1000");
        }
        Ok(())
    }

    /// The parsed listen address.
    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        self.server.listen.parse().with_context(|| {
            format!(
                "server.listen {:?} is not an address like 127.0.0.1:8000",
                self.server.listen
            )
        })
    }

    /// How long a reservation may live before the reconciler releases it.
    pub fn reservation_ttl(&self) -> Duration {
        Duration::from_millis(self.upstream.max_request_ms + self.billing.reservation_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::load_from(None, env(&[])).expect("defaults");
        assert_eq!(c.server.listen, "127.0.0.1:8000");
        assert!(c.database.url.starts_with("sqlite://"));
        assert!(c.admin_key.is_none());
    }

    #[test]
    fn environment_overrides_keys() {
        let c = Config::load_from(
            None,
            env(&[
                ("TOLLGATE__SERVER__LISTEN", "0.0.0.0:9000"),
                ("TOLLGATE__UPSTREAM__CHUNK_TIMEOUT_MS", "250"),
                ("TOLLGATE_DATABASE_URL", "postgres://x@localhost/db"),
                ("TOLLGATE_ADMIN_KEY", "a-long-admin-secret"),
            ]),
        )
        .expect("config");
        assert_eq!(c.server.listen, "0.0.0.0:9000");
        assert_eq!(c.upstream.chunk_timeout_ms, 250);
        assert_eq!(c.database.url, "postgres://x@localhost/db");
        assert_eq!(
            c.admin_key.as_ref().map(Secret::expose),
            Some("a-long-admin-secret")
        );
    }

    #[test]
    fn nested_sections_are_set_from_the_environment() {
        let c = Config::load_from(
            None,
            env(&[
                ("TOLLGATE__SOCIAL__X__CLIENT_ID", "x-client"),
                ("TOLLGATE__SOCIAL__X__CLIENT_SECRET", "x-secret-value"),
                ("TOLLGATE__SOCIAL__LINKEDIN__VERSION", "202605"),
                ("TOLLGATE__PUBLISHING__PRICE_BLUESKY", "2.5"),
                ("TOLLGATE__PUBLISHING__PRICE_X", "\"0.25\""),
            ]),
        )
        .map_err(|e| format!("{e:#}"))
        .expect("config");
        assert_eq!(c.social.x.client_id, "x-client");
        assert_eq!(c.social.x.client_secret.expose(), "x-secret-value");
        assert!(!format!("{c:?}").contains("x-secret-value"));
        assert_eq!(c.social.linkedin.version, "202605");
        assert_eq!(c.publishing.price_bluesky, Micros(2_500_000));
        assert_eq!(c.publishing.price_x, Micros(250_000));
        assert_eq!(c.publishing.price_mastodon, Micros(10_000_000));
        let bad = Config::load_from(None, env(&[("TOLLGATE__PUBLISHING__PRICE_X", "-1")]));
        assert!(bad.is_err());
        let unknown = Config::load_from(None, env(&[("TOLLGATE__SOCIAL__X__CLIENT", "x")]));
        assert!(unknown.is_err(), "unknown nested keys are errors too");
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Config::load_from(
            None,
            env(&[
                ("TOLLGATE_ADMIN_KEY", "admin-secret-0123456789"),
                ("TOLLGATE_MASTER_KEY", "master-secret-0123456789abcdefghijk"),
                (
                    "TOLLGATE_DATABASE_URL",
                    "postgres://tg:db-password@localhost/db",
                ),
            ]),
        )
        .expect("config");
        let printed = format!("{c:?}");
        for secret in ["admin-secret", "master-secret", "db-password"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert!(
            printed.contains("postgres://tg:***@localhost/db"),
            "{printed}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::load_from(None, env(&[("TOLLGATE__SERVER__LISTN", "x")]));
        assert!(err.is_err());
    }
}
