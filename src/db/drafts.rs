//! Drafts (seed 000): a title, items as a JSON array (`tweets`), where they are meant to go.
//! Scoped to their user.

use super::{Db, read_pool, write_pool};
use crate::clock::now_ms;

/// A draft as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Draft {
    pub id: String,
    pub user_id: i64,
    pub social_set_id: Option<String>,
    pub title: String,
    pub status: String,
    pub scheduled_for_ms: Option<i64>,
    /// A JSON array of account ids.
    pub selected_account_ids: String,
    pub template_id: Option<String>,
    /// A JSON array of items.
    pub tweets: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

macro_rules! columns {
    () => {
        "id, user_id, social_set_id, title, status, scheduled_for_ms, selected_account_ids, template_id, \
         tweets, created_at_ms, updated_at_ms"
    };
}

/// The user's drafts, newest first (of one set if given), at most `limit`.
pub async fn list(
    db: &Db,
    user_id: i64,
    social_set_id: Option<&str>,
    limit: i64,
) -> Result<Vec<Draft>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, Draft>(concat!(
        "SELECT ", columns!(), " FROM drafts WHERE user_id = $1 AND ($2 IS NULL OR social_set_id = $2)
         ORDER BY created_at_ms DESC, id DESC LIMIT $3"))
        .bind(user_id)
        .bind(social_set_id)
        .bind(limit)
        .fetch_all(p)
        .await)
}

pub async fn get(db: &Db, user_id: i64, id: &str) -> Result<Option<Draft>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, Draft>(concat!(
        "SELECT ", columns!(), " FROM drafts WHERE id = $1 AND user_id = $2"))
        .bind(id)
        .bind(user_id)
        .fetch_optional(p)
        .await)
}

/// Writes a new draft (`d.created_at_ms` and `updated_at_ms` are set here).
pub async fn insert(db: &Db, d: &Draft) -> Result<Draft, sqlx::Error> {
    let now = now_ms();
    write_pool!(db, p => sqlx::query_as::<_, Draft>(concat!(
        "INSERT INTO drafts (", columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
         RETURNING ", columns!()))
        .bind(&d.id)
        .bind(d.user_id)
        .bind(&d.social_set_id)
        .bind(&d.title)
        .bind(&d.status)
        .bind(d.scheduled_for_ms)
        .bind(&d.selected_account_ids)
        .bind(&d.template_id)
        .bind(&d.tweets)
        .bind(now)
        .fetch_one(p)
        .await)
}

/// Replaces the user's draft's fields with `d`'s; `None` when it is not theirs.
pub async fn update(db: &Db, d: &Draft) -> Result<Option<Draft>, sqlx::Error> {
    write_pool!(db, p => sqlx::query_as::<_, Draft>(concat!(
        "UPDATE drafts SET social_set_id = $3, title = $4, status = $5, scheduled_for_ms = $6,
                selected_account_ids = $7, template_id = $8, tweets = $9, updated_at_ms = $10
         WHERE id = $1 AND user_id = $2 RETURNING ", columns!()))
        .bind(&d.id)
        .bind(d.user_id)
        .bind(&d.social_set_id)
        .bind(&d.title)
        .bind(&d.status)
        .bind(d.scheduled_for_ms)
        .bind(&d.selected_account_ids)
        .bind(&d.template_id)
        .bind(&d.tweets)
        .bind(now_ms())
        .fetch_optional(p)
        .await)
}

/// Deletes the user's draft; false when it is not theirs.
pub async fn delete(db: &Db, user_id: i64, id: &str) -> Result<bool, sqlx::Error> {
    write_pool!(db, p => sqlx::query("DELETE FROM drafts WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user_id)
        .execute(p)
        .await
        .map(|r| r.rows_affected() > 0))
}
