//! Configuration: built-in defaults < imapd.conf (Cyrus syntax) < `IMAPD_<KEY>` environment
//! variables < `--set key=value` on the command line, layered with figment, then typed into
//! [`Settings`]. Every error names where the value came from.

mod imapd_conf;
mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

pub use imapd_conf::{ImapdConf, Origin};
pub use values::{at_least_one, parse_count, parse_duration, parse_int, parse_list, parse_switch};

use crate::protocol::Limits;
use crate::store;

/// Prefix of environment variables that override imapd.conf options.
pub const ENV_PREFIX: &str = "IMAPD_";

/// A configuration problem; the process exits with `EX_CONFIG` (78).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A problem in a file (line 0: the file as a whole).
    #[error("{}:{line}: {message}", file.display())]
    File {
        /// The file.
        file: PathBuf,
        /// 1-based line, or 0.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A bad value for an option, with where it was set.
    #[error("{origin}: option '{key}': {message}")]
    Value {
        /// Where the value came from.
        origin: String,
        /// The option.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A required option is missing.
    #[error("option '{0}' is required (set it in imapd.conf or as {ENV_PREFIX}<OPTION>)")]
    Missing(String),
    /// The layers could not be merged.
    #[error("{0}")]
    Figment(String),
}

/// `mupdate_config` (spec §5.3, §5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MupdateConfig {
    /// `standard`
    Standard,
    /// `unified`
    Unified,
    /// `replicated`
    Replicated,
}

/// `mupdate_mailboxes_db` (new): whether to keep Cyrus's `mailboxes.db` current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxesDb {
    /// Where Cyrus's mupdate would (under master(8)); not standalone or in a container.
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

/// Master failover through etcd (`mupdate_ha_*`), on when `mupdate_ha_etcd_endpoints` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaSettings {
    /// `mupdate_ha_etcd_endpoints`: etcd's client endpoints (`host:port` or URLs)
    pub etcd_endpoints: Vec<String>,
    /// `mupdate_ha_cluster` (default `mupdate`): this cluster's keys are under
    /// `/mupdate/<cluster>/`
    pub cluster: String,
    /// `mupdate_ha_advertise`: the `host:port` other instances and clients reach this one at
    pub advertise: String,
    /// `mupdate_ha_lease_ttl` (default 10 s): how long a master that stops renewing its
    /// lease stays master; a failover takes about this long
    pub lease_ttl: Duration,
}

/// Every setting the server reads, typed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `configdirectory`
    pub config_directory: PathBuf,
    /// `servername` (default: host name)
    pub server_name: String,
    /// `admins`: the only identities that may log in
    pub admins: Vec<String>,
    /// `loginrealms`
    pub login_realms: Vec<String>,
    /// `allowplaintext`
    pub allow_plaintext: bool,
    /// `sasl_mech_list`, if set
    pub sasl_mech_list: Option<Vec<String>>,
    /// `sasl_pwcheck_method`
    pub sasl_pwcheck_method: Vec<String>,
    /// `sasl_saslauthd_path`
    pub saslauthd_path: PathBuf,
    /// `mupdate_saslauthd_timeout` (new): how long saslauthd has to answer a login.
    pub saslauthd_timeout: Duration,
    /// `mupdate_passwd_file` (new)
    pub passwd_file: Option<PathBuf>,
    /// `mupdate_db_path` (new; default `<configdirectory>/mailboxes.redb`)
    pub db_path: PathBuf,
    /// `mupdate_listen` (new; default `0.0.0.0:3905`)
    pub listen: String,
    /// `mupdate_connections_max`
    pub connections_max: usize,
    /// `failedloginpause`
    pub failed_login_pause: Duration,
    /// `mupdate_unauthenticated_max` (new): connections not yet logged in, at most.
    pub unauthenticated_max: usize,
    /// `mupdate_login_timeout` (new): time a connection has to log in.
    pub login_timeout: Duration,
    /// `mupdate_write_timeout` (new): a client that takes no output for this long is dropped.
    pub write_timeout: Duration,
    /// `mupdate_failed_logins_max` (new): failed logins per peer address in the window
    /// before its logins are refused unchecked (0: no limit).
    pub failed_logins_max: u32,
    /// `mupdate_failed_logins_window` (new).
    pub failed_logins_window: Duration,
    /// `maxword`, `maxquoted`, `maxliteral`
    pub limits: Limits,
    /// `mupdate_server`
    pub mupdate_server: Option<String>,
    /// `mupdate_config`
    pub mupdate_config: MupdateConfig,
    /// `mupdate_idle_timeout` (new; Cyrus: fixed 180 minutes)
    pub idle_timeout: Duration,
    /// `mupdate_changelog_max` (new): changes kept for resumable replication
    pub changelog_max: u64,
    /// `mupdate_changelog_max_age` (new): how long a change stays in the log (0: forever)
    pub changelog_max_age: Duration,
    /// `mupdate_listener_queue` (new): changes a streaming client may lag behind
    pub listener_queue: usize,
    /// `mupdate_authname` (slave)
    pub mupdate_authname: Option<String>,
    /// `mupdate_username` (slave)
    pub mupdate_username: Option<String>,
    /// `mupdate_password` (slave)
    pub mupdate_password: Option<String>,
    /// `mupdate_realm` (slave)
    pub mupdate_realm: Option<String>,
    /// `mupdate_retry_delay` (slave)
    pub retry_delay: Duration,
    /// `client_timeout` (slave)
    pub client_timeout: Duration,
    /// `mupdate_banner_implementation` (new; default `Cyrus IMAP`)
    pub banner_implementation: String,
    /// `mupdate_banner_version` (new)
    pub banner_version: String,
    /// Cyrus service name (`CYRUS_SERVICE`, default `mupdate`): telemetry file prefix.
    pub service_name: String,
    /// `mupdate_log_format` (new): `text` or `json` log lines on stderr
    pub log_json: bool,
    /// `mupdate_http_listen` (new): the sidecar's address (`off`: none)
    pub http_listen: Option<String>,
    /// `mupdate_kicks_max` (new): kicks served at once on `socket/mupdate.target`; more
    /// wait in the socket's backlog.
    pub kicks_max: usize,
    /// `mupdate_http_connections_max` (new): sidecar connections at once; a new one
    /// beyond this closes the oldest.
    pub http_connections_max: usize,
    /// `mupdate_http_timeout` (new): time an HTTP request's headers may take, and a
    /// kept-alive sidecar connection may sit idle.
    pub http_timeout: Duration,
    /// `mupdate_worker_threads` (new): async worker threads; 0 (the default) means one.
    pub worker_threads: usize,
    /// `tls_server_cert` (PEM chain); with the key, STARTTLS is offered.
    pub tls_server_cert: Option<PathBuf>,
    /// `tls_server_key` (PEM private key).
    pub tls_server_key: Option<PathBuf>,
    /// `mupdate_tls` (new): a slave (and the tools) require STARTTLS to the master.
    pub mupdate_tls: bool,
    /// `mupdate_tls_ca_file` (new): the CA (PEM) the master's certificate must chain to.
    pub mupdate_tls_ca_file: Option<PathBuf>,
    /// `mupdate_tls_server_name` (new): the name the master's certificate must carry
    /// (default: the host of `mupdate_server`).
    pub mupdate_tls_server_name: Option<String>,
    /// `mupdate_ready_max_lag` (new): a slave that has not heard from its master, with
    /// everything applied, for longer than this is not ready.
    pub ready_max_lag: Duration,
    /// `mupdate_shutdown_delay` (new): after a stop signal, how long the server keeps
    /// serving while it reports not ready, before it says goodbye to its clients.
    pub shutdown_delay: Duration,
    /// `mupdate_mailboxes_db` (new): keep `mboxlist_db_path` current (`auto`: under master(8)).
    pub mailboxes_db: MailboxesDb,
    /// `mboxlist_db_path` (default `<configdirectory>/mailboxes.db`)
    pub mboxlist_db_path: PathBuf,
    /// Why `mboxlist_db` names a type this server cannot write (only twoskip), with where
    /// it was set; an error only once mailboxes.db is on.
    pub mboxlist_db_unsupported: Option<String>,
    /// `defaultdomain`: left out of mailboxes.db keys.
    pub default_domain: Option<String>,
    /// `deletedprefix` (default `DELETED`)
    pub deleted_prefix: String,
    /// Master failover, if configured.
    pub ha: Option<HaSettings>,
    /// `mupdate_sync_replicas` (new; default 0, or 1 with failover): replicas that must
    /// say (XACK) they hold a write durably before a master answers it OK
    pub sync_replicas: usize,
    /// `mupdate_sync_timeout` (new; default 10 s): how long a write waits for them
    pub sync_timeout: Duration,
}

/// `--set key=value` options from the command line, the last and strongest layer.
struct CommandLine(Vec<(String, String)>);

impl Provider for CommandLine {
    fn metadata(&self) -> Metadata {
        Metadata::named("command line")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict: Dict = self
            .0
            .iter()
            .map(|(key, value)| (key.clone(), Value::from(value.clone())))
            .collect();
        Ok(Profile::Default.collect(dict))
    }
}

/// Splits `key=value` command-line settings; keys are lowercased as imapd.conf keys are.
fn parse_overrides(overrides: &[String]) -> Result<Vec<(String, String)>, ConfigError> {
    overrides
        .iter()
        .map(|setting| {
            let bad = |message: &str| ConfigError::Value {
                origin: "command line --set".into(),
                key: setting.clone(),
                message: message.into(),
            };
            let (key, value) = setting
                .split_once('=')
                .ok_or_else(|| bad("expected KEY=VALUE"))?;
            let key = key.trim().to_ascii_lowercase();
            let value = value.trim();
            if key.is_empty()
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(bad("invalid option name"));
            }
            if value.is_empty() {
                return Err(bad("empty value"));
            }
            Ok((key, value.to_owned()))
        })
        .collect()
}

/// The process environment as the configuration reads it (`IMAPD_<KEY>` overrides,
/// `CYRUS_SERVICE`): the caller collects it, `std::env::vars().collect()`, so that the
/// configuration never reads the process's own and a test passes exactly what it means.
#[derive(Debug, Clone, Default)]
pub struct Environment(BTreeMap<String, String>);

impl FromIterator<(String, String)> for Environment {
    fn from_iter<T: IntoIterator<Item = (String, String)>>(vars: T) -> Self {
        Environment(vars.into_iter().collect())
    }
}

impl Environment {
    /// The service name Cyrus master(8) passes in `CYRUS_SERVICE`, or `mupdate`.
    pub fn service_name(&self) -> String {
        self.0
            .get("CYRUS_SERVICE")
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| "mupdate".into())
    }

    /// `IMAPD_<KEY>` variables (the prefix in any case) as lowercased option names and
    /// raw strings: Cyrus values are always text, whatever they look like.
    fn option_overrides(&self) -> Dict {
        self.0
            .iter()
            .filter_map(|(name, value)| {
                let prefix = name.get(..ENV_PREFIX.len())?;
                let key = &name[ENV_PREFIX.len()..];
                (prefix.eq_ignore_ascii_case(ENV_PREFIX) && !key.is_empty())
                    .then(|| (key.to_ascii_lowercase(), Value::from(value.clone())))
            })
            .collect()
    }
}

/// The environment's layer of the configuration.
struct EnvironmentLayer<'a>(&'a Environment);

impl Provider for EnvironmentLayer<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.0.option_overrides()))
    }
}

/// imapd.conf under the environment, merged: the values and what each came from.
struct Layers {
    conf: ImapdConf,
    figment: Figment,
    values: BTreeMap<String, String>,
    service: String,
}

fn layers(
    path: &Path,
    environment: &Environment,
    overrides: &[String],
) -> Result<Layers, ConfigError> {
    let service = environment.service_name();
    let overrides = CommandLine(parse_overrides(overrides)?);
    let conf = ImapdConf::read(path, &service)?;
    let figment = Figment::new()
        .merge(conf.clone())
        .merge(EnvironmentLayer(environment))
        .merge(overrides);
    let values = figment
        .extract()
        .map_err(|e| ConfigError::Figment(e.to_string()))?;
    Ok(Layers {
        conf,
        figment,
        values,
        service,
    })
}

impl Layers {
    fn options(&self) -> Options<'_> {
        Options {
            values: &self.values,
            conf: &self.conf,
            figment: &self.figment,
            service: self.service.clone(),
        }
    }
}

/// Loads `path` under `environment` into [`Settings`].
pub fn load(path: &Path, environment: &Environment) -> Result<Settings, ConfigError> {
    load_with(path, environment, &[])
}

/// Loads `path`, `environment` and command-line `key=value` overrides into [`Settings`].
pub fn load_with(
    path: &Path,
    environment: &Environment,
    overrides: &[String],
) -> Result<Settings, ConfigError> {
    Settings::from_values(&layers(path, environment, overrides)?.options())
}

/// Every option set in imapd.conf, the environment or on the command line, as
/// `(key, value, origin)`, sorted, with passwords and secrets masked: what `mupdate config`
/// prints.
pub fn effective(
    path: &Path,
    environment: &Environment,
    overrides: &[String],
) -> Result<Vec<(String, String, String)>, ConfigError> {
    let layers = layers(path, environment, overrides)?;
    let options = layers.options();
    Ok(options
        .values
        .iter()
        .map(|(key, value)| {
            let secret = ["password", "secret", "_key"]
                .iter()
                .any(|s| key.contains(s));
            let shown = if secret {
                "********".to_owned()
            } else {
                value.clone()
            };
            (key.clone(), shown, options.origin(key))
        })
        .collect())
}

struct Options<'a> {
    values: &'a BTreeMap<String, String>,
    conf: &'a ImapdConf,
    figment: &'a Figment,
    service: String,
}

impl Options<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    fn origin(&self, key: &str) -> String {
        let layer = self.figment.find_metadata(key).map(|m| m.name.as_ref());
        match (layer, self.conf.origin(key)) {
            (Some("command line"), _) => format!("command line --set {key}"),
            (Some("environment"), _) | (_, None) => format!(
                "environment variable {ENV_PREFIX}{}",
                key.to_ascii_uppercase()
            ),
            (_, Some(origin)) => format!("{}:{}", origin.file.display(), origin.line),
        }
    }

    fn typed<T>(
        &self,
        key: &str,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => parse(raw).map_err(|message| ConfigError::Value {
                origin: self.origin(key),
                key: key.into(),
                message,
            }),
        }
    }

    fn string(&self, key: &str) -> Option<String> {
        self.get(key).map(str::to_owned)
    }
}

/// `mupdate_ha_*`: none without etcd endpoints; with them, where this instance is reached
/// must be said too.
fn ha_settings(o: &Options<'_>) -> Result<Option<HaSettings>, ConfigError> {
    let Some(endpoints) = o.get("mupdate_ha_etcd_endpoints").map(parse_list) else {
        return Ok(None);
    };
    let value_error = |key: &str, message: String| ConfigError::Value {
        origin: o.origin(key),
        key: key.into(),
        message,
    };
    if endpoints.is_empty() {
        return Err(value_error(
            "mupdate_ha_etcd_endpoints",
            "names no endpoint".into(),
        ));
    }
    let advertise = o.string("mupdate_ha_advertise").ok_or_else(|| {
        ConfigError::Missing("mupdate_ha_advertise (needed with mupdate_ha_etcd_endpoints)".into())
    })?;
    if !advertise.contains(':') {
        return Err(value_error(
            "mupdate_ha_advertise",
            format!("{advertise:?} is not host:port"),
        ));
    }
    let cluster = o
        .string("mupdate_ha_cluster")
        .unwrap_or_else(|| "mupdate".into());
    if cluster.is_empty() || cluster.contains('/') {
        return Err(value_error(
            "mupdate_ha_cluster",
            format!("{cluster:?} is not a name without '/'"),
        ));
    }
    Ok(Some(HaSettings {
        etcd_endpoints: endpoints,
        cluster,
        advertise,
        // etcd counts a lease in whole seconds (as these durations are); below 2, a renewal
        // every third of it would leave no time to spare.
        lease_ttl: o.typed("mupdate_ha_lease_ttl", Duration::from_secs(10), |v| {
            match parse_duration(v, 's')? {
                ttl if ttl >= Duration::from_secs(2) => Ok(ttl),
                _ => Err(format!("{v:?} is less than 2 seconds")),
            }
        })?,
    }))
}

/// A `tls_*` file option: unset, or `disabled` (Cyrus's word for off), is none.
fn tls_path(value: Option<&str>) -> Option<PathBuf> {
    value
        .filter(|v| !v.eq_ignore_ascii_case("disabled"))
        .map(PathBuf::from)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Settings {
    fn from_values(o: &Options<'_>) -> Result<Settings, ConfigError> {
        let config_directory = PathBuf::from(
            o.get("configdirectory")
                .ok_or_else(|| ConfigError::Missing("configdirectory".into()))?,
        );
        let db_path = o
            .string("mupdate_db_path")
            .map(PathBuf::from)
            .unwrap_or_else(|| config_directory.join("mailboxes.redb"));
        let mupdate_config = o.typed("mupdate_config", MupdateConfig::Standard, |v| {
            match v.to_ascii_lowercase().as_str() {
                "standard" => Ok(MupdateConfig::Standard),
                "unified" => Ok(MupdateConfig::Unified),
                "replicated" => Ok(MupdateConfig::Replicated),
                _ => Err(format!("{v:?} is not one of standard, unified, replicated")),
            }
        })?;
        let limit = |key| o.typed(key, crate::protocol::DEFAULT_LIMIT, parse_count);
        let listen = o
            .string("mupdate_listen")
            .unwrap_or_else(|| "0.0.0.0:3905".into());
        if !listen.contains(':') {
            return Err(ConfigError::Value {
                origin: o.origin("mupdate_listen"),
                key: "mupdate_listen".into(),
                message: format!("{listen:?} is not host:port"),
            });
        }
        let mailboxes_db = o.typed("mupdate_mailboxes_db", MailboxesDb::Auto, |v| {
            if v.eq_ignore_ascii_case("auto") {
                Ok(MailboxesDb::Auto)
            } else {
                parse_switch(v)
                    .map(|on| {
                        if on {
                            MailboxesDb::On
                        } else {
                            MailboxesDb::Off
                        }
                    })
                    .map_err(|_| format!("{v:?} is not one of auto, on, off"))
            }
        })?;
        let mboxlist_db_unsupported = o
            .get("mboxlist_db")
            .filter(|kind| !kind.eq_ignore_ascii_case("twoskip"))
            .map(|kind| ConfigError::Value {
                origin: o.origin("mboxlist_db"),
                key: "mboxlist_db".into(),
                message: format!(
                    "{kind:?}: this mupdate keeps mailboxes.db only as twoskip (or set mupdate_mailboxes_db: off)"
                ),
            });
        let mboxlist_db_unsupported = match (mailboxes_db, mboxlist_db_unsupported) {
            (MailboxesDb::On, Some(error)) => return Err(error),
            (_, unsupported) => unsupported.map(|error| error.to_string()),
        };
        let ha = ha_settings(o)?;
        let sync_default = if ha.is_some() { 1 } else { 0 };
        Ok(Settings {
            sync_replicas: o.typed("mupdate_sync_replicas", sync_default, parse_count)?,
            sync_timeout: o.typed(
                "mupdate_sync_timeout",
                Duration::from_secs(10),
                at_least_one(|v| parse_duration(v, 's')),
            )?,
            ha,
            mailboxes_db,
            mboxlist_db_unsupported,
            mboxlist_db_path: o
                .string("mboxlist_db_path")
                .map(PathBuf::from)
                .unwrap_or_else(|| config_directory.join("mailboxes.db")),
            default_domain: o.string("defaultdomain").filter(|d| !d.is_empty()),
            deleted_prefix: o
                .string("deletedprefix")
                .unwrap_or_else(|| "DELETED".into()),
            server_name: o.string("servername").unwrap_or_else(host_name),
            admins: o.get("admins").map(parse_list).unwrap_or_default(),
            login_realms: o.get("loginrealms").map(parse_list).unwrap_or_default(),
            allow_plaintext: o.typed("allowplaintext", false, parse_switch)?,
            tls_server_cert: tls_path(o.get("tls_server_cert")),
            tls_server_key: tls_path(o.get("tls_server_key")),
            mupdate_tls: o.typed("mupdate_tls", false, parse_switch)?,
            mupdate_tls_ca_file: o.string("mupdate_tls_ca_file").map(PathBuf::from),
            mupdate_tls_server_name: o.string("mupdate_tls_server_name"),
            sasl_mech_list: o.get("sasl_mech_list").map(parse_list),
            sasl_pwcheck_method: o
                .get("sasl_pwcheck_method")
                .map(parse_list)
                .unwrap_or_else(|| vec!["auxprop".into()]),
            saslauthd_path: o
                .string("sasl_saslauthd_path")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/run/saslauthd/mux")),
            saslauthd_timeout: o.typed(
                "mupdate_saslauthd_timeout",
                Duration::from_secs(10),
                at_least_one(|v| parse_duration(v, 's')),
            )?,
            passwd_file: o.string("mupdate_passwd_file").map(PathBuf::from),
            db_path,
            listen,
            connections_max: o.typed("mupdate_connections_max", 128, parse_count)?,
            unauthenticated_max: o.typed("mupdate_unauthenticated_max", 64, parse_count)?,
            login_timeout: o.typed("mupdate_login_timeout", Duration::from_secs(60), |v| {
                parse_duration(v, 's')
            })?,
            write_timeout: o.typed("mupdate_write_timeout", Duration::from_secs(60), |v| {
                parse_duration(v, 's')
            })?,
            failed_logins_max: o.typed("mupdate_failed_logins_max", 10, |v| {
                parse_count(v).and_then(|n| u32::try_from(n).map_err(|e| e.to_string()))
            })?,
            failed_logins_window: o.typed(
                "mupdate_failed_logins_window",
                Duration::from_secs(15 * 60),
                |v| parse_duration(v, 's'),
            )?,
            failed_login_pause: o.typed("failedloginpause", Duration::from_secs(3), |v| {
                parse_duration(v, 's')
            })?,
            limits: Limits {
                max_word: limit("maxword")?,
                max_quoted: limit("maxquoted")?,
                max_literal: limit("maxliteral")?,
            },
            mupdate_server: o.string("mupdate_server"),
            mupdate_config,
            idle_timeout: o.typed("mupdate_idle_timeout", Duration::from_secs(180 * 60), |v| {
                parse_duration(v, 'm')
            })?,
            changelog_max: o.typed("mupdate_changelog_max", store::DEFAULT_CHANGELOG_MAX, |v| {
                parse_count(v).map(|n| n as u64)
            })?,
            listener_queue: o.typed(
                "mupdate_listener_queue",
                store::DEFAULT_FEED_CAPACITY,
                parse_count,
            )?,
            changelog_max_age: o.typed(
                "mupdate_changelog_max_age",
                store::DEFAULT_CHANGELOG_MAX_AGE,
                |v| parse_duration(v, 'd'),
            )?,
            mupdate_authname: o.string("mupdate_authname"),
            mupdate_username: o.string("mupdate_username"),
            mupdate_password: o.string("mupdate_password"),
            mupdate_realm: o.string("mupdate_realm"),
            retry_delay: o.typed("mupdate_retry_delay", Duration::from_secs(20), |v| {
                parse_duration(v, 's')
            })?,
            client_timeout: o.typed("client_timeout", Duration::from_secs(10), |v| {
                parse_duration(v, 's')
            })?,
            banner_implementation: o
                .string("mupdate_banner_implementation")
                .unwrap_or_else(|| "Cyrus IMAP".into()),
            banner_version: o
                .string("mupdate_banner_version")
                .unwrap_or_else(|| format!("3.6.1-mupdate-rs-{}", env!("CARGO_PKG_VERSION"))),
            service_name: o.service.clone(),
            worker_threads: o.typed("mupdate_worker_threads", 0, parse_count)?,
            log_json: o.typed("mupdate_log_format", false, |v| {
                match v.to_ascii_lowercase().as_str() {
                    "text" => Ok(false),
                    "json" => Ok(true),
                    _ => Err(format!("{v:?} is not text or json")),
                }
            })?,
            shutdown_delay: o.typed("mupdate_shutdown_delay", Duration::ZERO, |v| {
                parse_duration(v, 's')
            })?,
            ready_max_lag: o.typed("mupdate_ready_max_lag", Duration::from_secs(60), |v| {
                parse_duration(v, 's')
            })?,
            http_listen: match o.get("mupdate_http_listen") {
                Some(v) if v.eq_ignore_ascii_case("off") => None,
                Some(v) => Some(v.to_owned()),
                None => Some("0.0.0.0:8390".to_owned()),
            },
            kicks_max: o.typed("mupdate_kicks_max", 64, at_least_one(parse_count))?,
            http_connections_max: o.typed(
                "mupdate_http_connections_max",
                64,
                at_least_one(parse_count),
            )?,
            http_timeout: o.typed(
                "mupdate_http_timeout",
                Duration::from_secs(10),
                at_least_one(|v| parse_duration(v, 's')),
            )?,
            config_directory,
        })
    }

    /// Where to keep Cyrus's mailboxes.db, if anywhere, for a server that runs under
    /// master(8) or not; an error (with where `mboxlist_db` was set) for a type we do not
    /// write.
    pub fn mailboxes_db_path(&self, under_master: bool) -> Result<Option<&Path>, String> {
        let on = match self.mailboxes_db {
            MailboxesDb::Auto => under_master,
            MailboxesDb::On => true,
            MailboxesDb::Off => false,
        };
        match (on, &self.mboxlist_db_unsupported) {
            (false, _) => Ok(None),
            (true, Some(error)) => Err(error.clone()),
            (true, None) => Ok(Some(&self.mboxlist_db_path)),
        }
    }

    /// Whether writes follow the replicated rules (spec §5.5: only with `mupdate_server`).
    pub fn replicated_writes(&self) -> bool {
        self.mupdate_server.is_some() && self.mupdate_config != MupdateConfig::Standard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Settings, ConfigError> {
        load_text_under(text, &[])
    }

    fn load_text_under(text: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imapd.conf");
        std::fs::write(&path, text).unwrap();
        let environment = vars
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        load(&path, &environment)
    }

    #[test]
    fn defaults_and_values() {
        let s = load_text(
            "configdirectory: /tmp/x\nservername: m1\nadmins: mupdate other\nfailedloginpause: 0\n",
        )
        .unwrap();
        assert_eq!(s.server_name, "m1");
        assert_eq!(s.admins, ["mupdate", "other"]);
        assert_eq!(s.failed_login_pause, Duration::ZERO);
        assert_eq!(s.db_path, PathBuf::from("/tmp/x/mailboxes.redb"));
        assert_eq!(s.connections_max, 128);
        assert_eq!(s.listen, "0.0.0.0:3905");
        assert_eq!(s.idle_timeout, Duration::from_secs(10_800));
        assert!(!s.replicated_writes());
        assert_eq!(s.mailboxes_db, MailboxesDb::Auto);
        assert_eq!(s.mailboxes_db_path(false), Ok(None));
        assert_eq!(
            s.mailboxes_db_path(true),
            Ok(Some(Path::new("/tmp/x/mailboxes.db")))
        );
        assert_eq!(s.deleted_prefix, "DELETED");
    }

    #[test]
    fn failover_is_off_without_etcd_and_needs_an_advertised_address_with_it() {
        let base = "configdirectory: /tmp/x\n";
        assert_eq!(load_text(base).unwrap().ha, None);
        let on = format!(
            "{base}mupdate_ha_etcd_endpoints: 10.0.0.9:2379, 10.0.0.10:2379\nmupdate_ha_advertise: mupdate-0.mupdate:3905\n"
        );
        assert_eq!(
            load_text(&on).unwrap().ha,
            Some(HaSettings {
                etcd_endpoints: vec!["10.0.0.9:2379".into(), "10.0.0.10:2379".into()],
                cluster: "mupdate".into(),
                advertise: "mupdate-0.mupdate:3905".into(),
                lease_ttl: Duration::from_secs(10),
            })
        );
        assert_eq!(load_text(&on).unwrap().sync_replicas, 1, "with failover");
        assert_eq!(load_text(base).unwrap().sync_replicas, 0, "without");
        let tuned = format!(
            "{on}mupdate_ha_cluster: murder1\nmupdate_ha_lease_ttl: 3\nmupdate_sync_replicas: 0\n"
        );
        let tuned = load_text(&tuned).unwrap();
        let ha = tuned.ha.unwrap();
        assert_eq!(
            (ha.cluster.as_str(), ha.lease_ttl, tuned.sync_replicas),
            ("murder1", Duration::from_secs(3), 0)
        );
        let missing = load_text(&format!("{base}mupdate_ha_etcd_endpoints: e:2379\n"));
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .contains("mupdate_ha_advertise"),
            "the missing option is named"
        );
        for (bad, key) in [
            ("mupdate_ha_lease_ttl: 1\n", "mupdate_ha_lease_ttl"),
            ("mupdate_ha_lease_ttl: 2500ms\n", "mupdate_ha_lease_ttl"),
            ("mupdate_ha_cluster: a/b\n", "mupdate_ha_cluster"),
            ("mupdate_sync_replicas: -1\n", "mupdate_sync_replicas"),
        ] {
            let error = load_text(&format!("{on}{bad}")).unwrap_err().to_string();
            assert!(error.contains(key), "{bad}: {error}");
        }
    }

    #[test]
    fn mailboxes_db_other_than_twoskip_is_refused_only_when_kept() {
        let s = load_text("configdirectory: /tmp/x\nmboxlist_db: sql\n").unwrap();
        let err = s.mailboxes_db_path(true).unwrap_err();
        assert!(
            err.contains("imapd.conf:2") && err.contains("mboxlist_db"),
            "{err}"
        );
        assert_eq!(s.mailboxes_db_path(false), Ok(None));
        let err =
            load_text("configdirectory: /tmp/x\nmboxlist_db: sql\nmupdate_mailboxes_db: on\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("mboxlist_db") && err.contains("\"sql\""),
            "{err}"
        );
        let s = load_text(
            "configdirectory: /tmp/x\nmupdate_mailboxes_db: on\nmboxlist_db_path: /tmp/m.db\n",
        )
        .unwrap();
        assert_eq!(s.mailboxes_db_path(false), Ok(Some(Path::new("/tmp/m.db"))));
        assert!(load_text("configdirectory: /tmp/x\nmupdate_mailboxes_db: perhaps\n").is_err());
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        let err = load_text("configdirectory: /tmp/x\nallowplaintext: perhaps\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("imapd.conf:2") && err.contains("allowplaintext"),
            "{err}"
        );
        let err = load_text("servername: x\n").unwrap_err().to_string();
        assert!(err.contains("configdirectory"), "{err}");
    }

    #[test]
    fn environment_overrides_imapd_conf_and_names_itself_in_errors() {
        let conf = "configdirectory: /tmp/x\nservername: m1\nmupdate_connections_max: 7\n";
        let s = load_text_under(
            conf,
            &[
                ("IMAPD_MUPDATE_CONNECTIONS_MAX", "9"),
                ("imapd_servername", "m2"),
                ("HOME", "/root"),
            ],
        )
        .unwrap();
        assert_eq!(s.connections_max, 9);
        assert_eq!(s.server_name, "m2");
        let err = load_text_under(conf, &[("IMAPD_MUPDATE_CONNECTIONS_MAX", "many")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("environment variable IMAPD_MUPDATE_CONNECTIONS_MAX"),
            "{err}"
        );
    }

    #[test]
    fn the_service_name_comes_from_cyrus_service_and_selects_its_options() {
        let conf = "configdirectory: /tmp/x\nmupdate_connections_max: 7\nfollower_mupdate_connections_max: 5\n";
        assert_eq!(load_text(conf).unwrap().service_name, "mupdate");
        let s = load_text_under(conf, &[("CYRUS_SERVICE", "follower")]).unwrap();
        assert_eq!(s.service_name, "follower");
        assert_eq!(s.connections_max, 5);
        let s = load_text_under(conf, &[("CYRUS_SERVICE", "")]).unwrap();
        assert_eq!(s.service_name, "mupdate");
    }
}
