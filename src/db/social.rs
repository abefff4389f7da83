//! Connected social accounts and the social sets that group them. An account's tokens are
//! stored sealed (the caller seals and opens them); everything here is scoped to its user.

use super::{Db, read_pool, write_pool};
use crate::clock::now_ms;

/// A connected account as stored (tokens still sealed).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Account {
    pub id: String,
    pub user_id: i64,
    pub platform: String,
    pub platform_uid: String,
    pub username: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    pub instance: Option<String>,
    pub char_limit: Option<i64>,
    pub access_token: String,
    pub refresh_token: String,
    pub token_expires_at_ms: Option<i64>,
    pub status: String,
    pub refresh_lock_owner: Option<String>,
    pub refresh_lock_until_ms: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

macro_rules! account_columns {
    () => {
        "id, user_id, platform, platform_uid, username, display_name, avatar_url, instance, char_limit, \
         access_token, refresh_token, token_expires_at_ms, status, refresh_lock_owner, refresh_lock_until_ms, \
         created_at_ms, updated_at_ms"
    };
}

/// The user's accounts, oldest first (disconnected ones left out).
pub async fn accounts(db: &Db, user_id: i64) -> Result<Vec<Account>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, Account>(concat!(
        "SELECT ", account_columns!(), " FROM social_accounts
         WHERE user_id = $1 AND status <> 'disconnected' ORDER BY created_at_ms, id"))
        .bind(user_id)
        .fetch_all(p)
        .await)
}

/// The user's account `id` (`None`: not theirs, unknown or disconnected).
pub async fn account(db: &Db, user_id: i64, id: &str) -> Result<Option<Account>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, Account>(concat!(
        "SELECT ", account_columns!(), " FROM social_accounts
         WHERE id = $1 AND user_id = $2 AND status <> 'disconnected'"))
        .bind(id)
        .bind(user_id)
        .fetch_optional(p)
        .await)
}

/// An account as a connection leaves it (tokens already sealed).
#[derive(Debug, Clone)]
pub struct Connected<'a> {
    pub user_id: i64,
    pub platform: &'a str,
    pub platform_uid: &'a str,
    pub username: &'a str,
    pub display_name: Option<&'a str>,
    pub avatar_url: Option<&'a str>,
    pub instance: Option<&'a str>,
    pub char_limit: Option<i64>,
    pub access_token: &'a str,
    pub refresh_token: &'a str,
    pub token_expires_at_ms: Option<i64>,
}

/// Stores a connected account: a new one, or the same platform account connected again (its
/// tokens replaced, a stored refresh token never replaced by an empty one, active again).
pub async fn upsert_account(db: &Db, id: &str, a: &Connected<'_>) -> Result<Account, sqlx::Error> {
    let now = now_ms();
    write_pool!(db, p => sqlx::query_as::<_, Account>(concat!(
        "INSERT INTO social_accounts (id, user_id, platform, platform_uid, username, display_name, avatar_url,
                                      instance, char_limit, access_token, refresh_token, token_expires_at_ms,
                                      status, created_at_ms, updated_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'active', $13, $13)
         ON CONFLICT (user_id, platform, platform_uid) DO UPDATE SET
             username = excluded.username, display_name = excluded.display_name,
             avatar_url = excluded.avatar_url, instance = excluded.instance, char_limit = excluded.char_limit,
             access_token = excluded.access_token,
             refresh_token = CASE WHEN excluded.refresh_token = '' THEN social_accounts.refresh_token
                                  ELSE excluded.refresh_token END,
             token_expires_at_ms = excluded.token_expires_at_ms, status = 'active',
             updated_at_ms = excluded.updated_at_ms
         RETURNING ", account_columns!()))
        .bind(id)
        .bind(a.user_id)
        .bind(a.platform)
        .bind(a.platform_uid)
        .bind(a.username)
        .bind(a.display_name)
        .bind(a.avatar_url)
        .bind(a.instance)
        .bind(a.char_limit)
        .bind(a.access_token)
        .bind(a.refresh_token)
        .bind(a.token_expires_at_ms)
        .bind(now)
        .fetch_one(p)
        .await)
}

/// An account by id, whoever's (for token upkeep).
pub async fn account_by_id(db: &Db, id: &str) -> Result<Option<Account>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, Account>(concat!(
        "SELECT ", account_columns!(), " FROM social_accounts WHERE id = $1"))
        .bind(id)
        .fetch_optional(p)
        .await)
}

/// Takes the account's refresh lease for `owner` until `until_ms`, if no one holds it; the
/// account as it is now when taken.
pub async fn take_refresh_lease(
    db: &Db,
    id: &str,
    owner: &str,
    until_ms: i64,
) -> Result<Option<Account>, sqlx::Error> {
    let now = now_ms();
    write_pool!(db, p => sqlx::query_as::<_, Account>(concat!(
        "UPDATE social_accounts SET refresh_lock_owner = $2, refresh_lock_until_ms = $3
         WHERE id = $1 AND refresh_lock_until_ms < $4 RETURNING ", account_columns!()))
        .bind(id)
        .bind(owner)
        .bind(until_ms)
        .bind(now)
        .fetch_optional(p)
        .await)
}

/// Stores refreshed tokens (a rotated refresh token; an empty one keeps the stored one) and
/// frees the lease. They are stored even if the lease ran out meanwhile: the platform has
/// already spent the old refresh token, so these are the only good ones.
pub async fn store_refreshed(
    db: &Db,
    id: &str,
    access_token: &str,
    refresh_token: &str,
    expires_at_ms: Option<i64>,
) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE social_accounts SET access_token = $2,
                refresh_token = CASE WHEN $3 = '' THEN refresh_token ELSE $3 END,
                token_expires_at_ms = $4, refresh_lock_owner = NULL, refresh_lock_until_ms = 0,
                status = 'active', updated_at_ms = $5
         WHERE id = $1")
        .bind(id)
        .bind(access_token)
        .bind(refresh_token)
        .bind(expires_at_ms)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|_| ()))
}

/// Frees the refresh lease without changing the tokens.
pub async fn release_refresh_lease(db: &Db, id: &str, owner: &str) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE social_accounts SET refresh_lock_owner = NULL, refresh_lock_until_ms = 0
         WHERE id = $1 AND refresh_lock_owner = $2")
        .bind(id)
        .bind(owner)
        .execute(p)
        .await
        .map(|_| ()))
}

/// Sets an account's status (`needs_reauth` when the platform refused its tokens; `active`);
/// frees its refresh lease.
pub async fn set_status(db: &Db, id: &str, status: &str) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "UPDATE social_accounts SET status = $2, refresh_lock_owner = NULL, refresh_lock_until_ms = 0,
                updated_at_ms = $3 WHERE id = $1")
        .bind(id)
        .bind(status)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|_| ()))
}

/// Renames the user's account (its display name); `None` when it is not theirs.
pub async fn rename_account(
    db: &Db,
    user_id: i64,
    id: &str,
    name: &str,
) -> Result<Option<Account>, sqlx::Error> {
    write_pool!(db, p => sqlx::query_as::<_, Account>(concat!(
        "UPDATE social_accounts SET display_name = $3, updated_at_ms = $4
         WHERE id = $1 AND user_id = $2 AND status <> 'disconnected' RETURNING ", account_columns!()))
        .bind(id)
        .bind(user_id)
        .bind(name)
        .bind(now_ms())
        .fetch_optional(p)
        .await)
}

/// Disconnects the user's account: its tokens are erased and it leaves every set. False when it
/// is not theirs.
pub async fn disconnect(db: &Db, user_id: i64, id: &str) -> Result<bool, sqlx::Error> {
    write_pool!(db, p => {
        let mut tx = p.begin().await?;
        let gone = sqlx::query(
            "UPDATE social_accounts SET status = 'disconnected', access_token = '', refresh_token = '',
                    updated_at_ms = $3 WHERE id = $1 AND user_id = $2 AND status <> 'disconnected'")
            .bind(id)
            .bind(user_id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM social_set_accounts WHERE account_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(gone > 0)
    })
}

/// A social set as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SocialSet {
    pub id: String,
    pub user_id: i64,
    pub name: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// The user's sets, oldest first.
pub async fn sets(db: &Db, user_id: i64) -> Result<Vec<SocialSet>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, SocialSet>(
        "SELECT id, user_id, name, created_at_ms, updated_at_ms FROM social_sets
         WHERE user_id = $1 ORDER BY created_at_ms, id")
        .bind(user_id)
        .fetch_all(p)
        .await)
}

/// The user's set `id`.
pub async fn set(db: &Db, user_id: i64, id: &str) -> Result<Option<SocialSet>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, SocialSet>(
        "SELECT id, user_id, name, created_at_ms, updated_at_ms FROM social_sets
         WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user_id)
        .fetch_optional(p)
        .await)
}

/// `(set id, account id)` for every account in the user's sets.
pub async fn set_members(db: &Db, user_id: i64) -> Result<Vec<(String, String)>, sqlx::Error> {
    read_pool!(db, p => sqlx::query_as::<_, (String, String)>(
        "SELECT m.social_set_id, m.account_id FROM social_set_accounts m
         JOIN social_sets s ON s.id = m.social_set_id
         JOIN social_accounts a ON a.id = m.account_id
         WHERE s.user_id = $1 AND a.status <> 'disconnected' ORDER BY m.added_at_ms, m.account_id")
        .bind(user_id)
        .fetch_all(p)
        .await)
}

pub async fn create_set(
    db: &Db,
    user_id: i64,
    id: &str,
    name: &str,
) -> Result<SocialSet, sqlx::Error> {
    let now = now_ms();
    write_pool!(db, p => sqlx::query_as::<_, SocialSet>(
        "INSERT INTO social_sets (id, user_id, name, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $4)
         RETURNING id, user_id, name, created_at_ms, updated_at_ms")
        .bind(id)
        .bind(user_id)
        .bind(name)
        .bind(now)
        .fetch_one(p)
        .await)
}

/// Renames the user's set; `None` when it is not theirs.
pub async fn rename_set(
    db: &Db,
    user_id: i64,
    id: &str,
    name: &str,
) -> Result<Option<SocialSet>, sqlx::Error> {
    write_pool!(db, p => sqlx::query_as::<_, SocialSet>(
        "UPDATE social_sets SET name = $3, updated_at_ms = $4 WHERE id = $1 AND user_id = $2
         RETURNING id, user_id, name, created_at_ms, updated_at_ms")
        .bind(id)
        .bind(user_id)
        .bind(name)
        .bind(now_ms())
        .fetch_optional(p)
        .await)
}

/// Deletes the user's set (its memberships go with it; drafts in it keep their accounts and
/// lose the set). False when it is not theirs.
pub async fn delete_set(db: &Db, user_id: i64, id: &str) -> Result<bool, sqlx::Error> {
    write_pool!(db, p => {
        let mut tx = p.begin().await?;
        sqlx::query("UPDATE drafts SET social_set_id = NULL WHERE social_set_id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM social_set_accounts WHERE social_set_id = (SELECT id FROM social_sets WHERE id = $1 AND user_id = $2)")
            .bind(id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let gone = sqlx::query("DELETE FROM social_sets WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(gone > 0)
    })
}

/// Puts an account in a set (both already checked to be the user's); adding it twice is a no-op.
pub async fn add_to_set(db: &Db, set_id: &str, account_id: &str) -> Result<(), sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "INSERT INTO social_set_accounts (social_set_id, account_id, added_at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (social_set_id, account_id) DO NOTHING")
        .bind(set_id)
        .bind(account_id)
        .bind(now_ms())
        .execute(p)
        .await
        .map(|_| ()))
}

/// Takes an account out of a set; false when it was not in it.
pub async fn remove_from_set(db: &Db, set_id: &str, account_id: &str) -> Result<bool, sqlx::Error> {
    write_pool!(db, p => sqlx::query(
        "DELETE FROM social_set_accounts WHERE social_set_id = $1 AND account_id = $2")
        .bind(set_id)
        .bind(account_id)
        .execute(p)
        .await
        .map(|r| r.rows_affected() > 0))
}
