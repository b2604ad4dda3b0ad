//! The store's write-ahead log: a fixed-size file, zero-filled when created, to which each
//! commit's effects are appended and synced before the commit is answered. A redb commit
//! made durable rewrites about eight pages scattered over its file, and syncing those costs
//! two to three times what syncing one appended frame in already-allocated space does; so
//! redb commits without syncing while frames are appended, and syncs only when the log is
//! full, after which the log starts over. At open, the frames redb's last synced commit does
//! not hold are replayed.
//!
//! A frame is `length (u32) | crc32 (u32) | log id (u64) | lsn (u64) | payload`, the length
//! and the crc over what follows them. The log id is the database's, so that a log left
//! beside another database (one deleted and made anew) is never replayed into it. Reading
//! stops at the first frame that does not check out: a torn write, the zeros of space never
//! written, or a frame of an earlier round, whose lsn is older than the one expected.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Checkpoint, Keeping};

/// Bytes before a frame's log id.
const HEAD: usize = 8;
/// The log id's and the lsn's bytes.
const IDS: usize = 16;

/// The log's file, open for appending.
pub(crate) struct Wal {
    file: File,
    capacity: u64,
    /// Where the next frame goes.
    end: u64,
}

/// A frame read back: its log id, lsn and payload.
pub type Frame = (u64, u64, Vec<u8>);

impl Wal {
    /// The log of the database at `db_path` (beside it, `.wal` appended): created and
    /// zero-filled to `capacity` bytes if it is missing or shorter. Returns it, positioned
    /// at its start, and the frames it holds, in order.
    pub(crate) fn open(db_path: &Path, capacity: u64) -> std::io::Result<(Wal, Vec<Frame>)> {
        let path = wal_path(db_path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let length = file.metadata()?.len();
        let mut bytes = vec![0; usize::try_from(length).map_err(std::io::Error::other)?];
        file.read_exact_at(&mut bytes, 0)?;
        let frames = frames(&bytes);
        if length < capacity {
            // Frames written in place need no metadata synced with them: the space is
            // allocated and written once, here.
            zero_fill(&file, length, capacity)?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        Ok((
            Wal {
                file,
                capacity,
                end: 0,
            },
            frames,
        ))
    }

    /// Whether a frame of `payload` bytes fits after those written.
    pub(crate) fn fits(&self, payload: usize) -> bool {
        self.end + (HEAD + IDS + payload) as u64 <= self.capacity
    }

    /// Appends a frame; on disk once [`Wal::sync`] returns (or the next sync's).
    pub(crate) fn append(&mut self, id: u64, lsn: u64, payload: &[u8]) -> std::io::Result<()> {
        let frame = encode_frame(id, lsn, payload)
            .ok_or_else(|| std::io::Error::other("write-ahead frame too long"))?;
        self.file.write_all_at(&frame, self.end)?;
        self.end += frame.len() as u64;
        Ok(())
    }

    /// Makes every frame appended so far durable.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Starts the log over: everything in it is durable in redb now.
    pub(crate) fn restart(&mut self) {
        self.end = 0;
    }

    /// Zero-fills the whole file, so that no frame in it can be taken for one of the next
    /// round, and starts over.
    pub(crate) fn clear(&mut self) -> std::io::Result<()> {
        zero_fill(&self.file, 0, self.capacity)?;
        self.end = 0;
        Ok(())
    }
}

/// Where the log of the database at `db_path` lives.
pub(crate) fn wal_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push(".wal");
    PathBuf::from(name)
}

/// Writes zeros from `from` to `to`: real blocks, not a hole.
fn zero_fill(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0; CHUNK as usize];
    let mut at = from;
    while at < to {
        let take = (to - at).min(CHUNK);
        file.write_all_at(&zeros[..take as usize], at)?;
        at += take;
    }
    file.sync_all()
}

/// A frame of `payload` at `lsn` of log `id`; `None` if it is too long for one.
pub fn encode_frame(id: u64, lsn: u64, payload: &[u8]) -> Option<Vec<u8>> {
    let length = u32::try_from(IDS + payload.len()).ok()?;
    let mut frame = Vec::with_capacity(HEAD + IDS + payload.len());
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&lsn.to_be_bytes());
    frame.extend_from_slice(payload);
    let crc = crc32fast::hash(&frame[HEAD..]);
    frame[4..HEAD].copy_from_slice(&crc.to_be_bytes());
    Some(frame)
}

/// The frames at the start of `bytes` that check out, in order.
pub fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut found: Vec<Frame> = Vec::new();
    let mut at = 0usize;
    while let Some(head) = bytes.get(at..at + HEAD) {
        let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if length < IDS {
            break;
        }
        let Some(body) = bytes.get(at + HEAD..at + HEAD + length) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        let number = |at: usize| {
            let mut n = [0; 8];
            n.copy_from_slice(&body[at..at + 8]);
            u64::from_be_bytes(n)
        };
        let (id, lsn) = (number(0), number(8));
        // Frames of one round follow each other; one of an earlier round is older.
        if let Some((last_id, last_lsn, _)) = found.last()
            && (*last_id != id || last_lsn.checked_add(1) != Some(lsn))
        {
            break;
        }
        found.push((id, lsn, body[IDS..].to_vec()));
        at += HEAD + length;
    }
    found
}

/// One request of a frame: how it was kept, its checkpoint, and its changes' log entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// As the request asked.
    pub keeping: Keeping,
    /// Recorded after its changes.
    pub checkpoint: Option<Checkpoint>,
    /// Each change's entry in the change log, which a replay writes again; or, when
    /// `replicated`, the records a replica was sent, which a replay applies as it did.
    pub entries: Vec<Vec<u8>>,
    /// Whether the entries are the records as sent, logged before they were applied.
    pub replicated: bool,
}

/// A frame's payload, written request by request: per request, a flags byte (durable,
/// logged, checkpointed, replicated), the checkpoint's epoch and seq if any, the count of
/// entries, and each entry after its length.
#[derive(Debug, Default)]
pub struct Payload {
    bytes: Vec<u8>,
    /// Where the current request's count goes.
    count_at: usize,
    count: u32,
}

impl Payload {
    /// Starts a request.
    pub fn begin_request(
        &mut self,
        keeping: Keeping,
        checkpoint: Option<Checkpoint>,
        replicated: bool,
    ) {
        let flags = u8::from(keeping.durable)
            | u8::from(keeping.logged) << 1
            | u8::from(checkpoint.is_some()) << 2
            | u8::from(replicated) << 3;
        self.bytes.push(flags);
        if let Some(Checkpoint { epoch, seq }) = checkpoint {
            self.bytes.extend_from_slice(&epoch.to_be_bytes());
            self.bytes.extend_from_slice(&seq.to_be_bytes());
        }
        self.count_at = self.bytes.len();
        self.count = 0;
        self.bytes.extend_from_slice(&0u32.to_be_bytes());
    }

    /// Adds a change's log entry to the current request.
    pub fn entry(&mut self, entry: &[u8]) {
        self.bytes
            .extend_from_slice(&(entry.len() as u32).to_be_bytes());
        self.bytes.extend_from_slice(entry);
        self.count += 1;
    }

    /// Ends the current request.
    pub fn end_request(&mut self) {
        let at = self.count_at;
        if let Some(count) = self.bytes.get_mut(at..at + 4) {
            count.copy_from_slice(&self.count.to_be_bytes());
        }
    }

    /// The payload written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// The requests of a frame's payload; `None` if it is not one.
pub fn decode_payload(mut bytes: &[u8]) -> Option<Vec<LoggedRequest>> {
    fn take<'b>(bytes: &mut &'b [u8], n: usize) -> Option<&'b [u8]> {
        let (head, rest) = (bytes.get(..n)?, bytes.get(n..)?);
        *bytes = rest;
        Some(head)
    }
    fn number(bytes: &mut &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(take(bytes, 8)?.try_into().ok()?))
    }
    fn count(bytes: &mut &[u8]) -> Option<usize> {
        Some(u32::from_be_bytes(take(bytes, 4)?.try_into().ok()?) as usize)
    }
    let mut requests = Vec::new();
    while let Some((&flags, rest)) = bytes.split_first() {
        bytes = rest;
        if flags > 15 {
            return None;
        }
        let keeping = Keeping {
            durable: flags & 1 != 0,
            logged: flags & 2 != 0,
        };
        let checkpoint = if flags & 4 != 0 {
            Some(Checkpoint {
                epoch: number(&mut bytes)?,
                seq: number(&mut bytes)?,
            })
        } else {
            None
        };
        // Each entry takes at least its length's four bytes: a count beyond what is left
        // is not believed (nor allocated for).
        let entries = count(&mut bytes)?;
        if entries > bytes.len() / 4 {
            return None;
        }
        let entries = (0..entries)
            .map(|_| {
                let length = count(&mut bytes)?;
                take(&mut bytes, length).map(<[u8]>::to_vec)
            })
            .collect::<Option<Vec<_>>>()?;
        requests.push(LoggedRequest {
            keeping,
            checkpoint,
            entries,
            replicated: flags & 8 != 0,
        });
    }
    Some(requests)
}

/// Writes `requests` as a payload.
pub fn encode_payload(requests: &[LoggedRequest]) -> Vec<u8> {
    let mut payload = Payload::default();
    for request in requests {
        payload.begin_request(request.keeping, request.checkpoint, request.replicated);
        for entry in &request.entries {
            payload.entry(entry);
        }
        payload.end_request();
    }
    payload.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: u64 = 0x5eed;

    #[test]
    fn frames_are_read_back_until_one_of_another_round_or_log() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let (mut wal, found) = Wal::open(&db, 4096).unwrap();
        assert!(found.is_empty());
        wal.append(ID, 7, b"seven").unwrap();
        wal.append(ID, 8, b"eight").unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (mut wal, found) = Wal::open(&db, 4096).unwrap();
        assert_eq!(
            found,
            vec![(ID, 7, b"seven".to_vec()), (ID, 8, b"eight".to_vec())]
        );
        // A new round overwrites the start; what is left of the old one ends it.
        wal.restart();
        wal.append(ID, 20, b"twenty").unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (mut wal, found) = Wal::open(&db, 4096).unwrap();
        assert_eq!(found, vec![(ID, 20, b"twenty".to_vec())]);
        // Nor does a frame of another log follow one of this one.
        wal.append(ID, 20, b"twenty").unwrap();
        wal.append(ID + 1, 21, b"elsewhere").unwrap();
        drop(wal);
        let (_, found) = Wal::open(&db, 4096).unwrap();
        assert_eq!(found, vec![(ID, 20, b"twenty".to_vec())]);
    }

    #[test]
    fn a_torn_frame_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let (mut wal, _) = Wal::open(&db, 4096).unwrap();
        wal.append(ID, 1, b"one").unwrap();
        wal.append(ID, 2, b"two, torn").unwrap();
        wal.sync().unwrap();
        drop(wal);
        let file = OpenOptions::new().write(true).open(wal_path(&db)).unwrap();
        // A byte of the second frame's payload never reached the disk.
        file.write_all_at(b"X", (HEAD + IDS + 3 + HEAD + IDS + 2) as u64)
            .unwrap();
        let (_, found) = Wal::open(&db, 4096).unwrap();
        assert_eq!(found, vec![(ID, 1, b"one".to_vec())]);
    }

    #[test]
    fn a_frame_fits_only_within_the_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(&dir.path().join("db"), 64).unwrap();
        assert!(wal.fits(40));
        assert!(!wal.fits(41));
        wal.append(ID, 1, &[0; 32]).unwrap();
        assert!(!wal.fits(1));
        wal.restart();
        assert!(wal.fits(40));
    }

    fn logged_requests() -> impl proptest::strategy::Strategy<Value = Vec<LoggedRequest>> {
        use proptest::prelude::*;
        let request = (
            any::<(bool, bool, bool)>(),
            proptest::option::of(any::<(u64, u64)>()),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..5),
        )
            .prop_map(|((durable, logged, replicated), checkpoint, entries)| {
                LoggedRequest {
                    keeping: Keeping { durable, logged },
                    checkpoint: checkpoint.map(|(epoch, seq)| Checkpoint { epoch, seq }),
                    entries,
                    replicated,
                }
            });
        proptest::collection::vec(request, 0..5)
    }

    proptest::proptest! {
        #[test]
        fn payloads_and_frames_read_back_as_written(
            requests in logged_requests(),
            lsn in proptest::prelude::any::<u64>(),
        ) {
            let payload = encode_payload(&requests);
            proptest::prop_assert_eq!(decode_payload(&payload), Some(requests));
            let mut log = encode_frame(ID, lsn, &payload).unwrap();
            log.extend(encode_frame(ID, lsn.wrapping_add(1), b"next").unwrap());
            let read = frames(&log);
            proptest::prop_assert_eq!(read.len(), if lsn == u64::MAX { 1 } else { 2 });
            proptest::prop_assert_eq!(&read[0], &(ID, lsn, payload));
        }
    }
}
