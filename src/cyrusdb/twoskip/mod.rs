//! Cyrus's twoskip database format: reader, writer and recovery, byte-compatible with
//! Cyrus 3.6 (and unchanged in Cyrus since). See `format` for the bytes, `image` for the
//! skiplist operations, `file` for sharing the file with Cyrus processes.

pub mod file;
pub mod format;
pub mod image;

use std::path::{Path, PathBuf};

pub use file::{Transaction, TransactionReport, TwoskipFile};
pub use format::{Header, entries};
pub use image::{Image, LevelSource, RandomLevels, check_consistent};

/// Errors reading or writing a twoskip file.
#[derive(Debug, thiserror::Error)]
pub enum TwoskipError {
    /// The file is not a (version 1) twoskip file or its header is damaged.
    #[error("twoskip: {0}")]
    Format(&'static str),
    /// A record is damaged, or the lists are inconsistent at it.
    #[error("twoskip: record at offset {offset:#x}: {what}")]
    Record {
        /// Where the record starts.
        offset: u64,
        /// What is wrong with it.
        what: &'static str,
    },
    /// Twoskip keys cannot be empty.
    #[error("twoskip: empty key")]
    EmptyKey,
    /// An I/O error on the file.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

impl TwoskipError {
    fn io(path: &Path, action: &'static str, source: std::io::Error) -> TwoskipError {
        TwoskipError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
}

#[cfg(test)]
mod tests;
