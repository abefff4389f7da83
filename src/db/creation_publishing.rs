//! Publishing creations (seed 001): bindings per platform, WeChat's shared access tokens, and
//! each publish with its per-platform items (`migrations/*/0013_creation_publishing.sql`).

use super::{Db, read_pool, write_pool};
use crate::clock::now_ms;

/// A user's binding to a platform.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Binding {
    pub user_id: i64,
    pub platform: String,
    pub account_name: Option<String>,
    pub app_id: Option<String>,
    /// Sealed (`Purpose::PlatformSecret`).
    pub secret: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Stores (or replaces) a binding.
pub async fn bind(
    db: &Db,
    user_id: i64,
    platform: &str,
    account_name: Option<&str>,
    app_id: Option<&str>,
    sealed_secret: Option<&str>,
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    write_pool!(db, p => sqlx::query(
        "INSERT INTO publish_bindings (user_id, platform, account_name, app_id, secret, created_at_ms, updated_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $6)
         ON CONFLICT (user_id, platform) DO UPDATE SET account_name = excluded.account_name,
             app_id = excluded.app_id, secret = excluded.secret, updated_at_ms = excluded.updated_at_ms")
        .bind(user_id)
        .bind(platform)
        .bind(account_name)
        .bind(app_id)
        .bind(sealed_secret)
        .bind(now)
        .execute(p)
        .await
        .map(|_| ()))
}

/// The user's bindings.
pub async fn bindings(db: &Db, user_id: i64) -> Result<Vec<Binding>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, Binding>(
        "SELECT user_id, platform, account_name, app_id, secret, created_at_ms, updated_at_ms
         FROM publish_bindings WHERE user_id = $1 ORDER BY platform")
        .bind(user_id)
        .fetch_all(p)
        .await)
}

/// A WeChat AppID's stored token: (sealed token, expiry).
pub async fn wechat_token(db: &Db, app_id: &str) -> Result<Option<(String, i64)>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, (String, i64)>(
        "SELECT access_token, expires_at_ms FROM wechat_tokens WHERE app_id = $1")
        .bind(app_id)
        .fetch_optional(p)
        .await)
}

/// Takes the right to fetch a new token for `app_id` until `until_ms` (one refresher across
/// every instance): true when this caller has it.
pub async fn lock_wechat_token(
    db: &Db,
    app_id: &str,
    owner: &str,
    until_ms: i64,
) -> Result<bool, sqlx::Error> {
    let now = now_ms();
    write_pool!(db, p => sqlx::query(
        "INSERT INTO wechat_tokens (app_id, lock_owner, lock_until_ms, updated_at_ms) VALUES ($1, $2, $3, $4)
         ON CONFLICT (app_id) DO UPDATE SET lock_owner = excluded.lock_owner, lock_until_ms = excluded.lock_until_ms
         WHERE wechat_tokens.lock_until_ms < $4")
        .bind(app_id)
        .bind(owner)
        .bind(until_ms)
        .bind(now)
        .execute(p)
        .await
        .map(|r| r.rows_affected() == 1))
}

/// Stores a fetched token (sealed) and frees the lock.
pub async fn store_wechat_token(
    db: &Db,
    app_id: &str,
    owner: &str,
    sealed: &str,
    expires_at_ms: i64,
) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE wechat_tokens SET access_token = $3, expires_at_ms = $4, lock_owner = NULL, lock_until_ms = 0,
                fetches = fetches + 1, updated_at_ms = $5
         WHERE app_id = $1 AND lock_owner = $2")
        .bind(app_id)
        .bind(owner)
        .bind(sealed)
        .bind(expires_at_ms)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|_| ()))
}

/// Frees the lock without a token (the fetch failed).
pub async fn unlock_wechat_token(db: &Db, app_id: &str, owner: &str) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE wechat_tokens SET lock_owner = NULL, lock_until_ms = 0 WHERE app_id = $1 AND lock_owner = $2")
        .bind(app_id)
        .bind(owner)
        .execute(p)
        .await
        .map(|_| ()))
}

/// A creation publish.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CreationPublish {
    pub id: i64,
    pub user_id: i64,
    pub creation_id: i64,
    pub title: String,
    pub scheduled_for_ms: Option<i64>,
    pub created_at_ms: i64,
}

/// One platform of a creation publish.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Item {
    pub publish_id: i64,
    pub platform: String,
    pub mode: String,
    pub status: String,
    pub target_id: Option<String>,
    pub job_id: Option<String>,
    pub remote_id: Option<String>,
    pub url: Option<String>,
    pub error: Option<String>,
    pub package: Option<String>,
    pub updated_at_ms: i64,
}

/// Writes a creation publish; its id.
pub async fn create(
    db: &Db,
    user_id: i64,
    creation_id: i64,
    title: &str,
    scheduled_for_ms: Option<i64>,
) -> Result<i64, sqlx::Error> {
    write_pool!(db, p => sqlx::query_scalar::<_, i64>(
        "INSERT INTO creation_publishes (user_id, creation_id, title, scheduled_for_ms, created_at_ms)
         VALUES ($1, $2, $3, $4, $5) RETURNING id")
        .bind(user_id)
        .bind(creation_id)
        .bind(title)
        .bind(scheduled_for_ms)
        .bind(now_ms())
        .fetch_one(p)
        .await)
}

/// Deletes a publish that has no item yet (its request was refused).
pub async fn delete(db: &Db, id: i64) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query("DELETE FROM creation_publishes WHERE id = $1")
        .bind(id)
        .execute(p)
        .await
        .map(|_| ()))
}

/// Writes one platform's item.
pub async fn add_item(db: &Db, item: &Item) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "INSERT INTO creation_publish_items (publish_id, platform, mode, status, target_id, job_id, remote_id, url,
                                             error, package, updated_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
        .bind(item.publish_id)
        .bind(&item.platform)
        .bind(&item.mode)
        .bind(&item.status)
        .bind(&item.target_id)
        .bind(&item.job_id)
        .bind(&item.remote_id)
        .bind(&item.url)
        .bind(&item.error)
        .bind(&item.package)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|_| ()))
}

/// Moves an item from one of `from` to `status` with what is known (a compare-and-set on its
/// status): true when it moved.
#[allow(clippy::too_many_arguments)]
pub async fn set_item(
    db: &Db,
    publish_id: i64,
    platform: &str,
    from: &[&str],
    status: &str,
    remote_id: Option<&str>,
    url: Option<&str>,
    error: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let from = from.join(",");
    write_pool!(db, p => sqlx::query(
        "UPDATE creation_publish_items SET status = $4, remote_id = COALESCE($5, remote_id), url = COALESCE($6, url),
                error = $7, updated_at_ms = $8
         WHERE publish_id = $1 AND platform = $2 AND (',' || $3 || ',') LIKE ('%,' || status || ',%')")
        .bind(publish_id)
        .bind(platform)
        .bind(from)
        .bind(status)
        .bind(remote_id)
        .bind(url)
        .bind(error)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|r| r.rows_affected() == 1))
}

/// One item.
pub async fn item(db: &Db, publish_id: i64, platform: &str) -> Result<Option<Item>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, Item>(
        "SELECT publish_id, platform, mode, status, target_id, job_id, remote_id, url, error, package, updated_at_ms
         FROM creation_publish_items WHERE publish_id = $1 AND platform = $2")
        .bind(publish_id)
        .bind(platform)
        .fetch_optional(p)
        .await)
}

/// A publish of the user's.
pub async fn get(db: &Db, user_id: i64, id: i64) -> Result<Option<CreationPublish>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, CreationPublish>(
        "SELECT id, user_id, creation_id, title, scheduled_for_ms, created_at_ms FROM creation_publishes
         WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user_id)
        .fetch_optional(p)
        .await)
}

/// The user's publishes, newest first, a page, with the total.
pub async fn history(
    db: &Db,
    user_id: i64,
    limit: i64,
    offset: i64,
) -> Result<(i64, Vec<(CreationPublish, Vec<Item>)>), sqlx::Error> {
    let (total, rows) = read_pool!(db, p => {
        let total = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM creation_publishes WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(p)
            .await?;
        let rows = sqlx::query_as::<_, CreationPublish>(
            "SELECT id, user_id, creation_id, title, scheduled_for_ms, created_at_ms FROM creation_publishes
             WHERE user_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3")
            .bind(user_id)
            .bind(limit)
            .bind(offset)
            .fetch_all(p)
            .await?;
        Ok::<_, sqlx::Error>((total, rows))
    })?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let items = items(db, r.id).await?;
        out.push((r, items));
    }
    Ok((total, out))
}

/// A publish's items, by platform.
pub async fn items(db: &Db, publish_id: i64) -> Result<Vec<Item>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, Item>(
        "SELECT publish_id, platform, mode, status, target_id, job_id, remote_id, url, error, package, updated_at_ms
         FROM creation_publish_items WHERE publish_id = $1 ORDER BY platform")
        .bind(publish_id)
        .fetch_all(p)
        .await)
}
