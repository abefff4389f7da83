//! Users and their balances, and the admin side of the ledger (grants and adjustments).

use super::{Db, read_pool, write_pool};
use crate::billing::Micros;
use crate::clock::now_ms;

/// A user as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct User {
    pub id: i64,
    pub email: String,
    /// Set for accounts that registered with a password.
    pub username: Option<String>,
    pub role: String,
    pub status: String,
    pub balance_micros: i64,
    pub reserved_micros: i64,
    /// `monthly`, `quarterly`, `yearly`, … (set by an admin; lifts the AI generation limit).
    pub membership_type: Option<String>,
    pub membership_expires_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl User {
    /// Whether a membership is in force at `now_ms`.
    pub fn is_member(&self, now_ms: i64) -> bool {
        self.membership_expires_at_ms.is_some_and(|e| e > now_ms)
    }
}

/// An admin's change to a user; `None` keeps a field.
#[derive(Default)]
pub struct UserPatch<'a> {
    pub status: Option<&'a str>,
    pub email: Option<&'a str>,
    /// The membership type and its end, set together (`(None, None)` ends it).
    pub membership: Option<(Option<String>, Option<i64>)>,
}

/// One ledger row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LedgerEntry {
    pub id: i64,
    pub user_id: i64,
    pub kind: String,
    pub amount_micros: i64,
    pub balance_after_micros: i64,
    pub description: String,
    pub request_id: Option<String>,
    pub created_at_ms: i64,
}

/// Why a user could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    #[error("a user with this email exists")]
    EmailTaken,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Why a balance adjustment was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdjustError {
    #[error("user not found")]
    NotFound,
    #[error("the balance would fall below what is reserved or below zero (available {available})")]
    WouldGoNegative { available: Micros },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Creates a user; a non-zero starting balance is written as a `grant` ledger row.
pub async fn create(
    db: &Db,
    email: &str,
    role: &str,
    balance: Micros,
) -> Result<User, CreateUserError> {
    let now = now_ms();
    write_pool!(db, p => {
        let mut tx = p.begin().await?;
        let inserted = sqlx::query_as::<_, User>(
            "INSERT INTO users (email, role, status, balance_micros, reserved_micros, created_at_ms, updated_at_ms)
             VALUES ($1, $2, 'active', $3, 0, $4, $4)
             RETURNING id, email, username, role, status, balance_micros, reserved_micros, membership_type, membership_expires_at_ms, created_at_ms, updated_at_ms",
        )
        .bind(email)
        .bind(role)
        .bind(balance.0)
        .bind(now)
        .fetch_one(&mut *tx)
        .await;
        let user = match inserted {
            Ok(u) => u,
            Err(e) if super::is_unique_violation(&e) => return Err(CreateUserError::EmailTaken),
            Err(e) => return Err(e.into()),
        };
        if balance.0 != 0 {
            sqlx::query(
                "INSERT INTO ledger_entries (user_id, kind, amount_micros, balance_after_micros, description, request_id, created_at_ms)
                 VALUES ($1, 'grant', $2, $2, 'initial balance', NULL, $3)",
            )
            .bind(user.id)
            .bind(balance.0)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(user)
    })
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("this username is taken")]
    UsernameTaken,
    #[error("an account with this email exists")]
    EmailTaken,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Creates a password account with no balance.
pub async fn register(
    db: &Db,
    username: &str,
    email: &str,
    password_hash: &str,
) -> Result<User, RegisterError> {
    let now = now_ms();
    write_pool!(db, p => {
        let mut tx = p.begin().await?;
        let (by_name, by_email): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM users WHERE username = $1), (SELECT COUNT(*) FROM users WHERE email = $2)",
        )
        .bind(username)
        .bind(email)
        .fetch_one(&mut *tx)
        .await?;
        if by_name > 0 {
            return Err(RegisterError::UsernameTaken);
        }
        if by_email > 0 {
            return Err(RegisterError::EmailTaken);
        }
        let inserted = sqlx::query_as::<_, User>(
            "INSERT INTO users (email, username, password_hash, role, status, balance_micros, reserved_micros, created_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, 'user', 'active', 0, 0, $4, $4)
             RETURNING id, email, username, role, status, balance_micros, reserved_micros, membership_type, membership_expires_at_ms, created_at_ms, updated_at_ms",
        )
        .bind(email)
        .bind(username)
        .bind(password_hash)
        .bind(now)
        .fetch_one(&mut *tx)
        .await;
        let user = match inserted {
            Ok(u) => u,
            // A concurrent registration won the race.
            Err(e) if super::is_unique_violation(&e) => return Err(RegisterError::UsernameTaken),
            Err(e) => return Err(e.into()),
        };
        tx.commit().await?;
        Ok(user)
    })
}

/// The user a login name (username or email) belongs to, with their password hash.
pub async fn find_login(
    db: &Db,
    login: &str,
) -> Result<Option<(User, Option<String>)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Login {
        #[sqlx(flatten)]
        user: User,
        password_hash: Option<String>,
    }
    let sql = "SELECT id, email, username, role, status, balance_micros, reserved_micros, membership_type, membership_expires_at_ms, created_at_ms, updated_at_ms, password_hash
               FROM users WHERE username = $1 OR email = $1 ORDER BY id LIMIT 1";
    let row: Option<Login> =
        read_pool!(db, p => sqlx::query_as(sql).bind(login).fetch_optional(p).await)?;
    Ok(row.map(|r| (r.user, r.password_hash)))
}

/// One user by id.
pub async fn get(db: &Db, id: i64) -> Result<Option<User>, sqlx::Error> {
    let sql = "SELECT id, email, username, role, status, balance_micros, reserved_micros, membership_type, membership_expires_at_ms, created_at_ms, updated_at_ms FROM users WHERE id = $1";
    read_pool!(db, p => sqlx::query_as::<_, User>(sql).bind(id).fetch_optional(p).await)
}

/// A page of users, newest first, and the total count.
pub async fn list(db: &Db, limit: i64, offset: i64) -> Result<(i64, Vec<User>), sqlx::Error> {
    read_pool!(db, p => {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(p).await?;
        let users = sqlx::query_as::<_, User>(
            "SELECT id, email, username, role, status, balance_micros, reserved_micros, membership_type, membership_expires_at_ms, created_at_ms, updated_at_ms
             FROM users ORDER BY id DESC LIMIT $1 OFFSET $2",
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(p)
        .await?;
        Ok((total, users))
    })
}

/// Changes a user's status and/or email; `None` when the user does not exist.
pub async fn update(
    db: &Db,
    id: i64,
    patch: UserPatch<'_>,
) -> Result<Option<User>, CreateUserError> {
    let (set_membership, (membership_type, membership_end)) = match patch.membership {
        Some(m) => (1_i64, m),
        None => (0, (None, None)),
    };
    let result = write_pool!(db, p => sqlx::query_as::<_, User>(
        "UPDATE users SET status = COALESCE($2, status), email = COALESCE($3, email), updated_at_ms = $4,
            membership_type = CASE WHEN $5 = 1 THEN $6 ELSE membership_type END,
            membership_expires_at_ms = CASE WHEN $5 = 1 THEN $7 ELSE membership_expires_at_ms END
         WHERE id = $1
         RETURNING id, email, username, role, status, balance_micros, reserved_micros, membership_type, membership_expires_at_ms, created_at_ms, updated_at_ms",
    )
    .bind(id)
    .bind(patch.status)
    .bind(patch.email)
    .bind(now_ms())
    .bind(set_membership)
    .bind(membership_type)
    .bind(membership_end)
    .fetch_optional(p)
    .await);
    match result {
        Ok(u) => Ok(u),
        Err(e) if super::is_unique_violation(&e) => Err(CreateUserError::EmailTaken),
        Err(e) => Err(e.into()),
    }
}

/// Adds `delta` (positive or negative) to a balance and appends the ledger row. A debit may not
/// take the balance below what is reserved for requests in flight.
pub async fn adjust_balance(
    db: &Db,
    id: i64,
    delta: Micros,
    reason: &str,
) -> Result<LedgerEntry, AdjustError> {
    let now = now_ms();
    let kind = if delta.0 >= 0 { "credit" } else { "debit" };
    write_pool!(db, p => {
        let mut tx = p.begin().await?;
        let balance: Option<i64> = sqlx::query_scalar(
            "UPDATE users SET balance_micros = balance_micros + $2, updated_at_ms = $3
             WHERE id = $1 AND balance_micros + $2 >= reserved_micros AND balance_micros + $2 >= 0
             RETURNING balance_micros",
        )
        .bind(id)
        .bind(delta.0)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(balance) = balance else {
            let row: Option<(i64, i64)> =
                sqlx::query_as("SELECT balance_micros, reserved_micros FROM users WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(match row {
                None => AdjustError::NotFound,
                Some((b, r)) => AdjustError::WouldGoNegative { available: Micros(b - r) },
            });
        };
        let entry = sqlx::query_as::<_, LedgerEntry>(
            "INSERT INTO ledger_entries (user_id, kind, amount_micros, balance_after_micros, description, request_id, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, NULL, $6)
             RETURNING id, user_id, kind, amount_micros, balance_after_micros, description, request_id, created_at_ms",
        )
        .bind(id)
        .bind(kind)
        .bind(delta.0)
        .bind(balance)
        .bind(reason)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(entry)
    })
}

/// A page of a user's ledger, newest first, and the total count.
pub async fn ledger(
    db: &Db,
    user_id: i64,
    limit: i64,
    offset: i64,
) -> Result<(i64, Vec<LedgerEntry>), sqlx::Error> {
    read_pool!(db, p => {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger_entries WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(p)
            .await?;
        let rows = sqlx::query_as::<_, LedgerEntry>(
            "SELECT id, user_id, kind, amount_micros, balance_after_micros, description, request_id, created_at_ms
             FROM ledger_entries WHERE user_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3",
        )
        .bind(user_id)
        .bind(limit)
        .bind(offset)
        .fetch_all(p)
        .await?;
        Ok((total, rows))
    })
}

/// The sum of a user's ledger rows (must always equal the balance).
pub async fn ledger_sum(db: &Db, user_id: i64) -> Result<i64, sqlx::Error> {
    read_pool!(db, p => sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(amount_micros), 0) AS BIGINT) FROM ledger_entries WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_one(p)
    .await)
}
