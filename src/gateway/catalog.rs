//! The routing catalog: an in-memory snapshot of priced models and the channels that serve
//! them, reloaded after every admin change on this instance and every
//! `catalog.refresh_interval_ms`. Requests read it without touching the database.

use super::request::Defaults;
use crate::billing::TokenPrice;
use crate::db::{self, Db};
use crate::provider::{Channel, Provider};
use crate::secrets::Secrets;
use rand::RngExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

/// What a model's images and video seconds cost, in micro-credits.
#[derive(Debug, Default)]
pub struct MediaPrices {
    /// Per image when no entry of `images` matches.
    pub image: Option<i64>,
    /// Per image by `"<size>/<quality>"` or `"<size>"`.
    pub images: HashMap<String, i64>,
    /// Per second of video.
    pub video_second: Option<i64>,
}

impl MediaPrices {
    /// The price of one image of `size` and `quality`: the most specific entry that matches.
    pub fn image(&self, size: &str, quality: &str) -> Option<i64> {
        self.images
            .get(&format!("{size}/{quality}"))
            .or_else(|| self.images.get(size))
            .or_else(|| self.images.get(quality))
            .copied()
            .or(self.image)
    }
}

/// A priced model and the channels serving it.
#[derive(Debug)]
pub struct Model {
    pub id: i64,
    pub name: String,
    pub price: TokenPrice,
    pub media: MediaPrices,
    pub max_output_tokens: Option<i64>,
    /// What its registry `config` adds to requests that leave it out.
    pub defaults: Defaults,
    /// Requests and tokens per window each key gets on this model (`None`: no model limit).
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub created_at_ms: i64,
    /// Sorted by priority, highest first.
    pub channels: Vec<Arc<Channel>>,
    /// Whether a channel may write to a provider's prompt cache (an Anthropic one), so a
    /// reservation prices the prompt at the cache-write price when that is dearer.
    pub cache_writes: bool,
}

impl Model {
    /// Channels to try in order: by priority, and within one priority a weighted random order.
    pub fn channel_order(&self) -> Vec<Arc<Channel>> {
        let mut out = Vec::with_capacity(self.channels.len());
        let mut rng = rand::rng();
        for group in self.channels.chunk_by(|a, b| a.priority == b.priority) {
            let mut pool: Vec<&Arc<Channel>> = group.iter().collect();
            while !pool.is_empty() {
                let total: i64 = pool.iter().map(|c| c.weight.max(1)).sum();
                let mut pick = rng.random_range(0..total);
                let mut index = 0;
                for (i, c) in pool.iter().enumerate() {
                    pick -= c.weight.max(1);
                    if pick < 0 {
                        index = i;
                        break;
                    }
                }
                out.push(Arc::clone(pool.swap_remove(index)));
            }
        }
        out
    }
}

/// Why a model name cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No channel serves it and no price exists.
    Unknown,
    /// A channel serves it, but no price is set (or the model is disabled).
    NotPriced,
    /// A price exists but no active channel serves it.
    NoChannel,
}

/// Anthropic's five-minute cache write: 1.25 × the input price, rounded up.
pub fn default_cache_write(input_micros_per_mtok: i64) -> i64 {
    input_micros_per_mtok.saturating_mul(5).saturating_add(3) / 4
}

#[derive(Default)]
struct Snapshot {
    models: HashMap<String, Arc<Model>>,
    unpriced: HashSet<String>,
    priced_without_channel: HashSet<String>,
}

/// The catalog, shared by every request.
#[derive(Default)]
pub struct Catalog {
    snapshot: RwLock<Arc<Snapshot>>,
    /// One reload at a time: a reload that read the database earlier can never replace the
    /// snapshot of one that read it later.
    reloading: tokio::sync::Mutex<()>,
}

impl Catalog {
    /// Rebuilds the snapshot from the database (channel credentials opened with `secrets`).
    pub async fn reload(&self, db: &Db, secrets: &Secrets) -> Result<(), sqlx::Error> {
        let _one_at_a_time = self.reloading.lock().await;
        let models = db::catalog::list_models(db).await?;
        let channels = db::catalog::list_channels(db, secrets).await?;
        let mut by_model: HashMap<String, Vec<Arc<Channel>>> = HashMap::new();
        for row in channels.into_iter().filter(|c| c.status == "active") {
            let Some(channel) = Channel::from_row(&row) else {
                continue;
            };
            let names: Vec<String> = serde_json::from_str(&row.models).unwrap_or_default();
            let channel = Arc::new(channel);
            for name in names {
                by_model.entry(name).or_default().push(Arc::clone(&channel));
            }
        }
        let mut snapshot = Snapshot::default();
        for m in models {
            let channels = by_model.remove(&m.model).unwrap_or_default();
            if m.status != "active" {
                if !channels.is_empty() {
                    snapshot.unpriced.insert(m.model);
                }
                continue;
            }
            if channels.is_empty() {
                snapshot.priced_without_channel.insert(m.model);
                continue;
            }
            let mut channels = channels;
            channels.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
            let model = Model {
                id: m.id,
                price: TokenPrice {
                    input_micros_per_mtok: m.input_micros_per_mtok,
                    output_micros_per_mtok: m.output_micros_per_mtok,
                    cached_input_micros_per_mtok: m.cached_input_micros_per_mtok,
                    cache_write_micros_per_mtok: m
                        .cache_write_micros_per_mtok
                        .unwrap_or_else(|| default_cache_write(m.input_micros_per_mtok)),
                    request_micros: m.request_micros,
                    version: m.price_version,
                },
                media: MediaPrices {
                    image: m.image_micros,
                    images: m
                        .image_prices
                        .as_deref()
                        .and_then(|t| serde_json::from_str(t).ok())
                        .unwrap_or_default(),
                    video_second: m.video_second_micros,
                },
                max_output_tokens: m.max_output_tokens,
                defaults: Defaults::from_config(m.config.as_deref()),
                rpm: m.rpm,
                tpm: m.tpm,
                created_at_ms: m.created_at_ms,
                cache_writes: channels.iter().any(|c| c.provider == Provider::Anthropic),
                channels,
                name: m.model.clone(),
            };
            snapshot.models.insert(m.model, Arc::new(model));
        }
        snapshot.unpriced.extend(by_model.into_keys());
        if let Ok(mut s) = self.snapshot.write() {
            *s = Arc::new(snapshot);
        }
        Ok(())
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .map(|s| Arc::clone(&s))
            .unwrap_or_default()
    }

    /// The routable model called `name`.
    pub fn model(&self, name: &str) -> Result<Arc<Model>, RouteError> {
        let s = self.current();
        if let Some(m) = s.models.get(name) {
            return Ok(Arc::clone(m));
        }
        if s.unpriced.contains(name) {
            Err(RouteError::NotPriced)
        } else if s.priced_without_channel.contains(name) {
            Err(RouteError::NoChannel)
        } else {
            Err(RouteError::Unknown)
        }
    }

    /// Every routable model, sorted by name.
    pub fn models(&self) -> Vec<Arc<Model>> {
        let mut v: Vec<Arc<Model>> = self.current().models.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}
