//! What users made (writing, image, video, ppt): one row each, seen only by its owner.

use super::{Db, read_pool, write_pool};
use crate::clock::now_ms;

/// One creation as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Creation {
    pub id: i64,
    pub user_id: i64,
    pub kind: String,
    pub tool_type: Option<String>,
    pub title: String,
    pub content: String,
    pub model: Option<String>,
    pub request_id: Option<String>,
    pub credits_micros: i64,
    pub upstream_cost_micros: i64,
    pub paid_by: String,
    /// The stored file of an image, deck or video.
    pub file_id: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

macro_rules! columns {
    () => {
        "id, user_id, kind, tool_type, title, content, model, request_id, credits_micros, \
         upstream_cost_micros, paid_by, file_id, created_at_ms, updated_at_ms"
    };
}

/// A creation to write (its id and times are the database's).
#[derive(Debug, Clone)]
pub struct NewCreation<'a> {
    pub user_id: i64,
    pub kind: &'a str,
    pub tool_type: Option<&'a str>,
    pub title: &'a str,
    pub content: &'a str,
    pub model: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub credits_micros: i64,
    pub upstream_cost_micros: i64,
    pub paid_by: &'a str,
    pub file_id: Option<&'a str>,
}

/// The insert of a [`NewCreation`], numbered as [`bind_creation!`] binds it.
macro_rules! creation_insert {
    () => {
        "INSERT INTO creations (user_id, kind, tool_type, title, content, model, request_id, credits_micros,
                                upstream_cost_micros, paid_by, file_id, created_at_ms, updated_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $12, $11, $11)"
    };
}

/// Binds a [`NewCreation`] `$c` written at `$now` to [`creation_insert!`]'s `$1`..`$12`.
macro_rules! bind_creation {
    ($query:expr, $now:expr, $c:expr) => {{
        let c: &$crate::db::creations::NewCreation<'_> = $c;
        $query
            .bind(c.user_id)
            .bind(c.kind)
            .bind(c.tool_type)
            .bind(c.title)
            .bind(c.content)
            .bind(c.model)
            .bind(c.request_id)
            .bind(c.credits_micros)
            .bind(c.upstream_cost_micros)
            .bind(c.paid_by)
            .bind($now)
            .bind(c.file_id)
    }};
}

pub(crate) use {bind_creation, creation_insert};

/// Writes `c`; a second write for the same request id returns the first one's row.
pub async fn insert(db: &Db, c: &NewCreation<'_>) -> Result<Creation, sqlx::Error> {
    let now = now_ms();
    let inserted = write_pool!(db, p => bind_creation!(sqlx::query_as::<_, Creation>(concat!(
        creation_insert!(), " ON CONFLICT (request_id) DO NOTHING RETURNING ", columns!())), now, c)
        .fetch_optional(p)
        .await?);
    match (inserted, c.request_id) {
        (Some(row), _) => Ok(row),
        (None, Some(request_id)) => write_pool!(db, p => sqlx::query_as::<_, Creation>(concat!(
            "SELECT ", columns!(), " FROM creations WHERE request_id = $1"))
            .bind(request_id)
            .fetch_one(p)
            .await),
        (None, None) => Err(sqlx::Error::RowNotFound),
    }
}

/// The user's creation `id` (`None` when it is not theirs or does not exist).
pub async fn get(db: &Db, user_id: i64, id: i64) -> Result<Option<Creation>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, Creation>(concat!(
        "SELECT ", columns!(), " FROM creations WHERE id = $1 AND user_id = $2"))
        .bind(id)
        .bind(user_id)
        .fetch_optional(p)
        .await)
}

/// A page of the user's creations, newest first, of `kind` if given; and how many there are.
pub async fn list(
    db: &Db,
    user_id: i64,
    kind: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<(i64, Vec<Creation>), sqlx::Error> {
    read_pool!(db, p => {
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM creations WHERE user_id = $1 AND (CAST($2 AS TEXT) IS NULL OR kind = $2)")
            .bind(user_id)
            .bind(kind)
            .fetch_one(p)
            .await?;
        let rows = sqlx::query_as::<_, Creation>(concat!(
            "SELECT ", columns!(), " FROM creations WHERE user_id = $1 AND (CAST($2 AS TEXT) IS NULL OR kind = $2)
             ORDER BY id DESC LIMIT $3 OFFSET $4"))
            .bind(user_id)
            .bind(kind)
            .bind(limit)
            .bind(offset)
            .fetch_all(p)
            .await?;
        Ok((total, rows))
    })
}

/// Changes the title and/or content of the user's creation; the row as it is now.
pub async fn update(
    db: &Db,
    user_id: i64,
    id: i64,
    title: Option<&str>,
    content: Option<&str>,
) -> Result<Option<Creation>, sqlx::Error> {
    write_pool!(db, p => sqlx::query_as::<_, Creation>(concat!(
        "UPDATE creations SET title = COALESCE($3, title), content = COALESCE($4, content), updated_at_ms = $5
         WHERE id = $1 AND user_id = $2 RETURNING ", columns!()))
        .bind(id)
        .bind(user_id)
        .bind(title)
        .bind(content)
        .bind(now_ms())
        .fetch_optional(p)
        .await)
}

/// Deletes the user's creation and its stored file; whether there was one.
pub async fn delete(db: &Db, user_id: i64, id: i64) -> Result<bool, sqlx::Error> {
    let deleted: Option<(Option<String>,)> = write_pool!(db, p => sqlx::query_as(
        "DELETE FROM creations WHERE id = $1 AND user_id = $2 RETURNING file_id")
        .bind(id)
        .bind(user_id)
        .fetch_optional(p)
        .await?);
    match deleted {
        None => Ok(false),
        Some((file,)) => {
            if let Some(file) = file {
                super::files::delete(db, &file).await?;
            }
            Ok(true)
        }
    }
}

/// Per tool: generations, credits charged and what their tokens cost upstream.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ToolTotals {
    pub tool_type: String,
    pub generations: i64,
    pub credits_micros: i64,
    pub upstream_cost_micros: i64,
}

pub async fn totals_by_tool(db: &Db) -> Result<Vec<ToolTotals>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, ToolTotals>(
        "SELECT COALESCE(tool_type, kind) AS tool_type, COUNT(*) AS generations,
                CAST(SUM(credits_micros) AS BIGINT) AS credits_micros,
                CAST(SUM(upstream_cost_micros) AS BIGINT) AS upstream_cost_micros
         FROM creations WHERE request_id IS NOT NULL
         GROUP BY COALESCE(tool_type, kind) ORDER BY 1")
        .fetch_all(p)
        .await)
}
