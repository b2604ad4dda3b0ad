//! Who may log in (spec §4): SASL PLAIN checked against a passwd file and/or saslauthd, and
//! only for identities listed in `admins`.

pub mod passwd_file;
pub mod plain;
pub mod saslauthd;

use std::path::PathBuf;

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
        }
    }

    /// Mechanisms for the `* AUTH` banner line, with or without TLS active: as Cyrus,
    /// PLAIN only under TLS or with `allowplaintext: yes`.
    pub fn mechanisms(&self, tls: bool) -> Vec<String> {
        if self.plain_listed && (tls || self.allow_plaintext) {
            vec![PLAIN.to_owned()]
        } else {
            Vec::new()
        }
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
        let decoded = if base64_response == b"=" {
            Vec::new()
        } else {
            STANDARD
                .decode(base64_response)
                .map_err(|_| AuthFailure::Malformed)?
        };
        let credentials = plain::parse(&decoded).ok_or(AuthFailure::Malformed)?;
        let (user, realm) = match credentials.authcid.split_once('@') {
            Some((user, realm)) => {
                if !self.login_realms.iter().any(|r| r == realm) {
                    return Err(AuthFailure::Realm(credentials.authcid.clone()));
                }
                (user.to_owned(), realm.to_owned())
            }
            None => (credentials.authcid.clone(), self.default_realm.clone()),
        };
        if !self
            .check_password(&user, &realm, &credentials.password)
            .await?
        {
            return Err(AuthFailure::BadCredentials(user));
        }
        if !self
            .admins
            .iter()
            .any(|a| *a == user || *a == credentials.authcid)
        {
            return Err(AuthFailure::NotAdmin(user));
        }
        Ok(Identity {
            authzid: if credentials.authzid == credentials.authcid {
                user.clone()
            } else {
                credentials.authzid
            },
            authcid: user,
        })
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
                    saslauthd::check(socket, user, password, &self.service, realm)
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
