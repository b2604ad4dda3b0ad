//! The kick socket, `<configdirectory>/socket/mupdate.target` (spec §8.3): a local process
//! (a frontend's imapd after a proxied CREATE, say) connects, sends nothing, and reads `ok`
//! once the mailbox list here holds everything the master had committed. A master answers
//! at once; a slave first makes a NOOP round trip with its master.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use super::slave::UpstreamBarrier;

/// Where the kick socket lives.
pub fn socket_path(config_directory: &Path) -> PathBuf {
    config_directory.join("socket").join("mupdate.target")
}

/// Binds the socket (replacing any old file, mode 0777) and answers kicks until `stop`.
/// Once stopped, the file stays and connections are refused, as with Cyrus.
pub fn serve(
    path: &Path,
    barrier: Option<UpstreamBarrier>,
    stop: CancellationToken,
) -> std::io::Result<()> {
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
            tokio::spawn(async move {
                if let Some(barrier) = barrier {
                    barrier.wait().await;
                }
                let _ = kick.write_all(b"ok").await;
            });
        }
    });
    Ok(())
}
