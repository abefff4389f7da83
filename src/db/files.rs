//! Stored files (generated images, decks, fetched videos, uploaded media): their bytes in the
//! database, so any instance serves what another stored. Small files keep their bytes in the
//! row; uploaded media keep them in 1 MiB `file_chunks` (the row's `chunks` says how many).

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
    /// How many `file_chunks` hold the bytes (0: `data` holds them).
    pub chunks: i64,
    pub created_at_ms: i64,
}

/// A file without its bytes.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FileMeta {
    pub id: String,
    pub user_id: i64,
    pub kind: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub chunks: i64,
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
        "SELECT id, user_id, kind, content_type, size_bytes, data, chunks, created_at_ms FROM files WHERE id = $1 AND chunks >= 0")
        .bind(id)
        .fetch_optional(p)
        .await)
}

pub async fn meta(db: &Db, id: &str) -> Result<Option<FileMeta>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, FileMeta>(
        "SELECT id, user_id, kind, content_type, size_bytes, chunks FROM files WHERE id = $1 AND chunks >= 0")
        .bind(id)
        .fetch_optional(p)
        .await)
}

/// Writes chunk `seq` of file `id` (before the file's row exists).
pub async fn put_chunk(db: &Db, id: &str, seq: i64, data: &[u8]) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query("INSERT INTO file_chunks (file_id, seq, data) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(seq)
        .bind(data)
        .execute(p)
        .await
        .map(|_| ()))
}

/// Chunk `seq` of file `id`.
pub async fn chunk(db: &Db, id: &str, seq: i64) -> Result<Option<Vec<u8>>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_scalar::<_, Vec<u8>>(
        "SELECT data FROM file_chunks WHERE file_id = $1 AND seq = $2")
        .bind(id)
        .bind(seq)
        .fetch_optional(p)
        .await)
}

/// The pending row of a chunked file about to be written (`chunks` = -1: not readable yet).
pub async fn open_pending(db: &Db, id: &str, user_id: i64) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "INSERT INTO files (id, user_id, kind, content_type, size_bytes, data, chunks, created_at_ms)
         VALUES ($1, $2, 'pending', 'application/octet-stream', 0, $3, -1, $4)")
        .bind(id)
        .bind(user_id)
        .bind(Vec::<u8>::new())
        .bind(now_ms())
        .execute(p)
        .await
        .map(|_| ()))
}

/// Completes a pending file whose `chunks` chunks are written: from now on it is read.
pub async fn complete_chunked(db: &Db, meta: &FileMeta) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE files SET kind = $2, content_type = $3, size_bytes = $4, chunks = $5
         WHERE id = $1 AND chunks < 0")
        .bind(&meta.id)
        .bind(&meta.kind)
        .bind(&meta.content_type)
        .bind(meta.size_bytes)
        .bind(meta.chunks)
        .execute(p)
        .await
        .map(|_| ()))
}

/// Pending files begun before `before_ms` (uploads cut by a crash), at most `limit`.
pub async fn stale_pending(
    db: &Db,
    before_ms: i64,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_scalar(
        "SELECT id FROM files WHERE chunks < 0 AND created_at_ms < $1 ORDER BY created_at_ms LIMIT $2")
        .bind(before_ms)
        .bind(limit)
        .fetch_all(p)
        .await)
}

/// Deletes a file's chunks (an upload that failed midway, or with its row).
pub async fn delete_chunks(db: &Db, id: &str) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query("DELETE FROM file_chunks WHERE file_id = $1")
        .bind(id)
        .execute(p)
        .await
        .map(|_| ()))
}

pub async fn delete(db: &Db, id: &str) -> Result<(), sqlx::Error> {
    delete_chunks(db, id).await?;
    write_pool!(db, p => sqlx::query("DELETE FROM files WHERE id = $1")
        .bind(id)
        .execute(p)
        .await
        .map(|_| ()))
}
