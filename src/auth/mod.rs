//! Who may log in (spec §4): SASL PLAIN checked against a passwd file and/or saslauthd, and
//! only for identities listed in `admins`.

pub mod passwd_file;
pub mod plain;
pub mod saslauthd;
pub mod scram;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::config::Settings;

/// The one mechanism this server implements.
pub const PLAIN: &str = "PLAIN";

/// A logged-in session's identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Who proved a password (an admin).
    pub authcid: String,
    /// Who the session runs as (telemetry goes to `log/<authzid>/`).
    pub authzid: String,
}

/// Why a login failed (all answered `NO "undefined error!"`, as Cyrus does).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// The mechanism is not offered.
    #[error("mechanism not offered")]
    Mechanism,
    /// The response was not base64 or not a PLAIN message.
    #[error("malformed response")]
    Malformed,
    /// Wrong password or unknown user.
    #[error("bad credentials for {0}")]
    BadCredentials(String),
    /// Right password, but not an admin.
    #[error("{0} is not an admin")]
    NotAdmin(String),
    /// The user's realm is not in `loginrealms`.
    #[error("realm of {0} not allowed")]
    Realm(String),
    /// No password source could answer.
    #[error("password check failed: {0}")]
    Backend(String),
}

#[derive(Debug, Clone)]
enum PasswordSource {
    PasswdFile(PathBuf),
    Saslauthd(PathBuf),
}

/// Checks logins.
#[derive(Debug, Clone)]
pub struct Authenticator {
    sources: Vec<PasswordSource>,
    admins: Vec<String>,
    login_realms: Vec<String>,
    default_realm: String,
    service: String,
    plain_listed: bool,
    allow_plaintext: bool,
    /// SCRAM-SHA-256 is offered only when `sasl_mech_list` names it and a passwd file holds
    /// verifiers: a Cyrus client picks the strongest mechanism offered, and one whose user
    /// has no verifier must still get PLAIN.
    scram: bool,
    passwd_file: Option<std::path::PathBuf>,
    /// How long saslauthd has to answer one login.
    saslauthd_timeout: std::time::Duration,
}

impl Authenticator {
    /// Builds the checker from the settings.
    pub fn new(settings: &Settings) -> Authenticator {
        let mut sources = Vec::new();
        if let Some(path) = &settings.passwd_file {
            sources.push(PasswordSource::PasswdFile(path.clone()));
        }
        if settings
            .sasl_pwcheck_method
            .iter()
            .any(|m| m.eq_ignore_ascii_case("saslauthd"))
        {
            sources.push(PasswordSource::Saslauthd(settings.saslauthd_path.clone()));
        }
        let plain_listed = settings
            .sasl_mech_list
            .as_ref()
            .is_none_or(|list| list.iter().any(|m| m.eq_ignore_ascii_case(PLAIN)));
        Authenticator {
            sources,
            admins: settings.admins.clone(),
            login_realms: settings.login_realms.clone(),
            default_realm: settings.server_name.clone(),
            service: settings.service_name.clone(),
            plain_listed,
            allow_plaintext: settings.allow_plaintext,
            scram: settings.passwd_file.is_some()
                && settings.sasl_mech_list.as_ref().is_some_and(|list| {
                    list.iter()
                        .any(|m| m.eq_ignore_ascii_case(scram::MECHANISM))
                }),
            passwd_file: settings.passwd_file.clone(),
            saslauthd_timeout: settings.saslauthd_timeout,
        }
    }

    /// The user a SASL authentication identity names and its realm, if the realm is allowed.
    fn user_and_realm(&self, authcid: &str) -> Result<(String, String), AuthFailure> {
        match authcid.split_once('@') {
            Some((user, realm)) => {
                if !self.login_realms.iter().any(|r| r == realm) {
                    return Err(AuthFailure::Realm(authcid.to_owned()));
                }
                Ok((user.to_owned(), realm.to_owned()))
            }
            None => Ok((authcid.to_owned(), self.default_realm.clone())),
        }
    }

    /// Who logged in: `authcid`'s user, acting as `authzid` if given; only admins may.
    fn admitted(&self, authcid: &str, authzid: Option<&str>) -> Result<Identity, AuthFailure> {
        let (user, _) = self.user_and_realm(authcid)?;
        if !self.admins.iter().any(|a| *a == user || a == authcid) {
            return Err(AuthFailure::NotAdmin(user));
        }
        Ok(Identity {
            authzid: match authzid {
                Some(authzid) if authzid != authcid => authzid.to_owned(),
                _ => user.clone(),
            },
            authcid: user,
        })
    }

    /// SCRAM-SHA-256, first step: the server's first message for the client's. An unknown
    /// user (or one without a verifier) gets a decoy and fails at the proof like a wrong
    /// password.
    pub async fn scram_start(
        &self,
        client_first: &[u8],
    ) -> Result<(scram::Pending, Vec<u8>), AuthFailure> {
        let client = scram::parse_client_first(client_first).map_err(|_| AuthFailure::Malformed)?;
        let (user, _) = self.user_and_realm(&client.authcid)?;
        let verifier = match &self.passwd_file {
            Some(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || passwd_file::scram_verifier_file(&path, &user))
                    .await
                    .map_err(|e| AuthFailure::Backend(e.to_string()))?
                    .map_err(|e| AuthFailure::Backend(e.to_string()))?
            }
            None => None,
        };
        let verifier = verifier.unwrap_or_else(|| {
            let decoy: [u8; 32] = rand::random();
            let salt: [u8; 16] = rand::random();
            scram::Verifier::from_password(&decoy, &salt, scram::DEFAULT_ITERATIONS)
        });
        let nonce_bytes: [u8; 18] = rand::random();
        Ok(scram::Pending::start(
            client,
            &STANDARD.encode(nonce_bytes),
            verifier,
        ))
    }

    /// SCRAM-SHA-256, second step: checks the client's proof; returns the server's final
    /// message and who logged in.
    pub fn scram_finish(
        &self,
        pending: &scram::Pending,
        client_final: &[u8],
    ) -> Result<(Vec<u8>, Identity), AuthFailure> {
        let server_final = pending
            .finish(client_final)
            .map_err(|_| AuthFailure::BadCredentials(pending.client().authcid.clone()))?;
        let identity = self.admitted(
            &pending.client().authcid,
            pending.client().authzid.as_deref(),
        )?;
        Ok((server_final, identity))
    }

    /// Mechanisms for the `* AUTH` banner line, with or without TLS active: as Cyrus,
    /// PLAIN only under TLS or with `allowplaintext: yes`.
    pub fn mechanisms(&self, tls: bool) -> Vec<String> {
        let mut offered = Vec::new();
        if self.scram {
            offered.push(scram::MECHANISM.to_owned());
        }
        if self.plain_listed && (tls || self.allow_plaintext) {
            offered.push(PLAIN.to_owned());
        }
        offered
    }

    /// True when some password source is configured.
    pub fn has_password_source(&self) -> bool {
        !self.sources.is_empty()
    }

    /// Whether `mechanism` (as the client spelled it) is offered, TLS active or not.
    pub fn offers(&self, mechanism: &[u8], tls: bool) -> bool {
        self.mechanisms(tls)
            .iter()
            .any(|m| m.as_bytes().eq_ignore_ascii_case(mechanism))
    }

    /// Checks a base64 PLAIN response (`=` is the empty response).
    pub async fn login_plain(&self, base64_response: &[u8]) -> Result<Identity, AuthFailure> {
        let credentials = decode_plain_response(base64_response)?;
        let (user, realm) = self.user_and_realm(&credentials.authcid)?;
        if !self
            .check_password(&user, &realm, &credentials.password)
            .await?
        {
            return Err(AuthFailure::BadCredentials(user));
        }
        self.admitted(&credentials.authcid, Some(&credentials.authzid))
    }

    async fn check_password(
        &self,
        user: &str,
        realm: &str,
        password: &[u8],
    ) -> Result<bool, AuthFailure> {
        let mut last_error = None;
        for source in &self.sources {
            let verdict = match source {
                PasswordSource::PasswdFile(path) => {
                    let (path, user, password) = (path.clone(), user.to_owned(), password.to_vec());
                    // Argon2 is deliberately slow: keep it off the async workers.
                    tokio::task::spawn_blocking(move || {
                        passwd_file::verify_file(&path, &user, &password)
                    })
                    .await
                    .map_err(|e| AuthFailure::Backend(e.to_string()))?
                    .map_err(|e| e.to_string())
                }
                PasswordSource::Saslauthd(socket) => {
                    let patience = self.saslauthd_timeout;
                    saslauthd::check(socket, patience, user, password, &self.service, realm)
                        .await
                        .map_err(|e| e.to_string())
                }
            };
            match verdict {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "password source failed");
                    last_error = Some(error);
                }
            }
        }
        match last_error {
            Some(error) => Err(AuthFailure::Backend(error)),
            None => Ok(false),
        }
    }
}

/// Decodes a client's base64 PLAIN response (`=` is the empty response) into its fields.
pub fn decode_plain_response(
    base64_response: &[u8],
) -> Result<plain::PlainCredentials, AuthFailure> {
    let decoded = if base64_response == b"=" {
        Vec::new()
    } else {
        STANDARD
            .decode(base64_response)
            .map_err(|_| AuthFailure::Malformed)?
    };
    plain::parse(&decoded).ok_or(AuthFailure::Malformed)
}

/// Failed logins per peer address within a window; past the limit a peer's logins are
/// refused without a password check (a brute force learns nothing).
pub struct FailedLogins {
    max: u32,
    window: Duration,
    /// Failures of each address since the first one of its current window.
    peers: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Peers remembered at most; past it, expired entries go, and if that is not enough, all.
const FAILED_LOGIN_PEERS: usize = 65_536;

impl FailedLogins {
    /// `max` failures per `window` (`max` 0: no limit).
    pub fn new(max: u32, window: Duration) -> FailedLogins {
        FailedLogins {
            max,
            window,
            peers: Mutex::new(HashMap::new()),
        }
    }

    fn peers(&self) -> MutexGuard<'_, HashMap<IpAddr, (u32, Instant)>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `peer` has used up its failed logins.
    pub fn blocked(&self, peer: IpAddr) -> bool {
        self.max > 0
            && self
                .peers()
                .get(&peer)
                .is_some_and(|(count, since)| *count >= self.max && since.elapsed() < self.window)
    }

    /// Counts one failed login of `peer`.
    pub fn record(&self, peer: IpAddr) {
        if self.max == 0 {
            return;
        }
        let mut peers = self.peers();
        if peers.len() >= FAILED_LOGIN_PEERS {
            let window = self.window;
            peers.retain(|_, (_, since)| since.elapsed() < window);
            if peers.len() >= FAILED_LOGIN_PEERS {
                peers.clear();
            }
        }
        let entry = peers.entry(peer).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    /// A successful login clears `peer`'s count.
    pub fn clear(&self, peer: IpAddr) {
        if self.max > 0 {
            self.peers().remove(&peer);
        }
    }
}

#[cfg(test)]
mod failed_login_tests {
    use super::*;

    #[test]
    fn a_peer_is_blocked_after_max_failures_until_the_window_passes() {
        let limits = FailedLogins::new(3, std::time::Duration::from_millis(200));
        let peer: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let other: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(!limits.blocked(peer));
            limits.record(peer);
        }
        assert!(limits.blocked(peer));
        assert!(!limits.blocked(other));
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert!(!limits.blocked(peer));
        limits.record(peer);
        limits.clear(peer);
        assert!(!limits.blocked(peer));
        assert!(!FailedLogins::new(0, std::time::Duration::from_secs(1)).blocked(peer));
    }
}
