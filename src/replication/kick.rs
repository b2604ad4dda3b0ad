//! The kick socket, `<configdirectory>/socket/mupdate.target` (spec §8.3): a local process
//! (a frontend's imapd after a proxied CREATE, say) connects, sends nothing, and reads `ok`
//! once the mailbox list here holds everything the master had committed. A master answers
//! at once; a slave first makes a NOOP round trip with its master. Where this host keeps
//! Cyrus's mailboxes.db, the answer also waits until the file holds it: the kicker's next
//! step is to look there again.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::barrier::UpstreamBarrier;
use crate::projection::Projection;

/// Longest a kick waits for mailboxes.db to catch up before it is answered anyway (the
/// kicker then finds what the file holds, as after a Cyrus kick that came too early).
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed accept (out of descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Longest a kick is held, whatever it waits for; then it is closed unanswered.
const KICK_DEADLINE: Duration = Duration::from_secs(60);

/// The kick socket of this host and what a kick must wait for besides the master.
#[derive(Clone)]
pub struct KickSocket {
    /// Where the socket lives.
    pub path: PathBuf,
    /// The mailboxes.db this host keeps, if it keeps one.
    pub projection: Option<Projection>,
    /// Kicks served at once; more wait, unaccepted, in the socket's backlog.
    pub kicks_max: usize,
}

impl KickSocket {
    /// The socket in `config_directory`, waiting for `projection` if given, serving at
    /// most `kicks_max` kicks at once.
    pub fn new(
        config_directory: &Path,
        projection: Option<Projection>,
        kicks_max: usize,
    ) -> KickSocket {
        KickSocket {
            path: socket_path(config_directory),
            projection,
            kicks_max: kicks_max.max(1),
        }
    }
}

/// Where the kick socket lives.
pub fn socket_path(config_directory: &Path) -> PathBuf {
    config_directory.join("socket").join("mupdate.target")
}

/// Answers kicks until `stop`. A master (no `barrier`) binds the socket at once. A slave
/// binds it each time its link is synchronised and closes it when the link ends, so that a
/// kick is refused while the slave is cut off, as with Cyrus. Binding replaces any old file
/// (mode 0777); once closed, the file stays and connections are refused.
pub fn serve(
    socket: &KickSocket,
    barrier: Option<UpstreamBarrier>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let Some(barrier) = barrier else {
        let listener = bind(&socket.path)?;
        tokio::spawn(answer(
            listener,
            socket.clone(),
            None,
            stop.cancelled_owned(),
        ));
        return Ok(());
    };
    let socket = socket.clone();
    let mut linked = barrier.connection();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                up = linked.wait_for(|up| *up) => if up.is_err() { return },
            }
            let mut unlinked = linked.clone();
            let until = {
                let stop = stop.clone();
                async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = unlinked.wait_for(|up| !*up) => {}
                    }
                }
            };
            match bind(&socket.path) {
                Ok(listener) => {
                    answer(listener, socket.clone(), Some(barrier.clone()), until).await
                }
                Err(error) => {
                    tracing::warn!(path = %socket.path.display(), %error, "no kick socket while this link lasts");
                    until.await;
                }
            }
        }
    });
    Ok(())
}

/// Binds the socket at `path`, replacing any old file, mode 0777.
fn bind(path: &Path) -> std::io::Result<UnixListener> {
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
    Ok(listener)
}

/// Accepts kicks on `listener` until `until` completes, each answered once `barrier` (if
/// any) and the socket's mailboxes.db (if kept) hold what the master had committed.
async fn answer(
    listener: UnixListener,
    socket: KickSocket,
    barrier: Option<UpstreamBarrier>,
    until: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(until);
    let slots = Arc::new(Semaphore::new(socket.kicks_max));
    loop {
        // A slot first: kicks beyond the bound stay in the backlog, costing us nothing.
        let slot = tokio::select! {
            _ = &mut until => return,
            slot = slots.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else { return };
        let accepted = tokio::select! {
            _ = &mut until => return,
            accepted = listener.accept() => accepted,
        };
        let mut kick = match accepted {
            Ok((kick, _)) => kick,
            Err(error) => {
                tracing::warn!(%error, "kick socket: cannot accept");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let barrier = barrier.clone();
        let projection = socket.projection.clone();
        tokio::spawn(async move {
            let answered = tokio::time::timeout(KICK_DEADLINE, async {
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
            })
            .await;
            if answered.is_err() {
                tracing::warn!(
                    deadline_secs = KICK_DEADLINE.as_secs(),
                    "kick closed unanswered"
                );
            }
            drop(slot);
        });
    }
}
