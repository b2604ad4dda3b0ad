//! How the process ends when it cannot serve: sysexits codes and the error that carries one.
//! A leaf: the composition root, the tools and the Cyrus master(8) glue all report through it.

/// `EX_CONFIG`: bad configuration, or the database is held by another instance.
pub const EXIT_CONFIG: i32 = 78;
/// `EX_OSERR`: the listener or another OS resource could not be set up.
pub const EXIT_OS: i32 = 71;
/// `EX_CANTCREAT`: a file the server must write cannot be opened or created.
pub const EXIT_CANTCREAT: i32 = 73;
/// `EX_TEMPFAIL`: the server stopped on a failure a restart mends (its supervisor, Cyrus's
/// master(8) or Kubernetes, starts it again).
pub const EXIT_TEMPFAIL: i32 = 75;
/// `EX_SOFTWARE`: anything else.
pub const EXIT_SOFTWARE: i32 = 70;

/// A start-up failure with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Fatal {
    /// Process exit status.
    pub code: i32,
    /// What to tell the operator.
    pub message: String,
}

/// A [`Fatal`] with exit status `code`.
pub fn fatal(code: i32, message: impl Into<String>) -> Fatal {
    Fatal {
        code,
        message: message.into(),
    }
}
