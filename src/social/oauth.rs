//! OAuth 2.0 pieces every platform shares: the single-use `state`, PKCE (S256, RFC 7636), the
//! authorize URL, and the token endpoint (RFC 6749 §4.1.3 and §6) with its typed outcome.

use crate::config::OAuthApp;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// How long one token-endpoint or profile call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// 32 random bytes as base64url (43 characters): a `state` or a PKCE `code_verifier`.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The S256 `code_challenge` of a verifier.
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The URL the user is sent to: `authorize_url` with the code flow's parameters, PKCE S256.
pub fn authorize_url(
    app: &OAuthApp,
    scope_separator: &str,
    state: &str,
    verifier: Option<&str>,
) -> String {
    let scopes = app
        .scopes
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(scope_separator);
    let mut url = match url::Url::parse(&app.authorize_url) {
        Ok(u) => u,
        Err(_) => return app.authorize_url.clone(),
    };
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &app.client_id)
            .append_pair("redirect_uri", &app.redirect_uri)
            .append_pair("scope", &scopes)
            .append_pair("state", state);
        if let Some(v) = verifier {
            q.append_pair("code_challenge", &challenge(v))
                .append_pair("code_challenge_method", "S256");
        }
    }
    url.to_string()
}

/// A callback URL the platforms accept: `http(s)://`, no fragment, and not `localhost` (X
/// refuses it; `127.0.0.1` is the local form). The reason when it is not.
pub fn check_redirect_uri(uri: &str) -> Result<(), String> {
    let url =
        url::Url::parse(uri).map_err(|e| format!("redirect_uri {uri:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("redirect_uri {uri:?} must be http(s)"));
    }
    if url.host_str() == Some("localhost") {
        return Err(format!(
            "redirect_uri {uri:?} uses localhost, which X does not accept; use 127.0.0.1"
        ));
    }
    if url.fragment().is_some() {
        return Err(format!("redirect_uri {uri:?} must not have a fragment"));
    }
    Ok(())
}

/// What a token endpoint gave.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: String,
    /// Empty when none was issued (or the old one stays valid).
    pub refresh_token: String,
    pub expires_in_s: Option<i64>,
    pub scope: Option<String>,
}

/// Why a token request gave no tokens.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The platform refused the grant (`invalid_grant`: revoked, reused or expired): the user
    /// must connect again.
    #[error("the platform refused the grant ({status}): {error}")]
    Refused { status: u16, error: String },
    /// The platform could not be reached or failed: worth trying again later.
    #[error("the token endpoint could not be used: {0}")]
    Unavailable(String),
}

/// One form POST to a token endpoint, with HTTP Basic client authentication when `basic` is
/// given (a confidential client); the tokens, or why not.
pub async fn token_request(
    http: &reqwest::Client,
    token_url: &str,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> Result<Tokens, TokenError> {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut req = http
        .post(token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .timeout(CALL_TIMEOUT)
        .body(body);
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    let resp = req
        .send()
        .await
        .map_err(|e| TokenError::Unavailable(e.to_string()))?;
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .map_err(|e| TokenError::Unavailable(e.to_string()))?;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !(200..300).contains(&status) {
        let error = v["error"]
            .as_str()
            .map(|e| match v["error_description"].as_str() {
                Some(d) => format!("{e}: {d}"),
                None => e.to_owned(),
            })
            .unwrap_or_else(|| text.chars().take(200).collect());
        return Err(if (400..500).contains(&status) && status != 429 {
            TokenError::Refused { status, error }
        } else {
            TokenError::Unavailable(format!("status {status}: {error}"))
        });
    }
    let access_token = v["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError::Unavailable("the token answer has no access_token".into()))?;
    Ok(Tokens {
        access_token: access_token.to_owned(),
        refresh_token: v["refresh_token"].as_str().unwrap_or_default().to_owned(),
        expires_in_s: v["expires_in"].as_i64(),
        scope: v["scope"].as_str().map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_rfc_7636() {
        // RFC 7636 appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let t = random_token();
        assert_eq!(t.len(), 43);
        assert_ne!(t, random_token());
    }

    #[test]
    fn redirect_uris_follow_xs_rules() {
        assert!(check_redirect_uri("http://127.0.0.1:8000/api/v1/twitter/callback").is_ok());
        assert!(check_redirect_uri("https://app.example.com/cb").is_ok());
        assert!(check_redirect_uri("http://localhost:8000/cb").is_err());
        assert!(check_redirect_uri("javascript:alert(1)").is_err());
        assert!(check_redirect_uri("https://a.example/cb#x").is_err());
    }
}
