//! Stored files (generated images, decks, fetched videos): their bytes in the database, so any
//! instance serves what another stored.

use super::{Db, read_pool, write_pool};
use crate::clock::now_ms;

/// A file's bytes and how to serve them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredFile {
    pub id: String,
    pub user_id: i64,
    pub kind: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub data: Vec<u8>,
    pub created_at_ms: i64,
}

pub async fn insert(
    db: &Db,
    id: &str,
    user_id: i64,
    kind: &str,
    content_type: &str,
    data: &[u8],
) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "INSERT INTO files (id, user_id, kind, content_type, size_bytes, data, created_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(id)
        .bind(user_id)
        .bind(kind)
        .bind(content_type)
        .bind(data.len() as i64)
        .bind(data)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|_| ()))
}

pub async fn get(db: &Db, id: &str) -> Result<Option<StoredFile>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, StoredFile>(
        "SELECT id, user_id, kind, content_type, size_bytes, data, created_at_ms FROM files WHERE id = $1")
        .bind(id)
        .fetch_optional(p)
        .await)
}

pub async fn delete(db: &Db, id: &str) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query("DELETE FROM files WHERE id = $1")
        .bind(id)
        .execute(p)
        .await
        .map(|_| ()))
}
