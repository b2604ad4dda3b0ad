//! Per-user protocol telemetry, byte-compatible with Cyrus (spec §4.3): when
//! `<configdirectory>/log/<user>/` exists at login, every read from and flush to the client
//! is appended to `<service>-<sec>.<usec>` in that directory.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Cyrus's protocol layer flushes at most this many bytes at a time.
const FLUSH_CHUNK: usize = 4096;

/// Where telemetry writes are counted.
#[derive(Debug, Clone)]
pub struct TelemetryCounters {
    /// Records written.
    pub writes: prometheus::IntCounter,
    /// Opens and writes that failed.
    pub errors: prometheus::IntCounter,
}

/// An open telemetry file.
#[derive(Debug)]
pub struct TelemetryLog {
    file: File,
    counters: TelemetryCounters,
}

impl TelemetryLog {
    /// Opens a new log for `user` if its directory exists; `None` otherwise (or on error,
    /// which is logged: telemetry must never break a session).
    pub fn open(
        config_directory: &Path,
        user: &str,
        service: &str,
        counters: TelemetryCounters,
    ) -> Option<TelemetryLog> {
        if user.is_empty() || user.contains('/') || user == "." || user == ".." {
            return None;
        }
        let dir = config_directory.join("log").join(user);
        if !dir.is_dir() {
            return None;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
        let path = dir.join(format!(
            "{service}-{}.{}",
            now.as_secs(),
            now.subsec_micros()
        ));
        let opened = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path);
        let mut file = match opened {
            Ok(file) => file,
            Err(error) => {
                counters.errors.inc();
                tracing::warn!(path = %path.display(), %error, "cannot open telemetry log");
                return None;
            }
        };
        let ctime = chrono::DateTime::from_timestamp(now.as_secs() as i64, 0)
            .map(|t| t.with_timezone(&chrono::Local))
            .map(|t| t.format("%a %b %e %H:%M:%S %Y").to_string())
            .unwrap_or_default();
        let header = format!("---------- {user} {ctime}\n\n");
        if let Err(error) = file.write_all(header.as_bytes()) {
            counters.errors.inc();
            tracing::warn!(path = %path.display(), %error, "cannot write telemetry log");
            return None;
        }
        Some(TelemetryLog { file, counters })
    }

    /// Records one read from the client.
    pub fn record_read(&mut self, bytes: &[u8]) {
        self.record(b'<', bytes);
    }

    /// Records one flush to the client, split as Cyrus's 4096-byte buffer splits it.
    pub fn record_write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(FLUSH_CHUNK) {
            self.record(b'>', chunk);
        }
    }

    fn record(&mut self, direction: u8, bytes: &[u8]) {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut record = Vec::with_capacity(bytes.len() + 24);
        record.push(direction);
        record.extend_from_slice(secs.to_string().as_bytes());
        record.push(direction);
        record.extend_from_slice(bytes);
        match self.file.write_all(&record) {
            Ok(()) => self.counters.writes.inc(),
            Err(error) => {
                self.counters.errors.inc();
                tracing::warn!(%error, "cannot write telemetry log");
            }
        }
    }
}
