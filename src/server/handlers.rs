//! Command dispatch: which handler runs a command, and the simplest ones (LOGOUT, NOOP,
//! FIND, LIST) in place.

use super::connection::ClientStream;
use super::notices::{bad, encode_record, no, ok};
use super::session::{Flow, Session};
use super::streams::RecordFilter;
use crate::protocol::{Command, CommandKind};

impl<IO: ClientStream> Session<IO> {
    pub(super) async fn execute(&mut self, command: Command) -> std::io::Result<Flow> {
        let Command { tag, kind } = command;
        let streaming = self.stream.is_some();
        match kind {
            CommandKind::Authenticate {
                mechanism,
                initial_response,
            } => self.authenticate(tag, mechanism, initial_response).await,
            CommandKind::Logout => {
                ok(&mut self.out, &tag, "bye-bye");
                Ok(Flow::Close)
            }
            CommandKind::Noop => {
                // On a slave, a streaming client's NOOP first makes sure this replica
                // holds everything the master had committed (a kick, as in Cyrus).
                if streaming && let Some(upstream) = &self.ctx.upstream {
                    upstream.wait().await;
                }
                if self.drain_ready_changes() == Flow::Close {
                    return Ok(Flow::Close);
                }
                ok(&mut self.out, &tag, "Noop done");
                Ok(Flow::Continue)
            }
            CommandKind::Xack { seq, replica } => {
                self.xack(&tag, &seq, replica);
                Ok(Flow::Continue)
            }
            CommandKind::Starttls => Ok(self.starttls(&tag)),
            CommandKind::Compress { algorithm } => Ok(self.compress(&tag, &algorithm)),
            _ if streaming => {
                bad(&mut self.out, &tag, "not legal when streaming");
                Ok(Flow::Continue)
            }
            CommandKind::Find { name } => {
                match self.ctx.store.find(&name) {
                    Ok(Some(record)) => encode_record(&mut self.out, &tag, &record.as_ref()),
                    Ok(None) => {}
                    Err(error) => {
                        tracing::error!(%error, "FIND failed");
                        no(&mut self.out, &tag, "database error");
                        return Ok(Flow::Continue);
                    }
                }
                ok(&mut self.out, &tag, "Search completed");
                Ok(Flow::Continue)
            }
            CommandKind::List { prefix } => {
                let filter = RecordFilter::LocationPrefix(prefix.unwrap_or_default());
                let Some(snapshot) = self.snapshot_or_refuse(&tag) else {
                    return Ok(Flow::Continue);
                };
                if self.send_dump(snapshot, &tag, filter).await? {
                    ok(&mut self.out, &tag, "list complete");
                } else {
                    no(&mut self.out, &tag, "database error");
                }
                Ok(Flow::Continue)
            }
            CommandKind::Update { hosts } => self.update(tag, hosts).await,
            CommandKind::Xupdate { epoch, seq, term } => self.xupdate(tag, epoch, seq, term).await,
            CommandKind::Write(write) => {
                if self.ctx.read_only() {
                    bad(&mut self.out, &tag, "read-only session");
                    return Ok(Flow::Continue);
                }
                super::writes::apply(&self.ctx, &tag, write, &mut self.out).await;
                Ok(Flow::Continue)
            }
        }
    }
}
