//! UPDATE and XUPDATE: the dump a stream starts with (LIST's too), the registered stream,
//! and the notices it is sent as changes are committed; a resumable listener that falls
//! behind is caught up from the change log.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use super::connection::ClientStream;
use super::notices::{bad, encode_change, encode_record, no, ok};
use super::session::{Flow, Session, Stream};
use crate::failover::HaRole;
use crate::observability::metrics::GaugeSlot;
use crate::protocol::response;
use crate::protocol::xupdate::{DumpKind, Position, Rewind};
use crate::store::{Change, RecordRef, Snapshot, server_of};

/// Bytes of dump output produced before they are handed to the socket.
const DUMP_CHUNK: usize = 64 * 1024;

/// Which records a LIST or UPDATE dump sends.
pub(super) enum RecordFilter {
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

impl<IO: ClientStream> Session<IO> {
    pub(super) async fn update(
        &mut self,
        tag: Vec<u8>,
        hosts: Vec<Vec<u8>>,
    ) -> std::io::Result<Flow> {
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
        self.ctx
            .metrics
            .dumps_sent
            .with_label_values(&["full"])
            .inc();
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
            acknowledging: None,
            term: None,
        });
        Ok(Flow::Continue)
    }

    /// XUPDATE (our extension): like UPDATE, but resumes from `epoch`/`seq` with only the
    /// changes since, when the change log still holds them, and follows every change with
    /// `* XSEQ "epoch" "seq"` so that the client can resume later. `* XDUMP "delta"` or
    /// `* XDUMP "full"` says which kind of catch-up follows.
    pub(super) async fn xupdate(
        &mut self,
        tag: Vec<u8>,
        epoch: Option<Vec<u8>>,
        seq: Option<Vec<u8>>,
        term: Option<Vec<u8>>,
    ) -> std::io::Result<Flow> {
        let number = |v: Option<Vec<u8>>| {
            v.and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let position = number(epoch).zip(number(seq));
        let term = match term {
            None => None,
            Some(asked) => match self.master_of_term(number(Some(asked))) {
                Ok(term) => Some(term),
                Err(refusal) => {
                    no(&mut self.out, &tag, &refusal);
                    return Ok(Flow::Continue);
                }
            },
        };
        let feed = self.ctx.store.subscribe();
        let Some(snapshot) = self.snapshot_or_refuse(&tag) else {
            return Ok(Flow::Continue);
        };
        let our_epoch = self.ctx.store.epoch();
        let dumped_through = snapshot.seq();
        // A replica of our own history resumes where it is; one of a master this store
        // followed (before a failover made it the master) from where this store had applied
        // as much of that history.
        // A replica holding changes past what this store has of the history it asks from
        // rewinds them (or, not elected, takes the whole list): an elected replica that was
        // master, or one of our own history that received changes a crash here lost
        // (published before they were durable; their numbers are skipped, never reused).
        let lost = match position {
            Some((epoch, seq)) if epoch == our_epoch => snapshot
                .skipped_after(seq)
                .map(|skipped| skipped.or((seq > dumped_through).then_some(dumped_through)))
                .unwrap_or_else(|error| {
                    tracing::warn!(%error, "cannot read the skipped sequence numbers");
                    Some(0)
                }),
            Some((epoch, seq)) => match snapshot.known_through(epoch) {
                Ok(Some(known)) if known < seq => Some(known),
                _ => None,
            },
            None => None,
        };
        if let (Some(_), Some(through)) = (&term, lost) {
            Rewind::encode(&mut self.out, through);
            no(
                &mut self.out,
                &tag,
                "changes past this master's history: rewind",
            );
            return Ok(Flow::Continue);
        }
        let delta = match position {
            _ if lost.is_some() => Ok(None),
            Some((epoch, seq)) if epoch == our_epoch => snapshot.changes_after(seq),
            Some((epoch, seq)) => match snapshot.local_position(epoch, seq) {
                Ok(Some(from)) => snapshot.changes_after(from),
                other => other.map(|_| None),
            },
            None => Ok(None),
        }
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read the change log; sending a full dump");
            None
        });
        match delta {
            Some(changes) => {
                DumpKind::Delta.encode(&mut self.out);
                for change in &changes {
                    encode_change(&mut self.out, &tag, change);
                    if self.out.len() >= DUMP_CHUNK {
                        self.flush().await?;
                    }
                }
                self.ctx
                    .metrics
                    .dumps_sent
                    .with_label_values(&["delta"])
                    .inc();
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
                self.ctx
                    .metrics
                    .dumps_sent
                    .with_label_values(&["full"])
                    .inc();
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
            term,
            _counted: GaugeSlot::hold(
                self.ctx
                    .metrics
                    .slaves_connected
                    .with_label_values(&["xupdate"]),
            ),
            acknowledging: None,
        });
        Ok(Flow::Continue)
    }

    /// The term `asked` for and what follows this instance's role, if it is master of that
    /// term with its lease held; else why not.
    fn master_of_term(
        &self,
        asked: Option<u64>,
    ) -> Result<(u64, tokio::sync::watch::Receiver<HaRole>), String> {
        let Some(asked) = asked else {
            return Err("Badly formed term".into());
        };
        let Some(election) = self.ctx.election() else {
            return Err(format!("not an elected master (asked for term {asked})"));
        };
        match &*election.role.borrow() {
            HaRole::Leader { term } if *term == asked && election.fence.is_open() => {
                Ok((asked, election.role.clone()))
            }
            HaRole::Leader { term } if *term == asked => {
                Err(format!("the lease of term {asked} is not held"))
            }
            role => Err(format!(
                "not the master of term {asked} (this instance knows term {})",
                role.term()
            )),
        }
    }

    /// A snapshot of the list, or `NO "database error"` queued for `tag`.
    pub(super) fn snapshot_or_refuse(&mut self, tag: &[u8]) -> Option<Snapshot> {
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
    pub(super) async fn send_dump(
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

    /// Writes one stream notice; `Close` when the listener has fallen too far behind.
    pub(super) fn deliver(
        &mut self,
        change: Result<Arc<Change>, broadcast::error::RecvError>,
    ) -> Flow {
        let Some(stream) = &mut self.stream else {
            return Flow::Continue;
        };
        match change {
            Ok(change) => {
                stream.last_seq = stream.last_seq.max(change.seq);
                if change.seq > stream.dumped_through && change.concerns_any(&stream.hosts) {
                    super::notices::encode_change(&mut self.out, &stream.tag, &change);
                    if stream.report_seq {
                        Position::encode(
                            &mut self.out,
                            self.ctx.store.epoch(),
                            change.seq,
                            change.trace.as_deref(),
                        );
                    }
                }
                Flow::Continue
            }
            Err(broadcast::error::RecvError::Lagged(_)) if stream.report_seq => self.catch_up(),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "UPDATE listener fell too far behind; disconnecting it"
                );
                response::bye(&mut self.out, "too far behind, reconnect");
                Flow::Close
            }
            Err(broadcast::error::RecvError::Closed) => {
                response::bye(&mut self.out, "server shutting down");
                Flow::Close
            }
        }
    }

    /// A resumable listener that fell behind the live feed is served from the change log,
    /// each mailbox once in its latest state, then goes on with the feed; a listener the
    /// log no longer covers is dropped like a plain one.
    fn catch_up(&mut self) -> Flow {
        let feed = self.ctx.store.subscribe();
        let Some(stream) = &mut self.stream else {
            return Flow::Continue;
        };
        let caught = self.ctx.store.snapshot().ok().and_then(|snapshot| {
            let changes = snapshot.changes_after(stream.last_seq).ok().flatten()?;
            Some((snapshot.seq(), changes))
        });
        let Some((through, changes)) = caught else {
            tracing::warn!("UPDATE listener fell behind the change log; disconnecting it");
            response::bye(&mut self.out, "too far behind, reconnect");
            return Flow::Close;
        };
        let mut last_of: std::collections::HashMap<&[u8], u64> = std::collections::HashMap::new();
        for change in &changes {
            last_of.insert(&change.name, change.seq);
        }
        for change in changes
            .iter()
            .filter(|c| last_of.get(c.name.as_slice()) == Some(&c.seq))
        {
            super::notices::encode_change(&mut self.out, &stream.tag, change);
        }
        Position::encode(&mut self.out, self.ctx.store.epoch(), through, None);
        stream.feed = feed;
        stream.dumped_through = through;
        stream.last_seq = through;
        Flow::Continue
    }

    /// Queues every change already published (the NOOP barrier, and batching under load).
    pub(super) fn drain_ready_changes(&mut self) -> Flow {
        loop {
            let Some(stream) = &mut self.stream else {
                return Flow::Continue;
            };
            let next = match stream.feed.try_recv() {
                Ok(change) => Ok(change),
                Err(broadcast::error::TryRecvError::Empty) => return Flow::Continue,
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    Err(broadcast::error::RecvError::Lagged(n))
                }
                Err(broadcast::error::TryRecvError::Closed) => {
                    Err(broadcast::error::RecvError::Closed)
                }
            };
            if self.deliver(next) == Flow::Close {
                return Flow::Close;
            }
        }
    }
}

impl<IO: ClientStream> Session<IO> {
    /// XACK: the replica streaming by XUPDATE on this connection holds every change through
    /// `seq` durably. Not answered (it arrives between the stream's notices); refused
    /// outside an XUPDATE stream.
    pub(super) fn xack(&mut self, tag: &[u8], seq: &[u8], replica: Option<Vec<u8>>) {
        let seq = std::str::from_utf8(seq)
            .ok()
            .and_then(|seq| seq.parse::<u64>().ok());
        match (&mut self.stream, seq) {
            (Some(stream), Some(seq)) if stream.report_seq => {
                let named = replica;
                let (slot, _counted) = stream.acknowledging.get_or_insert_with(|| {
                    let counted = GaugeSlot::hold(self.ctx.metrics.sync_replicas.clone());
                    (self.ctx.sync_replicas.join(), counted)
                });
                let name = named
                    .as_deref()
                    .and_then(|name| std::str::from_utf8(name).ok());
                slot.acknowledge(seq, name);
            }
            (Some(stream), _) if stream.report_seq => {
                bad(&mut self.out, tag, "Badly formed arguments");
            }
            _ => bad(
                &mut self.out,
                tag,
                "not legal except when streaming XUPDATE",
            ),
        }
    }
}
