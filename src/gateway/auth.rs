//! Authentication: API key generation and hashing, the presented-key header rules, and the
//! in-memory key cache in front of the database.
//!
//! Keys are `sk-` + 48 random alphanumerics, stored only as a SHA-256 hex digest. A cached
//! lookup is trusted for `auth.key_cache_ttl_ms`; admin changes on this instance clear the cache
//! at once.

use crate::db::{self, Db};
use axum::http::HeaderMap;
use rand::RngExt;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Length of the random part of a key.
const KEY_RANDOM_LEN: usize = 48;

/// A new API key (`sk-…`). Shown once; only [`hash_key`] of it is stored.
pub fn generate_key() -> String {
    let random: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(KEY_RANDOM_LEN)
        .map(char::from)
        .collect();
    format!("sk-{random}")
}

/// The stored form of a key: lowercase hex SHA-256.
pub fn hash_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest.iter() {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    out
}

/// The displayable start of a key (`sk-AbCd…`).
pub fn key_prefix(key: &str) -> String {
    let head: String = key.chars().take(7).collect();
    format!("{head}…")
}

/// The key a request presents: `Authorization: Bearer`, `X-API-Key` or `xai-key`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        let token = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .unwrap_or(v)
            .trim();
        if !token.is_empty() {
            return Some(token);
        }
    }
    for name in ["x-api-key", "xai-key"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            let v = v.trim();
            if !v.is_empty() {
                return Some(v);
            }
        }
    }
    None
}

/// Who is calling, once a key checked out.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `None` for the bootstrap admin (`TOLLGATE_ADMIN_KEY`).
    pub key_id: Option<i64>,
    /// `None` for the bootstrap admin.
    pub user_id: Option<i64>,
    pub is_admin: bool,
    /// Models this key may call; `None` means all.
    pub models: Option<Arc<[String]>>,
    /// The key's own limits (`None` for login tokens and the bootstrap admin).
    pub limits: Option<Arc<db::keys::KeyLimits>>,
    /// Whether the owner's membership is in force.
    pub is_member: bool,
}

impl Caller {
    /// Whether this key may call `model`.
    pub fn may_use(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|allowed| allowed == model))
    }
}

pub use crate::error::AuthError;

#[derive(Clone)]
struct CachedKey {
    row: Option<Arc<db::keys::KeyAuthRow>>,
    models: Option<Arc<[String]>>,
    limits: Arc<db::keys::KeyLimits>,
    fetched: Instant,
}

/// Key lookups cached in memory, keyed by hash. Misses (unknown keys) are cached too, so a flood
/// of bad keys does not reach the database.
pub struct KeyCache {
    ttl: Duration,
    admin_hash: Option<String>,
    entries: RwLock<HashMap<String, CachedKey>>,
    /// Bumped by every invalidation: a lookup that read the database before one does not cache
    /// what it read.
    generation: AtomicU64,
}

impl KeyCache {
    pub fn new(ttl: Duration, admin_key: Option<&str>) -> KeyCache {
        KeyCache {
            ttl,
            admin_hash: admin_key.map(hash_key),
            entries: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// Forgets every cached lookup (after any admin change to keys or users).
    pub fn invalidate_all(&self) {
        if let Ok(mut e) = self.entries.write() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            e.clear();
        }
    }

    fn cached(&self, hash: &str) -> Option<CachedKey> {
        let entries = self.entries.read().ok()?;
        let e = entries.get(hash)?;
        (e.fetched.elapsed() < self.ttl).then(|| e.clone())
    }

    /// Checks a presented key: bootstrap admin, then the cache, then the database.
    pub async fn authenticate(
        &self,
        db: &Db,
        presented: Option<&str>,
    ) -> Result<Caller, AuthError> {
        let key = presented.ok_or(AuthError::Missing)?;
        let hash = hash_key(key);
        if self.admin_hash.as_deref() == Some(hash.as_str()) {
            return Ok(Caller {
                key_id: None,
                user_id: None,
                is_admin: true,
                models: None,
                limits: None,
                is_member: false,
            });
        }
        let entry = match self.cached(&hash) {
            Some(e) => e,
            None => {
                let generation = self.generation.load(Ordering::SeqCst);
                let row = db::keys::find_for_auth(db, &hash).await?;
                let models = row
                    .as_ref()
                    .and_then(|r| r.models.as_deref())
                    .and_then(|m| serde_json::from_str::<Vec<String>>(m).ok())
                    .map(Arc::from);
                let limits = Arc::new(row.as_ref().map(|r| r.limits.clone()).unwrap_or_default());
                let entry = CachedKey {
                    row: row.map(Arc::new),
                    models,
                    limits,
                    fetched: Instant::now(),
                };
                if let Ok(mut entries) = self.entries.write()
                    && self.generation.load(Ordering::SeqCst) == generation
                {
                    if entries.len() > 100_000 {
                        entries.clear();
                    }
                    entries.insert(hash, entry.clone());
                }
                entry
            }
        };
        let row = entry.row.ok_or(AuthError::Invalid)?;
        if row.key_status != "active" {
            return Err(AuthError::KeyDisabled);
        }
        if row.user_status != "active" {
            return Err(AuthError::UserDisabled);
        }
        let now = crate::clock::now_ms();
        if row.expires_at_ms.is_some_and(|e| e <= now) {
            return Err(AuthError::Expired);
        }
        Ok(Caller {
            key_id: Some(row.key_id),
            user_id: Some(row.user_id),
            is_admin: row.role == "admin",
            models: entry.models,
            limits: Some(Arc::clone(&entry.limits)),
            is_member: row.membership_expires_at_ms.is_some_and(|e| e > now),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_hash_stably() {
        let a = generate_key();
        let b = generate_key();
        assert!(a.starts_with("sk-") && a.len() == 3 + KEY_RANDOM_LEN);
        assert_ne!(a, b);
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn keys_are_read_from_all_three_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert("xai-key", "k3".parse().expect("header"));
        assert_eq!(presented_key(&h), Some("k3"));
        h.insert("x-api-key", "k2".parse().expect("header"));
        assert_eq!(presented_key(&h), Some("k2"));
        h.insert("authorization", "Bearer k1".parse().expect("header"));
        assert_eq!(presented_key(&h), Some("k1"));
    }
}
