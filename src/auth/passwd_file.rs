//! `mupdate_passwd_file`: one `user:{SCHEME}data` per line, Dovecot passwd-file style.
//! Schemes: `{ARGON2ID}` (PHC string), `{SSHA256}` (base64 of SHA-256(password ‖ salt) ‖ salt)
//! and `{PLAIN}`.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Password hashing schemes a passwd file may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheme {
    /// Argon2id, PHC string format (recommended).
    Argon2id,
    /// Salted SHA-256, as Dovecot's SSHA256.
    Ssha256,
    /// Clear text (for tests only).
    Plain,
    /// A SCRAM-SHA-256 verifier: serves SCRAM-SHA-256 and PLAIN logins.
    ScramSha256,
}

/// Errors reading the file.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Looks `user` up in the passwd-file text and checks `password`. Lines that do not parse,
/// or name an unknown scheme, never match.
/// The stored password field of `user`, if the file has the user.
fn stored_for<'t>(text: &'t str, user: &str) -> Option<&'t str> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let stored = rest.split(':').next().unwrap_or(rest);
            Some((name, stored))
        })
        .find(|(name, _)| *name == user)
        .map(|(_, stored)| stored)
}

pub fn verify_in(text: &str, user: &str, password: &[u8]) -> bool {
    stored_for(text, user).is_some_and(|stored| verify_stored(stored, password))
}

/// The SCRAM-SHA-256 verifier of `user`, if its entry is one.
pub fn scram_verifier_in(text: &str, user: &str) -> Option<super::scram::Verifier> {
    let (scheme, data) = split_scheme(stored_for(text, user)?)?;
    (scheme == "SCRAM-SHA-256")
        .then(|| super::scram::Verifier::decode(data))
        .flatten()
}

/// [`scram_verifier_in`] on the file at `path`.
pub fn scram_verifier_file(
    path: &std::path::Path,
    user: &str,
) -> Result<Option<super::scram::Verifier>, PasswdError> {
    let text = std::fs::read_to_string(path).map_err(|source| PasswdError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(scram_verifier_in(&text, user))
}

/// Reads `path` and verifies `user`'s password.
pub fn verify_file(
    path: &std::path::Path,
    user: &str,
    password: &[u8],
) -> Result<bool, PasswdError> {
    let text = std::fs::read_to_string(path).map_err(|source| PasswdError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(verify_in(&text, user, password))
}

fn split_scheme(stored: &str) -> Option<(String, &str)> {
    let rest = stored.strip_prefix('{')?;
    let (scheme, data) = rest.split_once('}')?;
    Some((scheme.to_ascii_uppercase(), data))
}

fn verify_stored(stored: &str, password: &[u8]) -> bool {
    let Some((scheme, data)) = split_scheme(stored) else {
        return false;
    };
    match scheme.as_str() {
        "PLAIN" => bool::from(data.as_bytes().ct_eq(password)),
        "SSHA256" => {
            let Ok(raw) = STANDARD.decode(data.trim()) else {
                return false;
            };
            if raw.len() <= 32 {
                return false;
            }
            let (digest, salt) = raw.split_at(32);
            let mut hasher = Sha256::new();
            hasher.update(password);
            hasher.update(salt);
            bool::from(hasher.finalize().as_slice().ct_eq(digest))
        }
        "SCRAM-SHA-256" => {
            super::scram::Verifier::decode(data).is_some_and(|verifier| verifier.matches(password))
        }
        "ARGON2ID" => PasswordHash::new(data.trim()).is_ok_and(|hash| {
            hash.algorithm.as_str() == "argon2id"
                && argon2::Argon2::default()
                    .verify_password(password, &hash)
                    .is_ok()
        }),
        _ => false,
    }
}

/// The `{SCHEME}data` text for `password`.
pub fn hash(scheme: Scheme, password: &[u8]) -> Result<String, String> {
    match scheme {
        Scheme::Plain => {
            let text = std::str::from_utf8(password)
                .map_err(|_| "a {PLAIN} password must be UTF-8".to_string())?;
            Ok(format!("{{PLAIN}}{text}"))
        }
        Scheme::Ssha256 => {
            let salt: [u8; 8] = rand::random();
            let mut hasher = Sha256::new();
            hasher.update(password);
            hasher.update(salt);
            let mut raw = hasher.finalize().to_vec();
            raw.extend_from_slice(&salt);
            Ok(format!("{{SSHA256}}{}", STANDARD.encode(raw)))
        }
        Scheme::ScramSha256 => {
            let salt: [u8; 16] = rand::random();
            let verifier = super::scram::Verifier::from_password(
                password,
                &salt,
                super::scram::DEFAULT_ITERATIONS,
            );
            Ok(format!("{{SCRAM-SHA-256}}{}", verifier.encode()))
        }
        Scheme::Argon2id => {
            let salt_bytes: [u8; 16] = rand::random();
            let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
            let hash = argon2::Argon2::default()
                .hash_password(password, &salt)
                .map_err(|e| e.to_string())?;
            Ok(format!("{{ARGON2ID}}{hash}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_verifies_and_rejects() {
        for scheme in [
            Scheme::Argon2id,
            Scheme::Ssha256,
            Scheme::Plain,
            Scheme::ScramSha256,
        ] {
            let line = format!("mupdate:{}\n", hash(scheme, b"mupdatepass").unwrap());
            assert!(verify_in(&line, "mupdate", b"mupdatepass"), "{scheme:?}");
            assert!(!verify_in(&line, "mupdate", b"wrong"), "{scheme:?}");
            assert!(!verify_in(&line, "other", b"mupdatepass"), "{scheme:?}");
        }
    }

    #[test]
    fn dovecot_style_extra_fields_and_junk() {
        let text = "# comment\nbob:{PLAIN}bobpass:1000:1000::/home/bob\ngarbage\nx:{MD5}abc\n";
        assert!(verify_in(text, "bob", b"bobpass"));
        assert!(!verify_in(text, "x", b"abc"));
        assert!(!verify_in(text, "garbage", b""));
        // A known SSHA256 vector: sha256("secret" + "salt") + "salt".
        let mut h = Sha256::new();
        h.update(b"secret");
        h.update(b"salt");
        let mut raw = h.finalize().to_vec();
        raw.extend_from_slice(b"salt");
        let line = format!("u:{{SSHA256}}{}", STANDARD.encode(raw));
        assert!(verify_in(&line, "u", b"secret"));
    }
}
