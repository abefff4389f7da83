//! Account-connection sessions (seed 003): one row per attempt, tied to the platform's callback
//! by a single-use `state`, polled by the user until it ends.

use super::{Db, read_pool, write_pool};
use crate::clock::now_ms;

/// A session as stored (its secrets still sealed).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuthSession {
    pub id: String,
    pub user_id: i64,
    pub platform: String,
    pub state: String,
    pub code_verifier: String,
    pub mode: String,
    pub social_set_id: Option<String>,
    pub follow_on_x: i64,
    pub instance: Option<String>,
    /// `pending`, `completed` or `failed`.
    pub status: String,
    pub error_code: Option<i64>,
    pub error_message: Option<String>,
    pub requires_selection: i64,
    /// A JSON array of the accounts to choose from.
    pub selectable: String,
    pub pending_tokens: String,
    /// A JSON array of the connected accounts' ids.
    pub account_ids: String,
    pub used_at_ms: Option<i64>,
    pub expires_at_ms: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

macro_rules! columns {
    () => {
        "id, user_id, platform, state, code_verifier, mode, social_set_id, follow_on_x, instance, status, \
         error_code, error_message, requires_selection, selectable, pending_tokens, account_ids, used_at_ms, \
         expires_at_ms, created_at_ms, updated_at_ms"
    };
}

/// A new pending session.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    pub id: &'a str,
    pub user_id: i64,
    pub platform: &'a str,
    pub state: &'a str,
    pub code_verifier: &'a str,
    pub mode: &'a str,
    pub social_set_id: Option<&'a str>,
    pub follow_on_x: bool,
    pub instance: Option<&'a str>,
    pub expires_at_ms: i64,
}

pub async fn insert(db: &Db, s: &NewSession<'_>) -> Result<(), sqlx::Error> {
    let now = now_ms();
    write_pool!(db, p => sqlx::query(
        "INSERT INTO social_auth_sessions (id, user_id, platform, state, code_verifier, mode, social_set_id,
                                           follow_on_x, instance, expires_at_ms, created_at_ms, updated_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)")
        .bind(s.id)
        .bind(s.user_id)
        .bind(s.platform)
        .bind(s.state)
        .bind(s.code_verifier)
        .bind(s.mode)
        .bind(s.social_set_id)
        .bind(i64::from(s.follow_on_x))
        .bind(s.instance)
        .bind(s.expires_at_ms)
        .bind(now)
        .execute(p)
        .await
        .map(|_| ()))
}

/// The user's session `id`.
pub async fn get(db: &Db, user_id: i64, id: &str) -> Result<Option<AuthSession>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, AuthSession>(concat!(
        "SELECT ", columns!(), " FROM social_auth_sessions WHERE id = $1 AND user_id = $2"))
        .bind(id)
        .bind(user_id)
        .fetch_optional(p)
        .await)
}

/// Uses the session `state` names, once: the first caller gets it (whatever its status), every
/// later one `None` (see [`by_state`] for why).
pub async fn take_by_state(db: &Db, state: &str) -> Result<Option<AuthSession>, sqlx::Error> {
    write_pool!(db, p => sqlx::query_as::<_, AuthSession>(concat!(
        "UPDATE social_auth_sessions SET used_at_ms = $2, updated_at_ms = $2
         WHERE state = $1 AND used_at_ms IS NULL RETURNING ", columns!()))
        .bind(state)
        .bind(now_ms())
        .fetch_optional(p)
        .await)
}

/// The session `state` names, used or not.
pub async fn by_state(db: &Db, state: &str) -> Result<Option<AuthSession>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, AuthSession>(concat!(
        "SELECT ", columns!(), " FROM social_auth_sessions WHERE state = $1"))
        .bind(state)
        .fetch_optional(p)
        .await)
}

/// Ends a pending session as completed with these accounts.
pub async fn complete(db: &Db, id: &str, account_ids: &str) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE social_auth_sessions SET status = 'completed', account_ids = $2, requires_selection = 0,
                pending_tokens = '', updated_at_ms = $3 WHERE id = $1 AND status = 'pending'")
        .bind(id)
        .bind(account_ids)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|_| ()))
}

/// Leaves a pending session waiting for the user to choose among `selectable` (seed 003's
/// `requiresSelection`), with the tokens the choice will use kept sealed.
pub async fn await_selection(
    db: &Db,
    id: &str,
    selectable: &str,
    sealed_tokens: &str,
) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE social_auth_sessions SET requires_selection = 1, selectable = $2, pending_tokens = $3,
                updated_at_ms = $4 WHERE id = $1 AND status = 'pending'")
        .bind(id)
        .bind(selectable)
        .bind(sealed_tokens)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|_| ()))
}

/// Takes the user's session `id` that awaits a selection, once: the first caller gets it (with
/// its kept tokens), every later one `None`.
pub async fn take_selection(
    db: &Db,
    user_id: i64,
    id: &str,
) -> Result<Option<AuthSession>, sqlx::Error> {
    write_pool!(db, p => sqlx::query_as::<_, AuthSession>(concat!(
        "UPDATE social_auth_sessions SET requires_selection = 0, updated_at_ms = $3
         WHERE id = $1 AND user_id = $2 AND status = 'pending' AND requires_selection = 1
         RETURNING ", columns!()))
        .bind(id)
        .bind(user_id)
        .bind(now_ms())
        .fetch_optional(p)
        .await)
}

/// Ends a pending session as failed, with seed 003's numeric `errorCode` and why.
pub async fn fail(db: &Db, id: &str, code: i64, message: &str) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE social_auth_sessions SET status = 'failed', error_code = $2, error_message = $3,
                pending_tokens = '', updated_at_ms = $4 WHERE id = $1 AND status = 'pending'")
        .bind(id)
        .bind(code)
        .bind(message)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|_| ()))
}

/// The app registered on a Mastodon instance for `redirect_uri`: `(client_id, sealed secret)`.
pub async fn mastodon_app(
    db: &Db,
    instance: &str,
    redirect_uri: &str,
) -> Result<Option<(String, String)>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, (String, String)>(
        "SELECT client_id, client_secret FROM mastodon_apps WHERE instance = $1 AND redirect_uri = $2")
        .bind(instance)
        .bind(redirect_uri)
        .fetch_optional(p)
        .await)
}

/// Keeps a registered Mastodon app (the first one kept wins a race; its values are returned).
pub async fn save_mastodon_app(
    db: &Db,
    instance: &str,
    redirect_uri: &str,
    client_id: &str,
    sealed_secret: &str,
) -> Result<(String, String), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "INSERT INTO mastodon_apps (instance, redirect_uri, client_id, client_secret, created_at_ms)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (instance, redirect_uri) DO NOTHING")
        .bind(instance)
        .bind(redirect_uri)
        .bind(client_id)
        .bind(sealed_secret)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|_| ()))?;
    mastodon_app(db, instance, redirect_uri)
        .await?
        .ok_or(sqlx::Error::RowNotFound)
}
