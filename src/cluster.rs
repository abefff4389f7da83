//! Several instances on one Redis: the connection, and change notices. An admin change (a key
//! or user disabled, a price or channel edited) applies at once on the instance that made it and
//! is published on `<prefix>:changes`; every other instance applies it when the message
//! arrives (well within a second). The key cache's TTL and the catalog's periodic reload stay as
//! the safety net for a missed message, and a (re)subscription applies everything once.

use crate::metrics as m;
use anyhow::Context;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// API keys or users (status, expiry, limits, allowed models, membership).
    Keys,
    /// Models, prices or channels.
    Catalog,
}

impl Change {
    fn name(self) -> &'static str {
        match self {
            Change::Keys => "keys",
            Change::Catalog => "catalog",
        }
    }

    fn parse(s: &str) -> Option<Change> {
        match s {
            "keys" => Some(Change::Keys),
            "catalog" => Some(Change::Catalog),
            _ => None,
        }
    }
}

/// Opens the shared connection (reconnects by itself after failures).
pub async fn connect(
    url: &str,
    timeout: Duration,
) -> anyhow::Result<(redis::Client, ConnectionManager)> {
    let client = redis::Client::open(url).context("parsing the Redis URL")?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let conn = client
        .get_connection_manager_with_config(config)
        .await
        .with_context(|| format!("connecting to Redis at {}", redact(url)))?;
    Ok((client, conn))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Publishes change notices (a no-op without Redis).
pub struct Bus {
    conn: Option<ConnectionManager>,
    channel: String,
    /// This instance's id: its own notices are not applied twice.
    instance: String,
}

impl Bus {
    pub fn new(conn: Option<ConnectionManager>, prefix: &str) -> Bus {
        Bus {
            conn,
            channel: format!("{prefix}:changes"),
            instance: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// Tells the other instances; failures are logged (their periodic refresh still catches up).
    pub async fn publish(&self, change: Change) {
        let Some(conn) = &self.conn else {
            return;
        };
        let mut conn = conn.clone();
        let message = format!("{}:{}", change.name(), self.instance);
        let r: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(message)
            .query_async(&mut conn)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, change = change.name(), "could not publish a change notice");
        }
    }
}

/// Listens for other instances' change notices on `bus`'s channel until `stop`, calling `apply`
/// for each (and for every kind of change after each (re)subscription); reconnects after
/// failures.
pub async fn listen<F, Fut>(bus: &Bus, client: redis::Client, stop: CancellationToken, apply: F)
where
    F: Fn(Change) -> Fut,
    Fut: std::future::Future<Output = Result<(), sqlx::Error>>,
{
    let channel = bus.channel.clone();
    loop {
        let session = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            // Anything published while we were not listening is caught up now.
            for change in [Change::Keys, Change::Catalog] {
                if let Err(e) = apply(change).await {
                    tracing::warn!(error = %e, "catch-up after subscribing failed");
                }
            }
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                let Ok(text) = msg.get_payload::<String>() else {
                    continue;
                };
                let Some((name, origin)) = text.split_once(':') else {
                    continue;
                };
                if origin == bus.instance {
                    continue;
                }
                let Some(change) = Change::parse(name) else {
                    continue;
                };
                metrics::counter!(m::INVALIDATIONS, "change" => change.name()).increment(1);
                if let Err(e) = apply(change).await {
                    tracing::warn!(error = %e, change = name, "applying a change notice failed");
                }
            }
            Ok::<(), redis::RedisError>(())
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            r = session => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "change notices: Redis subscription lost, retrying");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
