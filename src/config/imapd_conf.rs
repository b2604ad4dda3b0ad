//! Cyrus `imapd.conf` syntax (`config_read_file` in Cyrus's `lib/libconfig.c`) and a figment
//! provider that yields its options as strings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use figment::value::{Dict, Map, Value};
use figment::{Error, Metadata, Profile, Provider};

use super::ConfigError;

/// Where an option was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub file: PathBuf,
    /// 1-based line number (of the first line of a continued line).
    pub line: usize,
}

/// One option's value and origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value, trimmed.
    pub value: String,
    /// Where it was set.
    pub origin: Origin,
}

/// The options of an imapd.conf file and its includes, with service overrides applied.
#[derive(Debug, Clone, Default)]
pub struct ImapdConf {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
}

impl ImapdConf {
    /// Reads `path` (and its `@include`s) for the Cyrus service `service` (e.g. `mupdate`):
    /// `<service>_<option>` overrides `<option>` wherever it appears.
    pub fn read(path: &Path, service: &str) -> Result<ImapdConf, ConfigError> {
        let mut raw = BTreeMap::new();
        let mut included = BTreeSet::new();
        read_file(path, &mut raw, &mut included)?;
        let prefix = format!("{service}_");
        let mut entries = raw.clone();
        for (key, entry) in &raw {
            if let Some(option) = key.strip_prefix(&prefix)
                && !option.is_empty()
            {
                entries.insert(option.to_owned(), entry.clone());
            }
        }
        Ok(ImapdConf {
            path: path.to_owned(),
            entries,
        })
    }

    /// Parses configuration text as if it were the file `path` (used by tests and fuzzing).
    pub fn parse_str(text: &str, path: &Path) -> Result<ImapdConf, ConfigError> {
        let mut entries = BTreeMap::new();
        parse_text(text, path, &mut entries, &mut BTreeSet::new())?;
        Ok(ImapdConf {
            path: path.to_owned(),
            entries,
        })
    }

    /// The origin of `key`, if the file set it.
    pub fn origin(&self, key: &str) -> Option<&Origin> {
        self.entries.get(key).map(|e| &e.origin)
    }

    /// The value of `key`, if the file set it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(|e| e.value.as_str())
    }
}

fn read_file(
    path: &Path,
    entries: &mut BTreeMap<String, Entry>,
    included: &mut BTreeSet<PathBuf>,
) -> Result<(), ConfigError> {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    if !included.insert(canonical) {
        return Err(ConfigError::File {
            file: path.to_owned(),
            line: 0,
            message: "included more than once".into(),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| ConfigError::File {
        file: path.to_owned(),
        line: 0,
        message: format!("cannot read: {e}"),
    })?;
    parse_text(&String::from_utf8_lossy(&bytes), path, entries, included)
}

fn parse_text(
    text: &str,
    path: &Path,
    entries: &mut BTreeMap<String, Entry>,
    included: &mut BTreeSet<PathBuf>,
) -> Result<(), ConfigError> {
    let error = |line: usize, message: String| ConfigError::File {
        file: path.to_owned(),
        line,
        message,
    };
    let mut lines = text.split('\n').enumerate().peekable();
    while let Some((index, first)) = lines.next() {
        let line_no = index + 1;
        let mut line = first.strip_suffix('\r').unwrap_or(first).to_owned();
        while line.ends_with('\\') {
            line.pop();
            match lines.next() {
                Some((_, next)) => line.push_str(next.strip_suffix('\r').unwrap_or(next)),
                None => break,
            }
        }
        let content = line.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let key_len = content
            .char_indices()
            .find(|&(i, c)| {
                !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || (i == 0 && c == '@'))
            })
            .map(|(i, _)| i)
            .unwrap_or(content.len());
        let key = content[..key_len].to_ascii_lowercase();
        if key.is_empty() || key == "@" || !content[key_len..].starts_with(':') {
            return Err(error(line_no, "invalid option name".into()));
        }
        let value = content[key_len + 1..].trim();
        if value.is_empty() {
            return Err(error(line_no, format!("empty value for option '{key}'")));
        }
        if key == "@include" {
            read_file(Path::new(value), entries, included)?;
            continue;
        }
        if let Some(previous) = entries.get(&key) {
            return Err(error(
                line_no,
                format!(
                    "option '{key}' was specified twice (first at {}:{})",
                    previous.origin.file.display(),
                    previous.origin.line
                ),
            ));
        }
        entries.insert(
            key,
            Entry {
                value: value.to_owned(),
                origin: Origin {
                    file: path.to_owned(),
                    line: line_no,
                },
            },
        );
    }
    Ok(())
}

impl Provider for ImapdConf {
    fn metadata(&self) -> Metadata {
        Metadata::named("imapd.conf").source(self.path.as_path())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let dict: Dict = self
            .entries
            .iter()
            .map(|(k, e)| (k.clone(), Value::from(e.value.clone())))
            .collect();
        Ok(Profile::Default.collect(dict))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ImapdConf, ConfigError> {
        ImapdConf::parse_str(text, Path::new("test.conf"))
    }

    #[test]
    fn cyrus_syntax() {
        let conf = parse(
            "# comment\n  configdirectory: /var/lib/cyrus  \nAdmins: a \\\n b\n\nsasl_mech_list: PLAIN # not a comment\n",
        )
        .unwrap();
        assert_eq!(conf.get("configdirectory"), Some("/var/lib/cyrus"));
        assert_eq!(conf.get("admins"), Some("a  b"));
        assert_eq!(conf.get("sasl_mech_list"), Some("PLAIN # not a comment"));
        assert_eq!(conf.origin("admins").map(|o| o.line), Some(3));
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse("a: 1\nbad key: x\n").unwrap_err().to_string();
        assert!(err.contains("test.conf:2"), "{err}");
        let err = parse("a:\n").unwrap_err().to_string();
        assert!(
            err.contains("test.conf:1") && err.contains("empty"),
            "{err}"
        );
        let err = parse("a: 1\nA: 2\n").unwrap_err().to_string();
        assert!(
            err.contains("twice") && err.contains("test.conf:2"),
            "{err}"
        );
        assert!(parse("key : x\n").is_err());
    }

    #[test]
    fn includes_and_service_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let inc = dir.path().join("inc.conf");
        std::fs::write(&inc, "mupdate_admins: override\n").unwrap();
        let main = dir.path().join("imapd.conf");
        std::fs::write(
            &main,
            format!(
                "admins: generic\n@include: {}\nmupdate_server: m:3905\n",
                inc.display()
            ),
        )
        .unwrap();
        let conf = ImapdConf::read(&main, "mupdate").unwrap();
        assert_eq!(conf.get("admins"), Some("override"));
        assert_eq!(conf.get("mupdate_server"), Some("m:3905"));
        let twice = dir.path().join("twice.conf");
        std::fs::write(
            &twice,
            format!("@include: {0}\n@include: {0}\n", inc.display()),
        )
        .unwrap();
        assert!(ImapdConf::read(&twice, "mupdate").is_err());
    }
}
