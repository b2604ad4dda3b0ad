//! The kick socket, `<configdirectory>/socket/mupdate.target` (spec §8.3): a local process
//! (a frontend's imapd after a proxied CREATE, say) connects, sends nothing, and reads `ok`
//! once the mailbox list here holds everything the master had committed. A master answers
//! at once; a slave first makes a NOOP round trip with its master. Where this host keeps
//! Cyrus's mailboxes.db, the answer also waits until the file holds it: the kicker's next
//! step is to look there again.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use super::slave::UpstreamBarrier;
use crate::projection::Projection;

/// Longest a kick waits for mailboxes.db to catch up before it is answered anyway (the
/// kicker then finds what the file holds, as after a Cyrus kick that came too early).
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The kick socket of this host and what a kick must wait for besides the master.
#[derive(Clone)]
pub struct KickSocket {
    /// Where the socket lives.
    pub path: PathBuf,
    /// The mailboxes.db this host keeps, if it keeps one.
    pub projection: Option<Projection>,
}

impl KickSocket {
    /// The socket in `config_directory`, waiting for `projection` if given.
    pub fn new(config_directory: &Path, projection: Option<Projection>) -> KickSocket {
        KickSocket {
            path: socket_path(config_directory),
            projection,
        }
    }
}

/// Where the kick socket lives.
pub fn socket_path(config_directory: &Path) -> PathBuf {
    config_directory.join("socket").join("mupdate.target")
}

/// Binds the socket (replacing any old file, mode 0777) and answers kicks until `stop`.
/// Once stopped, the file stays and connections are refused, as with Cyrus.
pub fn serve(
    socket: &KickSocket,
    barrier: Option<UpstreamBarrier>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let path = socket.path.as_path();
    let projection = socket.projection.clone();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((mut kick, _)) = accepted else {
                continue;
            };
            let barrier = barrier.clone();
            let projection = projection.clone();
            tokio::spawn(async move {
                if let Some(barrier) = barrier {
                    barrier.wait().await;
                }
                if let Some(projection) = projection
                    && !projection.wait_visible(VISIBLE_TIMEOUT).await
                {
                    tracing::warn!(
                        timeout_secs = VISIBLE_TIMEOUT.as_secs(),
                        "kick answered before mailboxes.db caught up"
                    );
                }
                let _ = kick.write_all(b"ok").await;
            });
        }
    });
    Ok(())
}
