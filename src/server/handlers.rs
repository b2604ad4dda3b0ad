//! Command execution: the per-command rules of spec §5, on top of the store.

use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::notices::{bad, encode_change, encode_record, no, ok};
use super::session::{Flow, Session, Stream};
use crate::observability::metrics::GaugeSlot;
use crate::protocol::response::{self, Status, Text};
use crate::protocol::xupdate::{DumpKind, Position};
use crate::protocol::{Command, CommandKind};
use crate::store::{Mutation, Outcome, RecordRef, Snapshot, server_of};

/// Bytes of dump output produced before they are handed to the socket.
const DUMP_CHUNK: usize = 64 * 1024;

/// Which records a LIST or UPDATE dump sends.
enum RecordFilter {
    /// LIST: byte prefix of the location.
    LocationPrefix(Vec<u8>),
    /// UPDATE: exact server parts; empty means all.
    Servers(Vec<Vec<u8>>),
}

impl RecordFilter {
    fn matches(&self, record: &RecordRef<'_>) -> bool {
        match self {
            RecordFilter::LocationPrefix(prefix) => record.location.starts_with(prefix),
            RecordFilter::Servers(hosts) => {
                hosts.is_empty() || {
                    let server = server_of(record.location);
                    hosts.iter().any(|h| h.as_slice() == server)
                }
            }
        }
    }
}

impl Session {
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
            CommandKind::Xupdate { epoch, seq } => self.xupdate(tag, epoch, seq).await,
            kind @ (CommandKind::Activate { .. }
            | CommandKind::Reserve { .. }
            | CommandKind::Deactivate { .. }
            | CommandKind::Delete { .. }) => {
                if self.ctx.read_only() {
                    bad(&mut self.out, &tag, "read-only session");
                    return Ok(Flow::Continue);
                }
                self.write(&tag, kind).await;
                Ok(Flow::Continue)
            }
        }
    }

    async fn write(&mut self, tag: &[u8], kind: CommandKind) {
        let mutation = match kind {
            CommandKind::Activate {
                name,
                location,
                acl,
            } => Mutation::Activate {
                name,
                location,
                acl,
            },
            CommandKind::Reserve { name, location } => Mutation::Reserve { name, location },
            CommandKind::Deactivate { name, location } => Mutation::Deactivate { name, location },
            CommandKind::Delete { name } => Mutation::Delete { name },
            _ => return,
        };
        let creates = matches!(
            mutation,
            Mutation::Activate { .. } | Mutation::Reserve { .. }
        );
        if creates && mutation.name().is_empty() {
            // D-7: Cyrus accepts the empty name and corrupts its database.
            no(&mut self.out, tag, "invalid mailbox name");
            return;
        }
        match self.ctx.store.apply(mutation).await {
            Ok(Outcome::Done) => ok(&mut self.out, tag, "done"),
            Ok(Outcome::AlreadyExists) => no(&mut self.out, tag, "mailbox already exists"),
            Ok(Outcome::NotActive) => no(&mut self.out, tag, "mailbox not currently active"),
            Ok(Outcome::DoesNotExist) => no(&mut self.out, tag, "mailbox doesn't exist"),
            Err(error) => {
                tracing::error!(%error, "write failed");
                no(&mut self.out, tag, "database error");
            }
        }
    }

    async fn update(&mut self, tag: Vec<u8>, hosts: Vec<Vec<u8>>) -> std::io::Result<Flow> {
        // Subscribe before taking the snapshot: every change after the snapshot is then
        // in the feed, and the ones already in the snapshot are skipped by sequence.
        let feed = self.ctx.store.subscribe();
        let Some(snapshot) = self.snapshot_or_refuse(&tag) else {
            return Ok(Flow::Continue);
        };
        let dumped_through = snapshot.seq();
        if !self
            .send_dump(snapshot, &tag, RecordFilter::Servers(hosts.clone()))
            .await?
        {
            no(&mut self.out, &tag, "database error");
            return Ok(Flow::Continue);
        }
        ok(&mut self.out, &tag, "streaming starts");
        self.ctx.full_dumps.fetch_add(1, Ordering::Relaxed);
        self.stream = Some(Stream {
            tag,
            hosts,
            feed,
            dumped_through,
            report_seq: false,
            last_seq: dumped_through,
            _counted: GaugeSlot::hold(
                self.ctx
                    .metrics
                    .slaves_connected
                    .with_label_values(&["update"]),
            ),
        });
        Ok(Flow::Continue)
    }

    /// XUPDATE (our extension): like UPDATE, but resumes from `epoch`/`seq` with only the
    /// changes since, when the change log still holds them, and follows every change with
    /// `* XSEQ "epoch" "seq"` so that the client can resume later. `* XDUMP "delta"` or
    /// `* XDUMP "full"` says which kind of catch-up follows.
    async fn xupdate(
        &mut self,
        tag: Vec<u8>,
        epoch: Option<Vec<u8>>,
        seq: Option<Vec<u8>>,
    ) -> std::io::Result<Flow> {
        let number = |v: Option<Vec<u8>>| {
            v.and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let position = number(epoch).zip(number(seq));
        let feed = self.ctx.store.subscribe();
        let Some(snapshot) = self.snapshot_or_refuse(&tag) else {
            return Ok(Flow::Continue);
        };
        let our_epoch = self.ctx.store.epoch();
        let dumped_through = snapshot.seq();
        let delta = match position {
            Some((epoch, seq)) if epoch == our_epoch => {
                snapshot.changes_after(seq).unwrap_or_else(|error| {
                    tracing::warn!(%error, "cannot read the change log; sending a full dump");
                    None
                })
            }
            _ => None,
        };
        match delta {
            Some(changes) => {
                DumpKind::Delta.encode(&mut self.out);
                for change in &changes {
                    encode_change(&mut self.out, &tag, change);
                    if self.out.len() >= DUMP_CHUNK {
                        self.flush().await?;
                    }
                }
                self.ctx.resumes.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                DumpKind::Full.encode(&mut self.out);
                if !self
                    .send_dump(snapshot, &tag, RecordFilter::Servers(Vec::new()))
                    .await?
                {
                    no(&mut self.out, &tag, "database error");
                    return Ok(Flow::Continue);
                }
                self.ctx.full_dumps.fetch_add(1, Ordering::Relaxed);
            }
        }
        Position::encode(&mut self.out, our_epoch, dumped_through, None);
        ok(&mut self.out, &tag, "streaming starts");
        self.stream = Some(Stream {
            tag,
            hosts: Vec::new(),
            feed,
            dumped_through,
            report_seq: true,
            last_seq: dumped_through,
            _counted: GaugeSlot::hold(
                self.ctx
                    .metrics
                    .slaves_connected
                    .with_label_values(&["xupdate"]),
            ),
        });
        Ok(Flow::Continue)
    }

    /// A snapshot of the list, or `NO "database error"` queued for `tag`.
    fn snapshot_or_refuse(&mut self, tag: &[u8]) -> Option<Snapshot> {
        match self.ctx.store.snapshot() {
            Ok(snapshot) => Some(snapshot),
            Err(error) => {
                tracing::error!(%error, "cannot read the mailbox list");
                no(&mut self.out, tag, "database error");
                None
            }
        }
    }

    /// Streams the matching records of `snapshot` to the client in Cyrus order. Walks the
    /// snapshot on a blocking thread and sends it in chunks, so a dump of a million
    /// mailboxes neither stalls other sessions nor sits in memory at once.
    async fn send_dump(
        &mut self,
        snapshot: Snapshot,
        tag: &[u8],
        filter: RecordFilter,
    ) -> std::io::Result<bool> {
        self.flush().await?;
        let (chunks, mut receive) = mpsc::channel::<Vec<u8>>(2);
        let dump_tag = tag.to_vec();
        let walker = tokio::task::spawn_blocking(move || {
            let mut buffer = Vec::with_capacity(DUMP_CHUNK + 1024);
            let mut receiver_gone = false;
            let walked = snapshot.walk(|record| {
                if filter.matches(&record) {
                    encode_record(&mut buffer, &dump_tag, &record);
                    if buffer.len() >= DUMP_CHUNK {
                        let full =
                            std::mem::replace(&mut buffer, Vec::with_capacity(DUMP_CHUNK + 1024));
                        receiver_gone = chunks.blocking_send(full).is_err();
                    }
                }
                !receiver_gone
            });
            if !buffer.is_empty() && !receiver_gone {
                let _ = chunks.blocking_send(buffer);
            }
            walked
        });
        let mut sent = Ok(());
        while let Some(chunk) = receive.recv().await {
            if sent.is_ok() {
                sent = self.conn.send(&chunk).await;
            }
            if sent.is_err() {
                receive.close();
            }
        }
        sent?;
        match walker.await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(error)) => {
                tracing::error!(%error, "walking the mailbox list failed");
                Ok(false)
            }
            Err(error) => {
                tracing::error!(%error, "dump task failed");
                Ok(false)
            }
        }
    }

    /// STARTTLS (spec §5.10): whatever the client pipelined behind it is dropped in every
    /// case; then Cyrus's checks, in its order and words.
    fn starttls(&mut self, tag: &[u8]) -> Flow {
        let refusal: Option<&[u8]> = if self.ctx.tls.is_none() {
            bad(&mut self.out, tag, "Unrecognized command");
            return Flow::DiscardInput;
        } else if self.identity.is_some() {
            Some(b"Can't Starttls after authentication")
        } else if self.conn.compressed() {
            Some(b"Can't Starttls after Compress")
        } else if self.conn.tls() {
            Some(b"Already did a successful Starttls")
        } else {
            None
        };
        match refusal {
            Some(text) => {
                response::tagged(&mut self.out, tag, Status::Bad, Text::Bare(text));
                Flow::DiscardInput
            }
            None => {
                response::tagged(
                    &mut self.out,
                    tag,
                    Status::Ok,
                    Text::Bare(b"Begin TLS negotiation now"),
                );
                Flow::StartTls
            }
        }
    }

    fn compress(&mut self, tag: &[u8], algorithm: &[u8]) -> Flow {
        if self.conn.compressed() {
            response::tagged(
                &mut self.out,
                tag,
                Status::Bad,
                Text::Bare(b"DEFLATE active via COMPRESS"),
            );
            return Flow::Continue;
        }
        if !algorithm.eq_ignore_ascii_case(b"DEFLATE") {
            let mut text = b"Unknown COMPRESS algorithm: ".to_vec();
            text.extend_from_slice(algorithm);
            response::tagged(&mut self.out, tag, Status::No, Text::Bare(&text));
            return Flow::Continue;
        }
        let mut text = algorithm.to_vec();
        text.extend_from_slice(b" active");
        response::tagged(&mut self.out, tag, Status::Ok, Text::Bare(&text));
        Flow::StartCompression
    }
}
