//! Keeping a connected account's tokens alive: an access token is refreshed ahead of its expiry
//! (`social.refresh_ahead_ms`), by one caller at a time per account across every instance (a
//! per-account mutex in the process, a lease on the account row between processes); the rotated
//! refresh token is stored before the new access token is handed out, and a stored refresh
//! token is never replaced by an empty one. A refresh the platform refuses marks the account
//! `needs_reauth` and answers `TOKEN_EXPIRED`.

use super::oauth::TokenError;
use super::platforms::x;
use crate::db::{self, social::Account};
use crate::error::ApiError;
use crate::secrets::Purpose;
use crate::state::AppState;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

/// How long one refresh may hold the account's lease.
const LEASE_MS: i64 = 30_000;
/// How long a caller waits for another instance's refresh.
const WAIT: Duration = Duration::from_secs(15);

/// One lock per account being refreshed in this process.
static LOCAL: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn local_lock(account_id: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut map = LOCAL.lock().unwrap_or_else(|p| p.into_inner());
    // Locks no one waits on any more are dropped, so the map stays as small as the refreshes.
    map.retain(|_, l| Arc::strong_count(l) > 1);
    Arc::clone(map.entry(account_id.to_owned()).or_default())
}

fn token_expired(a: &Account) -> ApiError {
    ApiError::TokenExpired(format!(
        "the {} account @{} must be connected again: the platform no longer accepts its token",
        a.platform, a.username
    ))
}

/// Whether `a`'s access token is good for a while (`stale`: a token the platform just refused,
/// which is not, whatever its expiry says).
fn fresh(state: &AppState, a: &Account, stale: Option<&str>) -> bool {
    // A 60-day Threads token is refreshed a week ahead (it cannot be once it has expired).
    let ahead = if a.platform == "threads" {
        (state.config.social.refresh_ahead_ms as i64).max(7 * 86_400_000)
    } else {
        state.config.social.refresh_ahead_ms as i64
    };
    let in_time = a
        .token_expires_at_ms
        .is_none_or(|at| at > crate::clock::now_ms() + ahead);
    in_time && !a.access_token.is_empty() && stale.is_none_or(|s| !same_token(state, a, s))
}

fn same_token(state: &AppState, a: &Account, token: &str) -> bool {
    state
        .secrets
        .open(Purpose::SocialToken, &a.access_token)
        .is_ok_and(|t| t == token)
}

fn open(state: &AppState, sealed: &str) -> Result<String, ApiError> {
    state
        .secrets
        .open(Purpose::SocialToken, sealed)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// A usable access token of account `account_id`, refreshed first if it is about to expire or
/// is `stale` (the platform just refused it).
pub async fn access_token(
    state: &AppState,
    account_id: &str,
    stale: Option<&str>,
) -> Result<String, ApiError> {
    let not_found = || ApiError::NotFound(format!("account {account_id} not found"));
    let account = db::social::account_by_id(&state.db, account_id)
        .await?
        .ok_or_else(not_found)?;
    if account.status != "active" {
        return Err(token_expired(&account));
    }
    if fresh(state, &account, stale) {
        return open(state, &account.access_token);
    }
    let lock = local_lock(account_id);
    let _guard = lock.lock().await;
    let owner = format!("{:016x}", rand::random::<u64>());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let account = db::social::account_by_id(&state.db, account_id)
            .await?
            .ok_or_else(not_found)?;
        if account.status != "active" {
            return Err(token_expired(&account));
        }
        if fresh(state, &account, stale) {
            return open(state, &account.access_token);
        }
        let until = crate::clock::now_ms() + LEASE_MS;
        if let Some(leased) =
            db::social::take_refresh_lease(&state.db, account_id, &owner, until).await?
        {
            return refresh(state, &leased, &owner, stale).await;
        }
        // Another instance is refreshing it: wait for its tokens.
        if tokio::time::Instant::now() > deadline {
            return Err(ApiError::Unavailable(format!(
                "the token of account {account_id} is being refreshed elsewhere; try again"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Refreshes a leased account's tokens and stores them before handing the access token out.
async fn refresh(
    state: &AppState,
    a: &Account,
    owner: &str,
    stale: Option<&str>,
) -> Result<String, ApiError> {
    if fresh(state, a, stale) {
        db::social::release_refresh_lease(&state.db, &a.id, owner).await?;
        return open(state, &a.access_token);
    }
    let refresh_token = open(state, &a.refresh_token)?;
    if refresh_token.is_empty() {
        db::social::set_status(&state.db, &a.id, "needs_reauth").await?;
        return Err(token_expired(a));
    }
    let refreshed = match a.platform.as_str() {
        "twitter" => x::refresh(&state.http, &state.config.social.x, &refresh_token).await,
        // A Threads token refreshes itself: the new one is also the next refresh's.
        "threads" => super::platforms::threads::refresh(
            &state.http,
            &state.config.social.threads,
            &refresh_token,
        )
        .await
        .map(|mut t| {
            t.refresh_token = t.access_token.clone();
            t
        }),
        "linkedin" => {
            super::platforms::linkedin::refresh(
                &state.http,
                &state.config.social.linkedin,
                &refresh_token,
            )
            .await
        }
        "bluesky" => {
            let service = a
                .instance
                .as_deref()
                .unwrap_or(&state.config.social.bluesky.default_service);
            super::platforms::bluesky::refresh_session(&state.http, service, &refresh_token).await
        }
        other => {
            db::social::release_refresh_lease(&state.db, &a.id, owner).await?;
            return Err(ApiError::TokenExpired(format!(
                "{other} tokens are not refreshed; connect the account again"
            )));
        }
    };
    match refreshed {
        Ok(t) => {
            let access = state.secrets.seal(Purpose::SocialToken, &t.access_token);
            let rotated = state.secrets.seal(Purpose::SocialToken, &t.refresh_token);
            let expires = t
                .expires_in_s
                .map(|s| crate::clock::now_ms() + s.saturating_mul(1000));
            db::social::store_refreshed(&state.db, &a.id, &access, &rotated, expires).await?;
            Ok(t.access_token)
        }
        Err(TokenError::Refused { error, .. }) => {
            tracing::warn!(account = %a.id, %error, "the platform refused a refresh: the account needs reconnecting");
            db::social::set_status(&state.db, &a.id, "needs_reauth").await?;
            Err(token_expired(a))
        }
        Err(TokenError::Unavailable(m)) => {
            db::social::release_refresh_lease(&state.db, &a.id, owner).await?;
            Err(ApiError::Unavailable(format!(
                "refreshing the account's token failed: {m}"
            )))
        }
    }
}
