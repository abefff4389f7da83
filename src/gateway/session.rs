//! Login sessions on the platform API: argon2 password hashes and signed JWTs (HS256).
//!
//! An access token names its user (`sub`) and expires after `auth.access_token_ttl_ms`; a
//! refresh token (`typ: "refresh"`) only buys new tokens. The signing secret is
//! `TOLLGATE_JWT_SECRET`; without it each process makes a random one, so tokens end with the
//! process and are not accepted by other instances.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a token may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Access,
    Refresh,
}

impl TokenKind {
    fn name(self) -> &'static str {
        match self {
            TokenKind::Access => "access",
            TokenKind::Refresh => "refresh",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
    typ: String,
}

/// Issues and checks tokens.
pub struct Sessions {
    encoding: EncodingKey,
    decoding: DecodingKey,
    access_ttl: Duration,
    refresh_ttl: Duration,
}

impl Sessions {
    pub fn new(secret: &[u8], access_ttl: Duration, refresh_ttl: Duration) -> Sessions {
        Sessions {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            access_ttl,
            refresh_ttl,
        }
    }

    /// How long an access token lives.
    pub fn access_ttl(&self) -> Duration {
        self.access_ttl
    }

    /// A signed token for `user_id`.
    pub fn issue(
        &self,
        user_id: i64,
        kind: TokenKind,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = jsonwebtoken::get_current_timestamp();
        let ttl = match kind {
            TokenKind::Access => self.access_ttl,
            TokenKind::Refresh => self.refresh_ttl,
        };
        let claims = Claims {
            sub: user_id.to_string(),
            iat: now,
            exp: now + ttl.as_secs().max(1),
            typ: kind.name().to_owned(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// The user a valid, unexpired token of `kind` names.
    pub fn verify(&self, token: &str, kind: TokenKind) -> Option<i64> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).ok()?;
        (data.claims.typ == kind.name())
            .then(|| data.claims.sub.parse().ok())
            .flatten()
    }
}

/// Whether a presented credential is a JWT rather than an API key.
pub fn looks_like_jwt(credential: &str) -> bool {
    credential.starts_with("eyJ") && credential.bytes().filter(|&b| b == b'.').count() == 2
}

/// An argon2id hash of `password` (PHC string). CPU-heavy: call from a blocking task.
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches the PHC `hash`. CPU-heavy: call from a blocking task.
pub fn verify_password(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_kinds_do_not_mix() {
        let s = Sessions::new(
            b"0123456789abcdef0123456789abcdef",
            Duration::from_secs(60),
            Duration::from_secs(600),
        );
        let access = s.issue(42, TokenKind::Access).expect("token");
        assert!(looks_like_jwt(&access));
        assert_eq!(s.verify(&access, TokenKind::Access), Some(42));
        assert_eq!(s.verify(&access, TokenKind::Refresh), None);
        let other = Sessions::new(
            b"another-secret-another-secret-xx",
            Duration::from_secs(60),
            Duration::from_secs(600),
        );
        assert_eq!(other.verify(&access, TokenKind::Access), None);
        assert!(!looks_like_jwt("sk-abc"));
    }

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("correct horse").expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong horse", &hash));
        assert!(!verify_password("x", "not a hash"));
    }
}
