//! Connecting an account (seed 003's polled session, seed 004's X OAuth rules): the user starts
//! a session and is sent to the platform with a single-use `state` (bound to the user, the
//! session and its expiry) and a PKCE challenge; the platform's browser redirect to the callback
//! carries no API key, only that `state`; the callback trades the code for tokens, reads who the
//! user is there, stores the account with its tokens sealed, puts it in a social set and ends the
//! session, which the user polls.

use super::drafts::new_uuid;
use super::oauth::{self, TokenError};
use super::platforms::x;
use crate::db::social::{Account, Connected};
use crate::db::social_auth::{AuthSession, NewSession};
use crate::db::{self};
use crate::error::ApiError;
use crate::secrets::Purpose;
use crate::state::AppState;
use serde_json::{Value, json};

/// Seed 003's `errorCode` of a failed session.
pub mod error_code {
    /// The user refused, or the platform answered the redirect with an error.
    pub const DENIED: i64 = 1;
    /// The session ran out before the callback came.
    pub const EXPIRED: i64 = 2;
    /// The platform refused the authorization code.
    pub const CODE_REFUSED: i64 = 3;
    /// The platform could not be reached, or its profile could not be read.
    pub const PLATFORM_FAILED: i64 = 4;
}

/// Where a new account goes: a new set of its own, or an existing one (the one named, else the
/// user's first, made when they have none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    CreateNew,
    AddToExisting,
}

impl Mode {
    pub fn parse(v: Option<&Value>) -> Result<Mode, ApiError> {
        match v {
            None | Some(Value::Null) => Ok(Mode::AddToExisting),
            Some(Value::String(s)) if s == "add_to_existing" => Ok(Mode::AddToExisting),
            Some(Value::String(s)) if s == "create_new" => Ok(Mode::CreateNew),
            Some(other) => Err(ApiError::InvalidInput(format!(
                "mode: must be \"create_new\" or \"add_to_existing\", got {other}"
            ))),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Mode::CreateNew => "create_new",
            Mode::AddToExisting => "add_to_existing",
        }
    }
}

/// How a connection is asked for.
#[derive(Debug, Clone)]
pub struct Start {
    pub social_set_id: Option<String>,
    pub mode: Mode,
    pub follow_on_x: bool,
}

/// A started session: where to send the user, and the session to poll.
pub struct Started {
    pub auth_url: String,
    pub session_id: String,
    pub expires_at_ms: i64,
}

/// The OAuth app `app` of a platform (named `who`, configured under `[social.<section>]`), or
/// `OAUTH_NOT_CONFIGURED` naming what to set.
fn configured<'a>(
    app: &'a crate::config::OAuthApp,
    who: &str,
    section: &str,
) -> Result<&'a crate::config::OAuthApp, ApiError> {
    if app.client_id.is_empty() {
        let env = section.to_ascii_uppercase();
        return Err(ApiError::OAuthNotConfigured(format!(
            "{who} OAuth is not configured: set [social.{section}] client_id, client_secret and \
             redirect_uri (TOLLGATE__SOCIAL__{env}__CLIENT_ID, …)"
        )));
    }
    oauth::check_redirect_uri(&app.redirect_uri).map_err(ApiError::OAuthNotConfigured)?;
    Ok(app)
}

/// A pending session to open.
struct Opening<'a> {
    platform: &'a str,
    /// The PKCE verifier (kept sealed with the session), if the platform takes PKCE.
    verifier: Option<&'a str>,
    instance: Option<&'a str>,
}

/// Checks the set a connection names and opens its pending session: its id, single-use
/// `state` and expiry.
async fn open_session(
    state: &AppState,
    user_id: i64,
    start: &Start,
    opening: Opening<'_>,
) -> Result<(String, String, i64), ApiError> {
    if let Some(set) = &start.social_set_id {
        db::social::set(&state.db, user_id, set)
            .await?
            .ok_or_else(|| {
                ApiError::InvalidInput(format!("socialSetId: no social set of yours is {set:?}"))
            })?;
    }
    let (id, st) = (new_uuid(), oauth::random_token());
    let expires_at_ms = crate::clock::now_ms() + state.config.social.auth_session_ttl_ms as i64;
    let sealed = opening
        .verifier
        .map(|v| state.secrets.seal(Purpose::AuthSession, v))
        .unwrap_or_default();
    db::social_auth::insert(
        &state.db,
        &NewSession {
            id: &id,
            user_id,
            platform: opening.platform,
            state: &st,
            code_verifier: &sealed,
            mode: start.mode.as_str(),
            social_set_id: start.social_set_id.as_deref(),
            follow_on_x: start.follow_on_x,
            instance: opening.instance,
            expires_at_ms,
        },
    )
    .await?;
    Ok((id, st, expires_at_ms))
}

/// Starts connecting an X account for `user_id`.
pub async fn start_x(state: &AppState, user_id: i64, start: Start) -> Result<Started, ApiError> {
    let app = configured(&state.config.social.x, "X", "x")?;
    let verifier = oauth::random_token();
    let opening = Opening {
        platform: "twitter",
        verifier: Some(&verifier),
        instance: None,
    };
    let (session_id, st, expires_at_ms) = open_session(state, user_id, &start, opening).await?;
    Ok(Started {
        auth_url: x::authorize_url(app, &st, &verifier),
        session_id,
        expires_at_ms,
    })
}

/// A callback's query: `code` and `state`, or the platform's `error`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Callback {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// The session a callback's `state` names, used up by this call (a second use, an unknown or
/// another platform's state, or an ended or expired session is refused).
async fn take_session(
    state: &AppState,
    platform: &str,
    cb: &Callback,
) -> Result<AuthSession, ApiError> {
    let st = cb
        .state
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::InvalidInput("state: required".into()))?;
    let Some(session) = db::social_auth::take_by_state(&state.db, st).await? else {
        return Err(match db::social_auth::by_state(&state.db, st).await? {
            Some(_) => ApiError::InvalidInput(
                "state: this authorization was already used; start the connection again".into(),
            ),
            None => {
                ApiError::InvalidInput("state: no connection was started with this state".into())
            }
        });
    };
    if session.platform != platform {
        return Err(ApiError::InvalidInput(format!(
            "state: this state belongs to a {} connection",
            session.platform
        )));
    }
    if session.status != "pending" {
        return Err(ApiError::InvalidInput(format!(
            "state: the connection session has already {}",
            session.status
        )));
    }
    if crate::clock::now_ms() > session.expires_at_ms {
        let message = "the connection session expired before the platform answered";
        db::social_auth::fail(&state.db, &session.id, error_code::EXPIRED, message).await?;
        return Err(ApiError::InvalidInput(format!("{message}; start again")));
    }
    if let Some(e) = &cb.error {
        let message = format!(
            "the platform answered {e}{}",
            cb.error_description
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        );
        db::social_auth::fail(&state.db, &session.id, error_code::DENIED, &message).await?;
        return Err(ApiError::InvalidInput(message));
    }
    Ok(session)
}

/// Fails `session` for `e` and gives the client's error.
async fn failed(state: &AppState, session: &AuthSession, code: i64, e: ApiError) -> ApiError {
    if let Err(db_error) = db::social_auth::fail(&state.db, &session.id, code, &e.to_string()).await
    {
        tracing::warn!(error = %db_error, "marking a connection session failed");
    }
    e
}

/// Finishes an X connection from its callback: the account and the set it went into.
pub async fn finish_x(state: &AppState, cb: &Callback) -> Result<(Account, String), ApiError> {
    let session = take_session(state, "twitter", cb).await?;
    let code = code_of(state, &session, cb).await?;
    let app = &state.config.social.x;
    let verifier = match state
        .secrets
        .open(Purpose::AuthSession, &session.code_verifier)
    {
        Ok(v) => v,
        Err(e) => {
            let e = ApiError::Internal(e.to_string());
            return Err(failed(state, &session, error_code::PLATFORM_FAILED, e).await);
        }
    };
    let exchanged = x::exchange_code(&state.http, app, &code, &verifier).await;
    let tokens = tokens_or_fail(state, &session, "X", exchanged).await?;
    let me = x::me(&state.http, app, &tokens.access_token).await;
    let me = profile_or_fail(state, &session, "X", me).await?;
    let profile = Profile {
        uid: &me.id,
        username: &me.username,
        display_name: me.name.as_deref(),
        avatar_url: me.avatar_url.as_deref(),
        instance: None,
        char_limit: None,
    };
    store(state, &session, "twitter", profile, &tokens).await
}

/// The callback's code, or the session failed for want of one.
async fn code_of(
    state: &AppState,
    session: &AuthSession,
    cb: &Callback,
) -> Result<String, ApiError> {
    match cb.code.as_deref().filter(|c| !c.is_empty()) {
        Some(code) => Ok(code.to_owned()),
        None => {
            let e = ApiError::InvalidInput("code: required".into());
            Err(failed(state, session, error_code::DENIED, e).await)
        }
    }
}

/// The tokens a platform (named `who`) gave for the code, or the session failed with why.
async fn tokens_or_fail(
    state: &AppState,
    session: &AuthSession,
    who: &str,
    exchanged: Result<oauth::Tokens, TokenError>,
) -> Result<oauth::Tokens, ApiError> {
    let (code, e) = match exchanged {
        Ok(t) => return Ok(t),
        Err(TokenError::Refused { error, .. }) => (
            error_code::CODE_REFUSED,
            ApiError::InvalidInput(format!("{who} refused the authorization code: {error}")),
        ),
        Err(TokenError::Unavailable(m)) => (
            error_code::PLATFORM_FAILED,
            ApiError::Unavailable(format!("{who}'s token endpoint failed: {m}")),
        ),
    };
    Err(failed(state, session, code, e).await)
}

/// Who the user is at the platform (named `who`), or the session failed.
async fn profile_or_fail<T>(
    state: &AppState,
    session: &AuthSession,
    who: &str,
    read: Result<T, String>,
) -> Result<T, ApiError> {
    match read {
        Ok(me) => Ok(me),
        Err(m) => {
            let e = ApiError::Unavailable(format!("{who} did not say who the user is: {m}"));
            Err(failed(state, session, error_code::PLATFORM_FAILED, e).await)
        }
    }
}

/// Who an account is at its platform.
struct Profile<'a> {
    uid: &'a str,
    username: &'a str,
    display_name: Option<&'a str>,
    avatar_url: Option<&'a str>,
    instance: Option<&'a str>,
    char_limit: Option<i64>,
}

/// Stores a connected account, puts it in its set and ends the session as completed: the
/// account and its set.
async fn store(
    state: &AppState,
    session: &AuthSession,
    platform: &str,
    profile: Profile<'_>,
    tokens: &oauth::Tokens,
) -> Result<(Account, String), ApiError> {
    let kept = keep(state, session, platform, profile, tokens).await?;
    db::social_auth::complete(&state.db, &session.id, &json!([kept.0.id]).to_string()).await?;
    Ok(kept)
}

/// Stores a connected account (its tokens sealed, their expiry) and puts it in its set: the
/// account and its set.
async fn keep(
    state: &AppState,
    session: &AuthSession,
    platform: &str,
    profile: Profile<'_>,
    tokens: &oauth::Tokens,
) -> Result<(Account, String), ApiError> {
    let sealed_access = state
        .secrets
        .seal(Purpose::SocialToken, &tokens.access_token);
    let sealed_refresh = state
        .secrets
        .seal(Purpose::SocialToken, &tokens.refresh_token);
    let expires = tokens
        .expires_in_s
        .map(|s| crate::clock::now_ms() + s.saturating_mul(1000));
    let account = db::social::upsert_account(
        &state.db,
        &new_uuid(),
        &Connected {
            user_id: session.user_id,
            platform,
            platform_uid: profile.uid,
            username: profile.username,
            display_name: profile.display_name,
            avatar_url: profile.avatar_url,
            instance: profile.instance,
            char_limit: profile.char_limit,
            access_token: &sealed_access,
            refresh_token: &sealed_refresh,
            token_expires_at_ms: expires,
        },
    )
    .await?;
    let set_id = place(state, session, &account).await?;
    Ok((account, set_id))
}

/// Puts a newly connected account in its set: the session's, a new one (`create_new`), or the
/// user's first (made when there is none).
async fn place(
    state: &AppState,
    session: &AuthSession,
    account: &Account,
) -> Result<String, ApiError> {
    let user_id = session.user_id;
    let set_id = match (&session.social_set_id, session.mode.as_str()) {
        (Some(id), _) if db::social::set(&state.db, user_id, id).await?.is_some() => id.clone(),
        (_, "create_new") => {
            let id = new_uuid();
            db::social::create_set(&state.db, user_id, &id, &format!("@{}", account.username))
                .await?;
            id
        }
        _ => match db::social::sets(&state.db, user_id)
            .await?
            .into_iter()
            .next()
        {
            Some(first) => first.id,
            None => {
                let id = new_uuid();
                db::social::create_set(&state.db, user_id, &id, "Default").await?;
                id
            }
        },
    };
    db::social::add_to_set(&state.db, &set_id, &account.id).await?;
    Ok(set_id)
}

/// Revokes a disconnected account's tokens at its platform where the platform allows it (best
/// effort): X's refresh token, Mastodon's token (with the instance's app), Bluesky's session.
/// Threads has no revocation call; a LinkedIn member and their pages share one token, so it is
/// left to expire.
pub async fn revoke(state: &AppState, account: &Account) {
    let open = |sealed: &str| {
        state
            .secrets
            .open(Purpose::SocialToken, sealed)
            .ok()
            .filter(|t| !t.is_empty())
    };
    match account.platform.as_str() {
        "twitter" => {
            if let Some(token) = open(&account.refresh_token) {
                x::revoke(&state.http, &state.config.social.x, &token).await;
            }
        }
        "mastodon" => {
            let instance = account.instance.clone().unwrap_or_default();
            let redirect = &state.config.social.mastodon.redirect_uri;
            let app = db::social_auth::mastodon_app(&state.db, &instance, redirect).await;
            let secret = |sealed: &str| state.secrets.open(Purpose::AuthSession, sealed).ok();
            if let (Ok(Some((id, sealed))), Some(token)) = (app, open(&account.access_token))
                && let Some(secret) = secret(&sealed)
            {
                super::platforms::mastodon::revoke(&state.http, &instance, &id, &secret, &token)
                    .await;
            }
        }
        "bluesky" => {
            if let Some(token) = open(&account.refresh_token) {
                let service = account
                    .instance
                    .clone()
                    .unwrap_or_else(|| state.config.social.bluesky.default_service.clone());
                super::platforms::bluesky::delete_session(&state.http, &service, &token).await;
            }
        }
        _ => {}
    }
}

/// One account in seed 003's shape.
pub fn account_json(a: &Account) -> Value {
    json!({
        "accountId": a.id,
        "platform": a.platform,
        "platformUid": a.platform_uid,
        "displayName": a.display_name.clone().unwrap_or_else(|| a.username.clone()),
        "account": a.username,
        "avatarUrl": a.avatar_url,
    })
}

/// A session in seed 003's shape (`accounts`: the user's accounts it connected).
pub fn session_json(s: &AuthSession, accounts: &[Account], iso: impl Fn(i64) -> Value) -> Value {
    let ids: Vec<String> = serde_json::from_str(&s.account_ids).unwrap_or_default();
    let connected: Vec<Value> = ids
        .iter()
        .filter_map(|id| accounts.iter().find(|a| a.id == *id))
        .map(account_json)
        .collect();
    let selectable: Value = serde_json::from_str(&s.selectable).unwrap_or(json!([]));
    // An open session past its end reads as failed (its callback can no longer complete it).
    let expired = s.status == "pending" && crate::clock::now_ms() > s.expires_at_ms;
    let (status, error_code) = if expired {
        ("failed", Some(error_code::EXPIRED))
    } else {
        (s.status.as_str(), s.error_code)
    };
    json!({
        "sessionId": s.id,
        "status": status,
        "requiresSelection": s.requires_selection != 0,
        "errorCode": error_code,
        "errorMessage": if expired { Some("the connection session expired") } else { s.error_message.as_deref() },
        "expiresAt": iso(s.expires_at_ms),
        "accountId": ids.first(),
        "accountIds": ids,
        "accounts": connected,
        "selectableAccounts": selectable,
    })
}

/// A Bluesky connection as asked for: the handle (or email), an app password, the PDS.
#[derive(Debug, Clone)]
pub struct BlueskyLogin {
    pub handle: String,
    pub app_password: String,
    /// The PDS's URL (`social.bluesky.default_service` when the user names none).
    pub service: String,
}

/// Connects a Bluesky account at once: one `createSession` (never again per post; its
/// `refreshJwt` is kept and rotated), the account stored with its tokens sealed, placed in a set,
/// and a session that is already `completed` (or `failed`, with why) for the polling client.
pub async fn connect_bluesky(
    state: &AppState,
    user_id: i64,
    start: Start,
    login: BlueskyLogin,
) -> Result<(Account, String, String), ApiError> {
    use super::platforms::bluesky;
    let service = login.service.trim_end_matches('/').to_owned();
    let valid = url::Url::parse(&service)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    if !valid {
        return Err(ApiError::InvalidInput(format!(
            "service: {service:?} is not an http(s) URL"
        )));
    }
    let opening = Opening {
        platform: "bluesky",
        verifier: None,
        instance: Some(&service),
    };
    let (id, _, _) = open_session(state, user_id, &start, opening).await?;
    let session = db::social_auth::get(&state.db, user_id, &id)
        .await?
        .ok_or_else(|| ApiError::Internal("the new connection session vanished".into()))?;
    let logged_in =
        match bluesky::create_session(&state.http, &service, &login.handle, &login.app_password)
            .await
        {
            Ok(s) => s,
            Err(bluesky::LoginError::Refused(why)) => {
                let e = ApiError::Unauthorized(format!("Bluesky refused the login: {why}"));
                return Err(failed(state, &session, error_code::CODE_REFUSED, e).await);
            }
            Err(bluesky::LoginError::Unavailable(why)) => {
                let e = ApiError::Unavailable(format!("Bluesky could not be reached: {why}"));
                return Err(failed(state, &session, error_code::PLATFORM_FAILED, e).await);
            }
        };
    let profile = Profile {
        uid: &logged_in.did,
        username: &logged_in.handle,
        display_name: None,
        avatar_url: None,
        instance: Some(&service),
        char_limit: None,
    };
    let (account, set_id) = store(state, &session, "bluesky", profile, &logged_in.tokens()).await?;
    Ok((account, set_id, id))
}

/// A Mastodon instance's URL, normalised (`https://` added to a bare host, no trailing slash).
pub fn instance_url(raw: &str) -> Result<String, ApiError> {
    let raw = raw.trim().trim_end_matches('/');
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("https://{raw}")
    };
    let ok = url::Url::parse(&with_scheme).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some() && u.path() == "/"
    });
    if raw.is_empty() || !ok {
        return Err(ApiError::InvalidInput(format!(
            "instance: {raw:?} is not a Mastodon instance's address (like mastodon.social)"
        )));
    }
    Ok(with_scheme)
}

/// Starts connecting a Mastodon account on `instance`: Tollgate's app registered there once,
/// then the user sent to the instance's authorize page (PKCE S256).
pub async fn start_mastodon(
    state: &AppState,
    user_id: i64,
    start: Start,
    instance: &str,
) -> Result<Started, ApiError> {
    use super::platforms::mastodon;
    let cfg = &state.config.social.mastodon;
    oauth::check_redirect_uri(&cfg.redirect_uri).map_err(ApiError::OAuthNotConfigured)?;
    let instance = instance_url(instance)?;
    let client_id =
        match db::social_auth::mastodon_app(&state.db, &instance, &cfg.redirect_uri).await? {
            Some((id, _)) => id,
            None => {
                let (id, secret) = mastodon::register_app(
                    &state.http,
                    &instance,
                    &cfg.client_name,
                    &cfg.redirect_uri,
                    &cfg.scopes,
                )
                .await
                .map_err(ApiError::Unavailable)?;
                let sealed = state.secrets.seal(Purpose::AuthSession, &secret);
                db::social_auth::save_mastodon_app(
                    &state.db,
                    &instance,
                    &cfg.redirect_uri,
                    &id,
                    &sealed,
                )
                .await?
                .0
            }
        };
    let verifier = oauth::random_token();
    let opening = Opening {
        platform: "mastodon",
        verifier: Some(&verifier),
        instance: Some(&instance),
    };
    let (session_id, st, expires_at_ms) = open_session(state, user_id, &start, opening).await?;
    Ok(Started {
        auth_url: mastodon::authorize_url(
            &instance,
            &client_id,
            &cfg.redirect_uri,
            &cfg.scopes,
            &st,
            &verifier,
        ),
        session_id,
        expires_at_ms,
    })
}

/// Finishes a Mastodon connection from its callback: the account (with its instance's
/// character limit) and its set.
pub async fn finish_mastodon(
    state: &AppState,
    cb: &Callback,
) -> Result<(Account, String), ApiError> {
    use super::platforms::mastodon;
    let session = take_session(state, "mastodon", cb).await?;
    let code = code_of(state, &session, cb).await?;
    let cfg = &state.config.social.mastodon;
    let instance = session.instance.clone().unwrap_or_default();
    let app = db::social_auth::mastodon_app(&state.db, &instance, &cfg.redirect_uri).await?;
    let opened = app.map(|(id, sealed)| (id, state.secrets.open(Purpose::AuthSession, &sealed)));
    let verifier = state
        .secrets
        .open(Purpose::AuthSession, &session.code_verifier);
    let (client_id, secret, verifier) = match (opened, verifier) {
        (Some((id, Ok(secret))), Ok(v)) => (id, secret, v),
        _ => {
            let e = ApiError::Internal(
                "the instance's app or the session's verifier cannot be read".into(),
            );
            return Err(failed(state, &session, error_code::PLATFORM_FAILED, e).await);
        }
    };
    let client = (client_id.as_str(), secret.as_str());
    let exchanged = mastodon::exchange_code(
        &state.http,
        &instance,
        client,
        &cfg.redirect_uri,
        &code,
        &verifier,
    )
    .await;
    let tokens = tokens_or_fail(state, &session, &instance, exchanged).await?;
    let me = mastodon::me(&state.http, &instance, &tokens.access_token).await;
    let me = profile_or_fail(state, &session, &instance, me).await?;
    let limit = mastodon::max_characters(&state.http, &instance).await;
    let profile = Profile {
        uid: &me.id,
        username: &me.acct,
        display_name: me.display_name.as_deref(),
        avatar_url: me.avatar.as_deref(),
        instance: Some(&instance),
        char_limit: Some(limit),
    };
    store(state, &session, "mastodon", profile, &tokens).await
}

/// Starts connecting a Threads account (OAuth code flow; Threads takes no PKCE).
pub async fn start_threads(
    state: &AppState,
    user_id: i64,
    start: Start,
) -> Result<Started, ApiError> {
    let app = configured(&state.config.social.threads, "Threads", "threads")?;
    let opening = Opening {
        platform: "threads",
        verifier: None,
        instance: None,
    };
    let (session_id, st, expires_at_ms) = open_session(state, user_id, &start, opening).await?;
    Ok(Started {
        auth_url: super::platforms::threads::authorize_url(app, &st),
        session_id,
        expires_at_ms,
    })
}

/// Finishes a Threads connection: the code traded for a 60-day token (refreshed ahead of its
/// end from then on), the profile read, the account stored.
pub async fn finish_threads(
    state: &AppState,
    cb: &Callback,
) -> Result<(Account, String), ApiError> {
    use super::platforms::threads;
    let session = take_session(state, "threads", cb).await?;
    let code = code_of(state, &session, cb).await?;
    let app = &state.config.social.threads;
    let exchanged = threads::exchange_code(&state.http, app, &code).await;
    let mut tokens = tokens_or_fail(state, &session, "Threads", exchanged).await?;
    let me = threads::me(&state.http, app, &tokens.access_token).await;
    let (uid, username, picture) = profile_or_fail(state, &session, "Threads", me).await?;
    // The long-lived token refreshes itself, so it is also the stored refresh token.
    tokens.refresh_token = tokens.access_token.clone();
    let profile = Profile {
        uid: &uid,
        username: &username,
        display_name: None,
        avatar_url: picture.as_deref(),
        instance: None,
        char_limit: None,
    };
    store(state, &session, "threads", profile, &tokens).await
}

/// Starts connecting a LinkedIn member (OAuth code flow).
pub async fn start_linkedin(
    state: &AppState,
    user_id: i64,
    start: Start,
) -> Result<Started, ApiError> {
    let app = configured(&state.config.social.linkedin, "LinkedIn", "linkedin")?;
    let opening = Opening {
        platform: "linkedin",
        verifier: None,
        instance: None,
    };
    let (session_id, st, expires_at_ms) = open_session(state, user_id, &start, opening).await?;
    Ok(Started {
        auth_url: super::platforms::linkedin::authorize_url(app, &st),
        session_id,
        expires_at_ms,
    })
}

/// How a LinkedIn callback ended: the member connected, or a choice to make first.
pub enum Linked {
    Connected(Box<(Account, String)>),
    /// The member administers pages: the session awaits the user's selection among these.
    Choose {
        session_id: String,
        selectable: Value,
    },
}

/// Finishes a LinkedIn connection: the code traded for a 60-day token, the member read from
/// userinfo (its `sub` is the author URN's id). A member who administers pages is offered them
/// (and themself): the session then `requiresSelection` until [`select`] completes it.
pub async fn finish_linkedin(state: &AppState, cb: &Callback) -> Result<Linked, ApiError> {
    use super::platforms::linkedin;
    let session = take_session(state, "linkedin", cb).await?;
    let code = code_of(state, &session, cb).await?;
    let app = &state.config.social.linkedin;
    let exchanged = linkedin::exchange_code(&state.http, app, &code).await;
    let tokens = tokens_or_fail(state, &session, "LinkedIn", exchanged).await?;
    let me = linkedin::me(&state.http, app, &tokens.access_token).await;
    let (sub, name, picture) = profile_or_fail(state, &session, "LinkedIn", me).await?;
    let pages = linkedin::organizations(&state.http, app, &tokens.access_token).await;
    let pages = profile_or_fail(state, &session, "LinkedIn", pages).await?;
    if pages.is_empty() {
        let profile = Profile {
            uid: &sub,
            username: &name,
            display_name: Some(&name),
            avatar_url: picture.as_deref(),
            instance: None,
            char_limit: None,
        };
        let done = store(state, &session, "linkedin", profile, &tokens).await?;
        return Ok(Linked::Connected(Box::new(done)));
    }
    let mut selectable = vec![json!({"platform": "linkedin", "platformUid": sub,
        "displayName": name, "account": name, "avatarUrl": picture, "parentPlatformUid": null})];
    selectable.extend(pages.iter().map(|o| {
        json!({"platform": "linkedin", "platformUid": o.urn, "displayName": o.name,
               "account": o.vanity.clone().unwrap_or_else(|| o.name.clone()),
               "avatarUrl": null, "parentPlatformUid": sub})
    }));
    let selectable = Value::Array(selectable);
    let kept = json!({"access_token": tokens.access_token, "refresh_token": tokens.refresh_token,
                      "expires_in_s": tokens.expires_in_s, "scope": tokens.scope});
    let sealed = state.secrets.seal(Purpose::AuthSession, &kept.to_string());
    db::social_auth::await_selection(&state.db, &session.id, &selectable.to_string(), &sealed)
        .await?;
    Ok(Linked::Choose {
        session_id: session.id,
        selectable,
    })
}

/// Completes a session that awaits a selection with the chosen `platform_uids` (each one of
/// its `selectableAccounts`): one account each, sharing the kept tokens. The ended session.
pub async fn select(
    state: &AppState,
    user_id: i64,
    platform: &str,
    session_id: &str,
    platform_uids: &[String],
) -> Result<AuthSession, ApiError> {
    let not_found = || ApiError::NotFound(format!("no {platform} connection session {session_id}"));
    let session = db::social_auth::get(&state.db, user_id, session_id)
        .await?
        .filter(|s| s.platform == platform)
        .ok_or_else(not_found)?;
    if session.status != "pending" || session.requires_selection == 0 {
        return Err(ApiError::Conflict(format!(
            "connection session {session_id} is {} and awaits no selection",
            session.status
        )));
    }
    if crate::clock::now_ms() > session.expires_at_ms {
        let message = "the connection session expired before a selection was made";
        db::social_auth::fail(&state.db, &session.id, error_code::EXPIRED, message).await?;
        return Err(ApiError::InvalidInput(format!("{message}; start again")));
    }
    let selectable: Vec<Value> = serde_json::from_str(&session.selectable).unwrap_or_default();
    let mut chosen = Vec::with_capacity(platform_uids.len());
    for uid in platform_uids {
        let entry = selectable
            .iter()
            .find(|e| e["platformUid"] == uid.as_str())
            .ok_or_else(|| {
                ApiError::InvalidInput(format!(
                    "platformUids: {uid:?} is not one of this session's selectableAccounts"
                ))
            })?;
        chosen.push(entry.clone());
    }
    let Some(session) = db::social_auth::take_selection(&state.db, user_id, session_id).await?
    else {
        return Err(ApiError::Conflict(format!(
            "connection session {session_id} was selected for already"
        )));
    };
    let kept = state
        .secrets
        .open(Purpose::AuthSession, &session.pending_tokens)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .ok_or_else(|| ApiError::Internal("the session's kept tokens cannot be read".into()))?;
    let tokens = oauth::Tokens {
        access_token: kept["access_token"].as_str().unwrap_or_default().to_owned(),
        refresh_token: kept["refresh_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        expires_in_s: kept["expires_in_s"].as_i64(),
        scope: kept["scope"].as_str().map(str::to_owned),
    };
    let mut ids = Vec::with_capacity(chosen.len());
    for e in &chosen {
        let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
        let (uid, name, account) = (text("platformUid"), text("displayName"), text("account"));
        let profile = Profile {
            uid: &uid,
            username: &account,
            display_name: Some(&name),
            avatar_url: e["avatarUrl"].as_str(),
            instance: None,
            char_limit: None,
        };
        ids.push(
            keep(state, &session, platform, profile, &tokens)
                .await?
                .0
                .id,
        );
    }
    db::social_auth::complete(&state.db, &session.id, &json!(ids).to_string()).await?;
    db::social_auth::get(&state.db, user_id, session_id)
        .await?
        .ok_or_else(not_found)
}
