//! Secrets at rest: upstream credentials are stored sealed with AES-256-GCM under a master key
//! (`TOLLGATE_MASTER_KEY`, else the key file `secrets.master_key_file`, created on first start).
//! A sealed value reads `enc:v1:<hex of nonce ‖ ciphertext ‖ tag>`; the label of what it is
//! (a channel credential, …) is authenticated with it, so a value cannot be moved to another
//! purpose. Values without the prefix are legacy plain text and are sealed at start.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::Context;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

const PREFIX: &str = "enc:v1:";
const NONCE_LEN: usize = 12;

/// A secret in memory (a credential, a key): `Debug` prints `***`, so no config, channel or log
/// line can show it by accident, and it has no `Display` (nothing formats it into a header by
/// mistake); [`Secret::expose`] reads it where it is used.
#[derive(Clone, Default, PartialEq, Eq, sqlx::Type)]
#[sqlx(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends or checks it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What a sealed value is; authenticated with it.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    ChannelCredential,
    /// A connected social account's access or refresh token.
    SocialToken,
    /// What an open account-connection session keeps (a PKCE verifier, tokens awaiting a
    /// selection).
    AuthSession,
    /// A publishing platform's app secret (a WeChat Official Account's AppSecret) or the
    /// access token got with it.
    PlatformSecret,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::ChannelCredential => b"tollgate channel credential",
            Purpose::SocialToken => b"tollgate social token",
            Purpose::AuthSession => b"tollgate social auth session",
            Purpose::PlatformSecret => b"tollgate publishing platform secret",
        }
    }
}

/// A stored value that cannot be opened with this master key.
#[derive(Debug, thiserror::Error)]
#[error(
    "a sealed {0} cannot be opened with this master key (was it sealed under another TOLLGATE_MASTER_KEY or key file?)"
)]
pub struct OpenError(&'static str);

/// The cipher of the master key.
#[derive(Clone)]
pub struct Secrets {
    cipher: Aes256Gcm,
    /// The HMAC key of signed URLs (derived from the master key, so every instance agrees).
    url_key: [u8; 32],
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

impl Secrets {
    /// The cipher of a master key (any text; the AES key is its SHA-256).
    pub fn new(master_key: &str) -> Secrets {
        let key = Sha256::digest(master_key.as_bytes());
        let cipher = Aes256Gcm::new_from_slice(key.as_slice())
            .unwrap_or_else(|_| unreachable!("SHA-256 gives 32 bytes, AES-256's key size"));
        let mut url_key = [0u8; 32];
        url_key.copy_from_slice(
            Sha256::new()
                .chain_update(b"tollgate signed urls\0")
                .chain_update(master_key.as_bytes())
                .finalize()
                .as_slice(),
        );
        Secrets { cipher, url_key }
    }

    /// The HMAC-SHA256 (hex) of `message` under the URL-signing key.
    pub fn url_signature(&self, message: &str) -> String {
        let mut mac = self.url_mac();
        hmac::Mac::update(&mut mac, message.as_bytes());
        encode_hex(hmac::Mac::finalize(mac).into_bytes().as_slice())
    }

    /// Whether `signature` (hex) is `message`'s, compared in constant time.
    pub fn url_signature_matches(&self, message: &str, signature: &str) -> bool {
        let Some(bytes) = decode_hex(signature) else {
            return false;
        };
        let mut mac = self.url_mac();
        hmac::Mac::update(&mut mac, message.as_bytes());
        hmac::Mac::verify_slice(mac, &bytes).is_ok()
    }

    fn url_mac(&self) -> hmac::Hmac<Sha256> {
        <hmac::Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.url_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"))
    }

    /// The configured master key: `master_key` if given, else the one in `key_file`, which is
    /// created (owner-only) with a random key if missing.
    pub fn load(master_key: Option<&str>, key_file: &str) -> anyhow::Result<Secrets> {
        if let Some(key) = master_key {
            return Ok(Secrets::new(key));
        }
        let path = Path::new(key_file);
        if !path.exists() {
            create_key_file(path)?;
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the master key file {}", path.display()))?;
        let key = text.trim();
        if key.len() < 32 {
            anyhow::bail!(
                "the master key file {} must hold at least 32 characters",
                path.display()
            );
        }
        Ok(Secrets::new(key))
    }

    /// `plain` sealed for `purpose` (an empty value stays empty: there is nothing to hide).
    pub fn seal(&self, purpose: Purpose, plain: &str) -> String {
        if plain.is_empty() {
            return String::new();
        }
        let nonce: [u8; NONCE_LEN] = rand::random();
        let payload = Payload {
            msg: plain.as_bytes(),
            aad: purpose.label(),
        };
        let sealed = self
            .cipher
            .encrypt(&Nonce::from(nonce), payload)
            .unwrap_or_else(|_| unreachable!("AES-GCM encrypts any message under 64 GiB"));
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&sealed);
        format!("{PREFIX}{}", encode_hex(&raw))
    }

    /// The plain text of a stored value (legacy plain text is returned as it is).
    pub fn open(&self, purpose: Purpose, stored: &str) -> Result<String, OpenError> {
        let Some(hex) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_owned());
        };
        let what = match purpose {
            Purpose::ChannelCredential => "channel credential",
            Purpose::SocialToken => "social token",
            Purpose::AuthSession => "auth session secret",
            Purpose::PlatformSecret => "publishing platform secret",
        };
        let bytes = decode_hex(hex).ok_or(OpenError(what))?;
        if bytes.len() < NONCE_LEN {
            return Err(OpenError(what));
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| OpenError(what))?;
        let payload = Payload {
            msg: sealed,
            aad: purpose.label(),
        };
        let plain = self
            .cipher
            .decrypt(&Nonce::from(nonce), payload)
            .map_err(|_| OpenError(what))?;
        String::from_utf8(plain).map_err(|_| OpenError(what))
    }
}

/// Whether a stored value is sealed (or empty, which needs no sealing).
pub fn is_sealed(stored: &str) -> bool {
    stored.is_empty() || stored.starts_with(PREFIX)
}

pub fn encode_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Writes a new random key to `path`, owner-only, without ever replacing an existing file
/// (another process starting at the same time may win; its key is then used).
fn create_key_file(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let key: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&temp)
        .with_context(|| format!("creating {}", temp.display()))?;
    file.write_all(format!("{key}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temp.display()))?;
    drop(file);
    // A hard link fails if the target exists: the first process to link wins.
    let linked = std::fs::hard_link(&temp, path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            tracing::warn!(
                file = %path.display(),
                "generated a master key for upstream credentials; keep this file with the database (or set TOLLGATE_MASTER_KEY)"
            );
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_does_not_print() {
        let s = Secret::from("sk-live-abcdef");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{:?}", Some(&s)), "Some(Secret(***))");
        assert_eq!(s.expose(), "sk-live-abcdef");
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_purpose() {
        let secrets = Secrets::new("a master key of at least 32 chars!");
        let sealed = secrets.seal(Purpose::ChannelCredential, "sk-upstream-123");
        assert!(sealed.starts_with(PREFIX) && !sealed.contains("sk-upstream"));
        assert_ne!(
            sealed,
            secrets.seal(Purpose::ChannelCredential, "sk-upstream-123"),
            "a fresh nonce each time"
        );
        assert_eq!(
            secrets
                .open(Purpose::ChannelCredential, &sealed)
                .expect("opens"),
            "sk-upstream-123"
        );
        let other = Secrets::new("another master key of 32 characters");
        assert!(other.open(Purpose::ChannelCredential, &sealed).is_err());
        let mut tampered = sealed.clone();
        tampered.replace_range(tampered.len() - 2.., "00");
        assert!(secrets.open(Purpose::ChannelCredential, &tampered).is_err());
        assert!(
            secrets
                .open(Purpose::ChannelCredential, "enc:v1:zz")
                .is_err()
        );
        // Legacy plain text and empty values pass through.
        assert_eq!(
            secrets
                .open(Purpose::ChannelCredential, "sk-plain")
                .expect("plain"),
            "sk-plain"
        );
        assert_eq!(secrets.seal(Purpose::ChannelCredential, ""), "");
        assert!(is_sealed("") && is_sealed(&sealed) && !is_sealed("sk-plain"));
    }

    #[test]
    fn the_key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("keys/master.key");
        let file = file.to_str().expect("utf-8 path");
        let first = Secrets::load(None, file).expect("created");
        let sealed = first.seal(Purpose::ChannelCredential, "sk-x");
        let again = Secrets::load(None, file).expect("read back");
        assert_eq!(
            again
                .open(Purpose::ChannelCredential, &sealed)
                .expect("same key"),
            "sk-x"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(file).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
